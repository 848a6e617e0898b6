"""The one place the CLI turns records into text: events, verify reports, traces, approvals and tables.

Every function is pure and returns the text of one line (or one block) without its final newline; the command
modules print it. JSON lines are compact (``separators=(",", ":")``) and keep non-ASCII as it is, like the
signed bodies they show. Values from a journal are made printable before they reach a terminal.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.journal import query
from gateway.journal.report import VerifyReport, printable_names
from gateway.journal.trace import (
    DASH,
    AnomalyCode,
    Role,
    StepGap,
    Trace,
    TraceEvent,
    TraceStep,
    actor_label,
    int_or_none,
    printable,
    step_span,
)

if TYPE_CHECKING:  # the generated messages are only types here: offline commands never load protobuf
    from google.protobuf.timestamp_pb2 import Timestamp

    from agentaudit.v1.operator_pb2 import Approval, KillSwitch
    from gateway.policy.testing import CaseResult

_PRE = "pre_exec"
# Trace lines are padded so the seq/verification column lines up, up to this width; longer lines are not padded.
_ALIGN_LIMIT = 120
# Free text from the journal (errors, comments) is cut to this many characters in the text trace.
_MAX_TEXT = 120
_SHORT_VERSION = len("sha256:") + 12
_LEGEND = "as marked per event (✓ verified, ✗ finding, ? not checked)"


# --- events -----------------------------------------------------------------------------------------------------


def json_line(seq: int, body: dict[str, Any]) -> str:
    """The JSON-lines form of an event: its body with its ``seq`` first (like ``agentaudit events``)."""
    return json.dumps({"seq": seq, **body}, ensure_ascii=False, separators=(",", ":"))


def cloudevent_line(seq: int, body: dict[str, Any], origin: str) -> str:
    """:func:`gateway.journal.query.cloudevent` as one JSON line."""
    return json.dumps(query.cloudevent(seq, body, origin), ensure_ascii=False, separators=(",", ":"))


_SUMMARY_DETAILS = ("status", "approval_id", "operation", "scope", "target", "method", "new_version")


def summary_line(seq: int, body: dict[str, Any]) -> str:
    """One readable line: time (UTC, milliseconds), seq, kind, run/step, action, decision, reason (``-`` for a field
    the event lacks), then what identifies the rest (result status, approval id, kill-switch operation and target,
    ...) and ``by TYPE:ID`` for an event with an actor."""

    def text(key: str) -> str:
        value = body.get(key)
        return str(value) if value not in (None, "") else "-"

    timestamp = text("timestamp")
    short = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{3})?\d*Z", timestamp)
    if short:
        timestamp = f"{short[1].replace('T', ' ')}{short[2] or '.000'}Z"
    run = text("run_id")
    if run != "-" and body.get("step_id") is not None:
        run = f"{run}/{body['step_id']}"
    parts = [
        f"{timestamp}  #{seq:<7} {text('kind'):<16} {run:<24} {text('action'):<20} "
        f"{text('decision'):<17} {text('reason')}"
    ]
    parts += [f"{key}={body[key]}" for key in _SUMMARY_DETAILS if body.get(key) not in (None, "")]
    actor = body.get("actor")
    if isinstance(actor, dict):
        parts.append(f"by {actor.get('type', '?')}:{actor.get('id', '?')}")
    return "  ".join(parts)


def decision_line(body: dict[str, Any]) -> str:
    """One decision as ``agentaudit dev`` prints it live: time, decision, reason, action, run/step, tenant."""
    clock = str(body.get("timestamp", ""))[11:23]
    run = f"{body.get('run_id', '-')}/{body.get('step_id', '-')}"
    return printable(
        f"{clock}  {body.get('decision', '?'):<17} {body.get('reason', ''):<22} {body.get('action', ''):<18} "
        f"{run:<24} {body.get('tenant_id', '')}"
    ).rstrip()


def collector_json_line(origin: str, seq: int, body: dict[str, Any]) -> str:
    """The JSON-lines form of an event found on a collector: its origin and seq first, then the signed body."""
    return json.dumps({"origin": origin, "seq": seq, **body}, ensure_ascii=False, separators=(",", ":"))


def search_header(*, with_origin: bool) -> str:
    """The column titles of ``agentaudit search`` (with an ORIGIN column for a collector search)."""
    origin = f"{'ORIGIN':<24} " if with_origin else ""
    head = f"{'TIME':<24} {origin}{'SEQ':>7}  {'KIND':<16} {'RUN':<18} {'STEP':>5}  {'ACTION':<18} {'DECISION':<17}"
    return head + " REASON [LAYER/RULE]"


def search_row(seq: int, body: dict[str, Any], origin: str | None = None) -> str:
    """One row of ``agentaudit search`` under :func:`search_header`."""
    layer_rule = f"[{body.get('policy_layer', '')}/{body.get('policy_rule', '')}]" if body.get("policy_layer") else ""
    step = body.get("step_id")
    origin_cell = "" if origin is None else f"{origin[:24]:<24} "
    return (
        f"{str(body.get('timestamp', ''))[:23]:<24} {origin_cell}{seq:>7}  {body.get('kind', ''):<16} "
        f"{str(body.get('run_id') or '-')[:18]:<18} {'-' if step is None else step:>5}  "
        f"{str(body.get('action') or '-')[:18]:<18} {body.get('decision') or '-'!s:<17} "
        f"{body.get('reason') or '-'} {layer_rule}".rstrip()
    )


# --- verify reports -----------------------------------------------------------------------------------------------


def format_report(report: VerifyReport) -> str:
    """Renders a report for people: one line per finding, then the witness status and a summary line."""
    lines = [f"{'journal' if f.seq is None else f'seq {f.seq}'}: {f.code}: {f.message}" for f in report.findings]
    if report.pruned_before:
        lines.append(f"pruned: seq 0..{report.pruned_before - 1} removed by retention (signed prune marker)")
    witnessed = f"witnessed: {report.witnessed_size} of {_count(report.tree_size, 'entry', 'entries')}"
    if report.witnessed_size > 0:
        witnessed += f" (cosigned by {', '.join(report.witnessed_by)})"
    elif report.witnessed_size < report.tree_size:
        witnessed += " (a cut-off tail is not detectable locally)"
    lines.append(witnessed)
    lines += _requirements(report)
    if report.uncredited_receipts:
        receipts = _count(report.uncredited_receipts, "cosigned checkpoint receipt", "cosigned checkpoint receipts")
        by = printable_names(report.uncredited_witnesses) or "no witness"
        if report.witness_keys:
            lines.append(
                f"not counted: {receipts} cosigned by none of the given witness keys "
                f"({', '.join(report.witness_keys)}), only by {by}"
            )
        else:
            lines.append(f"not counted: {receipts} (cosigned by {by}): no witness key was given")
    entries = _count(report.entries, "entry", "entries")
    if report.ok:
        lines.append(f"journal OK: {entries}, root {report.root_hash.hex()}")
    else:
        lines.append(f"TAMPER EVIDENCE: {_count(len(report.findings), 'finding', 'findings')} in {entries}")
    return "\n".join(lines)


def _requirements(report: VerifyReport) -> list[str]:
    """One line per assurance the caller demanded (--require-witnessed, --min-size), saying what was found."""
    lines = []
    if report.require_witnessed is not None:
        receipt = report.witnessed_receipt_seq
        grace = f", receipt at seq {receipt}" if receipt is not None else ""
        lines.append(
            f"required: at most {report.require_witnessed} unwitnessed beyond the last cosigned checkpoint "
            f"(size {report.witnessed_size}{grace}): {report.unwitnessed_beyond_grace}"
        )
    if report.min_size is not None:
        lines.append(f"required: at least {_count(report.min_size, 'entry', 'entries')}: {report.tree_size}")
    return lines


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


# --- traces -------------------------------------------------------------------------------------------------------


def format_trace(trace: Trace) -> str:
    """Renders a trace as plain text: a header, the timeline, the anomalies and the verification status."""
    lines: list[tuple[str, str]] = []  # (text, seq and verification column)
    dates = _Dates(trace.started)
    previous_version = trace.policy_version
    step_width = max((len(str(s.step_id)) for s in trace.steps), default=1)
    for item in trace.timeline:
        if isinstance(item, StepGap):
            lines.append((f"{'':12}  {step_span(item)}: no events  ! {AnomalyCode.MISSING_STEPS}", ""))
            continue
        if isinstance(item, TraceEvent):
            lines += dates.line(item, f"operator: {_operator_text(item.body)}")
            continue
        label = f"step {item.step_id:<{step_width}}  "
        last_pre: int | None = None
        for index, event in enumerate(item.events):
            text, version = _event_text(event, item, last_pre, previous_version)
            previous_version = version or previous_version
            if event.kind == _PRE:
                last_pre = event.seq
            prefix = f"{label}{printable(item.action)}  " if index == 0 else " " * len(label)
            lines += dates.line(event, prefix + text)
    width = max([len(text) for text, column in lines if column and len(text) <= _ALIGN_LIMIT] or [0])
    body = [f"{text:<{width}}  {column}".rstrip() if column else text for text, column in lines]
    return "\n".join([*_header(trace), "", *body, "", *_footer(trace)])


class _Dates:
    """Prefixes lines with their UTC time, inserting a date line whenever the date changes."""

    def __init__(self, started: str) -> None:
        parsed = _parse_time(started)
        self._date = parsed.date() if parsed else None

    def line(self, event: TraceEvent, text: str) -> list[tuple[str, str]]:
        parsed = _parse_time(str(event.body.get("timestamp", "")))
        out: list[tuple[str, str]] = []
        if parsed is not None and parsed.date() != self._date:
            self._date = parsed.date()
            out.append((f"-- {self._date.isoformat()} --", ""))
        clock = parsed.strftime("%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}" if parsed else "??:??:??.???"
        marks = f"  ! {', '.join(str(a) for a in event.anomalies)}" if event.anomalies else ""
        out.append((f"{clock}  {text}{marks}", f"seq {event.seq} {printable(event.verification)}"))
        return out


def _header(trace: Trace) -> list[str]:
    who = [f"run {printable(trace.run_id)}"]
    for label, values in (("tenant", trace.tenants), ("agent", trace.agents), ("actor", trace.actors)):
        if values:
            who.append(f"{label} {', '.join(printable(v) for v in values)}")
    started, ended = _parse_time(trace.started), _parse_time(trace.ended)
    span = f"seq {trace.first_seq}" + (f"{DASH}{trace.last_seq}" if trace.last_seq != trace.first_seq else "")
    if started is not None and ended is not None:
        end = ended.strftime("%H:%M:%SZ" if ended.date() == started.date() else "%Y-%m-%dT%H:%M:%SZ")
        span += f", {started.strftime('%Y-%m-%dT%H:%M:%SZ')} → {end}"
    if trace.policy_version:
        span += f", policy {_short_version(trace.policy_version)}"
    return ["  ".join(who), span]


def _footer(trace: Trace) -> list[str]:
    lines = [f"anomalies: {len(trace.anomalies) or 'none'}"]
    for anomaly in trace.anomalies:
        where = [f"step {anomaly.step_id}"] if anomaly.step_id is not None else []
        where += [f"seq {anomaly.seq}"] if anomaly.seq is not None else []
        at = f" ({', '.join(where)})" if where else ""
        lines.append(f"  {anomaly.code}{at}: {anomaly.message}")
    lines.append(f"verification: {trace.journal_status or _LEGEND}")
    return lines


def _event_text(event: TraceEvent, step: TraceStep, last_pre: int | None, version: str) -> tuple[str, str]:
    """The text of one event of a step, and the policy version it was decided under (pre-events)."""
    body = event.body
    if event.role in (Role.DECISION, Role.RETRY, Role.RESUMED):
        parts = [printable(body.get("decision") or "?"), printable(body.get("reason") or "")]
        where = "/".join(printable(body.get(k)) for k in ("policy_layer", "policy_rule") if body.get(k))
        parts += [f"[{where}]"] if where else []
        if body.get("retry_after_ms"):
            parts.append(f"retry after {printable(body['retry_after_ms'])} ms")
        if body.get("shadow_decision"):
            shadow = "/".join(printable(body.get(k)) for k in ("shadow_layer", "shadow_rule") if body.get(k))
            parts.append(f"shadow: {printable(body['shadow_decision'])} {printable(body.get('shadow_reason') or '')}")
            parts[-1] += f" [{shadow}]" if shadow else ""
        resumed = str(body.get("resumed_approval_id") or "")
        if resumed and event.role is not Role.RESUMED:
            parts.append(f"resumes {printable(resumed)} (not asked for in this run)")
        decided = str(body.get("policy_version") or "")
        if decided and decided != version:
            parts.append(f"policy {_short_version(decided)}")
        text = "  ".join(p for p in parts if p)
        if event.role is Role.DECISION:
            return text, decided
        action = str(body.get("action") or "")
        if action != step.action:
            text = f"{printable(action)}  {text}"
        if event.role is Role.RETRY:
            attempt = int_or_none(body.get("attempt"))
            return (f"retry (attempt {attempt}): {text}" if attempt else f"retry: {text}"), decided
        own = int_or_none(body.get("step_id"))
        return (f"resumed: {text}" if own == step.step_id else f"resumed as step {own}: {text}"), decided
    if event.role is Role.APPROVAL:
        verb = {
            "approval_voted": "approved",  # a four-eyes vote: still pending until the last approver grants
            "approval_granted": "granted",
            "approval_denied": "denied",
            "approval_expired": "expired",  # nobody answered in time
            "approval_abandoned": "abandoned (granted, not used in time)",
        }[event.kind]
        actor = body.get("actor")
        text = f"approval {printable(body.get('approval_id') or '?')} {verb}"
        if not (isinstance(actor, Mapping) and actor.get("type") == "system"):  # expiry: nobody decided
            text += f" by {actor_label(actor)}"
        required, count = int_or_none(body.get("approvals_required")), int_or_none(body.get("approvals"))
        if required and count and event.kind in ("approval_voted", "approval_granted"):
            text += f", {count} of {required} approvals" + (", still pending" if event.kind == "approval_voted" else "")
        via = str(body.get("via") or "")
        if via:
            text += f" via {printable(via)}"
        comment = str(body.get("comment") or "")
        return text + (f" ({_quote(comment)})" if comment else ""), ""
    if event.role is Role.RESULT:
        violation = event.kind == "violation"
        label = "violation" if violation else "result"
        pre_seq = body.get("pre_event_seq")
        if pre_seq != last_pre:  # say which pre-event, unless it is the line just above
            label += f" for seq {printable(pre_seq)}"
        status = printable(body.get("status") or "?")
        text = f"{label}: {printable(body.get('reason'))}, reported {status}" if violation else f"{label}: {status}"
        duration = body.get("duration_ns")
        if isinstance(duration, int):
            text += f" in {_milliseconds(duration)} ms"
        error = str(body.get("error") or "")
        return text + (f", error {_quote(error)}" if error else ""), ""
    return f"{printable(event.kind)} {printable(body.get('event_id') or '')}".rstrip(), ""


def _operator_text(body: Mapping[str, Any]) -> str:
    actor = actor_label(body.get("actor"))
    if body.get("kind") == "policy_changed":
        old, new = _short_version(str(body.get("old_version") or "?")), _short_version(str(body.get("new_version")))
        trigger = f" ({printable(body['trigger'])})" if body.get("trigger") else ""
        return f"policy {old} → {new} by {actor}{trigger}"
    operation = {"engage": "engaged", "release": "released"}.get(str(body.get("operation")), body.get("operation"))
    scope = str(body.get("scope") or "?")
    where = "globally" if scope == "global" else f"for {printable(scope)} {printable(body.get('target') or '?')}"
    comment = str(body.get("comment") or "")
    return f"kill switch {printable(operation)} {where} by {actor}" + (f" ({_quote(comment)})" if comment else "")


def _milliseconds(nanos: int) -> str:
    return f"{nanos / 1_000_000:.3f}".rstrip("0").rstrip(".")


def _short_version(version: str) -> str:
    return printable(version[:_SHORT_VERSION] if version.startswith("sha256:") else version)


def _quote(text: str) -> str:
    """Free text (comment, error) quoted, escaped and cut to a readable length."""
    cut = text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
    return printable(json.dumps(cut, ensure_ascii=False))


def _parse_time(timestamp: str) -> datetime.datetime | None:
    """An RFC 3339 timestamp (any number of fraction digits) in UTC, or None."""
    text = timestamp.strip()
    if not text:
        return None
    text = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    head, dot, rest = text.partition(".")
    if dot:  # datetime takes at most 6 fraction digits; journal timestamps have 9
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(datetime.UTC) if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


# --- operator replies and policy tests ----------------------------------------------------------------------------


def when(ts: Timestamp) -> str:
    """A protobuf timestamp as ``2026-11-27 09:00:00Z``, ``-`` when unset."""
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ") if ts.seconds else "-"


def json_object(value: Mapping[str, Any]) -> str:
    """Any other ``--json`` output: one compact JSON object in the CLI's one vocabulary (docs/cli.md).

    snake_case keys; enum values as lower-case names (``pending``, ``tenant``), never protobuf's prefixed ones;
    counts, seqs and step ids as JSON numbers; times as RFC 3339 UTC strings, ``null`` when unset.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _enum_name(message: Any, field: str, prefix: str) -> str:
    """An enum field's value by its lower-case name without ``prefix``, from the message's own descriptor."""
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    assert enum is not None
    return str(enum.values_by_number[getattr(message, field)].name).removeprefix(prefix).lower()


def _rfc3339(ts: Timestamp) -> str | None:
    return str(ts.ToJsonString()) if ts.seconds or ts.nanos else None


def _plain(value: Any) -> Any:
    """A protobuf Struct value back to JSON as journaled: whole doubles as integers (Struct has no integers)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def approval_record(approval: Approval) -> dict[str, Any]:
    """An approval in the CLI's JSON vocabulary: what is asked for, by whom, and (when resolved) who decided."""
    # Imported here, the one protobuf import of this module: the offline commands render with it too.
    from google.protobuf import json_format  # noqa: PLC0415

    return {
        "approval_id": approval.approval_id,
        "state": _enum_name(approval, "state", "APPROVAL_STATE_"),
        "tenant_id": approval.tenant_id,
        "run_id": approval.run_id,
        "step_id": approval.step_id,
        "previous_steps": approval.previous_steps,
        "agent_id": approval.agent_id,
        "actor": {"type": _enum_name(approval.actor, "type", "ACTOR_TYPE_"), "id": approval.actor.id},
        "action": approval.action,
        "args": _plain(json_format.MessageToDict(approval.args)),
        "redacted_paths": list(approval.redacted_paths),
        "reason": approval.reason,
        "policy_rule": approval.policy_rule,
        "approvers": list(approval.approvers),
        "action_key": approval.action_key,
        "event_id": approval.event_id,
        "created_at": _rfc3339(approval.created_at),
        "expires_at": _rfc3339(approval.expires_at),
        "resolved_by": approval.resolved_by or None,
        "resolved_at": _rfc3339(approval.resolved_at),
        "comment": approval.comment or None,
        "used": approval.used,
        # Fleet and four-eyes fields (set by the collector's fleet API; a sidecar leaves origin empty).
        "origin": approval.origin or None,
        "policy_version": approval.policy_version or None,
        "approvals_required": approval.approvals_required or 1,
        "votes": [
            {
                "approver": v.approver,
                "grant": v.grant,
                "channel": v.channel,
                "comment": v.comment or None,
                "at": _rfc3339(v.at),
                "via": v.via or None,
            }
            for v in approval.votes
        ],
    }


def resolution_line(approval: Approval, event_id: str, *, grant: bool) -> str:
    """``agentaudit approve`` / ``deny``: who answered and, for a four-eyes approval, how many answers it has."""
    verb = "granted" if grant else "denied"
    grants = sum(1 for v in approval.votes if v.grant)
    by = approval.votes[-1].approver if approval.votes else approval.resolved_by
    state = _enum_name(approval, "state", "APPROVAL_STATE_")
    required = approval.approvals_required or 1
    if event_id:  # answered on the sidecar itself
        if grant and state == "pending":
            return (
                f"{approval.approval_id} approved by {printable(by)}: {grants} of {required} approvals, still pending "
                f"(event {event_id})"
            )
        progress = f" ({grants} of {required} approvals)" if grant and required > 1 else ""
        return f"{approval.approval_id} {verb} by {printable(approval.resolved_by)}{progress} (event {event_id})"
    return (
        f"{approval.approval_id} {verb} by {by} at the collector; now {state} "
        f"({grants} of {approval.approvals_required or 1} approvals; origin {approval.origin})"
    )


def approval_json_line(approval: Approval) -> str:
    """An approval as one JSON line (:func:`approval_record`)."""
    return json_object(approval_record(approval))


def approvals_table(approvals: Sequence[Approval], state: str) -> list[str]:
    """``agentaudit approvals``: per approval a row, then what it approves (the redacted arguments, the reason, the
    run's earlier steps) and, once resolved, who resolved it, when, and why; or one line saying there is none."""
    if not approvals:
        return [f"no {state} approvals"]
    rows = [
        f"{'APPROVAL':<31} {'TENANT':<12} {'RUN':<20} {'STEP':>4}  {'ACTION':<18} {'RULE':<24} {'EXPIRES':<20} "
        "REQUESTED BY"
    ]
    for a in approvals:
        record = approval_record(a)
        requester = f"{record['actor']['type']}:{a.actor.id}" if a.actor.id else "-"
        rows.append(
            f"{printable(a.approval_id):<31} {printable(a.tenant_id):<12} {printable(a.run_id):<20} {a.step_id:>4}  "
            f"{printable(a.action):<18} {printable(a.policy_rule):<24} {when(a.expires_at):<20} "
            f"{printable(requester)} via {printable(a.agent_id or '-')}"
        )
        args = printable(json.dumps(record["args"], ensure_ascii=False, separators=(",", ":")))
        rows.append(f"    args {args}")
        redacted = ", ".join(printable(p) for p in a.redacted_paths) or "none"
        rows.append(f"    reason {printable(a.reason or '-')}; redacted {redacted}; {a.previous_steps} earlier step(s)")
        if a.origin or a.votes:
            voters = ", ".join(f"{printable(v.approver)} ({'yes' if v.grant else 'no'}, {v.channel})" for v in a.votes)
            where = f"origin {printable(a.origin)}; " if a.origin else ""
            grants = sum(1 for v in a.votes if v.grant)
            rows.append(f"    {where}{grants} of {a.approvals_required or 1} approval(s): {voters or 'no answer yet'}")
        if a.resolved_by:
            comment = f": {_quote(a.comment)}" if a.comment else ""
            rows.append(f"    resolved by {printable(a.resolved_by)} at {when(a.resolved_at)}{comment}")
    return rows


def kill_switch_record(switch: KillSwitch) -> dict[str, Any]:
    """A kill switch in the CLI's JSON vocabulary."""
    return {
        "scope": _enum_name(switch, "scope", "KILL_SWITCH_SCOPE_"),
        "target": switch.target or None,
        "reason": switch.reason,
        "engaged_by": switch.engaged_by,
        "engaged_at": _rfc3339(switch.engaged_at),
        "via": switch.via or None,
    }


def kill_switch_row(switch: KillSwitch) -> str:
    """One engaged kill switch: scope, target, who engaged it, since when, and why."""
    # The scope's enum name from the message's own descriptor, so that rendering needs no generated module.
    scope_enum = switch.DESCRIPTOR.fields_by_name["scope"].enum_type
    assert scope_enum is not None  # scope is an enum field
    scope = scope_enum.values_by_number[switch.scope].name.removeprefix("KILL_SWITCH_SCOPE_").lower()
    since = when(switch.engaged_at)
    return f"{scope:<7} {switch.target or '*':<24} by {switch.engaged_by:<24} since {since:<20} {switch.reason}"


def case_record(result: CaseResult) -> dict[str, Any]:
    """One ``policy test`` case in the CLI's JSON vocabulary: its name, whether it passed, what was expected and got."""
    return {
        "name": result.name,
        "passed": result.passed,
        "expected": dict(result.expected),
        "actual": dict(result.actual),
    }


def policy_test_lines(results: Sequence[CaseResult]) -> list[str]:
    """``agentaudit policy test``: PASS/FAIL per case with what differed, then the totals."""
    width = max(len(r.name) for r in results)
    lines = []
    for result in results:
        status = "PASS" if result.passed else "FAIL"
        actual = result.actual
        lines.append(
            f"{status}  {result.name:<{width}}  {actual['decision']:<17} {actual['reason']:<24} {actual['layer']}"
        )
        if not result.passed:
            lines += [
                f"      {key}: expected {want!r}, got {actual.get(key)!r}"
                for key, want in result.expected.items()
                if actual.get(key) != want
            ]
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return lines
