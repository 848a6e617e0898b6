"""Conversions between the client's plain values and the generated protobuf messages.

Shared by the sync and asyncio clients, so both build identical requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar

from google.protobuf import duration_pb2, struct_pb2

from agentaudit.v1 import gateway_pb2, types_pb2

from .models import (
    Actor,
    ApprovalOutcome,
    ApprovalStateName,
    DecideResult,
    DecisionName,
    ReportResult,
    ResultStatusName,
    ScopeName,
)

# Accepted forms of the enum-valued arguments: the readable name or the generated enum value.
ActorLike: TypeAlias = Actor | tuple[str, str]  # ("user", "u_1"): the type is checked at runtime
ScopeLike: TypeAlias = ScopeName | types_pb2.Scope.ValueType
ResultStatusLike: TypeAlias = ResultStatusName | types_pb2.ResultStatus.ValueType
DurationLike: TypeAlias = float | timedelta

_ACTOR_TYPES: dict[str, types_pb2.ActorType.ValueType] = {
    "user": types_pb2.ACTOR_TYPE_USER,
    "service": types_pb2.ACTOR_TYPE_SERVICE,
    "agent": types_pb2.ACTOR_TYPE_AGENT,
}
_SCOPES: dict[str, types_pb2.Scope.ValueType] = {
    "user": types_pb2.SCOPE_USER,
    "tenant": types_pb2.SCOPE_TENANT,
    "global": types_pb2.SCOPE_GLOBAL,
}
_RESULT_STATUSES: dict[str, types_pb2.ResultStatus.ValueType] = {
    "succeeded": types_pb2.RESULT_STATUS_SUCCEEDED,
    "failed": types_pb2.RESULT_STATUS_FAILED,
    "cancelled": types_pb2.RESULT_STATUS_CANCELLED,
    "timed_out": types_pb2.RESULT_STATUS_TIMED_OUT,
}
_DECISIONS: dict[types_pb2.Decision.ValueType, DecisionName] = {
    types_pb2.DECISION_ALLOW: "allow",
    types_pb2.DECISION_STOP: "stop",
    types_pb2.DECISION_APPROVAL_REQUIRED: "approval_required",
}
_APPROVAL_STATES: dict[gateway_pb2.ApprovalState.ValueType, ApprovalStateName] = {
    gateway_pb2.APPROVAL_STATE_PENDING: "pending",
    gateway_pb2.APPROVAL_STATE_GRANTED: "granted",
    gateway_pb2.APPROVAL_STATE_DENIED: "denied",
    gateway_pb2.APPROVAL_STATE_EXPIRED: "expired",
    gateway_pb2.APPROVAL_STATE_ABANDONED: "abandoned",
}


def to_struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    """Converts a JSON-like mapping to a Struct (None stays None, so the field is left unset)."""
    if values is None:
        return None
    struct = struct_pb2.Struct()
    try:
        struct.update(values)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"values must be JSON-like (dict, list, str, number, bool, None), got {values!r}") from exc
    return struct


def to_duration(value: DurationLike) -> duration_pb2.Duration:
    """Converts seconds (float) or a timedelta to a Duration."""
    duration = duration_pb2.Duration()
    if isinstance(value, timedelta):
        duration.FromTimedelta(value)
    else:
        duration.FromNanoseconds(round(value * 1e9))
    return duration


_E = TypeVar("_E", bound=int)


def _enum(value: str | _E, names: Mapping[str, _E], what: str) -> _E:
    if isinstance(value, str):
        try:
            return names[value]
        except KeyError:
            raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(names)}") from None
    return value


def _actor(actor: ActorLike) -> types_pb2.Actor:
    kind, actor_id = (actor.type, actor.id) if isinstance(actor, Actor) else actor
    return types_pb2.Actor(type=_enum(kind, _ACTOR_TYPES, "actor type"), id=actor_id)


def decide_request(
    *,
    run_id: str,
    tenant_id: str,
    action: str,
    args: Mapping[str, Any] | None,
    step_id: int,
    actor: ActorLike | None,
    agent_id: str,
    scope: ScopeLike | None,
    approval_id: str,
    traceparent: str,
    labels: Mapping[str, str] | None,
) -> gateway_pb2.DecideRequest:
    """Builds a DecideRequest from the client's keyword arguments."""
    return gateway_pb2.DecideRequest(
        run_id=run_id,
        step_id=step_id,
        tenant_id=tenant_id,
        actor=_actor(actor) if actor is not None else None,
        agent_id=agent_id,
        action=gateway_pb2.Action(name=action, args=to_struct(args)),
        scope=_enum(scope, _SCOPES, "scope") if scope is not None else types_pb2.SCOPE_UNSPECIFIED,
        approval_id=approval_id,
        traceparent=traceparent,
        labels=labels,
    )


def decide_result(response: gateway_pb2.DecideResponse) -> DecideResult:
    """Converts a DecideResponse to a DecideResult."""
    return DecideResult(
        # Fail closed: a decision this client does not know must never run the action.
        decision=_DECISIONS.get(response.decision, "stop"),
        reason=response.reason,
        policy_layer=response.policy_layer,
        policy_rule=response.policy_rule,
        policy_version=response.policy_version,
        event_id=response.event_id,
        action_key=response.action_key,
        approval_id=response.approval_id,
        retry_after=(response.retry_after.ToNanoseconds() / 1e9 if response.HasField("retry_after") else None),
    )


def report_request(
    event_id: str,
    *,
    status: ResultStatusLike,
    error: str,
    output: Mapping[str, Any] | None,
    duration: DurationLike | None,
) -> gateway_pb2.ReportResultRequest:
    """Builds a ReportResultRequest."""
    return gateway_pb2.ReportResultRequest(
        event_id=event_id,
        status=_enum(status, _RESULT_STATUSES, "result status"),
        error=error,
        output=to_struct(output),
        duration=to_duration(duration) if duration is not None else None,
    )


def report_result(response: gateway_pb2.ReportResultResponse) -> ReportResult:
    """Converts a ReportResultResponse to a ReportResult."""
    return ReportResult(event_id=response.event_id, duplicate=response.duplicate)


def approval_outcome(response: gateway_pb2.WaitApprovalResponse) -> ApprovalOutcome:
    """Converts a WaitApprovalResponse to an ApprovalOutcome (an unknown state counts as pending)."""
    return ApprovalOutcome(
        state=_APPROVAL_STATES.get(response.state, "pending"),
        resolved_by=response.resolved_by,
        comment=response.comment,
    )
