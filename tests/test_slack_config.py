"""collector.slack: precise errors for every bad key and value, and secrets read only from 0600 files, never echoed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.collector import load_collector_config
from gateway.config.slack import DEFAULT_API_URL, parse_slack_config, read_secret
from gateway.errors import ConfigError

USERS = {"U0ALICE": {"identity": "alice", "roles": ["approver"]}}


def minimal(**kw: Any) -> dict[str, Any]:
    return {"signing_secret_file": "signing.secret", "bot_token_file": "bot.token", "channel": "C0APPROVALS",
            "users": USERS, **kw}  # fmt: skip


def test_a_minimal_section_parses_with_defaults(tmp_path: Path) -> None:
    config = parse_slack_config(minimal(), tmp_path)
    assert config is not None
    assert config.signing_secret_file == tmp_path / "signing.secret"
    assert config.bot_token_file == tmp_path / "bot.token" and config.webhook_url_file is None
    assert (config.channel, config.console_url, config.api_url) == ("C0APPROVALS", "", DEFAULT_API_URL)
    alice = config.user("U0ALICE")
    assert alice is not None and (alice.identity, alice.roles) == ("alice", ("approver",))
    assert config.user("U0BOB") is None


def test_urls_are_normalised(tmp_path: Path) -> None:
    config = parse_slack_config(
        minimal(console_url="https://console.example.com/", api_url="http://127.0.0.1:9/api"), tmp_path
    )
    assert config is not None
    assert (config.console_url, config.api_url) == ("https://console.example.com", "http://127.0.0.1:9/api/")


def test_a_webhook_alone_needs_no_channel_and_roles_default_to_approver(tmp_path: Path) -> None:
    raw = {"signing_secret_file": "s", "webhook_url_file": "w", "users": {"W0ENTERPRISE": {"identity": "erin"}}}
    config = parse_slack_config(raw, tmp_path)
    assert config is not None and config.bot_token_file is None and config.channel == ""
    assert config.users[0][1].roles == ("approver",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            {"bot_token": "xoxb-1"}, "collector.slack: unknown key(s) bot_token (known: api_url, ", id="unknown"
        ),
        pytest.param({"signing_secret_file": None}, "collector.slack.signing_secret_file: required", id="no-secret"),
        pytest.param(
            {"bot_token_file": None},
            "collector.slack: set bot_token_file (recommended) or webhook_url_file",
            id="no-token",
        ),
        pytest.param({"channel": ""}, "collector.slack.channel: required with bot_token_file", id="no-channel"),
        pytest.param({"channel": "general chat"}, "collector.slack.channel: expected a channel id", id="bad-channel"),
        pytest.param({"console_url": "ftp://x"}, "collector.slack.console_url: expected an http(s) URL", id="console"),
        pytest.param({"console_url": "https://c/?a=1"}, "without query or fragment", id="console-query"),
        pytest.param({"api_url": 7}, "collector.slack.api_url: expected an http(s) URL", id="api-url"),
        pytest.param({"users": {}}, "collector.slack.users: map at least one Slack user id", id="no-users"),
        pytest.param({"users": None}, "collector.slack.users: expected a mapping", id="users-missing"),
        pytest.param({"users": {"alice": {"identity": "alice"}}}, "'alice' is not a Slack user id", id="user-id"),
        pytest.param(
            {"users": {"U0A": {"identity": "a", "role": "x"}}},
            "collector.slack.users.U0A: unknown key(s) role",
            id="user-key",
        ),
        pytest.param(
            {"users": {"U0A": {"identity": ""}}}, "collector.slack.users.U0A.identity: expected", id="identity"
        ),
        pytest.param(
            {"users": {"U0A": {"identity": "a", "roles": ["root"]}}},
            "collector.slack.users.U0A.roles: expected a list of approver, admin, auditor",
            id="role",
        ),
        pytest.param(
            {"users": {"U0A": {"identity": "a"}, "U0B": {"identity": "A"}}},
            "U0A and U0B both map to identity 'A'",
            id="one-identity-two-accounts",
        ),
        pytest.param({"bot_token_file": ""}, "collector.slack.bot_token_file: expected the path of a file", id="path"),
    ],
)
def test_a_bad_section_is_refused_naming_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    raw = {k: v for k, v in {**minimal(), **change}.items() if v is not None or k == "users"}
    with pytest.raises(ConfigError) as caught:
        parse_slack_config(raw, tmp_path)
    assert message in str(caught.value)


def test_the_collector_file_takes_a_slack_section(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text(
        yaml.safe_dump({"collector": {"store": "sqlite:///c.db", "witness_key": "w.key", "slack": minimal()}})
    )
    config = load_collector_config(path)
    assert config.slack is not None and config.slack.bot_token_file == tmp_path / "bot.token"
    path.write_text(yaml.safe_dump({"collector": {"store": "sqlite:///c.db", "witness_key": "w.key"}}))
    assert load_collector_config(path).slack is None


def test_a_secret_readable_by_others_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "bot.token"
    path.write_text("xoxb-very-secret\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        read_secret("collector.slack.bot_token_file", path)
    assert "accessible by group or others (mode 644); run chmod 600" in str(caught.value)
    assert "xoxb-very-secret" not in str(caught.value)
    path.chmod(0o600)
    assert read_secret("collector.slack.bot_token_file", path) == "xoxb-very-secret"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"", "must hold one secret on one line", id="empty"),
        pytest.param(b"two\nlines\n", "must hold one secret on one line", id="two-lines"),
        pytest.param(b"\xff\xfe", "is not ASCII text", id="binary"),
    ],
)
def test_a_malformed_secret_file_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "s"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message):
        read_secret("k", path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret("k", tmp_path / "missing")
