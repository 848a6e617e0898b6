"""Configuration loading: the DESIGN §6 block as written, precedence, and precise errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import config
from gateway.errors import ConfigError

DESIGN_BLOCK = """\
audit:
  sink: append_only
  retention_days: 180
  redact_fields: ["email", "phone", "card_number"]
  hash_args: true
  sign_events: true
"""


def test_design_audit_block_is_accepted_as_written(tmp_path: Path) -> None:
    path = tmp_path / "agentaudit.yaml"
    path.write_text(DESIGN_BLOCK)
    cfg = config.load(path)
    assert cfg.audit.redact_fields == ("email", "phone", "card_number")
    assert cfg.audit.hash_args is True
    assert cfg.audit.retention_days == 180
    assert cfg.journal.path == tmp_path / "journal.db"  # relative defaults resolve against the file


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(DESIGN_BLOCK + "server:\n  listen: ['127.0.0.1:1000']\n")
    env = {"AGENTAUDIT_AUDIT_HASH_ARGS": "false", "AGENTAUDIT_SERVER_LISTEN": "127.0.0.1:2000,unix:///tmp/x.sock"}
    cfg = config.load(path, env=env)
    assert cfg.audit.hash_args is False
    assert cfg.server.listen == ("127.0.0.1:2000", "unix:///tmp/x.sock")
    cfg = config.load(path, env=env, listen=["127.0.0.1:3000"])
    assert cfg.server.listen == ("127.0.0.1:3000",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("audit:\n  sink: kafka\n", "audit.sink", id="unsupported-sink"),
        pytest.param("audit:\n  sign_events: false\n", "audit.sign_events", id="unsigned"),
        pytest.param("audit:\n  hash_args: maybe\n", "audit.hash_args", id="bad-bool"),
        pytest.param("audit:\n  retention_days: x\n", "audit.retention_days", id="bad-int"),
        pytest.param("audit:\n  colour: red\n", "unknown key(s) colour", id="unknown-key"),
        pytest.param("nonsense: {}\n", "unknown section(s) nonsense", id="unknown-section"),
        pytest.param("server:\n  listen: ['nowhere']\n", "server.listen", id="bad-address"),
        pytest.param("server:\n  max_args_bytes: 0\n", "server.max_args_bytes", id="limit-out-of-range"),
        pytest.param("log:\n  level: loud\n", "log.level", id="bad-level"),
        pytest.param("log:\n  format: xml\n", "log.format", id="bad-log-format"),
        pytest.param("server:\n  unix_socket_mode: '0666'\n", "others must get no access", id="world-socket"),
        pytest.param("server:\n  unix_socket_mode: rw\n", "server.unix_socket_mode", id="bad-socket-mode"),
        pytest.param("health:\n  listen: ['x']\n", "health.listen", id="bad-health-listen"),
        pytest.param("health:\n  retry_start_s: -1\n", "health.retry_start_s", id="bad-retry"),
        pytest.param("metrics:\n  listen: 'unix:///m.sock'\n", "metrics.listen", id="metrics-not-tcp"),
        pytest.param("telemetry:\n  otlp_endpoint: 'http://x'\n", "telemetry.otlp_endpoint", id="bad-otlp"),
        pytest.param("telemetry:\n  sample_ratio: 2\n", "telemetry.sample_ratio", id="bad-ratio"),
        pytest.param("[1, 2]\n", "top level must be a mapping", id="not-a-mapping"),
        pytest.param("audit: [\n", "invalid YAML", id="broken-yaml"),
    ],
)
def test_bad_config_is_rejected_with_the_key_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.load(path)


def test_audit_detectors_are_on_by_default_and_switchable_one_by_one(tmp_path: Path) -> None:
    assert config.load(None).audit.detectors.enabled() == ("email", "phone", "card", "iban", "credentials")
    path = tmp_path / "c.yaml"
    path.write_text("audit:\n  detectors: {phone: false, iban: no}\n")
    assert config.load(path).audit.detectors.enabled() == ("email", "card", "credentials")
    env = {"AGENTAUDIT_AUDIT_DETECTORS": "email,card"}
    assert config.load(path, env=env).audit.detectors.enabled() == ("email", "card")
    assert config.load(None, env={"AGENTAUDIT_AUDIT_DETECTORS": "none"}).audit.detectors.enabled() == ()


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        pytest.param(
            "audit:\n  detectors: {ssn: true}\n", {}, "audit.detectors: unknown detector(s) ssn", id="unknown"
        ),
        pytest.param("audit:\n  detectors: {email: maybe}\n", {}, "audit.detectors.email", id="bad-bool"),
        pytest.param("audit:\n  detectors: [email]\n", {}, "audit.detectors: expected a mapping", id="a-list"),
        pytest.param("", {"AGENTAUDIT_AUDIT_DETECTORS": "email,pin"}, "unknown detector(s) pin", id="env-unknown"),
    ],
)
def test_bad_audit_detectors_are_refused_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(path, env=env)
