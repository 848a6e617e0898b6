"""Configuration: one frozen dataclass per section, every value checked once, at load, by one set of readers.

Modules:

- :mod:`~gateway.config.values`: the readers (type, range, address, path) every section parser is built from;
  a bad value is a :class:`~gateway.errors.ConfigError` naming the key path and what was expected.
- :mod:`~gateway.config.sidecar`: :class:`Config` and :func:`load` for ``agentaudit serve`` and ``dev``.
- :mod:`~gateway.config.alerts`: the ``alerts:`` section (webhooks), used by :mod:`gateway.alerts`.
- :mod:`~gateway.config.collector`: :class:`CollectorConfig` for ``agentaudit collector``.
- :mod:`~gateway.config.limits`: limits shared with lower layers (the journal's batch bound).

This package imports only the primitives below it (``gateway.errors``), never a component it configures. The
reference is docs/configuration.md.
"""

from __future__ import annotations

from gateway.config.alerts import (
    ALERT_DECISIONS,
    FORMAT_CLOUDEVENTS,
    FORMAT_SLACK,
    FORMATS,
    AlertsConfig,
    WebhookConfig,
    parse_alerts_config,
)
from gateway.config.collector import CollectorConfig, load_collector_config, parse_collector_config
from gateway.config.limits import MAX_ROWS_PER_INSERT
from gateway.config.sidecar import (
    DEFAULT_TCP_PORT,
    ENV_PREFIX,
    LOG_FORMATS,
    OPERATOR_ROLES,
    AuditConfig,
    Config,
    ControlConfig,
    DetectorsConfig,
    ForwardConfig,
    HealthConfig,
    JournalConfig,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    OperatorConfig,
    OperatorTlsConfig,
    OperatorTokenConfig,
    PolicyConfig,
    ServerConfig,
    TelemetryConfig,
    load,
)
from gateway.config.values import HOST_PORT_RE, LISTEN_RE

__all__ = [
    "ALERT_DECISIONS",
    "DEFAULT_TCP_PORT",
    "ENV_PREFIX",
    "FORMATS",
    "FORMAT_CLOUDEVENTS",
    "FORMAT_SLACK",
    "HOST_PORT_RE",
    "LISTEN_RE",
    "LOG_FORMATS",
    "MAX_ROWS_PER_INSERT",
    "OPERATOR_ROLES",
    "AlertsConfig",
    "AuditConfig",
    "CollectorConfig",
    "Config",
    "ControlConfig",
    "DetectorsConfig",
    "ForwardConfig",
    "HealthConfig",
    "JournalConfig",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "OperatorConfig",
    "OperatorTlsConfig",
    "OperatorTokenConfig",
    "PolicyConfig",
    "ServerConfig",
    "TelemetryConfig",
    "WebhookConfig",
    "load",
    "load_collector_config",
    "parse_alerts_config",
    "parse_collector_config",
]
