"""Configuration loading: the DESIGN §6 block as written, precedence, and precise errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config, devenv
from gateway.errors import ConfigError
from tests.conftest import AGENTAUDIT, ROOT, free_port, run_cli, wait_serving

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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("journal:\n  max_batch: 2001\n", "journal.max_batch: 2001 is outside 1..2000", id="journal-batch"),
        pytest.param("journal:\n  busy_timeout_ms: soon\n", "journal.busy_timeout_ms: expected an integer", id="ms"),
        pytest.param("journal:\n  path: 3\n", "journal.path: expected a path, got 3", id="journal-path"),
        pytest.param("policy:\n  watch_interval_s: 0\n", "policy.watch_interval_s", id="policy-watch"),
        pytest.param("forward:\n  on_rollback: ignore\n", "forward.on_rollback: expected stop or allow", id="fwd"),
        pytest.param("forward:\n  target: nowhere\n", "forward.target", id="forward-target"),
        pytest.param("forward:\n  batch_max_entries: 0\n", "forward.batch_max_entries", id="forward-batch"),
        pytest.param("telemetry:\n  otlp_insecure: perhaps\n", "telemetry.otlp_insecure: expected true", id="tls"),
        pytest.param("server: [1]\n", "server: expected a mapping, got list", id="section-not-a-mapping"),
        pytest.param("operator: [1]\n", "operator: expected a mapping, got list", id="operator-not-a-mapping"),
        pytest.param("operator:\n  colour: red\n", "operator: unknown key(s) colour", id="operator-unknown"),
        pytest.param("operator:\n  listen: ['x']\n", "operator.listen: 'x' is not unix:///path", id="operator-listen"),
        pytest.param(
            "operator:\n  tokens: [{identity: a, roles: [root], sha256: x}]\n",
            "operator.tokens[0].roles",
            id="operator-role",
        ),
        pytest.param(
            "operator:\n  tokens: [{identity: a, roles: [admin], sha256: ABC}]\n",
            "operator.tokens[0].sha256",
            id="operator-digest",
        ),
        pytest.param("alerts:\n  queue_size: many\n", "alerts.queue_size: expected an integer", id="alerts-queue"),
        pytest.param(
            "alerts:\n  webhooks: [{url: 'http://h', format: slack, max_attempts: 101}]\n",
            "alerts.webhooks[0].max_attempts: 101 is outside 1..100",
            id="alerts-attempts",
        ),
        pytest.param(
            "alerts:\n  webhooks: [{url: 'http://h', format: slack, timeout_s: '5'}]\n",
            "alerts.webhooks[0].timeout_s: expected a number",
            id="alerts-quoted-number",
        ),
    ],
)
def test_bad_section_value_is_rejected_naming_the_key_and_what_was_expected(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"AGENTAUDIT_JOURNAL_MAX_BATCH": "abc"}, "AGENTAUDIT_JOURNAL_MAX_BATCH: expected an integer", id="int"
        ),
        pytest.param({"AGENTAUDIT_AUDIT_HASH_ARGS": "maybe"}, "AGENTAUDIT_AUDIT_HASH_ARGS: expected true", id="bool"),
        pytest.param({"AGENTAUDIT_SERVER_MAX_DEPTH": "0"}, "server.max_depth: 0 is outside 1..100", id="range"),
    ],
)
def test_bad_environment_value_is_rejected_naming_the_variable_or_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env=env)
    assert message in str(info.value)


def write_collector(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(f"collector:\n  store: sqlite:///{tmp_path}/c.db\n  witness_key: witness.key\n{extra}")
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            "  max_batch_entries: abc\n", "collector.max_batch_entries: expected an integer, got 'abc'", id="batch-abc"
        ),
        pytest.param("  max_batch_entries: 0\n", "collector.max_batch_entries: 0 is outside 1..", id="batch-zero"),
        pytest.param(
            "  max_batch_entries: 2.5\n", "collector.max_batch_entries: expected an integer", id="batch-float"
        ),
        pytest.param("  max_inflight: true\n", "collector.max_inflight: expected an integer", id="inflight-bool"),
        pytest.param("  max_inflight: -1\n", "collector.max_inflight: -1 is outside 1..", id="inflight-negative"),
        pytest.param("  prune_interval_s: fast\n", "collector.prune_interval_s: expected a number", id="prune"),
        pytest.param("  listen: 7430\n", "collector.listen: expected a list", id="listen-not-a-list"),
        pytest.param("  origins: {a: b}\n", "collector.origins: expected a list", id="origins-not-a-list"),
        pytest.param("  origins: [{origin: a, keys: [1]}]\n", "collector.origins[0]", id="origin-key-not-a-path"),
        pytest.param("  search_tokens: [abc]\n", "collector.search_tokens", id="search-token"),
        pytest.param("  metrics_listen: 'unix:///m'\n", "collector.metrics_listen: expected HOST:PORT", id="metrics"),
        pytest.param("  colour: red\n", "collector: unknown key(s) colour", id="unknown-key"),
        pytest.param("  console_listen: 7421\n", "collector.console_listen: expected a list", id="console-listen"),
        pytest.param(
            "  console_listen: ['127.0.0.1:7421']\n  console: {trusted_header_listen: ['127.0.0.1:9']}\n",
            "collector.console.trusted_header_listen: 127.0.0.1:9 is not in collector.console_listen",
            id="trusted-not-served",
        ),
        pytest.param(
            "  console: {header_roles: {alice: [root]}}\n", "collector.console.header_roles.alice", id="header-role"
        ),
        pytest.param("  console: {session_ttl_s: 0}\n", "collector.console.session_ttl_s", id="session-ttl"),
        pytest.param("  console: {colour: red}\n", "collector.console: unknown key(s) colour", id="console-key"),
    ],
)
def test_bad_collector_value_is_rejected_naming_the_key_and_what_was_expected(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.load_collector_config(write_collector(tmp_path, extra))
    assert message in str(info.value)


def test_the_console_is_on_by_default_and_off_with_an_empty_list(tmp_path: Path) -> None:
    default = config.load_collector_config(write_collector(tmp_path, ""))
    assert default.console_listen is None  # 127.0.0.1:7421 when the console extra is installed
    off = config.load_collector_config(write_collector(tmp_path, "  console_listen: []\n"))
    assert off.console_listen == ()
    text = (
        "  console_listen: ['127.0.0.1:7421', '127.0.0.1:7422']\n"
        "  console: {trusted_header_listen: ['127.0.0.1:7422'], header_roles: {lead@example.com: [approver]},"
        " session_ttl_s: 600}\n"
    )
    cfg = config.load_collector_config(write_collector(tmp_path, text))
    assert cfg.console_listen == ("127.0.0.1:7421", "127.0.0.1:7422")
    assert cfg.console.trusted_header_listen == ("127.0.0.1:7422",)
    assert cfg.console.header_roles == (("lead@example.com", ("approver",)),)
    assert cfg.console.session_ttl_s == 600


def test_collector_store_comes_from_the_environment_when_set(tmp_path: Path) -> None:
    env = {"AGENTAUDIT_COLLECTOR_STORE": "postgresql://agentaudit@db/audit"}
    cfg = config.load_collector_config(write_collector(tmp_path, ""), env)
    assert cfg.store == "postgresql://agentaudit@db/audit"
    assert cfg.witness_key == tmp_path / "witness.key"


def test_journal_batch_limit_is_the_one_the_schema_builds_inserts_to() -> None:
    from gateway.journal import schema  # noqa: PLC0415

    assert schema.MAX_ROWS_PER_INSERT == config.MAX_ROWS_PER_INSERT
    assert config.load(env={"AGENTAUDIT_JOURNAL_MAX_BATCH": str(config.MAX_ROWS_PER_INSERT)}).journal.max_batch == 2000


def test_configuration_loads_no_component_it_configures() -> None:
    # The journal imports config for one limit; loading config must not drag in the alert dispatcher, the policy
    # model or an HTTP client (the offline verifier reads a file and nothing else).
    code = (
        "import sys, gateway.config, gateway.journal.verify; "
        "print(sorted(m for m in ('gateway.alerts', 'gateway.policy', 'gateway.rpc', 'httpx', 'grpc') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


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


_TLS = "  tls: {cert: c.pem, key: k.pem, client_ca: ca.pem}\n"


@pytest.mark.parametrize(
    ("operator", "refused"),
    [
        pytest.param("  listen: ['0.0.0.0:7421']\n", "0.0.0.0:7421", id="any-ipv4"),
        pytest.param("  listen: ['[::]:7421']\n", "[::]:7421", id="any-ipv6"),
        pytest.param("  listen: ['10.1.2.3:7421']\n", "10.1.2.3:7421", id="pod-ip"),
        pytest.param("  listen: ['ops.example:7421']\n", "ops.example:7421", id="host-name"),
        pytest.param("  listen: ['127.0.0.1:1', '0.0.0.0:7421']\n", "0.0.0.0:7421", id="one-of-several"),
        pytest.param("  listen: ['0.0.0.0:7421']\n  allow_insecure: false\n", "0.0.0.0:7421", id="explicit-false"),
        pytest.param("  listen: ['127.0.0.1:7421']\n", None, id="loopback-v4"),
        pytest.param("  listen: ['127.0.0.2:7421']\n", None, id="loopback-v4-range"),
        pytest.param("  listen: ['[::1]:7421']\n", None, id="loopback-v6"),
        pytest.param("  listen: ['localhost:7421']\n", None, id="localhost"),
        pytest.param("  listen: ['unix:///run/op.sock']\n", None, id="unix-socket"),
        pytest.param("  listen: ['0.0.0.0:7421']\n" + _TLS, None, id="with-tls"),
        pytest.param("  listen: ['0.0.0.0:7421']\n  allow_insecure: true\n", None, id="allowed-explicitly"),
    ],
)
def test_operator_listener_off_loopback_needs_tls_or_allow_insecure(
    tmp_path: Path, operator: str, refused: str | None
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("operator:\n" + operator)
    if refused is None:
        assert config.load(path).operator.listen
        return
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"operator.listen: {refused} is not a loopback address and operator.tls is not set")
    assert "operator.allow_insecure: true" in message


def test_operator_listen_flag_off_loopback_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("operator.listen: 0.0.0.0:7421 is not a loopback address")):
        config.load(None, operator_listen=["0.0.0.0:7421"])


def test_operator_allow_insecure_must_be_a_bool(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("operator:\n  allow_insecure: perhaps\n")
    with pytest.raises(ConfigError, match=re.escape("operator.allow_insecure: expected true or false")):
        config.load(path)


def test_serve_refuses_to_start_an_operator_listener_off_loopback_without_tls(tmp_path: Path) -> None:
    devenv.prepare(tmp_path, None, {})
    address = f"0.0.0.0:{free_port()}"

    result = run_cli("serve", "--config", str(tmp_path / devenv.CONFIG_FILE), "--operator-listen", address)

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"operator.listen: {address} is not a loopback address and operator.tls is not set" in result.stderr


def test_a_gateway_listener_off_loopback_starts_with_a_warning(tmp_path: Path) -> None:
    address = f"0.0.0.0:{free_port()}"
    log_path = tmp_path / "sidecar.log"
    unix = [f"unix://{tmp_path / 'g.sock'}", f"unix://{tmp_path / 'op.sock'}"]
    with open(log_path, "wb") as log:
        argv = [*AGENTAUDIT, "dev", "--dir", str(tmp_path), "--listen", unix[0], "--listen", address]
        proc = subprocess.Popen(
            [*argv, "--operator-listen", unix[1]],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "AGENTAUDIT_FORWARD_TARGET": ""},
        )
    try:
        wait_serving(unix[0], proc=proc)
    finally:
        proc.terminate()
        proc.wait(15)
    warnings = [line for line in log_path.read_text().splitlines() if "is not a loopback address" in line]
    assert len(warnings) == 1, log_path.read_text()
    assert "WARNING" in warnings[0].upper() and f"server.listen {address}" in warnings[0]
