"""Plain values the client returns and accepts, independent of the generated protobuf classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DecisionName = Literal["allow", "stop", "approval_required"]
ActorTypeName = Literal["user", "service", "agent"]
ScopeName = Literal["user", "tenant", "global"]
ResultStatusName = Literal["succeeded", "failed", "cancelled", "timed_out"]
ApprovalStateName = Literal["pending", "granted", "denied", "expired", "abandoned"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who initiated a run.

    Attributes:
        type: Kind of principal: "user", "service" or "agent".
        id: Stable identifier of the principal, for example a user id.
    """

    type: ActorTypeName
    id: str


@dataclass(frozen=True, slots=True)
class DecideResult:
    """The sidecar's answer to a proposed action. A stop is a value here, not an exception.

    Attributes:
        decision: "allow", "stop" or "approval_required".
        reason: Stable snake_case reason code, for example "rate_limited_tenant".
        policy_layer: Policy layer that decided.
        policy_rule: Policy rule that decided (empty when the default decided).
        policy_version: Hash of the policy document that decided.
        event_id: Id of the journaled pre-event; pass it to ``report_result``.
        action_key: Stable key of the action name and canonical arguments.
        approval_id: Set when the decision is "approval_required".
        retry_after: Seconds to wait before retrying (rate limits), or None.
    """

    decision: DecisionName
    reason: str
    policy_layer: str = ""
    policy_rule: str = ""
    policy_version: str = ""
    event_id: str = ""
    action_key: str = ""
    approval_id: str = ""
    retry_after: float | None = None

    @property
    def allowed(self) -> bool:
        """True when the action may be executed."""
        return self.decision == "allow"


@dataclass(frozen=True, slots=True)
class ReportResult:
    """Acknowledgement of a reported execution result.

    Attributes:
        event_id: Id of the journaled post-event.
        duplicate: True when the pre-event already had a result; nothing new was journaled and
            ``event_id`` names the post-event recorded first.
    """

    event_id: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class ApprovalOutcome:
    """State of an approval after waiting for it.

    Attributes:
        state: "pending" (still unresolved when the wait ended), "granted", "denied", "expired" (nobody answered
            in time) or "abandoned" (granted, but not used within its use-by time).
        resolved_by: Empty on the agent port, which returns the state only (the approver and comment are for
            operators, through ListApprovals); kept for compatibility.
        comment: Empty on the agent port, like ``resolved_by``.
    """

    state: ApprovalStateName
    resolved_by: str = ""
    comment: str = ""

    @property
    def granted(self) -> bool:
        """True when the approval was granted."""
        return self.state == "granted"
