"""Shared gRPC plumbing: request decoding and the one place our errors become statuses."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from gateway import metrics
from gateway.api.wire import Undecodable, deserializer
from gateway.errors import AgentAuditError, InvalidRequestError, to_status

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Call = Callable[[Any, Context], Awaitable[Any]]


def unary(method: str, call: Call) -> Call:
    """Wraps a servicer method: undecodable requests and our errors become statuses in one place."""

    async def handler(request: Any, context: Context) -> Any:
        try:
            if isinstance(request, Undecodable):
                raise InvalidRequestError(request.violations)
            return await call(request, context)
        except AgentAuditError as exc:
            if isinstance(exc, InvalidRequestError):
                metrics.INVALID_REQUESTS.labels(method).inc()
            log.debug("%s refused: %s", method, exc)
            status = to_status(exc)
        except Exception as exc:
            log.exception("%s failed", method)
            status = to_status(exc)
        await context.abort(status.code, status.details, status.trailing_metadata)

    return handler


def service_handler(service: str, methods: Mapping[str, tuple[Call, Any]]) -> grpc.GenericRpcHandler[Any, Any]:
    """Handlers for every unary method of ``service``, with decoders that turn bad bytes into INVALID_ARGUMENT."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            unary(name, call),
            request_deserializer=deserializer(request_type),
            response_serializer=lambda message: message.SerializeToString(),
        )
        for name, (call, request_type) in methods.items()
    }
    return grpc.method_handlers_generic_handler(service, handlers)
