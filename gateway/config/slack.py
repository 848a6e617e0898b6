"""``collector.slack``: approvals answered from Slack (docs/slack.md).

Secrets are never in the file itself: the bot token, the incoming-webhook URL and the signing secret are each read
from a file of their own, which must be mode 0600 (:func:`read_secret`, called when the Slack bridge starts, not
at parse time, so a configuration can be checked on a machine without the secrets). No value of a secret is ever
put in an error message or a log line.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.values import field_names, mapping, refuse_unknown, resolve_path
from gateway.errors import ConfigError

DEFAULT_API_URL = "https://slack.com/api/"
SLACK_ROLES = ("approver", "admin", "auditor")  # the operator roles (gateway.config.sidecar.OPERATOR_ROLES)
USER_ID_RE = re.compile(r"[UW][A-Z0-9]{2,20}")
"""A Slack user id (``U…``, or ``W…`` on Enterprise Grid); use with ``fullmatch``."""
CHANNEL_RE = re.compile(r"[#A-Za-z0-9._\-]{1,80}")
"""A channel id (``C…``, ``G…``) or name (``#approvals``); use with ``fullmatch``."""
MAX_SECRET_BYTES = 4096


@dataclass(frozen=True)
class SlackUserConfig:
    """Who a Slack user is when they press a button: the approver identity the fleet records, and its roles."""

    identity: str
    roles: tuple[str, ...] = ("approver",)


@dataclass(frozen=True)
class SlackConfig:
    """``collector.slack``: where approval messages are posted and who may answer them from Slack."""

    signing_secret_file: Path  # Slack's signing secret (mode 0600): verifies every interaction request
    bot_token_file: Path | None = None  # xoxb-… (mode 0600): chat.postMessage, chat.update, views.open
    webhook_url_file: Path | None = None  # an incoming webhook's URL (mode 0600): posting only
    channel: str = ""  # where the bot posts (required with bot_token_file)
    console_url: str = ""  # base URL of the console; messages link to {console_url}/approvals/<id>
    users: tuple[tuple[str, SlackUserConfig], ...] = ()  # Slack user id → approver identity and roles
    api_url: str = DEFAULT_API_URL  # Slack's Web API; tests point it at a local stand-in

    def user(self, slack_user_id: str) -> SlackUserConfig | None:
        """The allow-listed identity of a Slack user id (None: not allowed)."""
        return dict(self.users).get(slack_user_id)


_KEYS = field_names(SlackConfig)


def _url(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected an http(s) URL")
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{key}: expected an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{key}: expected an http(s) URL without query or fragment, got {value!r}")
    return value


def _path(key: str, value: Any, base: Path) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected the path of a file (mode 0600)")
    return resolve_path(value, base)


def _users(raw: Any) -> tuple[tuple[str, SlackUserConfig], ...]:
    users = mapping("collector.slack.users", raw)
    if not users:
        raise ConfigError("collector.slack.users: map at least one Slack user id to {identity, roles}")
    out = []
    for user_id, raw_spec in users.items():
        where = f"collector.slack.users.{user_id}"
        if not isinstance(user_id, str) or not USER_ID_RE.fullmatch(user_id):
            raise ConfigError(f"collector.slack.users: {user_id!r} is not a Slack user id (U… or W…, upper case)")
        spec = mapping(where, raw_spec)
        refuse_unknown(where, spec, field_names(SlackUserConfig))
        identity = spec.get("identity")
        if not isinstance(identity, str) or not identity.strip() or not identity.isprintable() or len(identity) > 256:
            raise ConfigError(f"{where}.identity: expected the approver's identity (printable text, 1..256)")
        roles = spec.get("roles", ["approver"])
        if not isinstance(roles, list) or not roles or any(r not in SLACK_ROLES for r in roles):
            raise ConfigError(f"{where}.roles: expected a list of {', '.join(SLACK_ROLES)}, got {roles!r}")
        out.append((user_id, SlackUserConfig(identity, tuple(roles))))
    identities: dict[str, str] = {}
    for user_id, user in out:
        # Two Slack accounts answering as one identity would make four-eyes count one person twice... or refuse
        # the second as "already voted" with no way to tell who pressed; one identity, one Slack account.
        key = user.identity.casefold()
        if key in identities:
            raise ConfigError(
                f"collector.slack.users: {identities[key]} and {user_id} both map to identity {user.identity!r}"
            )
        identities[key] = user_id
    return tuple(out)


def parse_slack_config(raw: Any, base: Path) -> SlackConfig | None:
    """Validates ``collector.slack`` (None or absent: Slack is off); relative paths resolve against ``base``.

    Raises:
        ConfigError: naming the key, e.g. ``collector.slack.channel: required with bot_token_file``.
    """
    if raw is None:
        return None
    raw = mapping("collector.slack", raw)
    refuse_unknown("collector.slack", raw, _KEYS)
    signing = _path("collector.slack.signing_secret_file", raw.get("signing_secret_file"), base)
    if signing is None:
        raise ConfigError("collector.slack.signing_secret_file: required (verifies every button press)")
    bot = _path("collector.slack.bot_token_file", raw.get("bot_token_file"), base)
    webhook = _path("collector.slack.webhook_url_file", raw.get("webhook_url_file"), base)
    if bot is None and webhook is None:
        raise ConfigError("collector.slack: set bot_token_file (recommended) or webhook_url_file, or both")
    channel = raw.get("channel", "")
    if not isinstance(channel, str) or (channel and not CHANNEL_RE.fullmatch(channel)):
        raise ConfigError(f"collector.slack.channel: expected a channel id (C…) or #name, got {channel!r}")
    if bot is not None and not channel:
        raise ConfigError("collector.slack.channel: required with bot_token_file (where the bot posts)")
    console_url = raw.get("console_url", "")
    if console_url != "":
        console_url = _url("collector.slack.console_url", console_url).rstrip("/")
    api_url = _url("collector.slack.api_url", raw.get("api_url", DEFAULT_API_URL))
    if not api_url.endswith("/"):
        api_url += "/"
    return SlackConfig(
        signing_secret_file=signing,
        bot_token_file=bot,
        webhook_url_file=webhook,
        channel=channel,
        console_url=console_url,
        users=_users(raw.get("users")),
        api_url=api_url,
    )


def read_secret(key: str, path: Path) -> str:
    """The one-line secret in ``path``, which only its owner may read (mode 0600 or stricter).

    Raises:
        ConfigError: naming ``key`` and the path, never the content.
    """
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{key}: {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run chmod 600 {path}"
            )
        if st.st_size > MAX_SECRET_BYTES:
            raise ConfigError(f"{key}: {path} is larger than {MAX_SECRET_BYTES} bytes: not a Slack secret")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    try:
        secret = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not ASCII text") from None
    if not secret or any(c in secret for c in "\r\n\t ") or not secret.isprintable():
        raise ConfigError(f"{key}: {path} must hold one secret on one line")
    return secret
