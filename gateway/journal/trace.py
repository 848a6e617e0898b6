"""One run reconstructed from the journal as a timeline, and what looks wrong in it (``agentaudit trace``).

Pure: the caller reads the events (``iter_bodies``) and, optionally, verifies the journal; this module only
arranges them. Events are signed bodies with their seq (``{"seq": n, **body}``, as ``agentaudit events`` prints
them).

The timeline is made of *steps* (the events of one ``step_id``: its pre-events, the approval chain and the
result) and *operator actions* that affected the run (kill switches covering it, policy changes while it ran),
ordered by the seq of their first event. A pre-event that resumes an approval belongs to the step that asked for
it, even when the agent gave the resumed call a new step id, so the chain reads as one:
``approval_required → approval_granted by alice → allow → result succeeded in 240 ms``.

Anomalies (stable codes, :class:`AnomalyCode`) are marked on the line where they occur (``! code``) and listed at
the end; ``agentaudit trace`` exits 1 when there is any, so scripts can gate on a run. Every line that shows an
event ends with its seq and verification status: ``✓`` verified, ``✗ <finding codes>`` tamper evidence at that
seq, ``?`` not checked. Text from the journal (action names, comments, errors) is escaped so that it cannot forge
lines.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.journal.report import VerifyReport, assurance
from gateway.journal.schema import OPERATOR_CONTEXT_KINDS

VERIFIED = "✓"
NOT_CHECKED = "?"
TAMPERED = "✗"

CONTEXT_KINDS = OPERATOR_CONTEXT_KINDS  # the events a trace shows beside the run (indexed for it)
"""Event kinds that are not part of a run but can affect it (the CLI passes them as ``context_events``)."""

_PRE = "pre_exec"
_RESULT_KINDS = ("post_exec", "violation")
# The approval chain of a step: how its approval was resolved, and (after a grant nobody used in time) abandoned.
# The approval chain of a step also holds the four-eyes votes before the grant (approval_voted), which resolve nothing.
_VOTED = "approval_voted"
_APPROVAL_KINDS = (_VOTED, "approval_granted", "approval_denied", "approval_expired", "approval_abandoned")
_ALLOW = "allow"
_APPROVAL_REQUIRED = "approval_required"
# Ranges of seqs and steps use an en dash, as in print (the text trace too).
DASH = "\u2013"


class AnomalyCode(enum.StrEnum):
    """What looks wrong in a run. Stable codes: scripts match on them; never rename one."""

    MISSING_RESULT = "missing_result"
    """An allowed pre-event has no result (post_exec or violation): still running, crashed, or not reported."""
    RESULT_WITHOUT_ALLOW = "result_without_allow"
    """A result (post_exec or violation) whose pre-event did not allow the action, or is not in the run."""
    MISSING_STEPS = "missing_steps"
    """Step ids are not contiguous from 1 (or 0): the run has steps the journal does not show."""
    VIOLATION = "violation"
    """The agent reported executing an action that was stopped or not approved."""
    UNRESOLVED_APPROVAL = "unresolved_approval"
    """An approval was required and never granted, denied or expired."""
    VERIFICATION_FAILED = "verification_failed"
    """The verifier reported tamper evidence at the seq of an event shown in the trace."""
    REPLAYED_ATTEMPT = "replayed_attempt"
    """A pre-event carries an attempt number its step already had: the sidecar numbers every pre-event of a
    ``(run_id, step_id)`` 1, 2, 3, ..., so a repeat of a number is a copy (a replay), not a retry."""


class Role(enum.StrEnum):
    """What an event is to the run."""

    DECISION = "decision"
    """The first pre-event of a step."""
    RETRY = "retry"
    """A later pre-event with the same step id that does not resume an approval of the step (its ``attempt``
    number, in journals that carry it, says which try it was)."""
    RESUMED = "resumed"
    """A pre-event resuming an approval the step asked for (possibly under another step id)."""
    APPROVAL = "approval"
    """The approval the step asked for was granted, denied or expired (or, granted and never used, abandoned)."""
    RESULT = "result"
    """A ``post_exec`` or ``violation`` reported for one of the step's pre-events."""
    OPERATOR = "operator"
    """A kill switch or policy change that affected the run."""
    OTHER = "other"
    """Any other event carrying the run id."""


@dataclass(frozen=True)
class Anomaly:
    """One thing that looks wrong: its code, where (seq and step when it has them) and a sentence."""

    code: AnomalyCode
    message: str
    seq: int | None = None
    step_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible values."""
        return {"code": str(self.code), "seq": self.seq, "step_id": self.step_id, "message": self.message}


@dataclass(frozen=True)
class TraceEvent:
    """One journal event in the timeline."""

    seq: int
    role: Role
    body: Mapping[str, Any]
    verification: str
    anomalies: tuple[AnomalyCode, ...] = ()

    @property
    def kind(self) -> str:
        """The body's kind."""
        return str(self.body.get("kind", ""))

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible values: the role, verification and anomalies, and the signed body as stored."""
        return {
            "seq": self.seq,
            "role": str(self.role),
            "kind": self.kind,
            "verification": self.verification,
            "anomalies": [str(a) for a in self.anomalies],
            "event": dict(self.body),
        }


@dataclass(frozen=True)
class TraceStep:
    """The events of one step in seq order: pre-event(s), approval chain, result(s)."""

    step_id: int
    action: str
    events: tuple[TraceEvent, ...]

    @property
    def first_seq(self) -> int:
        """Where the step starts in the journal."""
        return self.events[0].seq

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible values."""
        return {"step_id": self.step_id, "action": self.action, "events": [e.to_json() for e in self.events]}


@dataclass(frozen=True)
class StepGap:
    """Step ids ``first``..``last`` have no event in the run."""

    first: int
    last: int


TimelineItem = TraceStep | TraceEvent | StepGap


@dataclass(frozen=True)
class Trace:
    """A run as a timeline. Build it with :func:`build_trace`; ``gateway.cli.render.format_trace`` prints it."""

    run_id: str
    tenants: tuple[str, ...]
    agents: tuple[str, ...]
    actors: tuple[str, ...]
    first_seq: int
    last_seq: int
    started: str
    ended: str
    policy_version: str
    timeline: tuple[TimelineItem, ...]
    anomalies: tuple[Anomaly, ...]
    journal_status: str | None = None

    @property
    def steps(self) -> tuple[TraceStep, ...]:
        """The steps, in timeline order."""
        return tuple(item for item in self.timeline if isinstance(item, TraceStep))

    @property
    def operator_actions(self) -> tuple[TraceEvent, ...]:
        """Kill switches and policy changes that affected the run, in seq order."""
        return tuple(item for item in self.timeline if isinstance(item, TraceEvent))

    def to_json(self) -> dict[str, Any]:
        """The trace as one JSON-compatible object (``agentaudit trace --json``)."""
        return {
            "run_id": self.run_id,
            "ok": not self.anomalies,
            "tenants": list(self.tenants),
            "agents": list(self.agents),
            "actors": list(self.actors),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "started": self.started,
            "ended": self.ended,
            "policy_version": self.policy_version,
            "steps": [s.to_json() for s in self.steps],
            "operator_actions": [e.to_json() for e in self.operator_actions],
            "anomalies": [a.to_json() for a in self.anomalies],
            "verification": self.journal_status,
        }


def verification_from_report(report: VerifyReport) -> tuple[Callable[[int], str], str]:
    """The per-seq status callback for :func:`build_trace` and a one-line journal status, from a verify report.

    Read the run's events *before* verifying: the journal is append-only, so every event read is then inside
    the verified snapshot.
    """
    by_seq: dict[int, list[str]] = {}
    for finding in report.findings:
        if finding.seq is not None:
            codes = by_seq.setdefault(finding.seq, [])
            if str(finding.code) not in codes:
                codes.append(str(finding.code))

    def verified(seq: int) -> str:
        codes = by_seq.get(seq)
        return f"{TAMPERED} {','.join(codes)}" if codes else VERIFIED

    entries = f"{report.entries} {'entry' if report.entries == 1 else 'entries'}"
    if report.ok:
        return verified, f"journal verified: {entries}, no tamper evidence; {assurance(report)}"
    whole = sorted({str(f.code) for f in report.findings if f.seq is None})
    status = f"TAMPER EVIDENCE: {len(report.findings)} finding(s) in {entries}"
    if whole:
        status += f" (journal: {', '.join(whole)})"
    return verified, status + "; run `agentaudit verify` for details"


def build_trace(
    events: Sequence[Mapping[str, Any]],
    *,
    run_id: str,
    verified: Callable[[int], str] | None = None,
    context_events: Sequence[Mapping[str, Any]] = (),
    journal_status: str | None = None,
) -> Trace:
    """Arranges a run's events into steps, links the approval chains and results, and finds anomalies.

    Args:
        events: the run's events (``{"seq": n, **body}``); events of other runs are ignored.
        run_id: the run to trace.
        verified: the verification status of a seq (``✓``, ``✗ <codes>``, ``?``); None: every event ``?``.
        context_events: candidate operator actions (kinds in :data:`CONTEXT_KINDS`, from anywhere in the
            journal); kept are kill switches whose scope covers the run (engaged during it, or still engaged when
            it started) and policy changes between its first and last event.
        journal_status: a line on the journal as a whole (e.g. from :func:`verification_from_report`).

    Raises:
        ValueError: no event belongs to the run.
    """
    status = verified or (lambda _seq: NOT_CHECKED)
    run_events, context = _split(events, run_id, context_events)
    if not run_events:
        raise ValueError(f"no events for run {run_id!r}")
    run = _Run(run_events)
    findings: dict[int, list[AnomalyCode]] = {}
    anomalies: dict[int, list[Anomaly]] = {}

    def flag(seq: int, step_id: int | None, code: AnomalyCode, message: str) -> None:
        findings.setdefault(seq, []).append(code)
        anomalies.setdefault(seq, []).append(Anomaly(code, message, seq, step_id))

    run.check(flag)
    operator = _affecting(context, run)
    for shown in [*run_events, *operator]:
        seq = int(shown["seq"])
        verification = status(seq)
        if verification.startswith(TAMPERED):
            step = shown.get("step_id") if shown.get("run_id") == run_id else None
            flag(seq, int_or_none(step), AnomalyCode.VERIFICATION_FAILED, f"{_kind(shown)}: {verification}")

    def trace_event(event: Mapping[str, Any], role: Role) -> TraceEvent:
        seq = int(event["seq"])
        body = {k: v for k, v in event.items() if k != "seq"}
        return TraceEvent(seq, role, body, status(seq), tuple(findings.get(seq, ())))

    items: list[TimelineItem] = [
        TraceStep(group.step_id, group.action, tuple(trace_event(e, run.role(e, group.step_id)) for e in group.events))
        for group in run.groups()
    ]
    items += [trace_event(e, Role.OPERATOR) for e in operator]
    items.sort(key=_start)
    timeline, gap_anomalies = _insert_gaps(items, run.step_ids)

    ordered = _in_timeline_order(timeline, gap_anomalies, anomalies)
    return _trace(run_id, run_events, tuple(timeline), tuple(ordered), journal_status)


def _trace(
    run_id: str,
    run_events: Sequence[Mapping[str, Any]],
    timeline: tuple[TimelineItem, ...],
    anomalies: tuple[Anomaly, ...],
    journal_status: str | None,
) -> Trace:
    """The trace's header fields, taken from the run's events, around its timeline and anomalies."""
    first, last = run_events[0], run_events[-1]
    return Trace(
        run_id=run_id,
        tenants=_distinct(e.get("tenant_id") for e in run_events),
        agents=_distinct(e.get("agent_id") for e in run_events),
        actors=_distinct(actor_label(e.get("actor")) for e in run_events if _kind(e) == _PRE),
        first_seq=int(first["seq"]),
        last_seq=int(last["seq"]),
        started=str(first.get("timestamp", "")),
        ended=str(last.get("timestamp", "")),
        policy_version=next((str(e.get("policy_version", "")) for e in run_events if _kind(e) == _PRE), ""),
        timeline=timeline,
        anomalies=anomalies,
        journal_status=journal_status,
    )


def _in_timeline_order(
    timeline: Sequence[TimelineItem],
    gap_anomalies: Mapping[StepGap, Anomaly],
    anomalies: Mapping[int, list[Anomaly]],
) -> list[Anomaly]:
    """The anomalies in the order they appear in the timeline (gaps where they fall, others by their event)."""
    ordered: list[Anomaly] = []
    for item in timeline:
        if isinstance(item, StepGap):
            ordered.append(gap_anomalies[item])
        else:
            for event in item.events if isinstance(item, TraceStep) else (item,):
                ordered += anomalies.get(event.seq, [])
    return ordered


@dataclass
class _Group:
    step_id: int
    action: str
    events: list[Mapping[str, Any]] = field(default_factory=list)
    first_pre: Mapping[str, Any] | None = None


class _Run:
    """Indexes of one run's events: pre-events by id, approvals by id, results by pre-event, step groups."""

    def __init__(self, events: list[Mapping[str, Any]]) -> None:
        self.events = events
        self.pres = {str(e.get("event_id")): e for e in events if _kind(e) == _PRE}
        self.results: dict[str, list[Mapping[str, Any]]] = {}
        for e in events:
            if _kind(e) in _RESULT_KINDS:
                self.results.setdefault(str(e.get("pre_event_id")), []).append(e)
        # The pre-event that asked for each approval (the first one issuing the id without resuming it).
        self.asking: dict[str, Mapping[str, Any]] = {}
        for e in self.pres.values():
            approval_id = str(e.get("approval_id") or "")
            if approval_id and e.get("decision") == _APPROVAL_REQUIRED and e.get("resumed_approval_id") != approval_id:
                self.asking.setdefault(approval_id, e)
        self.resolutions: dict[str, list[Mapping[str, Any]]] = {}
        for e in events:
            if _kind(e) in _APPROVAL_KINDS and _kind(e) != _VOTED:
                self.resolutions.setdefault(str(e.get("approval_id")), []).append(e)
        self.step_ids = sorted({s for e in events if (s := int_or_none(e.get("step_id"))) is not None})
        self._group_of: dict[int, int] = {}  # seq → the step id of the group it is shown in
        self._groups: dict[int, _Group] = {}
        for e in events:
            self._place(e)

    def _place(self, event: Mapping[str, Any]) -> None:
        kind = _kind(event)
        own = int_or_none(event.get("step_id")) or 0
        anchor: Mapping[str, Any] | None = None
        if kind == _PRE:
            anchor = self.resumes(event)
        elif kind in _RESULT_KINDS:
            anchor = self.pres.get(str(event.get("pre_event_id")))
        elif kind in _APPROVAL_KINDS:
            anchor = self.asking.get(str(event.get("approval_id"))) or self.pres.get(str(event.get("pre_event_id")))
        step_id = self._group_of.get(int(anchor["seq"]), own) if anchor is not None else own
        self._group_of[int(event["seq"])] = step_id
        group = self._groups.get(step_id)
        if group is None:
            group = self._groups[step_id] = _Group(step_id, str(event.get("action") or ""))
        group.events.append(event)
        if group.first_pre is None and kind == _PRE and anchor is None:
            group.first_pre = event

    def resumes(self, pre: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The pre-event in this run that asked for the approval this pre-event resumes, if any."""
        resumed = str(pre.get("resumed_approval_id") or "")
        asking = self.asking.get(resumed) if resumed else None
        return asking if asking is not None and asking is not pre else None

    def groups(self) -> list[_Group]:
        return list(self._groups.values())

    def role(self, event: Mapping[str, Any], group_step: int) -> Role:
        kind = _kind(event)
        if kind in _RESULT_KINDS:
            return Role.RESULT
        if kind in _APPROVAL_KINDS:
            return Role.APPROVAL
        if kind != _PRE:
            return Role.OTHER
        if self.resumes(event) is not None:
            return Role.RESUMED
        return Role.DECISION if self._groups[group_step].first_pre is event else Role.RETRY

    def check(self, flag: Callable[[int, int | None, AnomalyCode, str], None]) -> None:
        """Reports each anomaly of the run's events through ``flag`` (missing steps are found separately)."""
        for e in self.events:
            seq, kind, step = int(e["seq"]), _kind(e), int_or_none(e.get("step_id"))
            action = printable(e.get("action") or "?")
            if kind == _PRE and e.get("decision") == _ALLOW and not self.results.get(str(e.get("event_id"))):
                flag(seq, step, AnomalyCode.MISSING_RESULT, f"{action} was allowed but no result was reported")
            elif kind in _RESULT_KINDS:
                what = "violation" if kind == "violation" else "result"
                pre = self.pres.get(str(e.get("pre_event_id")))
                if kind == "violation":
                    pre_reason = printable(e.get("pre_reason") or e.get("reason") or "")
                    flag(
                        seq,
                        step,
                        AnomalyCode.VIOLATION,
                        f"{action} reported {printable(e.get('status') or '?')} after "
                        f"{printable(e.get('decision') or '?')} ({pre_reason}): {printable(e.get('reason') or '')}",
                    )
                if pre is None:
                    flag(
                        seq,
                        step,
                        AnomalyCode.RESULT_WITHOUT_ALLOW,
                        f"{what} for pre-event {printable(e.get('pre_event_id') or '?')} "
                        f"(seq {printable(e.get('pre_event_seq'))}), which is not in this run",
                    )
                elif pre.get("decision") != _ALLOW:
                    flag(
                        seq,
                        step,
                        AnomalyCode.RESULT_WITHOUT_ALLOW,
                        f"{what} for seq {pre['seq']}, which was {printable(pre.get('decision') or '?')} "
                        f"({printable(pre.get('reason') or '')}), not allow",
                    )
        for approval_id, pre in self.asking.items():
            if approval_id not in self.resolutions:
                flag(
                    int(pre["seq"]),
                    int_or_none(pre.get("step_id")),
                    AnomalyCode.UNRESOLVED_APPROVAL,
                    f"approval {printable(approval_id)} for {printable(pre.get('action') or '?')} "
                    "was never granted, denied or expired",
                )
        self._check_attempts(flag)

    def _check_attempts(self, flag: Callable[[int, int | None, AnomalyCode, str], None]) -> None:
        """Flags a pre-event whose attempt number its step already had (journals without attempts: nothing)."""
        highest: dict[int, int] = {}  # step id → the highest attempt seen so far
        for e in self.events:
            step, attempt = int_or_none(e.get("step_id")), int_or_none(e.get("attempt"))
            if _kind(e) != _PRE or step is None or attempt is None:
                continue
            previous = highest.get(step, 0)
            if attempt <= previous:
                flag(
                    int(e["seq"]),
                    step,
                    AnomalyCode.REPLAYED_ATTEMPT,
                    f"{printable(e.get('action') or '?')} is attempt {attempt} of step {step} again (the step is "
                    f"already at attempt {previous}): a copy of an earlier pre-event, not a retry",
                )
            highest[step] = max(previous, attempt)


def _split(
    events: Sequence[Mapping[str, Any]], run_id: str, context_events: Sequence[Mapping[str, Any]]
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The run's own events and the candidate operator events (a run-scoped kill switch carries the run id)."""
    run: dict[int, Mapping[str, Any]] = {}
    context: dict[int, Mapping[str, Any]] = {}
    for event in events:
        if event.get("run_id") != run_id:
            continue
        (context if _kind(event) in CONTEXT_KINDS else run)[int(event["seq"])] = event
    for event in context_events:
        if _kind(event) in CONTEXT_KINDS:
            context.setdefault(int(event["seq"]), event)
    return [run[s] for s in sorted(run)], [context[s] for s in sorted(context)]


def _affecting(context: list[Mapping[str, Any]], run: _Run) -> list[Mapping[str, Any]]:
    """The operator events that affected the run, in seq order."""
    first, last = int(run.events[0]["seq"]), int(run.events[-1]["seq"])
    run_id = run.events[0].get("run_id")
    tenants = {e.get("tenant_id") for e in run.events} - {None, ""}
    agents = {e.get("agent_id") for e in run.events} - {None, ""}

    def covers(switch: Mapping[str, Any]) -> bool:
        scope, target = switch.get("scope"), switch.get("target")
        return (
            scope == "global"
            or (scope == "tenant" and (switch.get("tenant_id") or target) in tenants)
            or (scope == "agent" and (switch.get("agent_id") or target) in agents)
            or (scope == "run" and (switch.get("run_id") or target) == run_id)
        )

    # A switch engaged before the run counts if it was still engaged when the run started.
    before: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    kept: list[Mapping[str, Any]] = []
    for event in context:
        seq = int(event["seq"])
        if _kind(event) == "kill_switch" and covers(event):
            if seq < first:
                before[(event.get("scope"), event.get("target"))] = event
            elif seq <= last:
                kept.append(event)
        elif _kind(event) == "policy_changed" and first < seq < last:
            kept.append(event)
    kept += [e for e in before.values() if e.get("operation") == "engage"]
    return sorted(kept, key=lambda e: int(e["seq"]))


def _start(item: TimelineItem) -> int:
    if isinstance(item, TraceStep):
        return item.first_seq
    return item.seq if isinstance(item, TraceEvent) else -1


def _insert_gaps(items: list[TimelineItem], step_ids: list[int]) -> tuple[list[TimelineItem], dict[StepGap, Anomaly]]:
    """Marks each run of missing step ids before the first step numbered above it."""
    gaps: list[StepGap] = []
    previous = 0
    for step in step_ids:
        if step > previous + 1:
            gaps.append(StepGap(previous + 1, step - 1))
        previous = step
    anomalies = {
        gap: Anomaly(
            AnomalyCode.MISSING_STEPS, f"no events for {step_span(gap)} (the run has steps up to {step_ids[-1]})"
        )
        for gap in gaps
    }
    timeline: list[TimelineItem] = []
    pending = list(gaps)
    for item in items:
        while pending and isinstance(item, TraceStep) and item.step_id > pending[0].last:
            timeline.append(pending.pop(0))
        timeline.append(item)
    return timeline + pending, anomalies


def step_span(gap: StepGap) -> str:
    """``step 4`` or ``steps 4..6`` (with an en dash): the steps a gap covers (anomaly messages and the text trace)."""
    return f"step {gap.first}" if gap.first == gap.last else f"steps {gap.first}{DASH}{gap.last}"


def _kind(event: Mapping[str, Any]) -> str:
    return str(event.get("kind", ""))


def int_or_none(value: Any) -> int | None:
    """A journal value that is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def actor_label(actor: Any) -> str:
    """``alice`` for an operator, ``user:u_1`` for anyone else."""
    if not isinstance(actor, Mapping) or not actor.get("id"):
        return "?"
    if actor.get("type") == "operator":
        return printable(actor["id"])
    return printable(f"{actor.get('type') or '?'}:{actor['id']}")


def _distinct(values: Iterable[Any]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for value in values:
        if value:
            seen.setdefault(str(value), None)
    return tuple(seen)


def printable(value: Any) -> str:
    """A journal value made safe for one line: non-printable characters escaped (no forged lines or bidi tricks)."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
