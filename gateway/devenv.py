"""``agentaudit dev``: a zero-configuration local environment in one directory.

Creates (or reuses) ``DIR/signing.key`` (0600), ``DIR/signing.pub``, ``DIR/hmac.key`` (0600),
``DIR/policy.yaml`` (the example policy) with ``DIR/policy_tests.yaml`` (its test cases) and
``DIR/agentaudit.yaml`` (a config documenting every default),
and returns a :class:`Config` whose relative paths point into ``DIR``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from pathlib import Path

from gateway import config as config_mod
from gateway.config import DEFAULT_TCP_PORT, Config
from gateway.errors import ConfigError
from gateway.policy import EXAMPLE_POLICY, EXAMPLE_POLICY_TESTS
from gateway.redaction import create_hmac_key
from gateway.signing import Ed25519Signer, read_secret_file, write_secret_file

CONFIG_FILE = "agentaudit.yaml"
SOCKET_FILE = "gateway.sock"
OPERATOR_SOCKET_FILE = "operator.sock"
OPERATOR_TOKEN_FILE = "operator.token"  # noqa: S105 - a file name, not a secret
DEV_OPERATOR = "dev-operator"

EXAMPLE_CONFIG = f"""\
# agentaudit configuration (created by `agentaudit dev`; see docs/configuration.md).
# Relative paths resolve against this file's directory.
server:
  listen: ["unix://{SOCKET_FILE}", "127.0.0.1:{DEFAULT_TCP_PORT}"]
  max_args_bytes: 65536
  max_depth: 32
journal:
  path: journal.db
  signing_key: signing.key
audit:
  sink: append_only
  retention_days: 180
  redact_fields: ["email", "phone", "card_number"]
  hash_args: true
  sign_events: true
  hmac_key: hmac.key
policy:
  path: policy.yaml
  watch_interval_s: 1.0
log:
  level: info
# The operator API (approvals, kill switches, policy) listens apart from the agents. Tokens are stored only as
# SHA-256 digests; the dev token itself is in operator.token (mode 0600).
operator:
  listen: ["unix://{OPERATOR_SOCKET_FILE}"]
  tokens:
    - identity: {DEV_OPERATOR}
      roles: [admin, approver, auditor]
      sha256: "{{token_sha256}}"
# Forwarding to the collector; "embedded" runs one in-process with a SQLite store (collector.db) and its own
# witness key (witness.key). In production point it at the central collector: target: collector.internal:7430
forward:
  target: embedded
# The fleet control channel (docs/fleet.md): with the embedded collector it is on and pins that collector's key,
# so kill switches and approvals answered on the collector reach this sidecar. For a central collector:
# control: {{collector: collector.internal:7430, control_key: /etc/agentaudit/collector-control.pub}}
# alerts:                         # docs/alerts.md
#   webhooks:
#     - url: https://hooks.slack.com/services/...
#       format: slack
"""


def console_listen(given: list[str] | None) -> tuple[str, ...] | None:
    """``--console-listen``: the addresses given, ``off`` (or no console extra) ``()``, else None: the default
    127.0.0.1:7421, where a taken port is only a warning.

    Raises:
        ConfigError: an address that is not HOST:PORT, or the console extra is missing for a given address.
    """
    from gateway.config.collector import console_available  # noqa: PLC0415
    from gateway.config.values import HOST_PORT_RE  # noqa: PLC0415

    if given and given != ["off"]:
        bad = [a for a in given if not HOST_PORT_RE.match(a)]
        if bad:
            raise ConfigError(f"--console-listen: expected HOST:PORT, got {bad[0]!r}")
        if not console_available():
            raise ConfigError("--console-listen needs the console extra: pip install 'agentaudit[console]'")
        return tuple(given)
    if given == ["off"] or not console_available():
        return ()
    return None


def default_origin() -> str:
    """A new dev journal's origin (also its signing key's name): unique, since a collector tells journals apart
    by origin and several dev sidecars may run on one host."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.") or "localhost"
    return f"agentaudit-dev/{host}/{secrets.token_hex(4)}"


def ensure_keys(directory: Path, origin: str) -> list[str]:
    """Creates the signing key pair and the HMAC key in ``directory`` if missing; returns what it created."""
    created = []
    key_path, pub_path, hmac_path = (
        directory / "signing.key",
        directory / "signing.pub",
        directory / "hmac.key",
    )
    if not key_path.exists():
        signer = Ed25519Signer.generate(origin)
        write_secret_file(key_path, signer.encode_private() + "\n")
        pub_path.write_text(signer.verifier.encode() + "\n")
        created += [key_path.name, pub_path.name]
    if not hmac_path.exists():
        create_hmac_key(hmac_path)
        created.append(hmac_path.name)
    witness_path = directory / "witness.key"
    if not witness_path.exists():
        witness = Ed25519Signer.generate(f"agentaudit-dev-collector/{origin.split('/', 1)[-1]}")
        write_secret_file(witness_path, witness.encode_private() + "\n")
        (directory / "witness.pub").write_text(witness.verifier.encode() + "\n")
        created += ["witness.key", "witness.pub"]
    return created


def prepare(
    directory: Path, listen: list[str] | None, env: dict[str, str], operator_listen: list[str] | None = None
) -> tuple[Config, list[str]]:
    """Creates what is missing in ``directory`` and loads its configuration."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    created = ensure_keys(directory, default_origin())
    token_path = directory / OPERATOR_TOKEN_FILE
    if not token_path.exists():
        write_secret_file(token_path, secrets.token_urlsafe(32) + "\n")
        created.append(OPERATOR_TOKEN_FILE)
    token_sha256 = hashlib.sha256(read_secret_file(token_path).strip()).hexdigest()
    examples = (
        (CONFIG_FILE, EXAMPLE_CONFIG.replace("{token_sha256}", token_sha256)),
        ("policy.yaml", EXAMPLE_POLICY),
        ("policy_tests.yaml", EXAMPLE_POLICY_TESTS),
    )
    for name, text in examples:
        path = directory / name
        if not path.exists():
            path.write_text(text)
            created.append(name)
    cfg = config_mod.load(
        directory / CONFIG_FILE, env=env, listen=listen, base_dir=directory, operator_listen=operator_listen
    )
    return cfg, created
