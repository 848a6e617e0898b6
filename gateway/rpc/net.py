"""Listener and channel helpers shared by the sidecar and the collector."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from gateway.config.collector import CollectorTlsConfig
from gateway.config.sidecar import CollectorTlsClientConfig
from gateway.errors import ConfigError
from gateway.signing import read_secret_file


def prepare_unix_socket(path: Path) -> None:
    """Removes a stale socket file; refuses if another process is listening on it."""
    if len(str(path).encode()) > 107:
        raise ConfigError(f"unix socket path {path} is longer than the 107-byte limit; use a shorter --dir")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: left over from a crash
    else:
        raise ConfigError(f"another process is already listening on {path}")
    finally:
        probe.close()


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc


def collector_credentials(tls: CollectorTlsClientConfig) -> grpc.ChannelCredentials:
    """The channel credentials for ``forward.tls``: the CA to verify the collector with, and a client certificate.

    Raises:
        ConfigError: a file is unreadable, or the private key is accessible by group or others.
    """
    ca = _read("forward.tls.ca", tls.ca) if tls.ca is not None else None
    cert = key = None
    if tls.cert is not None and tls.key is not None:
        cert = _read("forward.tls.cert", tls.cert)
        try:
            key = read_secret_file(tls.key)  # the client certificate's private key: 0600, like every key here
        except ConfigError as exc:
            raise ConfigError(f"forward.tls.key: {exc}") from exc
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def collector_channel(
    address: str, tls: CollectorTlsClientConfig | None, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """Opens the one kind of channel the sidecar uses to reach a collector (the forwarder, the control stream).

    With ``tls`` the collector's certificate is verified against ``tls.ca`` (for ``tls.server_name`` when set,
    else the address's host) and ``tls.cert`` is presented when set. A unix socket is local and never uses TLS
    (the configuration refuses ``forward.tls`` with one); without ``tls`` the channel is plaintext, which the
    configuration allows off loopback only with ``forward.allow_insecure``.

    Raises:
        ConfigError: a TLS file is unreadable, or the private key is accessible by group or others.
    """
    opts = list(options)
    if tls is None or address.startswith("unix:"):
        return grpc.aio.insecure_channel(address, options=opts)
    if tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(address, collector_credentials(tls), options=opts)


def collector_server_credentials(tls: CollectorTlsConfig) -> grpc.ServerCredentials:
    """The collector listener's credentials (``collector.tls``): its certificate, and the CA clients must show.

    Raises:
        ConfigError: a file is unreadable, or the private key is accessible by group or others.
    """
    cert = _read("collector.tls.cert", tls.cert)
    try:
        key = read_secret_file(tls.key)
    except ConfigError as exc:
        raise ConfigError(f"collector.tls.key: {exc}") from exc
    client_ca = _read("collector.tls.client_ca", tls.client_ca) if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
