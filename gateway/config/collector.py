"""The collector's configuration file (``agentaudit collector --config FILE``): one ``collector:`` section.

Only ``AGENTAUDIT_COLLECTOR_STORE`` is read from the environment, so a DSN holding a password can come from a
secret (libpq's ``PGPASSWORD`` and friends work too: asyncpg reads them). The reference is docs/collector.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config.alerts import AlertsConfig, parse_alerts_config
from gateway.config.sidecar import OperatorConfig, parse_operator_section
from gateway.config.slack import SlackConfig, parse_slack_config
from gateway.config.values import HOST_PORT_RE, SHA256_RE, field_names, integer, number, refuse_unknown, resolve_path
from gateway.errors import ConfigError

DEFAULT_COLLECTOR_LISTEN = ("127.0.0.1:7430",)
STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
STORE_ENV = "AGENTAUDIT_COLLECTOR_STORE"


@dataclass(frozen=True)
class CollectorTlsConfig:
    """TLS for the collector's TCP listeners; with ``client_ca``, every client must present a certificate it signed."""

    cert: Path  # PEM certificate chain, the server's first
    key: Path  # its private key (mode 0600)
    client_ca: Path | None = None  # PEM CA bundle; set: a client without a certificate signed by it is refused


@dataclass(frozen=True)
class FleetAlertsConfig:
    """``collector.alerts``: the sidecar's ``alerts:`` webhooks and delivery, plus the fleet's own checks."""

    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    silent_after_s: float = 0.0  # alert when an origin's last witnessed contact is older than this; 0: off
    silent_check_s: float = 30.0  # how often the silent check runs


_FLEET_ALERT_KEYS = ("silent_after_s", "silent_check_s")

DEFAULT_CONSOLE_LISTEN = ("127.0.0.1:7421",)
ROLES = ("admin", "approver", "auditor")


@dataclass(frozen=True)
class ConsoleConfig:
    """``collector.console``: the web console's sign-in (docs/console.md)."""

    # Listeners (also in console_listen) where X-Forwarded-Email / X-Forwarded-User name the operator: only behind
    # an authenticating proxy that sets them and strips any the client sent.
    trusted_header_listen: tuple[str, ...] = ()
    header_roles: tuple[tuple[str, tuple[str, ...]], ...] = ()  # identity from the header -> roles; others refused
    session_ttl_s: float = 8 * 3600.0  # a session expires this long after sign-in


def parse_console(raw: Any, console_listen: tuple[str, ...]) -> ConsoleConfig:
    """``collector.console``: trusted_header_listen, header_roles, session_ttl_s."""
    if raw is None:
        return ConsoleConfig()
    if not isinstance(raw, dict):
        raise ConfigError("collector.console: expected a mapping (trusted_header_listen, header_roles, session_ttl_s)")
    refuse_unknown("collector.console", raw, field_names(ConsoleConfig))
    trusted = raw.get("trusted_header_listen") or []
    if not isinstance(trusted, list) or not all(isinstance(a, str) and HOST_PORT_RE.match(a) for a in trusted):
        raise ConfigError("collector.console.trusted_header_listen: expected a list of HOST:PORT")
    stray = sorted(set(trusted) - set(console_listen))
    if stray:
        raise ConfigError(
            f"collector.console.trusted_header_listen: {', '.join(stray)} is not in collector.console_listen"
        )
    roles_raw = raw.get("header_roles") or {}
    if not isinstance(roles_raw, dict):
        raise ConfigError("collector.console.header_roles: expected a mapping of identity to a list of roles")
    header_roles = []
    for identity, roles in roles_raw.items():
        if (
            not isinstance(identity, str)
            or not identity.strip()
            or not isinstance(roles, list)
            or not roles
            or not all(r in ROLES for r in roles)
        ):
            raise ConfigError(
                f"collector.console.header_roles.{identity}: expected a non-empty list of {', '.join(ROLES)}"
            )
        header_roles.append((identity, tuple(roles)))
    ttl = number("collector.console.session_ttl_s", raw.get("session_ttl_s", 8 * 3600), 1.0, 30 * 86400.0)
    return ConsoleConfig(tuple(trusted), tuple(header_roles), ttl)


def console_available() -> bool:
    """Whether the ``console`` extra (starlette, jinja2, uvicorn) is installed."""
    import importlib.util  # noqa: PLC0415

    return all(importlib.util.find_spec(m) is not None for m in ("starlette", "jinja2", "uvicorn", "multipart"))


def _console_listen(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(a, str) and HOST_PORT_RE.match(a) for a in raw):
        raise ConfigError("collector.console_listen: expected a list of HOST:PORT (an empty list: no console)")
    return tuple(raw)


def parse_fleet_alerts(raw: Any) -> FleetAlertsConfig:
    """``collector.alerts``: every key of the sidecar's ``alerts:`` (docs/alerts.md) plus ``silent_after_s`` and
    ``silent_check_s``."""
    if raw is None:
        return FleetAlertsConfig()
    if not isinstance(raw, dict):
        raise ConfigError("collector.alerts: expected a mapping (webhooks, silent_after_s, ...)")
    rest = {k: v for k, v in raw.items() if k not in _FLEET_ALERT_KEYS}
    try:
        alerts = parse_alerts_config(rest, "collector.alerts")
    except ConfigError as exc:
        if "unknown key(s)" in str(exc):  # name the two fleet keys among the known ones
            raise ConfigError(f"{exc}; also silent_after_s, silent_check_s") from None
        raise
    silent_after = raw.get("silent_after_s", 0)
    if silent_after != 0:
        silent_after = number("collector.alerts.silent_after_s", silent_after, 0.0, 30 * 86400)
    check = number("collector.alerts.silent_check_s", raw.get("silent_check_s", 30), 0.0, 3600)
    return FleetAlertsConfig(alerts, float(silent_after), check)


@dataclass(frozen=True)
class CollectorConfig:
    """Where the collector listens, stores, and whom it accepts."""

    listen: tuple[str, ...]
    store: str
    witness_key: Path
    origins: tuple[tuple[str, tuple[Path, ...]], ...] = ()
    max_batch_entries: int = 10_000
    max_inflight: int = 8
    search_tokens: tuple[str, ...] = ()  # SHA-256 (hex) of the bearer tokens allowed to search; none: search is off
    retention_days: int | None = None
    prune_interval_s: float = 3600.0
    metrics_listen: str = ""  # HOST:PORT for Prometheus /metrics (`agentaudit collector` only); empty: off
    # Processes checking large signed batches (ADR 0018); None: 0 on SQLite, one per core but one on PostgreSQL.
    check_workers: int | None = None
    # The fleet operator API (approvals, kill switches): the sidecar's operator section, same shape and rules.
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    # Signs control_log rows and control messages (sidecars pin its public key); None: the witness key.
    control_key: Path | None = None
    control_ttl_s: float = 60.0  # how long a control message stays valid after it was issued
    tls: CollectorTlsConfig | None = None  # serve collector.listen's TCP addresses over TLS (unix sockets: never)
    # Plaintext listeners serving only grpc.health.v1 (kubelet gRPC probes cannot speak TLS); empty: none.
    health_listen: tuple[str, ...] = ()
    alerts: FleetAlertsConfig = field(default_factory=FleetAlertsConfig)  # webhooks for fleet events
    # The web console's listeners (HTTP); None: 127.0.0.1:7421 when the console extra is installed (a taken port
    # is then only a warning); empty: no console.
    console_listen: tuple[str, ...] | None = ()
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    slack: SlackConfig | None = None  # approvals answered from Slack (docs/slack.md); None: off


def load_collector_config(path: Path, env: Mapping[str, str] | None = None) -> CollectorConfig:
    """Parses a collector configuration file; relative paths resolve against its directory.

    ``AGENTAUDIT_COLLECTOR_STORE`` in ``env`` replaces ``collector.store``.

    Raises:
        ConfigError: naming the key, e.g. ``collector.max_batch_entries: expected an integer, got 'abc'``.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read collector config {path}: {exc}") from exc
    section = raw.get("collector") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: expected a 'collector:' mapping")
    return parse_collector_config(section, path.resolve().parent, env or {})


def parse_collector_config(section: dict[str, Any], base: Path, env: Mapping[str, str]) -> CollectorConfig:
    """Validates the ``collector:`` section; relative paths resolve against ``base``."""
    refuse_unknown("collector", section, field_names(CollectorConfig))
    listen = section.get("listen") or list(DEFAULT_COLLECTOR_LISTEN)
    if not isinstance(listen, list) or not all(isinstance(a, str) for a in listen):
        raise ConfigError("collector.listen: expected a list of addresses")
    store = env.get(STORE_ENV) or section.get("store")
    if not isinstance(store, str) or not store.startswith(STORE_SCHEMES):
        raise ConfigError(f"collector.store (or {STORE_ENV}): expected sqlite:///path or postgresql://...")
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///") - 1 :]).is_absolute():
        store = "sqlite:///" + str(resolve_path(store[len("sqlite:///") :], base))
    if not isinstance(section.get("witness_key"), str):
        raise ConfigError("collector.witness_key: expected the path of the witness signing key")
    retention_days = section.get("retention_days")
    if retention_days is not None and (
        not isinstance(retention_days, int) or isinstance(retention_days, bool) or retention_days < 1
    ):
        raise ConfigError("collector.retention_days: expected a whole number of days, at least 1 (omit to keep)")
    control_key = section.get("control_key")
    if control_key is not None and (not isinstance(control_key, str) or not control_key):
        raise ConfigError("collector.control_key: expected the path of the control signing key (omit: witness_key)")
    metrics_listen = section.get("metrics_listen", "")
    if not isinstance(metrics_listen, str) or (metrics_listen and not HOST_PORT_RE.match(metrics_listen)):
        raise ConfigError("collector.metrics_listen: expected HOST:PORT")
    return CollectorConfig(
        listen=tuple(listen),
        store=store,
        witness_key=resolve_path(section["witness_key"], base),
        origins=_origins(section.get("origins"), base),
        max_batch_entries=integer("collector.max_batch_entries", section.get("max_batch_entries", 10_000), 1, 10**6),
        max_inflight=integer("collector.max_inflight", section.get("max_inflight", 8), 1, 10_000),
        check_workers=None
        if section.get("check_workers") is None
        else integer("collector.check_workers", section["check_workers"], 0, 256),
        retention_days=retention_days,
        prune_interval_s=number("collector.prune_interval_s", section.get("prune_interval_s", 3600), 0.0, 7 * 86400),
        search_tokens=_search_tokens(section.get("search_tokens")),
        metrics_listen=metrics_listen,
        # The sidecar's AGENTAUDIT_OPERATOR_LISTEN is not the collector's: no environment here.
        operator=parse_operator_section(section.get("operator"), {}, base, None),
        control_key=None if control_key is None else resolve_path(control_key, base),
        control_ttl_s=number("collector.control_ttl_s", section.get("control_ttl_s", 60), 0.0, 3600.0),
        tls=_tls(section.get("tls"), base),
        health_listen=_health_listen(section.get("health_listen"), tuple(listen)),
        alerts=parse_fleet_alerts(section.get("alerts")),
        console_listen=(console_listen := _console_listen(section.get("console_listen"))),
        console=parse_console(section.get("console"), console_listen or DEFAULT_CONSOLE_LISTEN),
        slack=parse_slack_config(section.get("slack"), base),
    )


def _tls(raw: Any, base: Path) -> CollectorTlsConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("collector.tls: expected a mapping with cert, key and optionally client_ca")
    refuse_unknown("collector.tls", raw, field_names(CollectorTlsConfig))
    paths: dict[str, Path] = {}
    for key in ("cert", "key", "client_ca"):
        value = raw.get(key)
        if value is None and key == "client_ca":
            continue
        if not isinstance(value, str) or not value:
            raise ConfigError(f"collector.tls.{key}: expected a path")
        paths[key] = resolve_path(value, base)
    return CollectorTlsConfig(**paths)


def _health_listen(raw: Any, listen: tuple[str, ...]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(a, str) and HOST_PORT_RE.match(a) for a in raw):
        raise ConfigError("collector.health_listen: expected a list of HOST:PORT")
    overlap = sorted(set(raw) & set(listen))
    if overlap:
        raise ConfigError(f"collector.health_listen: {', '.join(overlap)} is also in collector.listen")
    return tuple(raw)


def _origins(raw: Any, base: Path) -> tuple[tuple[str, tuple[Path, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("collector.origins: expected a list of {origin: NAME, keys: [PUBLIC_KEY_FILE, ...]}")
    origins = []
    for i, spec in enumerate(raw):
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("origin"), str)
            or not isinstance(spec.get("keys"), list)
            or not all(isinstance(k, str) and k for k in spec["keys"])
        ):
            raise ConfigError(f"collector.origins[{i}]: expected {{origin: NAME, keys: [PUBLIC_KEY_FILE, ...]}}")
        origins.append((spec["origin"], tuple(resolve_path(k, base) for k in spec["keys"])))
    return tuple(origins)


def _search_tokens(raw: Any) -> tuple[str, ...]:
    """SHA-256 digests (hex) of the bearer tokens that may search; an absent list turns search off."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, str) and SHA256_RE.fullmatch(t) for t in raw):
        raise ConfigError("collector.search_tokens: expected a list of SHA-256 digests (64 lower-case hex digits)")
    return tuple(raw)
