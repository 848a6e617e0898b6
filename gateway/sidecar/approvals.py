"""Human approvals: created by ``approval_required`` decisions, resolved by operators, used once by the agent.

An approval is bound to the action key (name plus canonical args), run, tenant and policy rule of the decision
that asked for it, and expires after the rule's ``expires_in``. The agent resumes by calling Decide again with
the ``approval_id``; it is allowed only if the approval is granted, unexpired, unused and every binding matches.

Approvals live in the ``approvals`` state table (so pending ones survive a restart) and in memory while open.
Every change (created with its pre-event, granted, denied, expired, used with the resuming pre-event) commits in
the same transaction as the signed journal event that records it; ``gateway.journal.state`` owns the table's SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict

from gateway import reasons
from gateway.errors import FailedPreconditionError, NotFoundError, PermissionDeniedError
from gateway.identity import Operator, normalise_identity
from gateway.journal import state as state_tables
from gateway.journal.entry import EventKind
from gateway.journal.state import DENIED, EXPIRED, GRANTED, PENDING, Approval
from gateway.journal.store import JournalReader
from gateway.journal.writer import StateChange, now_nanos
from gateway.policy.model import ActionRequest, Decision
from gateway.sidecar.recorder import AuditRecorder, RecordedEvent

# The approval record and its states belong to the state table (journal/state); servicers take them from here too.
__all__ = ["DENIED", "EXPIRED", "GRANTED", "MAX_LIST", "PENDING", "Approval", "ApprovalBook"]

log = logging.getLogger(__name__)

MAX_LIST = 1000
_CLOSED_KEPT = 10_000
_RESUME_REFUSALS = frozenset(
    {
        reasons.APPROVAL_NOT_FOUND,
        reasons.APPROVAL_PENDING,
        reasons.APPROVAL_DENIED,
        reasons.APPROVAL_EXPIRED,
        reasons.APPROVAL_USED,
        reasons.APPROVAL_MISMATCH,
    }
)


class ApprovalBook:
    """Open approvals in memory, the state table, waiters, and the expiry task."""

    def __init__(self, recorder: AuditRecorder, reader: JournalReader, *, expiry_check_s: float = 1.0) -> None:
        self._recorder = recorder
        self._reader = reader
        self._expiry_check_s = expiry_check_s
        self._open: dict[str, Approval] = {}
        # Recently closed approvals (used, denied, expired), so a late resume gets a precise reason.
        self._closed: OrderedDict[str, Approval] = OrderedDict()
        self._changed: dict[str, asyncio.Event] = {}
        # Resolutions in flight: approval id -> (operator, "granted"/"denied"), reserved before the journal await so
        # exactly one of many concurrent grant/deny calls can win.
        self._resolving: dict[str, tuple[str, str]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self, trusted: Sequence[Approval] | None = None) -> None:
        """Loads open approvals (pending, or granted and unused) and starts expiring them on time.

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
            expires_ns=now + (decision.approval_expires_s or 3600) * 1_000_000_000,
            resolved_by="",
            resolved_ns=None,
            comment="",
            event_id=event_id,
        )
        return approval, [state_tables.insert_approval(approval)]

    def opened(self, approval: Approval) -> None:
        """Registers a created approval once its pre-event is committed."""
        self._open[approval.approval_id] = approval

    def check_resume(self, request: ActionRequest, action_key: str) -> tuple[str, Approval | None]:
        """Why a resuming request may not proceed ('' if it may), and the approval it names.

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
            return {DENIED: reasons.APPROVAL_DENIED, EXPIRED: reasons.APPROVAL_EXPIRED}.get(
                closed.state, reasons.APPROVAL_NOT_FOUND
            ), closed
        if approval.state == PENDING and now_nanos() >= approval.expires_ns:
            return reasons.APPROVAL_EXPIRED, approval
        if (approval.tenant_id, approval.run_id, approval.action_key) != (
            request.tenant_id,
            request.run_id,
            action_key,
        ):
            return reasons.APPROVAL_MISMATCH, approval
        if approval.state == PENDING:
            return reasons.APPROVAL_PENDING, approval
        if approval.state != GRANTED:
            return {DENIED: reasons.APPROVAL_DENIED, EXPIRED: reasons.APPROVAL_EXPIRED}[approval.state], approval
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

    def _open_pending(self, approval_id: str) -> Approval:
        approval = self._open.get(approval_id)
        if approval is None:
            closed = self._closed.get(approval_id)
            if closed is None:
                raise NotFoundError(f"no open approval {approval_id!r}")
            approval = closed
        in_flight = self._resolving.get(approval_id)
        if in_flight is not None:
            by, state = in_flight
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

    @staticmethod
    def _check_approver(approval: Approval, operator: Operator) -> None:
        who = normalise_identity(operator.identity)
        # 1. Nobody approves their own run: the run's initiating actor cannot be its approver, under any spelling.
        if approval.actor_id and normalise_identity(approval.actor_id) == who:
            raise PermissionDeniedError(f"{operator.identity} initiated run {approval.run_id} and cannot approve it")
        # 2. The rule's approver list, when given, names identities or role:NAME entries (compared normalised too).
        allowed = approval.approvers
        names = {normalise_identity(a) for a in allowed}
        if allowed and who not in names and not any(normalise_identity(f"role:{r}") in names for r in operator.roles):
            raise PermissionDeniedError(
                f"{operator.identity} is not among the approvers of {approval.approval_id} ({', '.join(allowed)})"
            )

    async def resolve(self, approval_id: str, grant: bool, operator: Operator, comment: str) -> tuple[Approval, str]:
        """Grants or denies a pending approval; returns it and the journaled event id.

        Exactly one resolution wins: the approval is reserved for this operator before the journal await (as a
        resume reserves before its pre-event), so a concurrent grant or deny is refused with FAILED_PRECONDITION
        naming the winner; the reservation is dropped again if the event could not be journaled.
        """
        comment = self._recorder.scrub_text(comment)  # free text: detected PII never reaches the state table
        approval = self._open_pending(approval_id)
        self._check_approver(approval, operator)
        state = GRANTED if grant else DENIED
        self._resolving[approval_id] = (operator.identity, state)
        try:
            nanos = now_nanos()
            event = await self._recorder.record_approval(
                EventKind.APPROVAL_GRANTED if grant else EventKind.APPROVAL_DENIED,
                asdict(approval),
                {"type": "operator", "id": operator.identity},
                comment,
                nanos,
                self._resolution(approval_id, state, operator.identity, nanos, comment),
            )
            approval.state, approval.resolved_by, approval.resolved_ns, approval.comment = (
                state,
                operator.identity,
                nanos,
                comment,
            )
        finally:
            del self._resolving[approval_id]
        if not grant:
            self._close(approval)
        self._notify(approval_id)
        return approval, event.event_id

    @staticmethod
    def _resolution(approval_id: str, state: str, by: str, nanos: int, comment: str) -> list[StateChange]:
        return [state_tables.resolve_approval(approval_id, state, by, nanos, comment)]

    async def expire_due(self) -> int:
        """Journals ``approval_expired`` for every pending approval past its expiry; returns how many."""
        now = now_nanos()
        due = [
            a
            for a in self._open.values()
            if a.state == PENDING and a.expires_ns <= now and a.approval_id not in self._resolving
        ]
        for approval in due:
            if approval.state != PENDING or approval.approval_id in self._resolving:
                continue  # resolved while an earlier one was being journaled
            self._resolving[approval.approval_id] = ("agentaudit", EXPIRED)
            try:
                event: RecordedEvent = await self._recorder.record_approval(
                    EventKind.APPROVAL_EXPIRED,
                    asdict(approval),
                    {"type": "system", "id": "agentaudit"},
                    "",
                    now,
                    self._resolution(approval.approval_id, EXPIRED, "", now, ""),
                )
            finally:
                del self._resolving[approval.approval_id]
            approval.state, approval.resolved_ns = EXPIRED, now
            self._close(approval)
            self._notify(approval.approval_id)
            log.info("approval %s expired (event %s)", approval.approval_id, event.event_id)
        return len(due)

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
        """Waits until the approval is resolved or expires, or ``timeout_s`` passes; returns its state then."""
        approval = await self.get(approval_id)
        while approval.state == PENDING:
            remaining = (approval.expires_ns - now_nanos()) / 1e9
            wait_s = remaining if timeout_s is None else min(timeout_s, remaining)
            if wait_s <= 0:
                if remaining <= 0:
                    await self.expire_due()
                    approval = await self.get(approval_id)
                    continue
                return approval
            changed = self._changed.setdefault(approval_id, asyncio.Event())
            try:
                await asyncio.wait_for(changed.wait(), wait_s)
            except TimeoutError:
                if timeout_s is not None and wait_s == timeout_s:
                    return approval
            approval = await self.get(approval_id)
        return approval

    async def list(self, state: str, tenant_id: str, limit: int) -> Sequence[Approval]:
        """Approvals in a state (newest first), optionally of one tenant."""
        stored = await self._reader.list_approvals(state, tenant_id, min(limit or MAX_LIST, MAX_LIST))
        # Open approvals are authoritative in memory (a grant may be newer than the reader's snapshot).
        return [self._open.get(a.approval_id) or a for a in stored]
