"""Exceptions raised by the client, and the one translation from gRPC errors.

::

    AgentAuditError
    ├── DecisionError              the sidecar answered something other than allow (raised by guard)
    │   ├── ActionStopped          decision "stop"
    │   └── ApprovalRequired       decision "approval_required"
    └── GatewayError               the call failed (carries the gRPC status code)
        ├── InvalidRequestError    INVALID_ARGUMENT, with the BadRequest field violations
        ├── NotFoundError          NOT_FOUND (for example an unknown event id)
        ├── FailedPreconditionError  FAILED_PRECONDITION (for example reporting a stopped action)
        ├── ResourceExhaustedError   RESOURCE_EXHAUSTED: overloaded, retry later
        ├── UnavailableError       UNAVAILABLE: the sidecar cannot be reached
        └── DeadlineExceededError  DEADLINE_EXCEEDED: no answer within the timeout

``decide`` itself never raises a ``DecisionError``: a deny is a value (``DecideResult``). Only ``guard``
turns it into an exception, because the guarded block must not run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from .models import DecideResult

# Trailing metadata key carrying a serialized google.rpc.Status (the "rich error model").
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class AgentAuditError(Exception):
    """Base class of every exception raised by this client."""


class DecisionError(AgentAuditError):
    """The sidecar did not allow the action. Carries the full decision in ``result``."""

    def __init__(self, result: DecideResult) -> None:
        super().__init__(f"{result.decision}: {result.reason}")
        self.result = result

    @property
    def reason(self) -> str:
        """Stable snake_case reason code, for example "rate_limited_tenant"."""
        return self.result.reason

    @property
    def event_id(self) -> str:
        """Id of the journaled pre-event."""
        return self.result.event_id

    @property
    def approval_id(self) -> str:
        """Approval to wait for (set for ``ApprovalRequired``)."""
        return self.result.approval_id

    @property
    def action_key(self) -> str:
        """Stable key of the action name and canonical arguments."""
        return self.result.action_key

    @property
    def policy_layer(self) -> str:
        """Policy layer that decided."""
        return self.result.policy_layer

    @property
    def policy_rule(self) -> str:
        """Policy rule that decided."""
        return self.result.policy_rule

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before retrying (rate limits), or None."""
        return self.result.retry_after


class ActionStopped(DecisionError):
    """The sidecar answered "stop": the action must not be executed."""


class ApprovalRequired(DecisionError):
    """The sidecar answered "approval_required": wait for ``approval_id`` and decide again with it."""


class GatewayError(AgentAuditError):
    """A call to the sidecar failed.

    Attributes:
        code: The gRPC status code.
        details: The server's message.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details


class InvalidRequestError(GatewayError):
    """The request was malformed (INVALID_ARGUMENT).

    Attributes:
        violations: ``(field, description)`` pairs from the server's ``google.rpc.BadRequest``.
    """

    def __init__(self, code: grpc.StatusCode, details: str, violations: list[tuple[str, str]]) -> None:
        super().__init__(code, details)
        self.violations = violations

    @property
    def fields(self) -> list[str]:
        """Names of the fields that were rejected."""
        return [field for field, _ in self.violations]


class NotFoundError(GatewayError):
    """An id named in the request is unknown (NOT_FOUND)."""


class FailedPreconditionError(GatewayError):
    """The request is not valid in the current state (FAILED_PRECONDITION)."""


class ResourceExhaustedError(GatewayError):
    """The sidecar is overloaded (RESOURCE_EXHAUSTED); retry later.

    Attributes:
        retry_after: Seconds to wait, when the server sent a ``google.rpc.RetryInfo``; else None.
    """

    def __init__(self, code: grpc.StatusCode, details: str, retry_after: float | None) -> None:
        super().__init__(code, details)
        self.retry_after = retry_after


class UnavailableError(GatewayError):
    """The sidecar cannot be reached (UNAVAILABLE): not running, wrong target, or shutting down."""


class DeadlineExceededError(GatewayError):
    """The sidecar did not answer within the timeout (DEADLINE_EXCEEDED)."""


_SIMPLE_ERRORS: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def from_rpc_error(exc: grpc.RpcError) -> GatewayError:
    """Translates a ``grpc.RpcError`` (sync or ``grpc.aio``) to the matching ``GatewayError``."""
    # Every error grpc raises for a call also implements grpc.Call; a bare RpcError carries no status.
    if not isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return GatewayError(grpc.StatusCode.UNKNOWN, str(exc))
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequestError(code, details, _field_violations(exc.trailing_metadata()))
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhaustedError(code, details, _retry_delay(exc.trailing_metadata()))
    return _SIMPLE_ERRORS.get(code, GatewayError)(code, details)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_status(status: Any) -> GatewayError:
    """Translates a Session's per-message ``SessionStatus`` (a ``google.rpc.Status``) to a ``GatewayError``."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    details = ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequestError(code, status.message, _field_violations(details))
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhaustedError(code, status.message, _retry_delay(details))
    return _SIMPLE_ERRORS.get(code, GatewayError)(code, status.message)


def raise_for_decision(result: DecideResult) -> None:
    """Raises ``ActionStopped`` or ``ApprovalRequired`` unless the decision is allow."""
    if result.decision == "approval_required":
        raise ApprovalRequired(result)
    if result.decision != "allow":
        raise ActionStopped(result)


def _status(metadata: Iterable[Any] | None) -> status_pb2.Status | None:
    # Sync calls give (key, value) namedtuples, grpc.aio a Metadata of pairs: both unpack alike.
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status: status_pb2.Status = status_pb2.Status.FromString(value)
            return status
    return None


def _field_violations(metadata: Iterable[Any] | None) -> list[tuple[str, str]]:
    status = _status(metadata)
    violations: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations


def _retry_delay(metadata: Iterable[Any] | None) -> float | None:
    status = _status(metadata)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            delay: duration_pb2.Duration = retry_info.retry_delay
            return delay.ToNanoseconds() / 1e9
    return None
