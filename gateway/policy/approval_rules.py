"""Who may answer an approval, and when the answers add up to a grant: the one place these rules live.

The sidecar's approval book (the enforcer) and the collector's fleet API (which refuses early, so an approver
gets the error at once rather than from the sidecar's acknowledgement) both call these functions; ADR 0016.

Identities are compared in their normalised form (``gateway.identity.normalise_identity``), so ``Alice``,
``alice`` and its full-width form are one person everywhere a rule depends on who someone is.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from gateway import reasons
from gateway.errors import FailedPreconditionError, FieldViolation, InvalidRequestError, PermissionDeniedError
from gateway.identity import normalise_identity

MAX_APPROVALS_REQUIRED = 10


def check_approver(
    *,
    approval_id: str,
    run_id: str,
    actor_id: str,
    approvers: Sequence[str],
    identity: str,
    roles: Collection[str],
    prior_approvers: Sequence[str] = (),
) -> None:
    """Refuses an approver who may not answer this approval.

    1. Nobody approves their own run: the run's initiating actor cannot be its approver, under any spelling.
    2. The rule's approver list, when given, names identities or ``role:NAME`` entries (compared normalised too).
    3. Four-eyes: an approver who already approved it cannot approve (or deny) it again under another spelling.

    Raises:
        PermissionDeniedError: for 1 and 2.
        FailedPreconditionError: for 3, with reason ``approval_already_voted``.
    """
    who = normalise_identity(identity)
    if actor_id and normalise_identity(actor_id) == who:
        raise PermissionDeniedError(f"{identity} initiated run {run_id} and cannot approve it")
    names = {normalise_identity(a) for a in approvers}
    if names and who not in names and not any(normalise_identity(f"role:{r}") in names for r in roles):
        raise PermissionDeniedError(f"{identity} is not among the approvers of {approval_id} ({', '.join(approvers)})")
    if who in {normalise_identity(a) for a in prior_approvers}:
        raise FailedPreconditionError(
            f"{identity} has already approved {approval_id}; it needs a different approver",
            reason=reasons.APPROVAL_ALREADY_VOTED,
        )


def check_justification(grant: bool, comment: str) -> None:
    """A denial must say why (the agent and the investigator read it); a grant's comment is optional.

    Raises:
        InvalidRequestError: a denial with an empty or blank comment.
    """
    if not grant and not comment.strip():
        raise InvalidRequestError([FieldViolation("comment", "a denial needs a justification")])


def grant_reached(distinct_approvals: int, required: int) -> bool:
    """True once ``distinct_approvals`` distinct approvers have granted an approval that needs ``required``."""
    return distinct_approvals >= max(1, required)


def check_required(value: object, where: str) -> int:
    """Validates a rule's ``approvals_required`` (1 to 10).

    Raises:
        InvalidRequestError: not a whole number in range.
    """
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_APPROVALS_REQUIRED:
        raise InvalidRequestError(
            [FieldViolation(where, f"expected a whole number from 1 to {MAX_APPROVALS_REQUIRED}")]
        )
    return value
