"""The console's read models: one query function per page, returning plain values a template only formats.

Every function reads through :class:`~gateway.collector.fleet.FleetControl` (approvals, switches, streams) and
the :class:`~gateway.collector.store.CollectorStore` (events, origins, evidence); none writes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.collector.fleet import FleetApproval, FleetControl, FleetSwitch
from gateway.collector.fleet_model import PENDING, STATES
from gateway.collector.store import CollectorEventFilter, CollectorStore, SearchCursor, SearchHit
from gateway.journal.entry import decode_entry, signature_payload
from gateway.journal.trace import TAMPERED as TRACE_TAMPERED
from gateway.journal.trace import VERIFIED, StepGap, Trace, TraceEvent, TraceStep, actor_label, build_trace
from gateway.signing import Verifier

PAGE_SIZE = 50
MAX_RUN_EVENTS = 5000
OVERVIEW_SAMPLE = 20_000
"""Decisions read for the overview's charts (the newest); the page says when the window held more."""
RESOLVED_LIMIT = 1000
SEARCH_FIELDS = ("run_id", "tenant_id", "agent_id", "action", "decision", "reason", "trace_id", "origin", "kind")


# --- approvals ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArgRow:
    """One leaf of the redacted arguments: its path, the value as journaled, and what redacted it (if anything)."""

    path: str
    value: str
    redacted_by: str = ""


@dataclass(frozen=True)
class ApprovalView:
    """An approval with what an approver reads: the args as a table, age, time left, four-eyes progress."""

    approval: FleetApproval
    args: tuple[ArgRow, ...]
    age_s: int
    left_s: int | None  # None: never expires
    grants: int

    @property
    def progress(self) -> str:
        """``1 of 2`` approvals given."""
        return f"{self.grants} of {self.approval.approvals_required}"

    @property
    def decide_s(self) -> float | None:
        """Seconds from the request to its resolution (None while pending)."""
        a = self.approval
        return None if a.resolved_ms is None else (a.resolved_ms - a.created_ms) / 1000


def _leaves(value: Any, path: str, out: list[ArgRow]) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _leaves(child, f"{path}.{key}", out)
    elif isinstance(value, list) and value:
        for i, child in enumerate(value):
            _leaves(child, f"{path}[{i}]", out)
    else:
        out.append(ArgRow(path, value if isinstance(value, str) else _json(value)))


def _json(value: Any) -> str:
    import json  # noqa: PLC0415

    return json.dumps(value, ensure_ascii=False)


def redaction_source(path: str) -> str:
    """What removed or rewrote a redacted path: a detector (``args.note#phone``) or a name rule."""
    if "#" in path:
        return f"detector {path.rsplit('#', 1)[1]}"
    return f"name rule ({path.rsplit('.', 1)[-1]})"


def arg_rows(args: Mapping[str, Any], redacted_paths: tuple[str, ...]) -> tuple[ArgRow, ...]:
    """The args as rows, each leaf with its path; a path a name rule removed is a row of its own."""
    rows: list[ArgRow] = []
    _leaves(dict(args), "args", rows)
    detected = {p.rsplit("#", 1)[0]: redaction_source(p) for p in redacted_paths if "#" in p}
    removed = [p for p in redacted_paths if "#" not in p]
    rows = [
        ArgRow(r.path, r.value, detected.get(r.path, ""))
        for r in rows
        if not (r.value in ("{}", "[]") and any(p.startswith((r.path + ".", r.path + "[")) for p in removed))
    ]  # an object emptied by the name rules is shown by its removed paths only
    for path in redacted_paths:
        if "#" not in path:
            rows.append(ArgRow(path, "(removed)", redaction_source(path)))
    return tuple(sorted(rows, key=lambda r: r.path))


def approval_view(a: FleetApproval, now_ms: int) -> ApprovalView:
    """The view of one approval at ``now_ms``."""
    left = None if a.expires_ms is None else max(0, (a.expires_ms - now_ms) // 1000)
    grants = sum(1 for v in a.votes if v.grant)
    return ApprovalView(a, arg_rows(a.args, a.redacted_paths), max(0, (now_ms - a.created_ms) // 1000), left, grants)


@dataclass(frozen=True)
class ApprovalFilters:
    """The filters of the inbox and the resolved list (all exact; empty matches everything)."""

    tenant_id: str = ""
    agent_id: str = ""
    action: str = ""
    policy_rule: str = ""
    origin: str = ""
    state: str = ""

    @classmethod
    def of(cls, query: Mapping[str, str]) -> ApprovalFilters:
        """From a query string (unknown keys ignored)."""
        return cls(
            **{
                k: query.get(k, "").strip()
                for k in ("tenant_id", "agent_id", "action", "policy_rule", "origin", "state")
            }
        )

    async def fetch(self, fleet: FleetControl, state: str, limit: int) -> list[FleetApproval]:
        """The fleet's approvals in ``state`` matching these filters."""
        return await fleet.list_approvals(
            state=state,
            tenant_id=self.tenant_id,
            agent_id=self.agent_id,
            action=self.action,
            policy_rule=self.policy_rule,
            origin=self.origin,
            limit=limit,
        )


async def inbox(fleet: FleetControl, flt: ApprovalFilters, now_ms: int) -> list[ApprovalView]:
    """Pending approvals across the fleet, newest first."""
    found = await flt.fetch(fleet, PENDING, PAGE_SIZE * 4)
    return [approval_view(a, now_ms) for a in found]


async def resolved(fleet: FleetControl, flt: ApprovalFilters, now_ms: int) -> list[ApprovalView]:
    """Resolved approvals (every state but pending, or the one filtered), newest request first."""
    states = [flt.state] if flt.state and flt.state != PENDING else [s for s in STATES if s != PENDING]
    found: list[FleetApproval] = []
    for state in states:
        found += await flt.fetch(fleet, state, RESOLVED_LIMIT)
    found.sort(key=lambda a: (-a.created_ms, a.approval_id))
    return [approval_view(a, now_ms) for a in found[:RESOLVED_LIMIT]]


CSV_COLUMNS = (
    "approval_id",
    "state",
    "origin",
    "tenant_id",
    "agent_id",
    "run_id",
    "action",
    "policy_rule",
    "requested_at",
    "resolved_by",
    "resolved_at",
    "seconds_to_decide",
    "comment",
    "votes",
)


def _iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _cell(text: str) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def resolved_csv_rows(views: list[ApprovalView]) -> list[list[str]]:
    """The resolved list as CSV rows (header first)."""
    rows = [list(CSV_COLUMNS)]
    for v in views:
        a = v.approval
        votes = "; ".join(f"{x.approver} {'granted' if x.grant else 'denied'} via {x.channel}" for x in a.votes)
        decide = "" if v.decide_s is None else f"{v.decide_s:.1f}"
        values = [
            a.approval_id,
            a.state,
            a.origin,
            a.tenant_id,
            a.agent_id,
            a.run_id,
            a.action,
            a.policy_rule,
            _iso(a.created_ms),
            a.resolved_by,
            _iso(a.resolved_ms),
            decide,
            a.comment,
            votes,
        ]
        rows.append([_cell(x) for x in values])
    return rows


# --- runs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchPage:
    """One page of the runs search, with the cursor of the next page ("" on the last)."""

    hits: list[SearchHit]
    next_cursor: str
    filters: dict[str, str]


def encode_cursor(cursor: SearchCursor) -> str:
    """A keyset position as an opaque URL-safe token."""
    nanos, origin, seq = cursor
    return base64.urlsafe_b64encode(f"{nanos}\n{seq}\n{origin}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> SearchCursor | None:
    """The keyset position of a token (None: empty or not one of ours)."""
    if not text:
        return None
    try:
        nanos, seq, origin = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().split("\n", 2)
        return int(nanos), origin, int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def parse_time(text: str) -> int | None:
    """``YYYY-MM-DDTHH:MM`` (UTC, as an HTML datetime-local field sends it) in unix nanoseconds."""
    text = text.strip()
    if not text:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            import calendar  # noqa: PLC0415

            return calendar.timegm(time.strptime(text.rstrip("Z"), layout)) * 10**9
        except ValueError:
            continue
    raise ValueError(f"time {text[:40]!r} is not YYYY-MM-DDTHH:MM (UTC)")


def search_filter(query: Mapping[str, str]) -> tuple[CollectorEventFilter, dict[str, str]]:
    """The search filter of a query string, and the filters as given (for the links of the next page).

    Raises:
        ValueError: a time that does not parse.
    """
    given = {k: query.get(k, "").strip() for k in (*SEARCH_FIELDS, "since", "until")}
    given = {k: v for k, v in given.items() if v}
    flt = CollectorEventFilter(
        **{k: given.get(k) for k in SEARCH_FIELDS},
        since_ns=parse_time(given.get("since", "")),
        until_ns=parse_time(given.get("until", "")),
        newest_first=True,
    )
    return flt, given


async def search(store: CollectorStore, query: Mapping[str, str]) -> SearchPage:
    """One page of events matching the query's filters, newest first."""
    flt, given = search_filter(query)
    hits = await store.search(flt, newest_first=True, after=decode_cursor(query.get("page", "")), limit=PAGE_SIZE + 1)
    more = len(hits) > PAGE_SIZE
    hits = hits[:PAGE_SIZE]
    last = hits[-1] if hits else None
    cursor = encode_cursor((last.unix_nanos, last.origin, last.seq)) if more and last is not None else ""
    return SearchPage(hits, cursor, given)


# --- the run timeline ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineView:
    """A run's trace (events of one origin) with the other origins that hold events of it."""

    trace: Trace
    origin: str
    origins: tuple[str, ...]
    longest_ns: int
    verified: int
    failed: int
    truncated: bool
    hits: dict[int, SearchHit] = field(default_factory=dict)


VERIFIED_CACHE_SIZE = 100_000
_verified: dict[bytes, str] = {}


def event_status(hit: SearchHit, keys: list[Verifier]) -> str:
    """The verification status of a stored event, checked again here: its signature against the origin's keys.

    A signature found valid is remembered under the SHA-256 of the origin, entry and signature bytes as read now
    (a bounded table): the same bytes verify the same way, and an edited row has other bytes, so it is checked
    again. Saves ~80 µs per event when a run's page is drawn again.
    """
    digest = hashlib.sha256(b"\0".join((hit.origin.encode(), hit.entry, hit.signature))).digest()
    known = _verified.get(digest)
    if known is not None:
        return known
    status = _check_signature(hit, keys)
    if status == VERIFIED:
        if len(_verified) >= VERIFIED_CACHE_SIZE:
            _verified.pop(next(iter(_verified)))
        _verified[digest] = status
    return status


def forget_verified() -> None:
    """Empties the table of verified signatures (the bench measures a first view with it)."""
    _verified.clear()


def _check_signature(hit: SearchHit, keys: list[Verifier]) -> str:
    try:
        key_id = decode_entry(hit.entry).key_id
    except Exception:  # MalformedEntryError: bytes the collector accepted no longer decode
        return f"{TRACE_TAMPERED} malformed"
    payload = signature_payload(hit.origin, hit.entry)
    if any(k.key_id == key_id and k.verify(payload, hit.signature) for k in keys):
        return VERIFIED
    return f"{TRACE_TAMPERED} bad_signature"


async def timeline(store: CollectorStore, fleet: FleetControl, run_id: str, origin: str = "") -> TimelineView:
    """The run's timeline from one origin's events (the first that has the run, unless ``origin`` is given).

    Raises:
        LookupError: no event of the run is held.
    """
    hits = await store.search(
        CollectorEventFilter(run_id=run_id), newest_first=False, after=None, limit=MAX_RUN_EVENTS + 1
    )
    truncated = len(hits) > MAX_RUN_EVENTS
    origins = tuple(dict.fromkeys(h.origin for h in hits))
    if not hits:
        raise LookupError(f"no events of run {run_id!r}")
    chosen = origin if origin in origins else origins[0]
    mine = sorted((h for h in hits[:MAX_RUN_EVENTS] if h.origin == chosen), key=lambda h: h.seq)
    first_ns = mine[0].unix_nanos
    context: list[SearchHit] = []
    for kind in ("kill_switch", "policy_changed"):
        context += await store.search(
            CollectorEventFilter(origin=chosen, kind=kind, until_ns=mine[-1].unix_nanos + 1),
            newest_first=True,
            after=None,
            limit=50,
        )
    keys = await fleet.origin_keys(chosen)
    by_seq = {h.seq: h for h in [*mine, *context]}
    statuses = {seq: event_status(h, keys) for seq, h in by_seq.items()}
    trace = build_trace(
        [{"seq": h.seq, **h.body} for h in mine],
        run_id=run_id,
        verified=lambda seq: statuses.get(seq, "?"),
        context_events=[{"seq": h.seq, **h.body} for h in context if h.seq not in {m.seq for m in mine}],
        journal_status=None,
    )
    del first_ns
    longest = max((_duration(e) for s in trace.steps for e in s.events), default=0)
    failed = sum(1 for s in statuses.values() if s != VERIFIED)
    return TimelineView(trace, chosen, origins, longest, len(statuses) - failed, failed, truncated, by_seq)


def is_step(item: object) -> bool:
    """For the template: a step row (not an operator action or a gap)."""
    return isinstance(item, TraceStep)


def is_gap(item: object) -> bool:
    """For the template: missing step ids."""
    return isinstance(item, StepGap)


def _duration(event: TraceEvent) -> int:
    value = event.body.get("duration_ns")
    return value if isinstance(value, int) and value > 0 else 0


def step_duration(step: TraceStep) -> int:
    """The step's reported duration (its result's ``duration_ns``; 0 if none)."""
    return max((_duration(e) for e in step.events), default=0)


def step_decision(step: TraceStep) -> str:
    """The decision that let the step run or not: the last pre-event's."""
    decisions = [str(e.body.get("decision", "")) for e in step.events if e.kind == "pre_exec"]
    return decisions[-1] if decisions else ""


# --- kill switches, fleet, overview -------------------------------------------------------------------------


async def switches(fleet: FleetControl) -> list[FleetSwitch]:
    """The engaged fleet kill switches."""
    return await fleet.switches()


@dataclass(frozen=True)
class OriginView:
    """A sidecar origin as the collector sees it."""

    origin: str
    forwarded: int
    witnessed: int
    last_event_ms: int | None
    connected: bool | None  # None: never held a control stream
    last_contact_ms: int | None
    applied_seq: int
    replica: str
    evidence: list[dict[str, Any]]


def _note_size(note: str) -> int:
    lines = note.splitlines()
    try:
        return int(lines[1]) if len(lines) > 1 else 0
    except ValueError:
        return 0


async def fleet_origins(store: CollectorStore, fleet: FleetControl) -> list[OriginView]:
    """Every registered origin: what it forwarded, what the collector cosigned, its stream and any evidence."""
    streams = {o.origin: o for o in await fleet.origins()}
    names = sorted(set(await store.origin_names()) | set(streams))
    out = []
    for name in names:
        size, note = await store.latest(name)
        last = await store.search(CollectorEventFilter(origin=name), newest_first=True, after=None, limit=1)
        stream = streams.get(name)
        out.append(
            OriginView(
                origin=name,
                forwarded=size,
                witnessed=_note_size(note),
                last_event_ms=last[0].unix_nanos // 10**6 if last else None,
                connected=None if stream is None else stream.connected,
                last_contact_ms=None if stream is None else stream.last_contact_ms,
                applied_seq=0 if stream is None else stream.applied_seq,
                replica="" if stream is None else stream.replica,
                evidence=await store.evidence(name),
            )
        )
    return out


@dataclass(frozen=True)
class Overview:
    """The overview page: decisions per bucket by outcome, top stop reasons, approvals."""

    hour: list[dict[str, int]]  # 60 one-minute buckets, oldest first: outcome -> count
    day: list[dict[str, int]]  # 48 half-hour buckets
    sampled: bool  # the day held more decisions than were read
    top_stops: list[tuple[str, int]]
    pending: int
    median_decide_s: float | None
    outcomes: tuple[str, ...] = ("allow", "approval_required", "stop")


async def overview(store: CollectorStore, fleet: FleetControl, now_ns: int) -> Overview:
    """Counts over the newest :data:`OVERVIEW_SAMPLE` decisions of the last day."""
    day_ns = 86_400 * 10**9
    hits = await store.search(
        CollectorEventFilter(kind="pre_exec", since_ns=now_ns - day_ns),
        newest_first=True,
        after=None,
        limit=OVERVIEW_SAMPLE + 1,
    )
    sampled = len(hits) > OVERVIEW_SAMPLE
    hour: list[Counter[str]] = [Counter() for _ in range(60)]
    day: list[Counter[str]] = [Counter() for _ in range(48)]
    stops: Counter[str] = Counter()
    for h in hits[:OVERVIEW_SAMPLE]:
        decision = str(h.body.get("decision", ""))
        age = now_ns - h.unix_nanos
        if 0 <= age < 3600 * 10**9:
            hour[59 - age // (60 * 10**9)][decision] += 1
        if 0 <= age < day_ns:
            day[47 - age // (1800 * 10**9)][decision] += 1
        if decision == "stop":
            stops[str(h.body.get("reason", ""))] += 1
    pending = await fleet.list_approvals(state=PENDING, limit=1000)
    done = await resolved(fleet, ApprovalFilters(), now_ns // 10**6)
    times = [v.decide_s for v in done if v.decide_s is not None and v.approval.resolved_by]
    return Overview(
        [dict(c) for c in hour],
        [dict(c) for c in day],
        sampled,
        stops.most_common(10),
        len(pending),
        statistics.median(times) if times else None,
    )


def chart_bars(
    buckets: list[dict[str, int]], outcomes: tuple[str, ...], width: int, height: int
) -> list[dict[str, Any]]:
    """Stacked bars for an inline SVG: one rectangle per bucket and outcome (x, y, w, h, outcome, count)."""
    peak = max((sum(b.get(o, 0) for o in outcomes) for b in buckets), default=0) or 1
    bar = width / max(1, len(buckets))
    rects = []
    for i, bucket in enumerate(buckets):
        y = float(height)
        for outcome in outcomes:
            count = bucket.get(outcome, 0)
            if not count:
                continue
            h = count / peak * height
            y -= h
            rects.append(
                {
                    "x": round(i * bar, 2),
                    "y": round(y, 2),
                    "w": round(max(bar - 1, 1), 2),
                    "h": round(h, 2),
                    "outcome": outcome,
                    "count": count,
                    "bucket": i,
                }
            )
    return rects


def event_label(event: TraceEvent) -> str:
    """One event of a step or an operator action in a few words (the timeline's chips)."""
    body, kind = event.body, event.kind
    actor = actor_label(body.get("actor"))
    if kind == "pre_exec":
        decision, reason = str(body.get("decision", "")), str(body.get("reason", ""))
        return decision if reason in ("", decision) else f"{decision} ({reason})"
    if kind.startswith("approval_"):
        comment = str(body.get("comment") or "")
        return f"{kind} by {actor}" + (f": “{comment}”" if comment else "")
    if kind in ("post_exec", "violation"):
        text = f"result {body.get('status') or '?'}" if kind == "post_exec" else f"violation {body.get('reason')}"
        duration = body.get("duration_ns")
        if isinstance(duration, int):
            text += f" in {duration / 1e6:.1f} ms"
        error = str(body.get("error") or "")
        return text + (f", error {error}" if error else "")
    if kind == "policy_changed":
        return f"policy changed to {str(body.get('new_version') or '?')[:19]} by {actor}"
    if kind == "kill_switch":
        scope = str(body.get("scope") or "?")
        where = "globally" if scope == "global" else f"for {scope} {body.get('target') or '?'}"
        return f"kill switch {body.get('operation')} {where} by {actor}"
    return kind
