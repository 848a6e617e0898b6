"""The ``control:`` section: defaults that follow other keys, and every mistake refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config
from gateway.errors import ConfigError
from gateway.signing import Ed25519Signer

KEY = Ed25519Signer("collector.test/control", bytes([3]) * 32).verifier.encode()


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.Config:
    path = tmp_path / "agentaudit.yaml"
    path.write_text(text)
    return config.load(path, env=env or {})


def test_control_is_off_by_default_and_on_with_a_pinned_key(tmp_path: Path) -> None:
    assert not load(tmp_path, "{}").control.enabled
    cfg = load(tmp_path, f"forward: {{target: 'unix:///run/c.sock'}}\ncontrol: {{control_key: '{KEY}'}}\n")
    assert cfg.control.enabled and cfg.control.collector == "unix:///run/c.sock"  # defaults to forward.target
    assert cfg.control.control_key == KEY and cfg.control.connect_wait_s == 5.0 and cfg.control.max_staleness_s == 0


def test_a_control_key_path_resolves_against_the_file_and_the_environment_overrides(tmp_path: Path) -> None:
    cfg = load(tmp_path, "control: {collector: '127.0.0.1:7430', control_key: keys/control.pub}\n")
    assert cfg.control.control_key == str(tmp_path / "keys" / "control.pub")
    env = {"AGENTAUDIT_CONTROL_MAX_STALENESS_S": "30", "AGENTAUDIT_CONTROL_ENABLED": "false"}
    cfg = load(tmp_path, "control: {collector: '127.0.0.1:7430', control_key: keys/control.pub}\n", env)
    assert not cfg.control.enabled and cfg.control.max_staleness_s == 30


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("control: {enabled: true, colector: x}", "control: unknown key(s) colector", id="unknown-key"),
        pytest.param(
            "control: {enabled: true, collector: '127.0.0.1:7430'}", "control.control_key: required", id="no-key"
        ),
        pytest.param("control: {enabled: true}", "control.collector: required", id="no-collector"),
        pytest.param(
            f"control: {{collector: 'nowhere', control_key: '{KEY}'}}", "control.collector: 'nowhere'", id="bad-addr"
        ),
        pytest.param(
            f"control: {{collector: '10.1.2.3:7430', control_key: '{KEY}'}}",
            "control.collector: 10.1.2.3:7430 is not a loopback address and forward.tls is not set",
            id="plaintext-off-loopback",
        ),
        pytest.param(
            "control: {enabled: true, collector: embedded}", "embedded needs forward.target: embedded", id="embedded"
        ),
        pytest.param(
            f"forward: {{target: embedded}}\ncontrol: {{collector: embedded, control_key: '{KEY}'}}",
            "control.control_key: the embedded collector's key is pinned automatically",
            id="embedded-with-key",
        ),
        pytest.param("control: {max_staleness_s: -1}", "control.max_staleness_s", id="staleness"),
        pytest.param("control: {connect_wait_s: 601}", "control.connect_wait_s", id="connect-wait"),
        pytest.param("control: {backoff_initial_s: 20}", "control.backoff_initial_s", id="backoff"),
        pytest.param("control: {keepalive_s: 1}", "control.keepalive_s: must be between 5", id="keepalive-fast"),
        pytest.param("control: {keepalive_s: 7200}", "control.keepalive_s", id="keepalive-slow"),
        pytest.param("audit: {signing: per_batch}", "audit.signing: expected per_commit or per_entry", id="signing"),
        pytest.param("control: {connect_wait_s: soon}", "control.connect_wait_s: expected a number", id="type"),
    ],
)
def test_a_bad_control_section_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(tmp_path, text + "\n")


def test_tls_or_allow_insecure_lets_a_remote_collector_through(tmp_path: Path) -> None:
    text = f"control: {{collector: '10.1.2.3:7430', control_key: '{KEY}'}}\nforward: {{allow_insecure: true}}\n"
    assert load(tmp_path, text).control.collector == "10.1.2.3:7430"
    text = f"control: {{collector: '10.1.2.3:7430', control_key: '{KEY}'}}\nforward: {{tls: {{}}}}\n"
    assert load(tmp_path, text).control.enabled


def test_with_the_embedded_collector_control_is_on_and_needs_no_key(tmp_path: Path) -> None:
    cfg = load(tmp_path, "forward: {target: embedded}\n")
    assert cfg.control.enabled and cfg.control.collector == "embedded" and not cfg.control.control_key
    assert not load(tmp_path, "forward: {target: embedded}\ncontrol: {enabled: false}\n").control.enabled
