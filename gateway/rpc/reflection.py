"""gRPC server reflection (``grpc.reflection.v1alpha``), loaded on its first call rather than at start.

Reflection is what ``grpcurl`` and similar tools ask a server for its services. The package that serves it
imports protobuf's ``descriptor_pb2`` (the descriptors of ``descriptor.proto`` itself) and gRPC's experimental
stubs: about 1.5 MiB of a sidecar's idle memory, paid by every pod whether anyone ever reflects on it. So the
server gets a small generic handler that owns the reflection service's name; the first request for it imports
``grpc_reflection`` and builds the servicer the package would have registered, and every later request uses it.
What a client sees is the same (the same service list, the same descriptors); only the first call is later by
the import (a few milliseconds).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"
"""The reflection service's full name (``grpc_reflection.v1alpha.reflection.SERVICE_NAME``)."""


if TYPE_CHECKING:
    _Handler = grpc.GenericRpcHandler[Any, Any]
else:  # generic in grpc's type stubs only
    _Handler = grpc.GenericRpcHandler


class LazyReflection(_Handler):
    """Serves reflection for ``service_names`` (this service is added to them) once someone asks for it."""

    def __init__(self, service_names: Sequence[str]) -> None:
        self._service_names = (*service_names, SERVICE_NAME)
        self._handler: grpc.GenericRpcHandler[Any, Any] | None = None
        self._lock = threading.Lock()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        if not method.startswith(f"/{SERVICE_NAME}/"):
            return None  # not ours: the server asks its other handlers
        return self._loaded().service(handler_call_details)

    def _loaded(self) -> grpc.GenericRpcHandler[Any, Any]:
        with self._lock:
            if self._handler is None:
                # The package's own servicer and message types, registered as its add_..._to_server would.
                from grpc_reflection.v1alpha import _async, reflection_pb2  # noqa: PLC0415

                servicer = _async.ReflectionServicer(self._service_names)
                self._handler = grpc.method_handlers_generic_handler(
                    SERVICE_NAME,
                    {
                        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                            servicer.ServerReflectionInfo,
                            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                        )
                    },
                )
            return self._handler


def add_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Adds reflection for ``service_names`` (and itself) to ``server``, loaded on the first reflection call."""
    server.add_generic_rpc_handlers([LazyReflection(service_names)])
