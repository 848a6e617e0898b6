"""The fleet's values and the pure decisions on them (no I/O): what a sidecar's approval entries say, what a vote
does to an approval, and the signed form of a ``control_log`` row.

:mod:`gateway.collector.fleet` runs these inside its transactions; they are here so they can be read and tested
without a database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway import reasons
from gateway.canonical import canonical_json
from gateway.collector.ingest import is_storable_text
from gateway.errors import FailedPreconditionError, FieldViolation, InvalidRequestError
from gateway.identity import Operator, normalise_identity
from gateway.journal.entry import EventKind, travels_alone
from gateway.journal.state import DEFAULT_EXPIRES_S, EXPIRES_NEVER
from gateway.policy.approval_rules import check_approver, check_justification, grant_reached

PENDING, GRANTED, DENIED, EXPIRED, ABANDONED, USED = "pending", "granted", "denied", "expired", "abandoned", "used"
STATES = (PENDING, GRANTED, DENIED, EXPIRED, ABANDONED, USED)
CHANNELS = ("cli", "console", "slack")
SCOPES = ("global", "tenant", "agent", "run")
MAX_COMMENT_BYTES = 1024
MAX_TARGET_BYTES = 256
KIND_APPROVAL_VOTE = "approval_vote"
KIND_KILL_SWITCH = "kill_switch"
KIND_OPERATOR_DENIED = "operator_denied"  # a refused console or Slack attempt: journaled, never sent to a sidecar
ACT_DOMAIN = b"agentaudit control-log v1\n"
APPROVAL_VOTED = "approval_voted"  # a non-final four-eyes vote journaled by the sidecar


@dataclass(frozen=True)
class FleetVote:
    """One approver's answer."""

    approver: str
    grant: bool
    channel: str
    comment: str
    at_ms: int


@dataclass(frozen=True)
class FleetApproval:
    """An approval of one sidecar, as the fleet knows it (its signed entries, plus votes given centrally)."""

    origin: str
    approval_id: str
    state: str  # pending|granted|denied|expired|abandoned|used
    tenant_id: str
    agent_id: str
    run_id: str
    step_id: int
    actor_id: str
    action: str
    policy_rule: str
    reason: str
    args: dict[str, Any]  # redacted, exactly as journaled
    redacted_paths: tuple[str, ...]
    approvers: tuple[str, ...]
    approvals_required: int
    votes: tuple[FleetVote, ...]
    created_ms: int
    expires_ms: int | None
    resolved_by: str
    resolved_ms: int | None
    comment: str
    policy_version: str
    event_seq: int


@dataclass(frozen=True)
class FleetSwitch:
    """A fleet kill switch engaged through the collector."""

    scope: str
    target: str
    reason: str
    operator: str
    channel: str
    engaged_ms: int


@dataclass(frozen=True)
class ControlAct:
    """One ``control_log`` row: ``seq`` is its id, ``origin`` "" means every sidecar; ``fields`` carry ``act``."""

    seq: int
    kind: str
    origin: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class OriginStatus:
    """A sidecar's control stream as the fleet last saw it."""

    origin: str
    connected: bool
    last_contact_ms: int | None
    applied_seq: int
    replica: str


# --- the sidecar's signed entries ---------------------------------------------------------------------------

_STATE_OF_KIND = {
    EventKind.APPROVAL_GRANTED.label: GRANTED,
    EventKind.APPROVAL_DENIED.label: DENIED,
    EventKind.APPROVAL_EXPIRED.label: EXPIRED,
    EventKind.APPROVAL_ABANDONED.label: ABANDONED,
}


@dataclass(frozen=True)
class Opened:
    """An ``approval_required`` pre-event: the approval and everything an approver must see."""

    seq: int
    approval: FleetApproval


@dataclass(frozen=True)
class Moved:
    """An entry that moves an approval to ``state``; ``resolution`` (by, comment) None keeps the recorded one."""

    seq: int
    approval_id: str
    state: str
    at_ms: int
    resolution: tuple[str, str] | None
    basics: dict[str, Any]


@dataclass(frozen=True)
class Voted:
    """An approver's answer recorded in the sidecar's journal."""

    seq: int
    approval_id: str
    vote: FleetVote


Change = Opened | Moved | Voted


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _whole(body: dict[str, Any], key: str, default: int = 0) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        return default
    return int(value)


def _actor_id(body: dict[str, Any]) -> str:
    actor = body.get("actor")
    return _text(actor, "id") if isinstance(actor, dict) else ""


def _basics(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenant_id": _text(body, "tenant_id"),
        "agent_id": _text(body, "agent_id"),
        "run_id": _text(body, "run_id"),
        "step_id": _whole(body, "step_id"),
        "action": _text(body, "action"),
        "policy_rule": _text(body, "policy_rule"),
    }


def changes_of(origin: str, seq: int, unix_nanos: int, body: dict[str, Any]) -> list[Change]:
    """What one verified entry says about the fleet's approvals (nothing for most entries)."""
    kind, at_ms = body.get("kind"), unix_nanos // 1_000_000
    if kind == EventKind.PRE_EXEC.label:
        return _pre_event_changes(origin, seq, at_ms, body)
    approval_id = _text(body, "approval_id")
    if not approval_id:
        return []
    approver, comment = _actor_id(body), _text(body, "comment")
    channel = _text(body, "channel") or "cli"
    if kind == APPROVAL_VOTED:  # a non-final answer: the sidecar still holds it pending
        vote = FleetVote(approver, body.get("grant") is not False, channel, comment, at_ms)
        return [Moved(seq, approval_id, PENDING, at_ms, None, _basics(body)), Voted(seq, approval_id, vote)]
    state = _STATE_OF_KIND.get(str(kind))
    if state is None:
        return []
    if state == ABANDONED:  # who granted it stays recorded
        return [Moved(seq, approval_id, state, at_ms, None, _basics(body))]
    moved = Moved(seq, approval_id, state, at_ms, (approver if state != EXPIRED else "", comment), _basics(body))
    if state == EXPIRED:
        return [moved]
    return [moved, Voted(seq, approval_id, FleetVote(approver, state == GRANTED, channel, comment, at_ms))]


def _pre_event_changes(origin: str, seq: int, at_ms: int, body: dict[str, Any]) -> list[Change]:
    resumed = _text(body, "resumed_approval_id")
    if resumed and body.get("decision") == "allow":
        return [Moved(seq, resumed, USED, at_ms, None, _basics(body))]
    approval_id = _text(body, "approval_id")
    if body.get("decision") != "approval_required" or not approval_id or approval_id == resumed:
        return []
    # As the sidecar derives it from the same pre-event (journal.state.SignedStateFold): never, or seconds.
    parks = body.get("approval_expires_in_s") == EXPIRES_NEVER
    expires_ms = None if parks else at_ms + (_whole(body, "approval_expires_in_s") or DEFAULT_EXPIRES_S) * 1000
    args = body.get("args")
    paths, approvers = body.get("redacted_paths"), body.get("approvers")
    approval = FleetApproval(
        origin=origin,
        approval_id=approval_id,
        state=PENDING,
        **_basics(body),
        actor_id=_actor_id(body),
        reason=_text(body, "reason"),
        args=args if isinstance(args, dict) else {},
        redacted_paths=tuple(p for p in paths if isinstance(p, str)) if isinstance(paths, list) else (),
        approvers=tuple(a for a in approvers if isinstance(a, str)) if isinstance(approvers, list) else (),
        approvals_required=max(1, _whole(body, "approvals_required", 1)),
        votes=(),
        created_ms=at_ms,
        expires_ms=expires_ms,
        resolved_by="",
        resolved_ms=None,
        comment="",
        policy_version=_text(body, "policy_version"),
        event_seq=seq,
    )
    return [Opened(seq, approval)]


def might_concern_approvals(kind: int, raw: bytes) -> bool:
    """A cheap test on an entry's bytes before it is verified and parsed: most entries are ordinary pre-events.

    The same test by which a v2 journal's writer signs an entry on its own (:func:`~gateway.journal.entry.
    travels_alone`): a false positive only costs a parse; there are no false negatives.
    """
    return travels_alone(kind, raw)


# --- votes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActDraft:
    """A ``control_log`` row before it has an id."""

    kind: str
    origin: str
    fields: dict[str, Any]
    operator: str
    channel: str
    at_ms: int


@dataclass(frozen=True)
class VotePlan:
    """What an accepted vote writes: the vote, the approval's new state and the act."""

    vote: FleetVote
    state: str
    act: ActDraft
    roles: tuple[str, ...] = field(default=())


def check_vote_request(approval_id: str, grant: bool, comment: str, channel: str) -> None:
    """The request-shaped checks, before any lookup.

    Raises:
        InvalidRequestError: naming every bad field.
    """
    violations = []
    if not approval_id or not is_storable_text(approval_id) or len(approval_id.encode()) > 128:
        violations.append(FieldViolation("approval_id", "is required (at most 128 bytes of text)"))
    if not is_storable_text(comment) or len(comment.encode()) > MAX_COMMENT_BYTES:
        violations.append(FieldViolation("comment", f"must be text of at most {MAX_COMMENT_BYTES} bytes"))
    if channel not in CHANNELS:
        violations.append(FieldViolation("channel", f"must be one of {', '.join(CHANNELS)}"))
    if violations:
        raise InvalidRequestError(violations)
    check_justification(grant, comment)


def plan_vote(
    approval: FleetApproval, *, grant: bool, operator: Operator, comment: str, channel: str, now_ms: int
) -> VotePlan:
    """Decides a vote on ``approval`` as read under the fleet's write lock.

    1. Only a pending approval whose request (its pre-event) has arrived takes votes
       (``approval_already_resolved`` names who resolved it).
    2. A pending approval past its expiry is refused (``approval_expired``) even before its sidecar says so.
    3. :func:`~gateway.policy.approval_rules.check_approver`: never the run's own actor, the rule's approvers only,
       one vote per person under any spelling.
    4. A denial resolves it; a grant resolves it at the ``approvals_required``-th distinct approver.

    Raises:
        FailedPreconditionError, PermissionDeniedError: the vote is refused; nothing is written.
    """
    if approval.state != PENDING:
        by = f" by {approval.resolved_by}" if approval.resolved_by else ""
        raise FailedPreconditionError(
            f"approval {approval.approval_id} is already {approval.state}{by}",
            reason=reasons.APPROVAL_ALREADY_RESOLVED,
        )
    if approval.event_seq < 0:
        # Only a later entry has arrived: who asked, and who may answer, are not known here yet.
        raise FailedPreconditionError(
            f"approval {approval.approval_id}: its request has not reached the collector yet; retry shortly"
        )
    if approval.expires_ms is not None and approval.expires_ms <= now_ms:
        raise FailedPreconditionError(f"approval {approval.approval_id} has expired", reason=reasons.APPROVAL_EXPIRED)
    check_approver(
        approval_id=approval.approval_id,
        run_id=approval.run_id,
        actor_id=approval.actor_id,
        approvers=approval.approvers,
        identity=operator.identity,
        roles=operator.roles,
        prior_approvers=[v.approver for v in approval.votes],
    )
    grants = sum(1 for v in approval.votes if v.grant) + 1
    state = (GRANTED if grant_reached(grants, approval.approvals_required) else PENDING) if grant else DENIED
    roles = tuple(sorted(operator.roles))
    fields = {
        "approval_id": approval.approval_id,
        "grant": grant,
        "approver": operator.identity,
        "roles": list(roles),
        "channel": channel,
        "comment": comment,
    }
    act = ActDraft(KIND_APPROVAL_VOTE, approval.origin, fields, operator.identity, channel, now_ms)
    return VotePlan(FleetVote(operator.identity, grant, channel, comment, now_ms), state, act, roles)


def check_filters(**filters: str) -> None:
    """Refuses a list filter no text column can hold (NUL, lone surrogates), naming it, rather than failing in SQL.

    Raises:
        InvalidRequestError: naming every such filter.
    """
    bad = [
        FieldViolation(name, "must be text without NUL")
        for name, value in filters.items()
        if not is_storable_text(value)
    ]
    if bad:
        raise InvalidRequestError(bad)


def check_switch(scope: str, target: str, reason: str, channel: str, *, reason_required: bool) -> None:
    """The checks of a kill-switch request.

    Raises:
        InvalidRequestError: naming every bad field.
    """
    violations = []
    if scope not in SCOPES:
        violations.append(FieldViolation("scope", "must be global, tenant, agent or run"))
    elif scope == "global" and target:
        violations.append(FieldViolation("target", "must be empty for a global switch"))
    elif scope != "global" and (not target or len(target.encode()) > MAX_TARGET_BYTES or not target.isprintable()):
        violations.append(FieldViolation("target", f"is required for a {scope} switch (at most 256 bytes)"))
    if reason_required and not reason.strip():
        violations.append(FieldViolation("reason", "is required"))
    if not is_storable_text(reason) or len(reason.encode()) > MAX_COMMENT_BYTES:
        violations.append(FieldViolation("reason", f"must be text of at most {MAX_COMMENT_BYTES} bytes"))
    if channel not in CHANNELS:
        violations.append(FieldViolation("channel", f"must be one of {', '.join(CHANNELS)}"))
    if violations:
        raise InvalidRequestError(violations)


# --- control_log rows ---------------------------------------------------------------------------------------


def act_body(act_id: int, draft: ActDraft) -> bytes:
    """The canonical JSON a ``control_log`` row is signed over: every column but the signature."""
    return canonical_json(
        {
            "id": act_id,
            "kind": draft.kind,
            "origin": draft.origin,
            "fields": draft.fields,
            "operator": draft.operator,
            "channel": draft.channel,
            "at_ms": draft.at_ms,
        }
    )


def act_message(act_id: int, draft: ActDraft) -> bytes:
    """What the control key signs for a row (domain-separated from control messages, entries and notes)."""
    return ACT_DOMAIN + act_body(act_id, draft)


def draft_of_row(row: dict[str, Any]) -> ActDraft:
    """A stored row as the draft it was signed from (``fields`` parsed from its stored JSON)."""
    fields = json.loads(row["fields"])
    return ActDraft(
        str(row["kind"]), str(row["origin"]), fields, str(row["operator"]), str(row["channel"]), int(row["at_ms"])
    )


def voter_key(identity: str) -> str:
    """The unique key of a vote's approver (one person under every spelling)."""
    return normalise_identity(identity)
