"""Helpers for operator-API tests: tokens, role-specific configs, stubs, a throwaway CA for mutual TLS."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

import grpc
import yaml

from agentaudit.v1 import operator_pb2_grpc
from gateway import devenv

TOKENS = {
    "alice": ("alice-token-0123456789", ["approver"]),
    "bob": ("bob-token-0123456789", ["auditor"]),
    "root": ("root-token-0123456789", ["admin"]),
}


def prepare_dir(directory: Path, *, extra: dict[str, Any] | None = None, policy: str | None = None) -> None:
    """Creates a dev directory whose config also has alice (approver), bob (auditor) and root (admin) tokens."""
    devenv.prepare(directory, None, {})
    config_path = directory / devenv.CONFIG_FILE
    config = yaml.safe_load(config_path.read_text())
    config["operator"]["tokens"] += [
        {"identity": name, "roles": roles, "sha256": hashlib.sha256(token.encode()).hexdigest()}
        for name, (token, roles) in TOKENS.items()
    ]
    config.update(extra or {})
    config_path.write_text(yaml.safe_dump(config))
    if policy is not None:
        (directory / "policy.yaml").write_text(policy)


def operator_stub(target: str) -> tuple[grpc.Channel, operator_pb2_grpc.OperatorServiceStub]:
    channel = grpc.insecure_channel(target)
    return channel, operator_pb2_grpc.OperatorServiceStub(channel)


def auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def make_ca(directory: Path, server_names: list[str], client_cn: str) -> dict[str, Path]:
    """Writes a CA, a server certificate for ``server_names`` and a client certificate with CN ``client_cn``."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key: Any, issuer_key: Any, issuer: str, *, ca: bool, sans: list[str]) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            entries: list[x509.GeneralName] = [
                x509.IPAddress(__import__("ipaddress").ip_address(s)) if s[0].isdigit() else x509.DNSName(s)
                for s in sans
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("test-ca", ca_key, ca_key, "test-ca", ca=True, sans=[])
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = cert("localhost", server_key, ca_key, "test-ca", ca=False, sans=server_names)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = cert(client_cn, client_key, ca_key, "test-ca", ca=False, sans=[])
    paths = {}
    for label, obj in (("ca", ca_cert), ("server", server_cert), ("client", client_cert)):
        paths[f"{label}_cert"] = directory / f"{label}.crt"
        paths[f"{label}_cert"].write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    for label, key in (("server", server_key), ("client", client_key)):
        paths[f"{label}_key"] = directory / f"{label}.key"
        paths[f"{label}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        paths[f"{label}_key"].chmod(0o600)
    return paths


def install_collector_tls(scratch: Path, keys: Path, ca_dir: Path, uid: int, gid: int) -> None:
    """The collector pod's TLS files as install-keys leaves them (``keys``/tls.crt and tls.key, 0600, owned by
    ``uid``) and the sidecar's CA as its ConfigMap mounts it (``ca_dir``/collector-ca.crt). The certificate names
    the collector Service and 127.0.0.1, where a test dials it."""
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    pki = make_ca(scratch, ["agentaudit-collector", "127.0.0.1"], "unused-client")
    for source, name in ((pki["server_cert"], "tls.crt"), (pki["server_key"], "tls.key")):
        shutil.copy(source, keys / name)
        os.chown(keys / name, uid, gid)
        (keys / name).chmod(0o600)
    ca_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(pki["ca_cert"], ca_dir / "collector-ca.crt")
