"""How the CLI reaches a sidecar, its operator API or a collector: one address parser and one line per failure.

Every address flag (``--target``, ``--operator``, ``--collector``) goes through the clients' parser
(:func:`agentaudit_client.address.grpc_target`), so the forms the docs print (``unix://./.agentaudit/x.sock``,
``unix:rel``, ``unix:///abs``, ``HOST:PORT``) work wherever they are typed. A failed call becomes one sentence saying
what to do, never a gRPC core dump; gRPC's own logging stays off unless ``GRPC_VERBOSITY`` asks for it
(:func:`quiet_grpc_logging`, called before gRPC is first imported).

gRPC is imported by the functions that need it, never with this module: the offline commands must not load it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

START_HINT = "is `agentaudit dev` running? (run it in another terminal, from the directory holding .agentaudit/)"


def quiet_grpc_logging() -> None:
    """Turns gRPC core's log lines off unless ``GRPC_VERBOSITY`` is set (the CLI prints its own one-line errors)."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def target(address: str, flag: str) -> str:
    """The gRPC target of an address typed for ``flag``; ConfigError (exit 2) naming the flag when it is no address."""
    from agentaudit_client.address import AddressError, grpc_target  # noqa: PLC0415 - the package loads gRPC

    try:
        return grpc_target(address)
    except AddressError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def channel(channel_target: str, tls_ca: str | None, tls_cert: str | None, tls_key: str | None) -> Any:
    """A blocking gRPC channel to ``channel_target``: TLS verified against ``tls_ca`` when given (``tls_cert`` and
    ``tls_key`` present a client certificate for mutual TLS), plaintext otherwise.

    Raises:
        ConfigError: a certificate or key file cannot be read, or a client certificate without its key (or the
            reverse), or either without ``tls_ca``.
    """
    import grpc  # noqa: PLC0415 - see the module docstring

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together (a client certificate and its private key)")
    if tls_ca is None:
        if tls_cert is not None:
            raise ConfigError("--tls-cert needs --tls-ca (the CA that signed the server's certificate)")
        return grpc.insecure_channel(channel_target)
    try:
        ca, key, cert = (Path(p).read_bytes() if p else None for p in (tls_ca, tls_key, tls_cert))
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return grpc.secure_channel(channel_target, grpc.ssl_channel_credentials(ca, key, cert))


def failure(exc: Any, address: str) -> str:
    """One line for a failed call to ``address`` (a ``grpc.RpcError``): the code, the detail, and what to do."""
    import grpc  # noqa: PLC0415 - see the module docstring

    from agentaudit_client.address import unix_path  # noqa: PLC0415

    code, details = exc.code(), str(exc.details() or "")
    if code == grpc.StatusCode.UNAVAILABLE:
        socket = unix_path(address) if address.startswith(("unix:", "/", "./", "../")) else None
        if socket is not None and not socket.exists():
            return f"{address}: no socket at {socket}: {START_HINT}"
        return f"{address}: cannot connect ({_first_line(details)}): {START_HINT}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{address}: no answer before the timeout: {START_HINT}"
    return f"{address}: {code.name}: {_first_line(details)}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no detail"
