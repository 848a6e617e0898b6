"""Shared gRPC plumbing: request decoding and the one place our errors become statuses."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from gateway import metrics
from gateway.errors import AgentAuditError, InvalidRequestError
from gateway.rpc.status import to_status
from gateway.rpc.wire import Undecodable, deserializer

if TYPE_CHECKING:
    from gateway.rpc.telemetry import Telemetry

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Call = Callable[[Any, Context], Awaitable[Any]]


def unary(method: str, call: Call) -> Call:
    """Wraps a servicer method: undecodable requests and our errors become statuses in one place; timed."""
    latency = metrics.REQUEST_SECONDS.labels(method)
    invalid = metrics.INVALID_REQUESTS.labels(method)

    async def handler(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        try:
            if isinstance(request, Undecodable):
                raise InvalidRequestError(request.violations)
            response = await call(request, context)
            latency.observe(time.perf_counter() - started)
            return response
        except AgentAuditError as exc:
            if isinstance(exc, InvalidRequestError):
                invalid.inc()
            log.debug("%s refused: %s", method, exc)
            status = to_status(exc)
        except Exception as exc:
            log.exception("%s failed", method)
            status = to_status(exc)
        latency.observe(time.perf_counter() - started)
        await context.abort(status.code, status.details, status.trailing_metadata)

    return handler


def traced(service: str, method: str, call: Call, telemetry: Telemetry) -> Call:
    """Wraps a unary handler in an OpenTelemetry server span (only built when telemetry is configured)."""

    async def handler(request: Any, context: Context) -> Any:
        with telemetry.server_span(service, method, request, context.invocation_metadata()) as span:
            response = await call(request, context)
            telemetry.annotate(span, response)
            return response

    return handler


StreamCall = Callable[[Any, Context], AsyncIterator[Any]]


def server_stream(method: str, call: StreamCall) -> StreamCall:
    """Like :func:`unary` for a server-streaming method: errors before or between messages become statuses."""

    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            if isinstance(request, Undecodable):
                raise InvalidRequestError(request.violations)
            async for message in call(request, context):
                yield message
            return
        except AgentAuditError as exc:
            log.debug("%s refused: %s", method, exc)
            status = to_status(exc)
        except Exception as exc:
            log.exception("%s failed", method)
            status = to_status(exc)
        await context.abort(status.code, status.details, status.trailing_metadata)

    return handler


BidiCall = Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]


def service_handler(
    service: str,
    methods: Mapping[str, tuple[Call, Any]],
    streams: Mapping[str, tuple[StreamCall, Any]] | None = None,
    telemetry: Telemetry | None = None,
    bidi: Mapping[str, tuple[BidiCall, Callable[[bytes], Any]]] | None = None,
) -> grpc.GenericRpcHandler[Any, Any]:
    """Handlers for the methods of ``service``, with decoders that turn bad bytes into INVALID_ARGUMENT.

    A ``bidi`` method brings its own decoder and answers its own errors (per message, as the Session does).
    """

    def serialize(message: Any) -> bytes:
        return bytes(message.SerializeToString())

    def wrap(name: str, call: Call) -> Call:
        handler = unary(name, call)
        return handler if telemetry is None else traced(service, name, handler, telemetry)

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(
            wrap(name, call), request_deserializer=deserializer(request_type), response_serializer=serialize
        )
        for name, (call, request_type) in methods.items()
    }
    for name, (stream_call, request_type) in (streams or {}).items():
        handlers[name] = grpc.unary_stream_rpc_method_handler(
            server_stream(name, stream_call),
            request_deserializer=deserializer(request_type),
            response_serializer=serialize,
        )
    for name, (bidi_call, decode) in (bidi or {}).items():
        handlers[name] = grpc.stream_stream_rpc_method_handler(
            bidi_call, request_deserializer=decode, response_serializer=serialize
        )
    return grpc.method_handlers_generic_handler(service, handlers)
