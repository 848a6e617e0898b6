"""Every mapping between protobuf messages and domain values, in one place (the servicers only call these)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import duration_pb2

from agentaudit.v1 import gateway_pb2, operator_pb2, types_pb2
from gateway.policy.model import Verdict
from gateway.sidecar.approvals import ABANDONED, DENIED, EXPIRED, GRANTED, PENDING, Approval
from gateway.sidecar.decider import Answer

VERDICTS = {
    Verdict.ALLOW: types_pb2.DECISION_ALLOW,
    Verdict.STOP: types_pb2.DECISION_STOP,
    Verdict.APPROVAL_REQUIRED: types_pb2.DECISION_APPROVAL_REQUIRED,
}
APPROVAL_STATES = {
    PENDING: gateway_pb2.APPROVAL_STATE_PENDING,
    GRANTED: gateway_pb2.APPROVAL_STATE_GRANTED,
    DENIED: gateway_pb2.APPROVAL_STATE_DENIED,
    EXPIRED: gateway_pb2.APPROVAL_STATE_EXPIRED,
    ABANDONED: gateway_pb2.APPROVAL_STATE_ABANDONED,
}


def duration(seconds: float) -> duration_pb2.Duration:
    """A protobuf Duration of ``seconds`` (nanosecond precision)."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def decide_response(answer: Answer) -> gateway_pb2.DecideResponse:
    """The DecideResponse for an answer of the Decide use case."""
    decision = answer.decision
    response = gateway_pb2.DecideResponse(
        decision=VERDICTS[decision.verdict],
        reason=decision.reason,
        policy_layer=decision.layer,
        policy_rule=decision.rule,
        policy_version=decision.policy_version,
        event_id=answer.event_id,
        action_key=answer.action_key,
        approval_id=answer.approval_id,
    )
    if decision.retry_after_s is not None:
        response.retry_after.CopyFrom(duration(decision.retry_after_s))
    return response


def wait_approval_response(approval: Approval) -> gateway_pb2.WaitApprovalResponse:
    """The WaitApprovalResponse for an approval's current state: the state only.

    The agent port is unauthenticated and WaitApproval names only an approval id, so the approver's identity and
    comment are never returned there (docs/operator.md); operators read them through ListApprovals.
    """
    return gateway_pb2.WaitApprovalResponse(state=APPROVAL_STATES[approval.state])


def add_approval_details(message: operator_pb2.Approval, pre_event: Mapping[str, Any], previous_steps: int) -> None:
    """Fills the Approval fields that show what is approved, from the signed pre-event that asked for it.

    The arguments are the journaled ones: a redacted value was never stored, only its path (``redacted_paths``).
    """
    args = pre_event.get("args")
    if isinstance(args, Mapping):
        message.args.update(args)
    paths = pre_event.get("redacted_paths")
    if isinstance(paths, list):
        message.redacted_paths.extend(str(p) for p in paths)
    message.reason = str(pre_event.get("reason") or "")
    message.previous_steps = previous_steps
    # What the grant is bound to and needs, as asked (a row read back from the table does not hold them).
    message.policy_version = str(pre_event.get("policy_version") or "")
    required = pre_event.get("approvals_required")
    if isinstance(required, int) and not isinstance(required, bool) and required >= 1:
        message.approvals_required = required
    else:
        message.approvals_required = 1
