"""The one translation of agentaudit's errors (:mod:`gateway.errors`) into the gRPC status a client sees.

Anything that is not an :class:`~gateway.errors.AgentAuditError` of a mapped kind is an internal fault: the
client gets a generic message and the detail goes to the log.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.errors import (
    AgentAuditError,
    FailedPreconditionError,
    InvalidRequestError,
    JournalUnavailableError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UnauthenticatedError,
)

# google.rpc.ErrorInfo.domain of every reason agentaudit attaches; the reason is the code in UPPER_SNAKE_CASE.
ERROR_DOMAIN = "agentaudit.dev"

_CODES: list[tuple[type[AgentAuditError], grpc.StatusCode]] = [
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (JournalUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ServiceUnavailableError, grpc.StatusCode.UNAVAILABLE),
]


def to_status(exc: BaseException) -> grpc.Status:
    """Maps an exception to the gRPC status a client sees. The one place this translation happens."""
    proto = _translate(exc)
    status: grpc.Status = rpc_status.to_status(proto)
    if isinstance(exc, OverloadedError) and exc.retry_after_s is not None:
        # Also as plain metadata, so any client can honour it without decoding status details.
        pushback = (("retry-after-ms", str(round(exc.retry_after_s * 1000))),)
        status = _Status(status.code, status.details, (*status.trailing_metadata, *pushback))
    return status


def to_rpc_status(exc: BaseException) -> status_pb2.Status:
    """The same translation as :func:`to_status`, as a ``google.rpc.Status`` (a Session's per-message error)."""
    return _translate(exc)


def _translate(exc: BaseException) -> status_pb2.Status:
    code = next((c for cls, c in _CODES if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
    if code is grpc.StatusCode.INTERNAL:
        message = "internal error"  # the detail goes to the log, never to the client
    elif isinstance(exc, JournalUnavailableError):
        message = "journal unavailable"
    else:
        message = str(exc)
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if isinstance(exc, InvalidRequestError):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in exc.violations
                ]
            )
        )
        proto.details.append(detail)
    if isinstance(exc, FailedPreconditionError) and exc.reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=exc.reason.upper(), domain=ERROR_DOMAIN))
        proto.details.append(detail)
    if isinstance(exc, OverloadedError) and exc.retry_after_s is not None:
        detail = any_pb2.Any()
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(round(exc.retry_after_s * 1000))
        detail.Pack(retry)
        proto.details.append(detail)
    return proto


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def error_reason(trailing_metadata: object) -> str:
    """The ``ErrorInfo`` reason (lower snake_case) in a failed call's trailing metadata, or "" if none is ours."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return str(info.reason).lower()
    return ""
