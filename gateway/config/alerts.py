"""The ``alerts:`` section: which webhooks hear about which decisions, and how delivery is tuned.

Set in the file only (no environment overrides: a webhook URL or header is a secret and a structure). The
dispatcher that uses it is :mod:`gateway.alerts`; the reference is docs/alerts.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.config.values import field_names, integer, mapping, number, refuse_unknown, strings
from gateway.errors import ConfigError

ALERT_DECISIONS = ("stop", "approval_required")
"""The decisions that can raise an alert (``allow`` never does); the values of ``Verdict.STOP`` and
``Verdict.APPROVAL_REQUIRED``, spelled out because configuration sits below the policy model."""
FORMAT_SLACK = "slack"
FORMAT_CLOUDEVENTS = "cloudevents"
FORMATS = (FORMAT_SLACK, FORMAT_CLOUDEVENTS)

# Headers the payload format decides; letting configuration override them would corrupt the request.
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding"})
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token


@dataclass(frozen=True)
class WebhookConfig:
    """One receiver: where, in which format, for which decisions, and how hard to try."""

    # Not in repr: a Slack URL's path and custom headers (Authorization) are secrets.
    url: str = field(repr=False)
    format: str
    decisions: tuple[str, ...] = ALERT_DECISIONS
    reasons: tuple[str, ...] = ("*",)
    layers: tuple[str, ...] = ("*",)
    tenants: tuple[str, ...] = ("*",)
    timeout_s: float = 5.0
    max_attempts: int = 5
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def display_url(self) -> str:
        """``scheme://host[:port]`` only: safe to log (no path, query, user info)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        return f"{parts.scheme}://{host}{port}"


@dataclass(frozen=True)
class AlertsConfig:
    """The ``alerts:`` section: webhooks and delivery tuning shared by all of them."""

    webhooks: tuple[WebhookConfig, ...] = ()
    queue_size: int = 1000
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    approve_command: str = "agentaudit approve {approval_id}"
    # The web console's base URL (docs/console.md): alerts link to its approval, run or fleet page; "": no link.
    console_url: str = ""


def _url(key: str, value: Any) -> str:
    # The value is never echoed in an error: a Slack URL's path is its secret.
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be an http(s) URL")
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"{key}: must be an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: must be an http(s) URL")
    # Imported here, not at the top: the journal imports this package for one limit, and the offline verifier
    # should not load an HTTP client to read a file.
    import httpx  # noqa: PLC0415

    try:
        httpx.URL(value)  # refuse at start what the client would refuse at the first alert
    except httpx.InvalidURL:
        raise ConfigError(f"{key}: must be an http(s) URL") from None
    return value


def _headers(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    pairs = []
    for name, header_value in mapping(key, value).items():
        if not isinstance(name, str) or not _HEADER_NAME_RE.match(name):
            raise ConfigError(f"{key}: {name!r} is not a valid header name")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"{key}.{name}: set by the payload format, cannot be configured")
        if not isinstance(header_value, str) or any(c in header_value for c in "\r\n\0"):
            # The value is not echoed: it is typically a credential.
            raise ConfigError(f"{key}.{name}: expected a single-line string")
        pairs.append((name, header_value))
    return tuple(pairs)


def _webhook(key: str, raw: Any) -> WebhookConfig:
    raw = mapping(key, raw)
    refuse_unknown(key, raw, field_names(WebhookConfig))
    for required in ("url", "format"):
        if required not in raw:
            raise ConfigError(f"{key}.{required}: required")
    fmt = raw["format"]
    if fmt not in FORMATS:
        raise ConfigError(f"{key}.format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    values: dict[str, Any] = {"url": _url(f"{key}.url", raw["url"]), "format": fmt}
    if "decisions" in raw:
        values["decisions"] = strings(f"{key}.decisions", raw["decisions"], ALERT_DECISIONS)
    for name in ("reasons", "layers", "tenants"):
        if name in raw:
            values[name] = strings(f"{key}.{name}", raw[name])
    if "timeout_s" in raw:
        values["timeout_s"] = number(f"{key}.timeout_s", raw["timeout_s"], 0.0, 300.0)
    if "max_attempts" in raw:
        values["max_attempts"] = integer(f"{key}.max_attempts", raw["max_attempts"], 1, 100)
    if "headers" in raw:
        values["headers"] = _headers(f"{key}.headers", raw["headers"])
    return WebhookConfig(**values)


def parse_alerts_config(raw: Any, where: str = "alerts") -> AlertsConfig:
    """Validates the ``alerts:`` section as loaded by ``yaml.safe_load``.

    Args:
        raw: the section's value; None (section absent or empty) means no webhooks.
        where: the key prefix used in error messages.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: naming the key, e.g. ``alerts.webhooks[0].url: must be an http(s) URL``.
    """
    if raw is None:
        return AlertsConfig()
    raw = mapping(where, raw)
    refuse_unknown(where, raw, field_names(AlertsConfig))
    values: dict[str, Any] = {}
    webhooks = raw.get("webhooks")
    if webhooks is not None:
        if not isinstance(webhooks, list):
            raise ConfigError(f"{where}.webhooks: expected a list, got {type(webhooks).__name__}")
        values["webhooks"] = tuple(_webhook(f"{where}.webhooks[{i}]", w) for i, w in enumerate(webhooks))
    if "queue_size" in raw:
        values["queue_size"] = integer(f"{where}.queue_size", raw["queue_size"], 1, 1_000_000)
    if "backoff_initial_s" in raw:
        values["backoff_initial_s"] = number(f"{where}.backoff_initial_s", raw["backoff_initial_s"], 0.0, 3600.0)
    if "backoff_max_s" in raw:
        values["backoff_max_s"] = number(f"{where}.backoff_max_s", raw["backoff_max_s"], 0.0, 3600.0)
    if "approve_command" in raw:
        command = raw["approve_command"]
        if not isinstance(command, str) or not command.strip():
            raise ConfigError(f"{where}.approve_command: expected a non-empty string, got {command!r}")
        values["approve_command"] = command
    if "console_url" in raw:
        values["console_url"] = _url(f"{where}.console_url", raw["console_url"]).rstrip("/")
    cfg = AlertsConfig(**values)
    if cfg.backoff_initial_s > cfg.backoff_max_s:
        raise ConfigError(
            f"{where}.backoff_initial_s: {cfg.backoff_initial_s} exceeds backoff_max_s {cfg.backoff_max_s}"
        )
    return cfg
