"""Human approvals: created by ``approval_required`` decisions, resolved by operators, used once by the agent.

An approval is bound to the approval binding (name plus exact canonical args), run, tenant, policy rule and policy
version of the decision that asked for it. It has two clocks, and each ends in its own outcome:

- **expired**: nobody granted or denied it within the rule's ``expires_in`` (``never``: it waits until answered);
- **abandoned**: it was granted, but the agent did not use it within the grant's use-by time (the rule's
  ``use_within``, by default its ``expires_in``, counted from the grant). A grant always lapses in the end.

Denied is the third outcome. The agent resumes by calling Decide again with the ``approval_id``; it is allowed only
if the approval is granted, within its use-by time, unused and every binding matches.

Four-eyes: a rule with ``approvals_required: N`` needs N distinct approvers. Each grant before the Nth is journaled
``approval_voted`` (the approval stays pending); the Nth is ``approval_granted``; a denial resolves it at once.
Every answer is an ``approval_votes`` row committed with its event, and on start the votes are derived from those
signed events like the rest of the state (``state.trusted_state``). The rules (who may answer, one vote per person
under any spelling, a denial needs a justification) are ``gateway.policy.approval_rules``, which the collector's
fleet API calls too; this book is the enforcer.

Approvals live in the ``approvals`` state table (so pending ones survive a restart) and in memory while open.
Every change (created with its pre-event, granted, denied, expired, used with the resuming pre-event) commits in
the same transaction as the signed journal event that records it; ``gateway.journal.state`` owns the table's SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict

from gateway import reasons
from gateway.errors import FailedPreconditionError, NotFoundError
from gateway.identity import Operator
from gateway.ids import new_event_id
from gateway.journal import state as state_tables
from gateway.journal.entry import EventKind
from gateway.journal.state import ABANDONED, DENIED, EXPIRED, GRANTED, NEVER_NS, PENDING, Approval, ApprovalVote
from gateway.journal.store import JournalReader
from gateway.journal.writer import StateChange, now_nanos
from gateway.policy.approval_rules import check_approver, check_justification, grant_reached
from gateway.policy.model import ActionRequest, Decision
from gateway.sidecar.recorder import AuditRecorder, RecordedEvent

# The approval record and its states belong to the state table (journal/state); servicers take them from here too.
__all__ = [
    "ABANDONED",
    "DENIED",
    "EXPIRED",
    "GRANTED",
    "MAX_LIST",
    "PENDING",
    "Approval",
    "ApprovalBook",
    "ApprovalVote",
]

log = logging.getLogger(__name__)

MAX_LIST = 1000
_CLOSED_KEPT = 10_000
# Why a closed (or lapsed) approval refuses a resume: each outcome has its own reason.
_CLOSED_REASONS = {
    DENIED: reasons.APPROVAL_DENIED,
    EXPIRED: reasons.APPROVAL_EXPIRED,
    ABANDONED: reasons.APPROVAL_ABANDONED,
}
_RESUME_REFUSALS = frozenset(
    {
        reasons.APPROVAL_NOT_FOUND,
        reasons.APPROVAL_PENDING,
        reasons.APPROVAL_DENIED,
        reasons.APPROVAL_EXPIRED,
        reasons.APPROVAL_ABANDONED,
        reasons.APPROVAL_USED,
        reasons.APPROVAL_MISMATCH,
        reasons.APPROVAL_POLICY_CHANGED,
    }
)


class ApprovalBook:
    """Open approvals in memory, the state table, waiters, and the expiry task."""

    def __init__(
        self,
        recorder: AuditRecorder,
        reader: JournalReader,
        *,
        expiry_check_s: float = 1.0,
        policy_version: Callable[[], str] | None = None,
    ) -> None:
        self._recorder = recorder
        # The policy in force now: a grant for an approval asked under another version could never be used.
        self._policy_version = policy_version
        self._reader = reader
        self._expiry_check_s = expiry_check_s
        self._open: dict[str, Approval] = {}
        # Recently closed approvals (used, denied, expired), so a late resume gets a precise reason.
        self._closed: OrderedDict[str, Approval] = OrderedDict()
        self._changed: dict[str, asyncio.Event] = {}
        # Answers in flight: approval id -> (operator, "granted"/"denied"/...), set while the event is journaled so
        # the expiry task leaves the approval alone (and an answer during an expiry is refused).
        self._resolving: dict[str, tuple[str, str]] = {}
        # One answer at a time per approval: each sees the votes before it, so of many concurrent answers exactly
        # one can be the approvals_required-th grant (or the denial) and the rest find it resolved.
        self._answering: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self, trusted: Sequence[Approval] | None = None) -> None:
        """Loads open approvals (pending, or granted and unused) and starts expiring or abandoning them on time.

        ``trusted`` are the open approvals derived from the signed events (``state.trusted_state``); without it
        the table's rows are loaded as they are.
        """
        for approval in trusted if trusted is not None else await self._reader.open_approvals():
            self._open[approval.approval_id] = approval
        self._task = asyncio.create_task(self._expire_loop(), name="approval-expiry")

    def pending_count(self) -> int:
        """Approvals waiting for a human (read at scrape time, from another thread: one atomic copy)."""
        return sum(1 for approval in list(self._open.values()) if approval.state == PENDING)

    async def aclose(self) -> None:
        """Stops the expiry task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- decisions -------------------------------------------------------------------------------------------

    def create(
        self, request: ActionRequest, action_key: str, decision: Decision, approval_id: str, event_id: str
    ) -> tuple[Approval, list[StateChange]]:
        """A new pending approval for an ``approval_required`` decision, and the statement that persists it."""
        now = now_nanos()
        expires_s = decision.approval_expires_s or state_tables.DEFAULT_EXPIRES_S
        approval = Approval(
            approval_id=approval_id,
            state=PENDING,
            used=False,
            tenant_id=request.tenant_id,
            run_id=request.run_id,
            step_id=request.step_id,
            agent_id=request.agent_id,
            actor_type=request.actor_type,
            actor_id=request.actor_id,
            action=request.action,
            action_key=action_key,
            policy_rule=decision.rule,
            approvers=decision.approvers,
            created_ns=now,
            expires_ns=NEVER_NS if decision.approval_parks else now + expires_s * 1_000_000_000,
            resolved_by="",
            resolved_ns=None,
            comment="",
            event_id=event_id,
            # As the signed derivation reads them back from the pre-event (state.SignedStateFold).
            use_within_s=decision.approval_use_within_s or expires_s,
            approvals_required=decision.approvals_required,
            policy_version=decision.policy_version,
        )
        return approval, [state_tables.insert_approval(approval)]

    def opened(self, approval: Approval) -> None:
        """Registers a created approval once its pre-event is committed."""
        self._open[approval.approval_id] = approval

    def check_resume(
        self, request: ActionRequest, action_key: str, policy_version: str = ""
    ) -> tuple[str, Approval | None]:
        """Why a resuming request may not proceed ('' if it may), and the approval it names.

        ``policy_version`` is the version the resume is decided under: an approval asked for under another one is
        refused (``approval_policy_changed``), granted or not, as a grant is bound to the policy it was asked under.

        On success the approval is reserved (marked used) so a concurrent resume cannot use it too; call
        :meth:`used` once the resuming pre-event is committed, or :meth:`unreserve` if it was not.
        """
        approval = self._open.get(request.approval_id)
        if approval is None:
            closed = self._closed.get(request.approval_id)
            if closed is None:
                return reasons.APPROVAL_NOT_FOUND, None
            if closed.used:
                return reasons.APPROVAL_USED, closed
            return _CLOSED_REASONS.get(closed.state, reasons.APPROVAL_NOT_FOUND), closed
        if not approval.used and now_nanos() >= approval.expires_ns:
            # Lapsed, whether or not the expiry task has journaled it yet: never answered, or granted and not used.
            return (reasons.APPROVAL_EXPIRED if approval.state == PENDING else reasons.APPROVAL_ABANDONED), approval
        if (approval.tenant_id, approval.run_id, approval.action_key) != (
            request.tenant_id,
            request.run_id,
            action_key,
        ):
            return reasons.APPROVAL_MISMATCH, approval
        if policy_version and approval.policy_version and approval.policy_version != policy_version:
            return reasons.APPROVAL_POLICY_CHANGED, approval
        if approval.state == PENDING:
            return reasons.APPROVAL_PENDING, approval
        if approval.state != GRANTED:
            return _CLOSED_REASONS[approval.state], approval
        if approval.used:
            return reasons.APPROVAL_USED, approval
        approval.used = True
        return "", approval

    def use_statement(self, approval: Approval) -> list[StateChange]:
        """The statement that marks a granted approval used (committed with the resuming pre-event)."""
        return [state_tables.mark_approval_used(approval.approval_id)]

    def used(self, approval: Approval) -> None:
        """The resuming pre-event is committed: the approval is closed."""
        self._close(approval)

    def _close(self, approval: Approval) -> None:
        self._open.pop(approval.approval_id, None)
        self._answering.pop(approval.approval_id, None)  # a caller still queued on it finds the approval closed
        self._closed[approval.approval_id] = approval
        while len(self._closed) > _CLOSED_KEPT:
            self._closed.popitem(last=False)

    def unreserve(self, approval: Approval) -> None:
        """The resuming pre-event was not committed: the approval may be used again."""
        approval.used = False

    def unreserve_if_reserved(self, approval: Approval, decision: Decision) -> None:
        """A resume that passed the approval checks but was stopped by another layer keeps the approval usable."""
        if decision.reason not in _RESUME_REFUSALS:
            approval.used = False

    # --- operators -------------------------------------------------------------------------------------------

    def _open_pending(self, approval_id: str, *, in_flight: bool = True) -> Approval:
        """The pending approval, or why it cannot be answered; ``in_flight`` False ignores an answer being journaled
        (the caller is about to queue behind it)."""
        approval = self._open.get(approval_id)
        if approval is None:
            closed = self._closed.get(approval_id)
            if closed is None:
                raise NotFoundError(f"no open approval {approval_id!r}")
            approval = closed
        journaling = self._resolving.get(approval_id) if in_flight else None
        if journaling is not None:
            by, state = journaling
            raise FailedPreconditionError(
                f"approval {approval_id} is already being {state} by {by}", reason=reasons.APPROVAL_ALREADY_RESOLVED
            )
        if approval.state != PENDING:
            by = f" by {approval.resolved_by}" if approval.resolved_by else ""
            raise FailedPreconditionError(
                f"approval {approval_id} is already {approval.state}{by}", reason=reasons.APPROVAL_ALREADY_RESOLVED
            )
        if now_nanos() >= approval.expires_ns:
            raise FailedPreconditionError(f"approval {approval_id} has expired", reason=reasons.APPROVAL_EXPIRED)
        return approval

    async def resolve(
        self,
        approval_id: str,
        grant: bool,
        operator: Operator,
        comment: str,
        *,
        channel: str = "cli",
        via: str = "",
        control_seq: int = 0,
    ) -> tuple[Approval, str]:
        """Answers a pending approval: a vote, a grant or a denial; returns it and the journaled event id.

        A denial resolves it at once (it needs a comment). A grant is journaled ``approval_voted`` while fewer than
        the rule's ``approvals_required`` distinct approvers have granted it (the approval stays pending and is
        returned with its votes), and ``approval_granted`` at the last one. The answer's event body records the
        ``channel`` the operator answered on (cli, console, slack) and, for an answer relayed by the collector's
        control channel, ``via`` (the collector) and its ``control_seq``.

        Answers to one approval are taken one at a time, each seeing the votes before it, so exactly one of many
        concurrent answers resolves it; the rest are refused with FAILED_PRECONDITION naming who resolved it.

        Raises:
            InvalidRequestError: a denial without a justification.
            NotFoundError, FailedPreconditionError: no such approval, already resolved (``approval_already_resolved``),
                expired, this approver already voted (``approval_already_voted``), or a grant for an approval asked
                under another policy version (``approval_policy_changed``).
            PermissionDeniedError: the run's own actor, or not among the rule's approvers.
        """
        comment = self._recorder.scrub_text(comment)  # free text: detected PII never reaches the state table
        check_justification(grant, comment)
        self._open_pending(approval_id, in_flight=False)  # fail fast, before queueing behind other answers
        lock = self._answering.setdefault(approval_id, asyncio.Lock())
        async with lock:
            approval = self._open_pending(approval_id)
            if grant:
                self._check_policy_unchanged(approval)
            check_approver(
                approval_id=approval.approval_id,
                run_id=approval.run_id,
                actor_id=approval.actor_id,
                approvers=approval.approvers,
                identity=operator.identity,
                roles=operator.roles,
                prior_approvers=[v.identity for v in approval.votes],
            )
            final = not grant or grant_reached(approval.grants() + 1, approval.approvals_required)
            state = (GRANTED if grant else DENIED) if final else PENDING
            self._resolving[approval_id] = (operator.identity, state if final else "voted on")
            try:
                event_id = await self._journal_answer(
                    approval, grant, final, operator, comment, channel, via, control_seq
                )
            finally:
                del self._resolving[approval_id]
        if not grant:
            self._close(approval)
        if approval.state != PENDING:  # a vote before the last changes nothing a waiter waits for
            self._notify(approval_id)
        return approval, event_id

    def _check_policy_unchanged(self, approval: Approval) -> None:
        """Refuses a grant (or a vote towards one) for an approval asked under another policy version: the resume
        would be refused ``approval_policy_changed`` whatever the approvers say. A denial is still taken: it closes
        the approval and tells the agent."""
        current = self._policy_version() if self._policy_version is not None else ""
        if current and approval.policy_version and approval.policy_version != current:
            raise FailedPreconditionError(
                f"approval {approval.approval_id} was asked under policy {approval.policy_version}; the policy is now "
                f"{current}, so a grant could never be used: deny it, and let the agent ask again",
                reason=reasons.APPROVAL_POLICY_CHANGED,
            )

    async def _journal_answer(
        self,
        approval: Approval,
        grant: bool,
        final: bool,
        operator: Operator,
        comment: str,
        channel: str,
        via: str,
        control_seq: int,
    ) -> str:
        """Journals one answer with its vote row (and, when it resolves the approval, the approval row's change),
        then applies it in memory."""
        nanos, event_id = now_nanos(), new_event_id()
        vote = ApprovalVote(operator.identity, grant, channel, comment, nanos, event_id, via)
        changes = [state_tables.insert_vote(approval.approval_id, vote)]
        # A grant has its own use-by time, counted from now; the state row keeps it as the new expires_ns.
        lapses_ns = state_tables.use_by_ns(approval, nanos) if grant else approval.expires_ns
        if final and grant:
            changes.append(
                state_tables.grant_approval(approval.approval_id, operator.identity, nanos, comment, lapses_ns)
            )
        elif final:
            changes.append(
                state_tables.resolve_approval(approval.approval_id, DENIED, operator.identity, nanos, comment)
            )
        extra = _answer_fields(channel, via, control_seq)
        if approval.approvals_required > 1:
            extra |= {"approvals_required": approval.approvals_required, "approvals": approval.grants() + int(grant)}
        if not final:
            extra["grant"] = True
        kind = EventKind.APPROVAL_VOTED
        if final:
            kind = EventKind.APPROVAL_GRANTED if grant else EventKind.APPROVAL_DENIED
        event = await self._recorder.record_approval(
            kind,
            asdict(approval),
            {"type": "operator", "id": operator.identity},
            comment,
            nanos,
            changes,
            extra,
            event_id,
        )
        approval.votes = (*approval.votes, vote)
        if final:
            approval.state, approval.resolved_by, approval.resolved_ns, approval.comment, approval.expires_ns = (
                GRANTED if grant else DENIED,
                operator.identity,
                nanos,
                comment,
                lapses_ns,
            )
        return event.event_id

    async def expire_due(self) -> int:
        """Closes every open approval past its time; returns how many.

        A pending one is journaled ``approval_expired`` (nobody answered in time); a granted one nobody used is
        journaled ``approval_abandoned``, keeping who granted it. One a resume in flight has reserved is left alone:
        its pre-event may still commit (and if it does not, the reservation is undone and the next round takes it).
        """
        now = now_nanos()
        due = [a for a in self._open.values() if self._lapsed(a, now)]
        for approval in due:
            if not self._lapsed(approval, now):
                continue  # resolved or used while an earlier one was being journaled
            outcome = EXPIRED if approval.state == PENDING else ABANDONED
            self._resolving[approval.approval_id] = ("agentaudit", outcome)
            try:
                event: RecordedEvent = await self._recorder.record_approval(
                    EventKind.APPROVAL_EXPIRED if outcome == EXPIRED else EventKind.APPROVAL_ABANDONED,
                    asdict(approval),
                    {"type": "system", "id": "agentaudit"},
                    "",
                    now,
                    [
                        state_tables.resolve_approval(approval.approval_id, EXPIRED, "", now, "")
                        if outcome == EXPIRED
                        else state_tables.abandon_approval(approval.approval_id)
                    ],
                )
            finally:
                del self._resolving[approval.approval_id]
            approval.state = outcome
            if outcome == EXPIRED:
                approval.resolved_ns = now
            self._close(approval)
            self._notify(approval.approval_id)
            log.info("approval %s %s (event %s)", approval.approval_id, outcome, event.event_id)
        return len(due)

    def _lapsed(self, approval: Approval, now: int) -> bool:
        """Past its time and not taken: pending, or granted and neither used nor reserved by a resume in flight."""
        open_now = approval.state == PENDING or (approval.state == GRANTED and not approval.used)
        return open_now and approval.expires_ns <= now and approval.approval_id not in self._resolving

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self._expiry_check_s)
            try:
                await self.expire_due()
            except Exception:  # the journal may be briefly unavailable; try again next round
                log.exception("expiring approvals failed")

    def _notify(self, approval_id: str) -> None:
        event = self._changed.pop(approval_id, None)
        if event is not None:
            event.set()

    async def get(self, approval_id: str) -> Approval:
        """An approval by id, open or resolved."""
        approval = self._open.get(approval_id)
        if approval is not None:
            return approval
        stored = await self._reader.approval(approval_id)
        if stored is None:
            raise NotFoundError(f"no approval {approval_id!r}")
        return stored

    async def wait(self, approval_id: str, timeout_s: float | None) -> Approval:
        """Waits until the approval is resolved or expires, or ``timeout_s`` passes; returns its state then.

        A four-eyes approval stays pending through its votes: the wait goes on until the last grant (or a denial).
        """
        approval = await self.get(approval_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while approval.state == PENDING:
            # An approval that parks (expires_in: never) waits for its answer or the caller's deadline only.
            remaining = math.inf if approval.expires_ns >= NEVER_NS else (approval.expires_ns - now_nanos()) / 1e9
            left = math.inf if deadline is None else deadline - time.monotonic()
            wait_s = min(remaining, left)
            if wait_s <= 0:
                if remaining <= 0:
                    await self.expire_due()
                    approval = await self.get(approval_id)
                    if approval.state == PENDING:  # an answer is being journaled: it decides, shortly
                        await asyncio.sleep(0.05)
                    continue
                return approval
            changed = self._changed.setdefault(approval_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), None if math.isinf(wait_s) else wait_s)
            approval = await self.get(approval_id)
        return approval

    async def list(self, state: str, tenant_id: str, limit: int) -> Sequence[Approval]:
        """Approvals in a state (newest first), optionally of one tenant."""
        stored = await self._reader.list_approvals(state, tenant_id, min(limit or MAX_LIST, MAX_LIST))
        # Open approvals are authoritative in memory (a grant may be newer than the reader's snapshot).
        return [self._open.get(a.approval_id) or a for a in stored]


def _answer_fields(channel: str, via: str, control_seq: int) -> dict[str, object]:
    """How an answer reached the sidecar, as the approval event's body records it."""
    fields: dict[str, object] = {"channel": channel}
    if via:
        fields["via"] = via
    if control_seq:
        fields["control_seq"] = control_seq
    return fields
