"""Turns decisions and results into signed journal events (the audit side of Decide and ReportResult).

Bodies always carry the same fields for a kind (schema-consistent events), canonicalised once with RFC 8785 and
handed to the journal writer as bytes: what is signed is what is stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gateway import reasons
from gateway.canonical import JsonPayload, canonical_json, encode_normalised
from gateway.errors import NotFoundError, ViolationError
from gateway.ids import new_event_id, now_nanos, rfc3339_nanos
from gateway.journal.entry import EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.state import EXPIRES_NEVER
from gateway.journal.store import JournalReader, StoredEvent
from gateway.journal.writer import JournalWriter, Receipt, StateChange
from gateway.policy.model import ActionRequest, Decision, Verdict
from gateway.redaction import Redactor
from gateway.tracecontext import trace_ids

log = logging.getLogger(__name__)

# The recorder's memory is bounded by bytes, not by entries (ADR 0021, footprint): at 65,536
# entries each, the two caches below grew to ~60 MiB under sustained load. A miss costs one indexed journal read.
# Recent pre-events, so ReportResult rarely reads the journal: ~550 bytes each, ~7,500 of them (15 s at 500 steps/s;
# a miss is one indexed read, beside the find_result read every report makes anyway).
PRE_EVENT_CACHE_BYTES = 4 * 1024 * 1024
# Results already journaled, so a repeated ReportResult rarely reads the journal (in-flight ones are kept apart).
RESULT_CACHE_BYTES = 1024 * 1024
# Estimated bytes of one cached StoredEvent beyond its strings' characters (object, dict, string headers, bytes, the
# cache's own node), and of one cached result beyond its two ids: measured with tracemalloc on CPython 3.11
# (2026-12-02: 20,000 cached pre-events of a kb.search step took 672 bytes each, of which ~120 are the strings'
# characters; 400 had let the "4 MiB" cache grow past 5 MiB).
_PRE_EVENT_OVERHEAD = 560
_RESULT_OVERHEAD = 250
# Runs whose per-step attempt counts are kept in memory (least recently used evicted, then re-read on a miss).
_ATTEMPT_RUNS = 4_096

K = TypeVar("K")
V = TypeVar("V")


class ByteBoundedCache(Generic[K, V]):
    """A map that forgets its oldest insertions once the estimated bytes of what it holds exceed ``budget``.

    ``size_of`` estimates an entry's bytes (key included) when it is put; the total is kept exact with respect to
    those estimates, so the budget holds whatever the entries' sizes. Oldest first by insertion (a get does not
    refresh), as the recorder's entry-counted caches were.
    """

    def __init__(self, budget: int, size_of: Callable[[K, V], int]) -> None:
        self.budget = budget
        self._size_of = size_of
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        return None if found is None else found[0]

    def put(self, key: K, value: V) -> None:
        self.pop(key)
        size = self._size_of(key, value)
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.budget and self._entries:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    def pop(self, key: K) -> V | None:
        found = self._entries.pop(key, None)
        if found is None:
            return None
        self.bytes -= found[1]
        return found[0]


def _pre_event_bytes(event_id: str, event: StoredEvent) -> int:
    strings = (event.event_id, event.run_id, event.tenant_id, event.agent_id, event.action, event.reason)
    return _PRE_EVENT_OVERHEAD + sum(len(x) for x in strings if x) + len(event.action_key or "")


def _result_bytes(event_id: str, outcome: ResultOutcome) -> int:
    return _RESULT_OVERHEAD + len(event_id) + len(outcome.event_id)


@dataclass(frozen=True)
class PreparedAction:
    """Args after redaction and digesting: what may be stored."""

    action_key: str
    args_digest: str
    approval_binding: str
    redacted_args: Any
    redacted_paths: list[str]
    normalised: bool = False


@dataclass(frozen=True)
class RecordedEvent:
    """A committed event: id plus its receipt."""

    event_id: str
    receipt: Receipt


@dataclass(frozen=True)
class ResultOutcome:
    """What ReportResult answers: the post-event id, whether it already existed, whether it is a violation."""

    event_id: str
    duplicate: bool
    violation: bool = False


class AuditRecorder:
    """Builds event bodies, appends them, and tracks which pre-events already have a result."""

    def __init__(self, writer: JournalWriter, reader: JournalReader, redactor: Redactor) -> None:
        self._writer = writer
        self._reader = reader
        self._redactor = redactor
        self.origin = writer.origin
        # Recent pre-events journaled by this process and not yet reported, so a ReportResult needs no database
        # read (an entry leaves when its result is journaled; a miss reads the journal).
        self._pre_events: ByteBoundedCache[str, StoredEvent] = ByteBoundedCache(PRE_EVENT_CACHE_BYTES, _pre_event_bytes)
        # Per pre-event whose result is being journaled: that result, so concurrent duplicate reports journal once.
        # Never evicted (it holds one entry per report in flight); once journaled, the outcome moves to _results.
        self._reporting: dict[str, asyncio.Future[ResultOutcome]] = {}
        # Per pre-event whose result is journaled: its outcome (evicted by bytes; a miss reads the journal).
        self._results: ByteBoundedCache[str, ResultOutcome] = ByteBoundedCache(RESULT_CACHE_BYTES, _result_bytes)
        # Per recent run: pre-events journaled (or being journaled) per step, so a repeat gets the next attempt.
        self._attempts: OrderedDict[str, dict[int, int]] = OrderedDict()
        # Told the seq of every committed approval entry (the control channel pushes them to the collector at
        # once); must not block.
        self.on_approval_entry: Callable[[int], None] | None = None

    def prepare(
        self, action: str, args: Mapping[str, Any], *, tenant_id: str = "", normalised: bool = False
    ) -> PreparedAction:
        """Redacts and digests args; computes the action key (over the redacted args) and the approval binding."""
        canonical, redacted, paths = self._redactor.prepare(args, "args", normalised=normalised)
        # Nothing redacted: the redacted copy is the value, so its canonical bytes are the ones just made. Redaction
        # keeps a normalised value normalised (it removes keys and puts ASCII markers into strings and keys), so the
        # checking walk is skipped for the copy too (tests/test_redaction_normalised.py).
        if not paths:
            canonical_redacted = canonical
        else:
            canonical_redacted = encode_normalised(redacted) if normalised else canonical_json(redacted)
        return PreparedAction(
            action_key=self._redactor.action_key(tenant_id, action, canonical_redacted),
            args_digest=self._redactor.digest(canonical),
            approval_binding=self._redactor.approval_binding(tenant_id, action, canonical),
            redacted_args=redacted,
            redacted_paths=paths,
            normalised=normalised,
        )

    def scrub_text(self, text: str) -> str:
        """Free text stored raw by design (operator comments, kill-switch reasons) with detected values replaced.

        Services call it before building their state rows too, so the raw value reaches no table.
        """
        return self._redactor.scrub_text(text, "")[0]

    async def _append(
        self,
        kind: EventKind,
        body: dict[str, Any],
        nanos: int,
        *,
        normalised: bool = False,
        state: Sequence[StateChange] = (),
    ) -> Receipt:
        # Bodies are built from validated strings and integers plus user data; when that data is known to be
        # JCS-normalised the checking walk is skipped (tests compare both paths).
        return await self._queue(kind, body, nanos, normalised=normalised, state=state)

    def _queue(
        self,
        kind: EventKind,
        body: dict[str, Any],
        nanos: int,
        *,
        normalised: bool = False,
        state: Sequence[StateChange] = (),
    ) -> asyncio.Future[Receipt]:
        """``_append`` in two halves: the entry's place in the journal is fixed when this returns."""
        encoded = encode_normalised(body) if normalised else canonical_json(body)
        return self._writer.queue(kind, encoded, indexed_values(body), nanos, state)

    async def _record(
        self,
        kind: EventKind,
        nanos: int,
        fields: dict[str, Any],
        state: Sequence[StateChange] = (),
        event_id: str = "",
    ) -> RecordedEvent:
        event_id = event_id or new_event_id()
        body = {"event_id": event_id, "kind": kind.label, "timestamp": rfc3339_nanos(nanos), **fields}
        receipt = await self._append(kind, body, nanos, state=state)
        return RecordedEvent(event_id, receipt)

    async def record_kill_switch(
        self,
        operation: str,
        scope: str,
        target: str,
        reason: str,
        operator: str,
        nanos: int,
        state: Sequence[StateChange],
        *,
        via: str = "",
        control_seq: int = 0,
        control_kind: str = "",
    ) -> RecordedEvent:
        """Journals an operator engaging or releasing a kill switch, with its state change.

        A fleet switch applied from a collector's control message also carries ``via`` (the collector's control
        key name), ``control_seq`` (the message's sequence number) and ``control_kind`` (the message's kind), from
        which a restart derives what it has applied (``state.SignedStateFold``).
        """
        fields: dict[str, Any] = {
            "operation": operation,
            "scope": scope,
            "target": target,
            "tenant_id": target if scope == "tenant" else "",
            "agent_id": target if scope == "agent" else "",
            "run_id": target if scope == "run" else "",
            "comment": self.scrub_text(reason),
            "actor": {"type": "operator", "id": operator},
        }
        if via:
            fields.update(via=via, control_seq=control_seq, control_kind=control_kind)
        return await self._record(EventKind.KILL_SWITCH, nanos, fields, state)

    async def record_approval(
        self,
        kind: EventKind,
        approval: Mapping[str, Any],
        actor: Mapping[str, str],
        comment: str,
        nanos: int,
        state: Sequence[StateChange],
        extra: Mapping[str, Any] | None = None,
        event_id: str = "",
    ) -> RecordedEvent:
        """Journals an approval being voted on, granted, denied or expiring, with its state change.

        ``extra`` adds fields to the body (an operator's ``channel``, and ``via``/``control_seq`` when the answer
        came over the collector's control channel); ``event_id`` is the event's id when the state change names it.
        """
        fields = {
            "approval_id": approval["approval_id"],
            "pre_event_id": approval["event_id"],
            "run_id": approval["run_id"],
            "step_id": approval["step_id"],
            "tenant_id": approval["tenant_id"],
            "agent_id": approval["agent_id"],
            "action": approval["action"],
            "approval_binding": approval["action_key"],
            "policy_rule": approval["policy_rule"],
            "actor": dict(actor),
            "comment": self.scrub_text(comment),
        }
        if extra:
            fields.update(extra)
        event = await self._record(kind, nanos, fields, state, event_id)
        self._approval_entry(event.receipt.seq)
        return event

    def _approval_entry(self, seq: int) -> None:
        if self.on_approval_entry is not None:
            self.on_approval_entry(seq)

    async def record_cosignature(
        self, tree_size: int, root_hex: str, cosigned_note: str, state: Sequence[StateChange]
    ) -> RecordedEvent:
        """Journals the collector's cosigned checkpoint as a receipt (advancing the forwarding cursor with it)."""
        witness = cosigned_note.rstrip("\n").rsplit("\n", 1)[-1].removeprefix("\u2014 ").split(" ")[0]
        fields = {"tree_size": tree_size, "root_hash": root_hex, "checkpoint": cosigned_note, "witness": witness}
        return await self._record(EventKind.COSIGNATURE, now_nanos(), fields, state)

    async def record_prune(
        self,
        pruned_before: int,
        last_leaf_hex: str,
        tree_state_b64: str,
        retention_days: int,
        cutoff_ns: int,
        state: Sequence[StateChange],
    ) -> RecordedEvent:
        """Journals a signed prune marker; ``state`` authorises and performs the deletion in the same commit."""
        fields = {
            "pruned_before": pruned_before,
            "last_leaf_hash": last_leaf_hex,
            "tree_state": tree_state_b64,
            "retention_days": retention_days,
            "cutoff": rfc3339_nanos(cutoff_ns),
            "actor": {"type": "system", "id": "agentaudit"},
        }
        return await self._record(EventKind.PRUNE, now_nanos(), fields, state)

    async def record_heartbeat(self) -> RecordedEvent:
        """Journals a heartbeat, so an idle journal still gets a fresh witnessed checkpoint."""
        return await self._record(EventKind.HEARTBEAT, now_nanos(), {"origin": self.origin})

    async def record_gap_recovery(
        self, why: str, cosigned_note: str, local_size: int, *, fail_closed: bool
    ) -> RecordedEvent:
        """Journals detected truncation, rollback or fork of this journal, citing the collector's checkpoint."""
        fields = {
            "operation": "detected",
            "detail": why,
            "checkpoint": cosigned_note,
            "local_size": local_size,
            "fail_closed": fail_closed,
            "actor": {"type": "system", "id": "agentaudit"},
        }
        return await self._record(EventKind.GAP_RECOVERY, now_nanos(), fields)

    async def record_tamper_detected(
        self,
        detail: str,
        findings: list[dict[str, Any]],
        checked: dict[str, int],
        *,
        fail_closed: bool,
    ) -> RecordedEvent:
        """Journals entries of the journal's tail that failed the start-up self-check (gateway.sidecar.selfcheck)."""
        fields = {
            "operation": "tamper_detected",
            "detail": detail,
            "findings": findings,
            "checked": checked,
            "fail_closed": fail_closed,
            "actor": {"type": "system", "id": "agentaudit"},
        }
        return await self._record(EventKind.GAP_RECOVERY, now_nanos(), fields)

    async def record_state_mismatch(self, table: str, key: str, detail: str) -> RecordedEvent:
        """Journals a state row found to contradict the signed events (ignored for enforcement)."""
        fields = {"table": table, "key": key, "detail": detail, "actor": {"type": "system", "id": "agentaudit"}}
        return await self._record(EventKind.STATE_MISMATCH, now_nanos(), fields)

    async def record_recovery_acknowledged(self, operator: str, comment: str) -> RecordedEvent:
        """Journals an operator accepting a detected rollback (Decide answers again)."""
        fields = {
            "operation": "acknowledged",
            "comment": self.scrub_text(comment),
            "actor": {"type": "operator", "id": operator},
        }
        return await self._record(EventKind.GAP_RECOVERY, now_nanos(), fields)

    async def record_operator_denied(self, method: str, identity: str, reason: str, detail: str) -> RecordedEvent:
        """Journals an operator call refused for lack of a credential or a role."""
        fields = {
            "method": method,
            "actor": {"type": "operator" if identity else "anonymous", "id": identity},
            "reason": reason,
            "detail": detail,
        }
        return await self._record(EventKind.OPERATOR_DENIED, now_nanos(), fields)

    async def record_tool_changed(self, request: ActionRequest) -> RecordedEvent:
        """Journals an MCP tool definition that differs from its pinned digest (labels set by the MCP proxy)."""
        labels = request.labels
        fields = {
            "run_id": request.run_id,
            "step_id": request.step_id,
            "tenant_id": request.tenant_id,
            "agent_id": request.agent_id,
            # The changed tool's own action when the proxy reports it from a tools/list (its Decide's action is
            # mcp.<server>.tools/list); the call's action when it comes with a call.
            "action": labels.get("mcp.tool_action") or request.action,
            "tool_digest": labels.get("mcp.tool_digest", ""),
            "pinned_digest": labels.get("mcp.tool_pinned_digest", ""),
        }
        return await self._record(EventKind.TOOL_CHANGED, now_nanos(), fields)

    async def record_started(self, details: Mapping[str, Any]) -> RecordedEvent:
        """Journals a ``journal_started`` lifecycle event (one per sidecar start)."""
        return await self._record(EventKind.JOURNAL_STARTED, now_nanos(), {"origin": self.origin, **details})

    async def record_policy_changed(
        self,
        old_version: str,
        new_version: str,
        actor_id: str,
        trigger: str,
        source: str,
        actor_type: str = "process_user",
    ) -> RecordedEvent:
        """Journals an accepted policy change with who (or what) made it."""
        fields = {
            "actor": {"type": actor_type, "id": actor_id},
            "old_version": old_version,
            "new_version": new_version,
            "policy_version": new_version,
            "trigger": trigger,
            "source": source,
        }
        return await self._record(EventKind.POLICY_CHANGED, now_nanos(), fields)

    async def record_decision(
        self,
        request: ActionRequest,
        prepared: PreparedAction,
        decision: Decision,
        approval_id: str,
        *,
        event_id: str = "",
        state: Sequence[StateChange] = (),
    ) -> RecordedEvent:
        """Journals the pre-event of a Decide; returns only once it is durable.

        Raises:
            JournalUnavailableError: it could not be recorded (the caller fails closed).
        """
        attempt = await self._reserve_attempt(request.run_id, request.step_id)
        try:
            return await self._record_pre_event(request, prepared, decision, approval_id, attempt, event_id, state)
        except BaseException:
            self._release_attempt(request.run_id, request.step_id, attempt)
            raise

    async def _reserve_attempt(self, run_id: str, step_id: int) -> int:
        """The attempt number of a new pre-event for ``(run_id, step_id)``: 1, then 2, 3, ... for repeats.

        Counted in memory per recent run; a run not in memory (first seen since start, or evicted) is counted once
        from the journal, so attempts keep counting across restarts. The number is taken before the append awaits,
        so concurrent Decides of one step get distinct numbers.
        """
        steps = self._attempts.get(run_id)
        if steps is None:
            journaled = await self._reader.pre_events_per_step(run_id)
            # Another Decide of this run may have loaded it while this one waited: its counts are newer.
            steps = self._attempts.setdefault(run_id, journaled)
        self._attempts.move_to_end(run_id)
        if len(self._attempts) > _ATTEMPT_RUNS:
            self._attempts.popitem(last=False)
        attempt = steps.get(step_id, 0) + 1
        steps[step_id] = attempt
        return attempt

    def _release_attempt(self, run_id: str, step_id: int, attempt: int) -> None:
        """Gives back an attempt number whose pre-event was not journaled, unless a later one was taken since."""
        steps = self._attempts.get(run_id)
        if steps is not None and steps.get(step_id) == attempt:
            steps[step_id] = attempt - 1

    async def _record_pre_event(
        self,
        request: ActionRequest,
        prepared: PreparedAction,
        decision: Decision,
        approval_id: str,
        attempt: int,
        event_id: str,
        state: Sequence[StateChange],
    ) -> RecordedEvent:
        nanos = now_nanos()
        trace_id, span_id = trace_ids(request.traceparent)
        event_id = event_id or new_event_id()
        # Labels are agent-supplied like args: redacted the same way, by name and by value, into the same list.
        labels = self._redactor.redact(dict(request.labels), "labels")
        body = {
            "event_id": event_id,
            "kind": EventKind.PRE_EXEC.label,
            "timestamp": rfc3339_nanos(nanos),
            "run_id": request.run_id,
            "step_id": request.step_id,
            "attempt": attempt,
            "tenant_id": request.tenant_id,
            "actor": {"type": request.actor_type, "id": request.actor_id},
            "agent_id": request.agent_id,
            "action": request.action,
            "args": prepared.redacted_args,
            "args_digest": prepared.args_digest,
            "redacted_paths": sorted([*prepared.redacted_paths, *labels.paths]),
            "action_key": prepared.action_key,
            "scope": request.scope,
            **_decided_fields(decision, prepared),
            "approval_id": approval_id,
            "resumed_approval_id": request.approval_id,
            "trace_id": trace_id,
            "span_id": span_id,
            "labels": labels.value,
        }
        receipt = await self._append(EventKind.PRE_EXEC, body, nanos, normalised=prepared.normalised, state=state)
        if approval_id or request.approval_id:  # opens, or resumes with, an approval: the fleet wants it now
            self._approval_entry(receipt.seq)
        pre = (request.run_id, request.step_id, request.tenant_id, request.agent_id or None, request.action)
        self._remember(
            StoredEvent(
                receipt.seq,
                receipt.leaf_hash,
                EventKind.PRE_EXEC.label,
                event_id,
                *pre,
                decision.verdict.value,
                decision.reason,
                prepared.action_key,
                None,
            )
        )
        return RecordedEvent(event_id, receipt)

    def _remember(self, event: StoredEvent) -> None:
        self._pre_events.put(event.event_id, event)

    async def _pre_event(self, event_id: str) -> StoredEvent:
        event = await self._reader.find_event(event_id)
        if event is None or event.kind != EventKind.PRE_EXEC.label:
            raise NotFoundError(f"event_id {event_id!r} names no pre-event in this journal")
        return event

    async def record_result(
        self,
        event_id: str,
        status: str,
        error: str,
        output: JsonPayload,
        duration_ns: int | None,
        queued: Callable[[], None] | None = None,
    ) -> ResultOutcome:
        """Journals the post-event of a pre-event, once; a repeat answers the first post-event.

        Reporting execution of an action that was not allowed journals a ``violation`` and raises. ``queued`` is
        called as soon as this report's post-event is queued in the writer (anything queued later is journaled
        after it); a repeat or a failure queues nothing and never calls it, so a caller ordering on it (the
        Session, journaling a Decide read after a report behind that report's post-event) treats the end of this
        call as the same signal.

        Raises:
            NotFoundError: no such pre-event.
            ViolationError: the pre-event was not ``allow`` (a violation was journaled).
            JournalUnavailableError: the post-event could not be recorded.
        """
        known = self._results.get(event_id)
        pending = self._reporting.get(event_id)
        if known is not None:
            outcome = dataclasses.replace(known, duplicate=True)
        elif pending is not None:
            outcome = dataclasses.replace(await asyncio.shield(pending), duplicate=True)
        else:
            future: asyncio.Future[ResultOutcome] = asyncio.get_running_loop().create_future()
            self._reporting[event_id] = future
            try:
                outcome = await self._record_result_once(event_id, status, error, output, duration_ns, queued)
            except BaseException as exc:
                # Not recorded (unknown id, journal down): forget it, so a retry tries afresh.
                del self._reporting[event_id]
                future.set_exception(exc)
                future.exception()  # retrieved here; concurrent waiters re-raise it themselves
                raise
            # Journaled: from now on the journal answers a repeat too, so the outcome may be evicted.
            del self._reporting[event_id]
            self._results.put(event_id, outcome)
            future.set_result(outcome)
        if outcome.violation:
            raise ViolationError(
                f"event {event_id} was not allowed; reporting its execution is a violation "
                f"(journaled as {outcome.event_id})"
            )
        return outcome

    async def _record_result_once(
        self,
        event_id: str,
        status: str,
        error: str,
        output: JsonPayload,
        duration_ns: int | None,
        queued: Callable[[], None] | None,
    ) -> ResultOutcome:
        # A cached pre-event was journaled by this process and has no result yet: its entry is dropped here, before
        # the result's append, so a result (or a failed attempt at one) always sends the next report to the journal.
        # That saves the common report a read on the reader thread.
        pre = self._pre_events.pop(event_id)
        if pre is None:
            pre = await self._pre_event(event_id)
            existing = await self._reader.find_result(event_id)
            if existing is not None:
                return ResultOutcome(existing.event_id, True, existing.kind == EventKind.VIOLATION.label)
        canonical, redacted, paths = self._redactor.prepare(output.value, "output", normalised=output.normalised)
        error, error_paths = self._redactor.scrub_text(error, "error")
        nanos = now_nanos()
        allowed = pre.decision == Verdict.ALLOW.value
        kind = EventKind.POST_EXEC if allowed else EventKind.VIOLATION
        new_id = new_event_id()
        body: dict[str, Any] = {
            "event_id": new_id,
            "kind": kind.label,
            "timestamp": rfc3339_nanos(nanos),
            "pre_event_id": pre.event_id,
            "pre_event_seq": pre.seq,
            "pre_leaf_hash": pre.leaf_hash.hex(),
            "run_id": pre.run_id,
            "step_id": pre.step_id,
            "tenant_id": pre.tenant_id,
            "agent_id": pre.agent_id or "",
            "action": pre.action,
            "action_key": pre.action_key,
            "decision": pre.decision,
            "reason": pre.reason,
            "status": status,
            "error": error,
            "output": redacted,
            "output_digest": self._redactor.digest(canonical, output=True),
            "redacted_paths": sorted([*paths, *error_paths]),
            "duration_ns": duration_ns,
        }
        if not allowed:
            # The violation's own reason says what went wrong; the pre-event's reason is kept beside it.
            body["reason"] = (
                reasons.EXECUTED_WITHOUT_APPROVAL
                if pre.decision == Verdict.APPROVAL_REQUIRED.value
                else reasons.EXECUTED_AFTER_STOP
            )
            body["pre_reason"] = pre.reason
        committed = self._queue(kind, body, nanos, normalised=output.normalised)
        if queued is not None:
            queued()
        await committed
        if not allowed:
            log.warning(
                "violation: result reported for %s action (run %s, step %s, pre-event %s)",
                pre.decision,
                pre.run_id,
                pre.step_id,
                pre.event_id,
            )
        return ResultOutcome(new_id, duplicate=False, violation=not allowed)


def _decided_fields(decision: Decision, prepared: PreparedAction) -> dict[str, Any]:
    """The pre-event fields that say what was decided, by which rule, and what an approval asks for."""
    shadow = decision.shadow
    return {
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "policy_layer": decision.layer,
        "policy_rule": decision.rule,
        "policy_version": decision.policy_version,
        "retry_after_ms": None if decision.retry_after_s is None else round(decision.retry_after_s * 1000),
        "shadow_decision": shadow.verdict.value if shadow else "",
        "shadow_reason": shadow.reason if shadow else "",
        "shadow_layer": shadow.layer if shadow else "",
        "shadow_rule": shadow.rule if shadow else "",
        "approvers": list(decision.approvers),
        "approval_expires_in_s": EXPIRES_NEVER if decision.approval_parks else decision.approval_expires_s,
        "approval_use_within_s": decision.approval_use_within_s,
        "approvals_required": decision.approvals_required,  # four-eyes: distinct approvers the grant needs
        # The binding of the approval this pre-event asks for (never returned to the agent; docs/adr/0013).
        "approval_binding": prepared.approval_binding if decision.verdict is Verdict.APPROVAL_REQUIRED else "",
    }
