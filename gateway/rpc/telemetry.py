"""Optional OpenTelemetry spans for the gRPC servers, exported over OTLP/gRPC (``telemetry.otlp_endpoint``).

Off by default, and then absent: no import of OpenTelemetry, no wrapper on the request path. When on, every RPC
gets a server span whose parent is the caller's W3C trace context (the Decide request's ``traceparent`` field, else
the ``traceparent`` metadata), carrying the ids that link it to the journal: ``agentaudit.event_id``, the
decision and reason. The journal event, in turn, stores the caller's ``trace_id`` and ``span_id``. Never an
argument value: spans leave the machine.

The tracer provider is private to the sidecar (the global one is left alone), so an embedding program's own
OpenTelemetry set-up is not changed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from gateway import __version__
from gateway.config import TelemetryConfig
from gateway.errors import ConfigError
from gateway.tracecontext import traceparent_header

log = logging.getLogger(__name__)

# Request and response fields copied to span attributes when present (ids and outcomes only, never values).
_REQUEST_ATTRIBUTES = ("run_id", "tenant_id", "step_id", "agent_id", "approval_id", "event_id")
_RESPONSE_ATTRIBUTES = ("event_id", "reason", "policy_layer", "policy_rule", "policy_version", "approval_id")


class Telemetry:
    """A tracer with its own provider and exporter; :meth:`shutdown` flushes what is queued."""

    def __init__(self, provider: Any, tracer: Any, propagator: Any) -> None:
        self._provider = provider
        self._tracer = tracer
        self._propagator = propagator

    @contextlib.contextmanager
    def server_span(self, service: str, method: str, request: Any, metadata: Any) -> Iterator[Any]:
        """A SERVER span for one RPC, child of the caller's trace context if it sent one."""
        from opentelemetry.trace import SpanKind  # noqa: PLC0415 - optional dependency

        # The same precedence as the journal's trace_id (GatewayServicer.decide): the request field, else a valid
        # header, so the span's parent and the event always name the same trace.
        field = getattr(request, "traceparent", "")
        traceparent = field if isinstance(field, str) and field else traceparent_header(metadata)
        carrier = {key: value for key, value in (metadata or ()) if key == "tracestate"}
        if traceparent:
            carrier["traceparent"] = traceparent
        parent = self._propagator.extract(carrier)
        attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        for name in _REQUEST_ATTRIBUTES:
            value = getattr(request, name, None)
            if value:
                attributes[f"agentaudit.{name}"] = value
        action_name = getattr(getattr(request, "action", None), "name", None)
        if isinstance(action_name, str) and action_name:
            attributes["agentaudit.action"] = action_name
        with self._tracer.start_as_current_span(
            f"{service}/{method}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            yield span

    @staticmethod
    def annotate(span: Any, response: Any) -> None:
        """Copies the outcome's ids (event id, decision, reason) from a response onto its span."""
        for name in _RESPONSE_ATTRIBUTES:
            value = getattr(response, name, "")
            if value:
                span.set_attribute(f"agentaudit.{name}", value)
        decision = getattr(response, "decision", None)
        if isinstance(decision, int) and decision:
            from agentaudit.v1 import types_pb2  # noqa: PLC0415

            name = types_pb2.Decision.Name(types_pb2.Decision.ValueType(decision))
            span.set_attribute("agentaudit.decision", name.removeprefix("DECISION_").lower())

    def shutdown(self) -> None:
        """Exports what is queued (bounded by the exporter's timeout), then stops."""
        self._provider.shutdown()


def from_config(config: TelemetryConfig, origin: str) -> Telemetry | None:
    """The sidecar's telemetry, or None when no OTLP endpoint is configured."""
    if not config.otlp_endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"telemetry.otlp_endpoint is set but OpenTelemetry is not installed ({exc.name}): "
            "pip install 'agentaudit[otel]'"
        ) from None
    resource = Resource.create(
        {"service.name": config.service_name, "service.version": __version__, "agentaudit.origin": origin}
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=config.otlp_insecure, timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    log.info("exporting spans over OTLP/gRPC to %s", config.otlp_endpoint)
    return Telemetry(provider, provider.get_tracer("agentaudit", __version__), TraceContextTextMapPropagator())
