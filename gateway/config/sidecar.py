"""The sidecar's configuration (``agentaudit serve`` and ``dev``): one frozen dataclass per section, loaded once.

Sources: a YAML file, ``AGENTAUDIT_*`` environment variables and flags; precedence flags > environment > file >
defaults. Environment variables are named ``AGENTAUDIT_<SECTION>_<KEY>`` (``AGENTAUDIT_AUDIT_HASH_ARGS=false``,
``AGENTAUDIT_SERVER_LISTEN=a,b``). Relative paths in a file are resolved against the file's directory. Every
problem is a :class:`ConfigError` naming the key. The reference is docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config.alerts import AlertsConfig, parse_alerts_config
from gateway.config.limits import MAX_ROWS_PER_INSERT
from gateway.config.values import (
    HOST_PORT_RE,
    LISTEN_RE,
    SHA256_RE,
    coerce,
    field_names,
    in_range,
    listen_addresses,
    mapping,
    refuse_unknown,
    resolve_path,
)
from gateway.errors import ConfigError

ENV_PREFIX = "AGENTAUDIT_"
DEFAULT_TCP_PORT = 7419


@dataclass(frozen=True)
class ServerConfig:
    """Listeners and request limits of the agent-facing GatewayService."""

    listen: tuple[str, ...] = ("unix://gateway.sock", f"127.0.0.1:{DEFAULT_TCP_PORT}")
    max_args_bytes: int = 64 * 1024
    max_depth: int = 32
    max_message_bytes: int = 1024 * 1024
    shutdown_grace_s: float = 10.0
    # Session streams: messages read and not yet answered, per stream; at the bound the sidecar stops reading.
    session_max_in_flight: int = 256
    # Octal mode of the agent unix sockets, e.g. "0660" so an agent of another uid sharing the group can connect;
    # empty: as created (the process umask; usually only the owner can connect).
    unix_socket_mode: str = ""


@dataclass(frozen=True)
class JournalConfig:
    """Where the journal lives and how the writer commits."""

    path: Path = Path("journal.db")
    signing_key: Path = Path("signing.key")
    busy_timeout_ms: int = 5000
    max_batch: int = 512
    probe_interval_s: float = 5.0  # while idle, check this often that the journal is writable (health); 0: off
    on_tamper: str = "warn"  # the start-up self-check found tampering: warn (log, journal, alert) | stop (also refuse)


@dataclass(frozen=True)
class DetectorsConfig:
    """Which value detectors run on recorded strings (gateway.redaction.detectors); all on by default."""

    email: bool = True
    phone: bool = True
    card: bool = True
    iban: bool = True
    credentials: bool = True

    def enabled(self) -> tuple[str, ...]:
        """The names of the detectors that are on."""
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name))


@dataclass(frozen=True)
class AuditConfig:
    """Data safety of what is recorded (DESIGN §6 block, accepted as written)."""

    sink: str = "append_only"
    retention_days: int = 180
    redact_fields: tuple[str, ...] = ("email", "phone", "card_number")
    hash_args: bool = True
    sign_events: bool = True
    # per_commit: a new journal is format v2, one signed seal per group commit; per_entry: format v1, one signature
    # per entry. An existing journal keeps its format (docs/adr/0024-seal-per-commit-signing.md, docs/configuration.md).
    signing: str = "per_commit"
    hmac_key: Path = Path("hmac.key")
    prune_interval_s: float = 3600.0  # how often retention runs (only entries the collector cosigned are pruned)
    detectors: DetectorsConfig = field(default_factory=DetectorsConfig)


@dataclass(frozen=True)
class PolicyConfig:
    """Which policy file is evaluated."""

    path: Path = Path("policy.yaml")
    watch_interval_s: float = 1.0


@dataclass(frozen=True)
class CollectorTlsClientConfig:
    """How the sidecar verifies the collector's TLS listener (``forward.tls``), and proves itself to it.

    The forwarder and the control channel both connect with it (``gateway.rpc.net.collector_channel``).
    """

    ca: Path | None = None  # PEM CA bundle that signed the collector's certificate; None: gRPC's public roots
    cert: Path | None = None  # a client certificate, for a collector with collector.tls.client_ca
    key: Path | None = None  # its private key (mode 0600)
    server_name: str = ""  # the name the certificate must carry, when it is not the target's host


@dataclass(frozen=True)
class ForwardConfig:
    """Forwarding the journal to the collector (docs/collector.md). An empty target disables it."""

    target: str = ""  # unix:///path or HOST:PORT of a CollectorService; "embedded" runs one in-process (dev)
    batch_max_entries: int = 500
    batch_max_age_s: float = 1.0
    idle_checkpoint_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    on_rollback: str = "stop"  # stop (fail closed until an operator acknowledges) | allow (alert only)
    collector_db: Path = Path("collector.db")  # the embedded collector's SQLite store
    witness_key: Path = Path("witness.key")  # the embedded collector's signing key
    tls: CollectorTlsClientConfig | None = None  # verify the collector's certificate (required off loopback)
    allow_insecure: bool = False  # forward to a non-loopback collector in plaintext anyway


@dataclass(frozen=True)
class ControlConfig:
    """The fleet control channel to the collector (docs/fleet.md, "The sidecar's side"; ADR 0016).

    ``enabled`` defaults to on when ``control_key`` is set or ``forward.target`` is "embedded", off otherwise;
    ``collector`` defaults to ``forward.target``. "embedded" (also the default with ``forward.target: embedded``) is
    the dev sidecar's in-process collector, whose control key is pinned without configuration.
    """

    enabled: bool = False
    collector: str = ""  # unix:///path or HOST:PORT of the collector's ControlService; "": forward.target
    control_key: str = ""  # the pinned collector control key: a .pub file's path, or its text (name+id+base64)
    max_staleness_s: float = 0.0  # stop actions after this long without the collector; 0: off
    connect_wait_s: float = 5.0  # after start, Decide waits this long for the first complete kill-switch set
    backoff_initial_s: float = 0.2  # reconnect delays: doubling from this, with jitter,
    backoff_max_s: float = 10.0  # up to this
    keepalive_s: float = 10.0  # ping the collector this often on the stream; no answer in as long: reconnect


@dataclass(frozen=True)
class LogConfig:
    """Diagnostics on stderr (never the journal)."""

    level: str = "info"
    format: str = ""  # json | text; empty: json for `serve`, text for `dev`


@dataclass(frozen=True)
class HealthConfig:
    """A listener serving only grpc.health.v1.Health, for kubelet probes (may bind a pod IP or 0.0.0.0)."""

    listen: tuple[str, ...] = ()
    # 0: a start failure (bad policy, unwritable journal) exits. >0: stay up reporting NOT_SERVING, retry this often.
    retry_start_s: float = 0.0


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition over HTTP at /metrics. Empty listen: off."""

    listen: str = ""  # HOST:PORT


@dataclass(frozen=True)
class TelemetryConfig:
    """OpenTelemetry spans for the gRPC servers, exported over OTLP/gRPC. Empty endpoint: off (no overhead)."""

    otlp_endpoint: str = ""  # HOST:PORT of an OTLP/gRPC receiver (an OpenTelemetry Collector)
    otlp_insecure: bool = True  # plaintext gRPC to the receiver (a node-local collector); false: TLS
    service_name: str = "agentaudit"
    sample_ratio: float = 1.0  # of traces started here; a sampled parent (traceparent flag 01) is always followed


@dataclass(frozen=True)
class LimitsConfig:
    """Where limit state lives: in the process (default) or in a store every replica shares (ADR 0015)."""

    store: str = ""  # redis://[user:password@]host:port[/db], rediss://… (TLS) or unix:///path; empty: in-process
    key_prefix: str = "agentaudit"  # every key in the store starts with "<key_prefix>:"; one per fleet sharing it
    timeout_ms: int = 50  # one Decide waits at most this long for the store, then on_store_error applies


LIMITS_STORE_SCHEMES = ("redis://", "rediss://", "unix://")
_KEY_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


OPERATOR_ROLES = ("admin", "approver", "auditor")


@dataclass(frozen=True)
class OperatorTokenConfig:
    """A bearer token, stored only as its SHA-256, mapped to an identity and roles."""

    identity: str
    roles: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class OperatorTlsConfig:
    """TLS for the operator's TCP listeners; a client certificate signed by ``client_ca`` authenticates too."""

    cert: Path
    key: Path
    client_ca: Path
    identities: tuple[tuple[str, tuple[str, ...]], ...] = ()  # certificate common name → roles


@dataclass(frozen=True)
class OperatorConfig:
    """The operator API: its own listeners (never the agent socket) and who may call it."""

    listen: tuple[str, ...] = ()
    tokens: tuple[OperatorTokenConfig, ...] = ()
    tls: OperatorTlsConfig | None = None
    allow_insecure: bool = False  # serve a non-loopback TCP address without TLS (bearer tokens in plaintext)


def non_loopback_tcp(addresses: typing.Iterable[str]) -> tuple[str, ...]:
    """The TCP addresses (``HOST:PORT``) whose host is not a loopback address: reachable from other machines.

    A host name other than ``localhost`` counts as non-loopback: what it resolves to is not known here.
    """
    out = []
    for address in addresses:
        if address.startswith("unix://"):
            continue
        host = address.rpartition(":")[0].strip("[]")
        if host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        out.append(address)
    return tuple(out)


@dataclass(frozen=True)
class Config:
    """The whole sidecar configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)


_LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")
# Sections with structure (lists of mappings) that the flat reader cannot take; each has its own parser.
_STRUCTURED_SECTIONS = ("operator", "alerts")


def _field_value(key: str, value: Any, annotation: Any, base: Path) -> Any:
    """One field's value: the shared reader's types, plus the nested mappings (``audit.detectors``,
    ``forward.tls``)."""
    if annotation is DetectorsConfig:
        return _detectors(key, value)
    if annotation == CollectorTlsClientConfig | None:
        return parse_collector_tls_client(key, value, base)
    return coerce(key, value, annotation, base)


_SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9.:\-]{1,253}$")  # a DNS name or an IPv4/IPv6 address


def parse_collector_tls_client(key: str, value: Any, base: Path) -> CollectorTlsClientConfig | None:
    """``{ca, cert, key, server_name}`` (all optional; ``{}`` is TLS verified against gRPC's public roots)."""
    if value is None:
        return None
    if not isinstance(value, dict):  # also an environment variable: these paths belong in the file
        raise ConfigError(f"{key}: expected a mapping of ca, cert, key and server_name, in the configuration file")
    spec = value
    refuse_unknown(key, spec, field_names(CollectorTlsClientConfig))
    paths = {k: coerce(f"{key}.{k}", spec[k], Path, base) for k in ("ca", "cert", "key") if spec.get(k) is not None}
    if ("cert" in paths) != ("key" in paths):
        raise ConfigError(f"{key}: cert and key go together (the client certificate and its private key)")
    server_name = coerce(f"{key}.server_name", spec.get("server_name", ""), str, base)
    if server_name and not _SERVER_NAME_RE.match(server_name):
        raise ConfigError(f"{key}.server_name: expected a DNS name or an IP address, got {server_name!r}")
    return CollectorTlsClientConfig(**paths, server_name=server_name)


def check_collector_transport(
    key: str, target: str, tls: CollectorTlsClientConfig | None, allow_insecure: bool
) -> None:
    """Refuses plaintext to a collector off loopback (unless allowed) and TLS where it cannot apply.

    Shared by ``forward.target`` and any other address of a collector the sidecar dials (the control channel).
    """
    if target in ("", "embedded") or target.startswith("unix:"):
        if tls is not None:
            raise ConfigError(
                f"{key}: {target or 'an empty target'} is not HOST:PORT, so forward.tls does not apply "
                "(unix sockets and the embedded collector are local and never use TLS); remove forward.tls"
            )
        return
    if tls is None and not allow_insecure and non_loopback_tcp([target]):
        # Forwarded entries are signed, so plaintext cannot forge them, but it shows every recorded action to the
        # network, lets anyone in the path drop batches unseen, and would carry the control channel's traffic.
        raise ConfigError(
            f"{key}: {target} is not a loopback address and forward.tls is not set, so the journal would cross "
            "the network in plaintext to an unauthenticated collector; configure forward.tls (the collector's "
            "CA), use a loopback address or a unix socket, or set forward.allow_insecure: true to accept that "
            "explicitly"
        )


def _detectors(key: str, value: Any) -> DetectorsConfig:
    """``{email: true, phone: false, ...}`` (unnamed detectors stay on); from the environment, the list of those on
    (``AGENTAUDIT_AUDIT_DETECTORS=email,card``; ``none`` turns all off)."""
    names = [f.name for f in dataclasses.fields(DetectorsConfig)]
    if isinstance(value, str):
        wanted = [] if value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ConfigError(f"{key}: unknown detector(s) {', '.join(unknown)} (known: {', '.join(names)})")
        return DetectorsConfig(**{n: n in wanted for n in names})
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of detector names to true or false, got {value!r}")
    unknown = sorted(set(map(str, value)) - set(names))
    if unknown:
        raise ConfigError(f"{key}: unknown detector(s) {', '.join(unknown)} (known: {', '.join(names)})")
    return DetectorsConfig(**{n: coerce(f"{key}.{n}", v, bool, Path.cwd()) for n, v in value.items()})


def _section(name: str, cls: type[Any], raw: Any, env: Mapping[str, str], base: Path) -> Any:
    """Reads a flat section: each key converted by its field's annotation, then ``AGENTAUDIT_<SECTION>_<KEY>``."""
    raw = mapping(name, {} if raw is None else raw)
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    refuse_unknown(name, raw, names)
    values = {k: _field_value(f"{name}.{k}", v, hints[k], base) for k, v in raw.items()}
    for k in names:
        env_name = f"{ENV_PREFIX}{name}_{k}".upper()
        if env_name in env:
            values[k] = _field_value(env_name, env[env_name], hints[k], Path.cwd())
    instance = cls(**values)
    # Defaults that are relative paths resolve against the config file's directory too.
    for f in dataclasses.fields(cls):
        current = getattr(instance, f.name)
        if isinstance(current, Path) and not current.is_absolute():
            instance = dataclasses.replace(instance, **{f.name: base / current})
    return instance


def parse_operator_section(raw: Any, env: Mapping[str, str], base: Path, listen: list[str] | None) -> OperatorConfig:
    """Parses an ``operator`` section (the sidecar's, and the collector's ``collector.operator``): tokens and TLS
    are structured, so not handled by ``_section``."""
    raw = mapping("operator", {} if raw is None else raw)
    refuse_unknown("operator", raw, field_names(OperatorConfig))
    addresses = coerce("operator.listen", raw.get("listen", []), tuple[str, ...], base)
    if "AGENTAUDIT_OPERATOR_LISTEN" in env:
        addresses = coerce("AGENTAUDIT_OPERATOR_LISTEN", env["AGENTAUDIT_OPERATOR_LISTEN"], tuple[str, ...], base)
    if listen:  # typed on the command line: a relative socket is relative to where it was typed
        addresses = listen_addresses("--operator-listen", listen, Path.cwd())
    tokens = []
    raw_tokens = raw.get("tokens") or []
    if not isinstance(raw_tokens, list):
        raise ConfigError("operator.tokens: expected a list of {identity, roles, sha256}")
    for i, token in enumerate(raw_tokens):
        where = f"operator.tokens[{i}]"
        if not isinstance(token, dict) or set(token) - {"identity", "roles", "sha256"}:
            raise ConfigError(f"{where}: expected a mapping with identity, roles and sha256")
        identity, roles, digest = token.get("identity"), token.get("roles"), token.get("sha256")
        if not isinstance(identity, str) or not identity or not identity.isprintable():
            raise ConfigError(f"{where}.identity: expected a non-empty identity")
        if not isinstance(roles, list) or not roles or any(r not in OPERATOR_ROLES for r in roles):
            raise ConfigError(f"{where}.roles: expected a list of {', '.join(OPERATOR_ROLES)}")
        if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
            raise ConfigError(f"{where}.sha256: expected the token's SHA-256 as 64 lower-case hex digits")
        tokens.append(OperatorTokenConfig(identity, tuple(roles), digest))
    tls = None
    if raw.get("tls") is not None:
        spec = raw["tls"]
        if not isinstance(spec, dict) or set(spec) - {"cert", "key", "client_ca", "identities"}:
            raise ConfigError("operator.tls: expected cert, key, client_ca and optionally identities")
        paths = {k: coerce(f"operator.tls.{k}", spec.get(k), Path, base) for k in ("cert", "key", "client_ca")}
        identities = spec.get("identities") or {}
        if not isinstance(identities, dict) or any(
            not isinstance(r, list) or any(x not in OPERATOR_ROLES for x in r) for r in identities.values()
        ):
            raise ConfigError(f"operator.tls.identities: map certificate common names to lists of {OPERATOR_ROLES}")
        tls = OperatorTlsConfig(**paths, identities=tuple((str(k), tuple(v)) for k, v in identities.items()))
    allow_insecure = coerce("operator.allow_insecure", raw.get("allow_insecure", False), bool, base)
    addresses = listen_addresses("operator.listen", addresses, base)
    exposed = non_loopback_tcp(addresses)
    if exposed and tls is None and not allow_insecure:
        # Operator tokens grant approvals and kill switches: refuse to send them over a network in plaintext
        # unless someone wrote down that this is intended (a mesh that encrypts, a lab).
        raise ConfigError(
            f"operator.listen: {', '.join(exposed)} is not a loopback address and operator.tls is not set, so "
            "operator tokens would cross the network in plaintext; configure operator.tls, listen on 127.0.0.1 "
            "or a unix socket, or set operator.allow_insecure: true to accept that explicitly"
        )
    return OperatorConfig(addresses, tuple(tokens), tls, allow_insecure)


def _validate(cfg: Config) -> None:
    if cfg.audit.sink != "append_only":
        raise ConfigError(f"audit.sink: only 'append_only' is supported, got {cfg.audit.sink!r}")
    if not cfg.audit.sign_events:
        raise ConfigError("audit.sign_events: false is not supported: every journal entry is signed")
    if cfg.audit.signing not in ("per_commit", "per_entry"):
        raise ConfigError(f"audit.signing: expected per_commit or per_entry, got {cfg.audit.signing!r}")
    if cfg.audit.retention_days < 1:
        raise ConfigError("audit.retention_days: must be at least 1")
    if not 1 <= cfg.audit.prune_interval_s <= 7 * 86400:
        raise ConfigError("audit.prune_interval_s: must be between 1 second and 7 days")
    if not cfg.server.listen:
        raise ConfigError("server.listen: at least one address is required")
    socket_mode = cfg.server.unix_socket_mode
    if socket_mode and not re.fullmatch(r"0?[0-7]{3}", socket_mode):
        raise ConfigError(f"server.unix_socket_mode: expected an octal mode like 0660, got {socket_mode!r}")
    if socket_mode and int(socket_mode, 8) & 0o007:
        raise ConfigError("server.unix_socket_mode: others must get no access (the last digit must be 0)")
    for key, value, low, high in (
        ("server.max_args_bytes", cfg.server.max_args_bytes, 1, 16 * 1024 * 1024),
        ("server.max_depth", cfg.server.max_depth, 1, 100),
        ("server.max_message_bytes", cfg.server.max_message_bytes, 4096, 64 * 1024 * 1024),
        ("server.session_max_in_flight", cfg.server.session_max_in_flight, 1, 65536),
        ("journal.busy_timeout_ms", cfg.journal.busy_timeout_ms, 0, 600_000),
        ("journal.max_batch", cfg.journal.max_batch, 1, MAX_ROWS_PER_INSERT),
    ):
        in_range(key, value, low, high)
    if cfg.journal.on_tamper not in ("warn", "stop"):
        raise ConfigError(f"journal.on_tamper: expected warn or stop, got {cfg.journal.on_tamper!r}")
    _validate_forward(cfg.forward)
    if cfg.journal.probe_interval_s and not 0.05 <= cfg.journal.probe_interval_s <= 3600:
        raise ConfigError("journal.probe_interval_s: must be 0 (off) or between 0.05 and 3600 seconds")
    if not 0.05 <= cfg.policy.watch_interval_s <= 3600:
        raise ConfigError("policy.watch_interval_s: must be between 0.05 and 3600 seconds")
    if cfg.log.level.lower() not in _LOG_LEVELS:
        raise ConfigError(f"log.level: expected one of {', '.join(_LOG_LEVELS)}, got {cfg.log.level!r}")
    if cfg.log.format and cfg.log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: expected one of {', '.join(LOG_FORMATS)}, got {cfg.log.format!r}")
    if not 0 <= cfg.health.retry_start_s <= 3600:
        raise ConfigError("health.retry_start_s: must be between 0 (exit on a start failure) and 3600 seconds")
    if cfg.metrics.listen and not HOST_PORT_RE.match(cfg.metrics.listen):
        raise ConfigError(f"metrics.listen: {cfg.metrics.listen!r} is not HOST:PORT")
    tel = cfg.telemetry
    if tel.otlp_endpoint and not HOST_PORT_RE.match(tel.otlp_endpoint):
        raise ConfigError(f"telemetry.otlp_endpoint: {tel.otlp_endpoint!r} is not HOST:PORT")
    if not 0.0 <= tel.sample_ratio <= 1.0:
        raise ConfigError("telemetry.sample_ratio: must be between 0 and 1")
    if not tel.service_name:
        raise ConfigError("telemetry.service_name: must not be empty")
    limits = cfg.limits
    if limits.store and not limits.store.startswith(LIMITS_STORE_SCHEMES):
        # Never echo the value: a store URL may carry a password.
        raise ConfigError(f"limits.store: expected a URL starting with {', '.join(LIMITS_STORE_SCHEMES)}")
    if not _KEY_PREFIX_RE.match(limits.key_prefix):
        raise ConfigError(f"limits.key_prefix: expected 1-64 of A-Z a-z 0-9 _ . : -, got {limits.key_prefix!r}")
    in_range("limits.timeout_ms", limits.timeout_ms, 1, 10_000)
    _validate_control(cfg.control, cfg.forward)


def _validate_forward(fwd: ForwardConfig) -> None:
    if fwd.on_rollback not in ("stop", "allow"):
        raise ConfigError(f"forward.on_rollback: expected stop or allow, got {fwd.on_rollback!r}")
    if fwd.target and fwd.target != "embedded" and not LISTEN_RE.match(fwd.target):
        raise ConfigError(f"forward.target: {fwd.target!r} is not unix:///path, HOST:PORT or embedded")
    if not 1 <= fwd.batch_max_entries <= 10_000:
        raise ConfigError("forward.batch_max_entries: must be 1..10000")
    if not (0 < fwd.batch_max_age_s <= 3600 and 1 <= fwd.idle_checkpoint_s <= 86400):
        raise ConfigError("forward.batch_max_age_s / idle_checkpoint_s: out of range")
    if not 0 < fwd.backoff_initial_s <= fwd.backoff_max_s <= 3600:
        raise ConfigError("forward.backoff_initial_s must be positive and at most forward.backoff_max_s")
    if fwd.target or fwd.tls is None:  # no target with tls: only the control channel may use it (checked there)
        check_collector_transport("forward.target", fwd.target, fwd.tls, fwd.allow_insecure)


def _validate_control(control: ControlConfig, fwd: ForwardConfig) -> None:
    if not 0 <= control.max_staleness_s <= 86400:
        raise ConfigError("control.max_staleness_s: must be 0 (off) or up to 86400 seconds")
    if not 0 <= control.connect_wait_s <= 600:
        raise ConfigError("control.connect_wait_s: must be between 0 and 600 seconds")
    if not 0 < control.backoff_initial_s <= control.backoff_max_s <= 3600:
        raise ConfigError("control.backoff_initial_s must be positive and at most control.backoff_max_s")
    if not 5 <= control.keepalive_s <= 3600:
        # The collector refuses pings more often than every 5 s (too_many_pings closes the connection).
        raise ConfigError("control.keepalive_s: must be between 5 and 3600 seconds")
    tcp = control.enabled and control.collector not in ("", "embedded") and not control.collector.startswith("unix:")
    if not fwd.target and fwd.tls is not None and not tcp:
        check_collector_transport("forward.target", fwd.target, fwd.tls, fwd.allow_insecure)  # refuses, naming it
    if not control.enabled:
        return
    target = control.collector
    if not target:
        raise ConfigError(
            "control.collector: required when control.enabled is true and forward.target is not a collector "
            "(set control.collector to unix:///path or HOST:PORT)"
        )
    if target != "embedded" and not LISTEN_RE.match(target):
        raise ConfigError(f"control.collector: {target!r} is not unix:///path, HOST:PORT or embedded")
    if target == "embedded":
        if fwd.target != "embedded":
            raise ConfigError("control.collector: embedded needs forward.target: embedded (the in-process collector)")
        if control.control_key:
            raise ConfigError(
                "control.control_key: the embedded collector's key is pinned automatically; remove control_key"
            )
        return
    if not control.control_key:
        raise ConfigError(
            "control.control_key: required when control is enabled: the collector control key to pin "
            "(the path of its .pub file, or its text NAME+KEYID+BASE64)"
        )
    if not target.startswith("unix:"):
        check_collector_transport("control.collector", target, fwd.tls, fwd.allow_insecure)


def _resolve_control(control: ControlConfig, raw: Any, env: Mapping[str, str], fwd: ForwardConfig, base: Path) -> Any:
    """The defaults that depend on other keys: ``enabled`` (on with a control key), ``collector``
    (``forward.target``), and a ``control_key`` path resolved against the file's directory."""
    section = raw if isinstance(raw, dict) else {}
    if "enabled" not in section and f"{ENV_PREFIX}CONTROL_ENABLED" not in env:
        # On with a pinned key, and in dev: the embedded collector serves ControlService and its key is known.
        control = dataclasses.replace(control, enabled=bool(control.control_key) or fwd.target == "embedded")
    if not control.collector and fwd.target:
        control = dataclasses.replace(control, collector=fwd.target)
    key = control.control_key
    if key and not is_key_text(key):
        from_env = f"{ENV_PREFIX}CONTROL_CONTROL_KEY" in env
        control = dataclasses.replace(control, control_key=str(resolve_path(key, Path.cwd() if from_env else base)))
    return control


_KEY_TEXT_RE = re.compile(r"^[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}$")  # a C2SP verifier key (gateway.signing)


def is_key_text(value: str) -> bool:
    """Whether ``control.control_key`` holds a verifier key's text (``NAME+KEYID+BASE64``) rather than a path."""
    return bool(_KEY_TEXT_RE.match(value.strip()))


def load(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    listen: list[str] | None = None,
    base_dir: Path | None = None,
    operator_listen: list[str] | None = None,
) -> Config:
    """Loads and validates the configuration once.

    Args:
        path: YAML file; None uses defaults only.
        env: environment (``AGENTAUDIT_*`` keys are read); None reads nothing.
        listen: ``--listen`` flags; when given they replace ``server.listen``.
        operator_listen: ``--operator-listen`` flags; when given they replace ``operator.listen``.
        base_dir: directory relative paths resolve against when there is no file (defaults to cwd).
    """
    env = env or {}
    raw: dict[str, Any] = {}
    base = (base_dir or Path.cwd()).resolve()
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        raw = loaded or {}
        base = path.resolve().parent
    hints = typing.get_type_hints(Config)
    sections = {name: hints[name] for name in field_names(Config) if name not in _STRUCTURED_SECTIONS}
    unknown = sorted(set(raw) - set(sections) - set(_STRUCTURED_SECTIONS))
    if unknown:
        known = ", ".join([*sections, *sorted(_STRUCTURED_SECTIONS)])
        raise ConfigError(f"unknown section(s) {', '.join(unknown)} (known: {known})")
    parts = {name: _section(name, cls, raw.get(name), env, base) for name, cls in sections.items()}
    parts["control"] = _resolve_control(parts["control"], raw.get("control"), env, parts["forward"], base)
    cfg = Config(
        **parts,
        operator=parse_operator_section(raw.get("operator"), env, base, operator_listen),
        alerts=parse_alerts_config(raw.get("alerts") or {}),
    )
    server = cfg.server
    if listen:  # as for --operator-listen: relative to the working directory, not to the configuration file
        server = dataclasses.replace(server, listen=listen_addresses("--listen", listen, Path.cwd()))
    server = dataclasses.replace(server, listen=listen_addresses("server.listen", server.listen, base))
    health = dataclasses.replace(cfg.health, listen=listen_addresses("health.listen", cfg.health.listen, base))
    cfg = dataclasses.replace(cfg, server=server, health=health)
    overlap = set(cfg.server.listen) & set(cfg.operator.listen)
    if overlap:
        raise ConfigError(f"operator.listen: {', '.join(sorted(overlap))} is also an agent listener; keep them apart")
    overlap = set(cfg.health.listen) & (set(cfg.server.listen) | set(cfg.operator.listen))
    if overlap:
        raise ConfigError(f"health.listen: {', '.join(sorted(overlap))} is also an API listener; keep them apart")
    _validate(cfg)
    return cfg
