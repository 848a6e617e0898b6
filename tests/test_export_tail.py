"""`agentaudit export` and `agentaudit tail` against journals written by a real sidecar and by the real writer.

Every filter is checked against an independent Python filter over `iter_bodies`, so the SQL and the
body-side filters of `gateway.journal.query` must agree with what the signed bodies say.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import fnmatch
import json
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentaudit.v1 import gateway_pb2, operator_pb2, types_pb2
from gateway import cli
from gateway.canonical import canonical_json
from gateway.cli.render import summary_line
from gateway.journal.entry import EventKind
from gateway.journal.filter import glob_to_sqlite
from gateway.journal.query import EventFilter, parse_time, select
from gateway.journal.schema import indexed_values
from gateway.journal.store import connect_readonly, iter_bodies
from gateway.journal.writer import JournalWriter
from tests.conftest import AGENTAUDIT, ROOT, RunningGateway, run_cli, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.journal_helpers import fixed_signer, write_journal
from tests.operator_helpers import auth, operator_stub

Body = dict[str, Any]
USER = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_USER, id="u_1")
SERVICE = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_SERVICE, id="svc_9")
PLANNER = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_AGENT, id="planner")


# --- helpers ----------------------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Runs the CLI in this process; returns (exit code, stdout, stderr). argparse errors exit via SystemExit."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def export(capsys: pytest.CaptureFixture[str], journal: Path, *args: str) -> list[Body]:
    code, out, err = run(capsys, "export", str(journal), *args)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def timestamp_ns(timestamp: str) -> int:
    """RFC 3339 UTC with nanoseconds (as the sidecar writes it) to unix nanoseconds, independently of query.py."""
    seconds = calendar.timegm(time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 10**9 + int(timestamp[20:-1].ljust(9, "0"))


def matches(body: Body, **want: Any) -> bool:
    """The reference filter: what each export filter means, stated on the signed body."""

    def has(field: str, value: Any) -> bool:
        return bool(body.get(field) == value)

    for name, value in want.items():
        if name == "action":
            action = body.get("action")
            if not (isinstance(action, str) and action and fnmatch.fnmatchcase(action, value)):
                return False
        elif name == "actor":
            actor = body.get("actor") or {}
            kind, sep, ident = value.partition(":")
            if not sep:
                kind, ident = "", value
            if actor.get("id") != ident or (kind and actor.get("type") != kind):
                return False
        elif name == "since":
            if timestamp_ns(body["timestamp"]) < value:
                return False
        elif name == "until":
            if timestamp_ns(body["timestamp"]) >= value:
                return False
        elif not has(name, value):
            return False
    return True


def reference(journal: Path, **want: Any) -> list[Body]:
    return [{"seq": seq, **body} for seq, body in iter_bodies(journal) if matches(body, **want)]


# --- a journal written by a real sidecar --------------------------------------------------------------------------


def populate(gw: RunningGateway) -> None:
    """Decisions from every layer, results, a violation, and operator kill-switch events."""
    channel, gateway = stub(gw.unix_target)
    with channel:

        def decide(**fields: Any) -> gateway_pb2.DecideResponse:
            return gateway.Decide(decide_request(**fields), timeout=10)

        looked_up = decide(run_id="run_a", step_id=1, action="crm.lookup")
        decide(run_id="run_a", step_id=2, action="crm.update", args={"note": "x"})
        decide(run_id="run_a", step_id=3, action="refund.create", args={"order_id": "o_1", "amount": 250})
        decide(run_id="run_a", step_id=4, action="email.send", args={"to": [f"c{i}@example.com" for i in range(11)]})
        decide(run_id="run_a", step_id=5, action="kb.search")
        decide(run_id="run_b", step_id=1, action="crm.search", agent_id="reader-bot", tenant_id="t_7", actor=SERVICE)
        denied = decide(
            run_id="run_b", step_id=2, action="crm.update", agent_id="reader-bot", tenant_id="t_7", actor=SERVICE
        )
        decide(run_id="run_c", step_id=1, action="crm.lookup", tenant_id="t_frozen")
        decide(run_id="run_d", step_id=1, action="kb.article", actor=PLANNER)
        decide(run_id="run_d", step_id=2, action="crm.update", actor=PLANNER, labels={"shift": "night"})
        # Burst 20 at 10/s per tenant: a fast burst of 40 ends in rate_limited_tenant stops (limits layer).
        for step in range(1, 41):
            decide(run_id="run_e", step_id=step, action="crm.lookup", tenant_id="t_99")
        gateway.ReportResult(
            gateway_pb2.ReportResultRequest(event_id=looked_up.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError):
            gateway.ReportResult(
                gateway_pb2.ReportResultRequest(event_id=denied.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED),
                timeout=10,
            )
    channel, operator = operator_stub(gw.operator_target)
    with channel:
        switch: dict[str, Any] = {"scope": operator_pb2.KILL_SWITCH_SCOPE_TENANT, "target": "t_9", "reason": "drill"}
        operator.EngageKillSwitch(
            operator_pb2.EngageKillSwitchRequest(**switch), metadata=tuple(auth(gw.operator_token)), timeout=10
        )
        operator.ReleaseKillSwitch(
            operator_pb2.ReleaseKillSwitchRequest(**switch), metadata=tuple(auth(gw.operator_token)), timeout=10
        )


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal the sidecar wrote and closed: static, so every expected result is computed once."""
    gw = start_gateway(Path(tmp_path_factory.mktemp("exp")))
    try:
        populate(gw)
    finally:
        assert gw.stop() == 0
    return gw.journal_path


# --- filters ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        pytest.param([], {}, id="everything"),
        pytest.param(["--run-id", "run_a"], {"run_id": "run_a"}, id="run"),
        pytest.param(["--tenant", "t_7"], {"tenant_id": "t_7"}, id="tenant"),
        pytest.param(["--agent", "reader-bot"], {"agent_id": "reader-bot"}, id="agent"),
        pytest.param(["--action", "crm.update"], {"action": "crm.update"}, id="action-exact"),
        pytest.param(["--action", "crm.*"], {"action": "crm.*"}, id="action-glob-star"),
        pytest.param(["--action", "*.update"], {"action": "*.update"}, id="action-glob-prefix"),
        pytest.param(["--action", "?b.*"], {"action": "?b.*"}, id="action-glob-question"),
        pytest.param(["--action", "crm.[lu]*"], {"action": "crm.[lu]*"}, id="action-glob-class"),
        pytest.param(["--action", "crm.[!l]*"], {"action": "crm.[!l]*"}, id="action-glob-negated-class"),
        pytest.param(["--decision", "stop"], {"decision": "stop"}, id="decision-stop"),
        pytest.param(["--decision", "approval_required"], {"decision": "approval_required"}, id="decision-approval"),
        pytest.param(["--reason", "access_denied"], {"reason": "access_denied"}, id="reason-access"),
        pytest.param(["--reason", "rate_limited_tenant"], {"reason": "rate_limited_tenant"}, id="reason-rate"),
        pytest.param(["--reason", "bulk_email_blocked"], {"reason": "bulk_email_blocked"}, id="reason-rule"),
        pytest.param(["--layer", "kill_switch"], {"policy_layer": "kill_switch"}, id="layer-kill-switch"),
        pytest.param(["--layer", "limits"], {"policy_layer": "limits"}, id="layer-limits"),
        pytest.param(["--layer", "rules"], {"policy_layer": "rules"}, id="layer-rules"),
        pytest.param(["--rule", "refunds_need_approval"], {"policy_rule": "refunds_need_approval"}, id="rule"),
        pytest.param(["--actor", "u_1"], {"actor": "u_1"}, id="actor-id"),
        pytest.param(["--actor", "user:u_1"], {"actor": "user:u_1"}, id="actor-type-id"),
        pytest.param(["--actor", "service:svc_9"], {"actor": "service:svc_9"}, id="actor-service"),
        pytest.param(["--actor", "agent:planner"], {"actor": "agent:planner"}, id="actor-agent"),
        pytest.param(["--actor", "operator:dev-operator"], {"actor": "operator:dev-operator"}, id="actor-operator"),
        pytest.param(["--kind", "post_exec"], {"kind": "post_exec"}, id="kind-post"),
        pytest.param(["--kind", "violation"], {"kind": "violation"}, id="kind-violation"),
        pytest.param(["--kind", "kill_switch"], {"kind": "kill_switch"}, id="kind-kill-switch"),
        pytest.param(["--kind", "journal_started"], {"kind": "journal_started"}, id="kind-started"),
        pytest.param(
            ["--tenant", "t_42", "--decision", "stop"], {"tenant_id": "t_42", "decision": "stop"}, id="tenant+decision"
        ),
        pytest.param(
            ["--run-id", "run_a", "--kind", "pre_exec", "--action", "crm.*"],
            {"run_id": "run_a", "kind": "pre_exec", "action": "crm.*"},
            id="run+kind+glob",
        ),
        pytest.param(
            ["--actor", "svc_9", "--layer", "access", "--decision", "stop"],
            {"actor": "svc_9", "policy_layer": "access", "decision": "stop"},
            id="actor+layer+decision",
        ),
        pytest.param(
            ["--agent", "support-agent", "--action", "crm.lookup", "--rule", "support_agent"],
            {"agent_id": "support-agent", "action": "crm.lookup", "policy_rule": "support_agent"},
            id="agent+action+rule",
        ),
    ],
)
def test_export_filter_selects_exactly_the_matching_events(
    journal: Path, capsys: pytest.CaptureFixture[str], flags: list[str], want: dict[str, Any]
) -> None:
    expected = reference(journal, **want)
    assert expected, "the sidecar journal has events for every filter case"
    assert export(capsys, journal, *flags) == expected


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--actor", "user:svc_9"], id="actor-wrong-type"),
        pytest.param(["--tenant", "t_7", "--decision", "approval_required"], id="disjoint-combination"),
        pytest.param(["--action", "crm"], id="exact-action-is-not-a-prefix"),
        pytest.param(["--run-id", "run_a", "--kind", "kill_switch"], id="kind-outside-runs"),
    ],
)
def test_export_filter_that_matches_nothing_prints_nothing(
    journal: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert export(capsys, journal, *flags) == []


def test_time_range_is_at_or_after_since_and_before_until(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bodies = [body for _, body in iter_bodies(journal)]
    since, until = bodies[5]["timestamp"], bodies[20]["timestamp"]
    expected = reference(journal, since=timestamp_ns(since), until=timestamp_ns(until))
    assert [e["seq"] for e in expected] == list(range(5, 20))
    assert export(capsys, journal, "--since", since, "--until", until) == expected


def test_relative_time_covers_a_journal_written_just_now(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export(capsys, journal, "--since", "1h") == reference(journal)
    assert export(capsys, journal, "--until", "1h") == []


def test_time_range_combines_with_other_filters(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bodies = [body for _, body in iter_bodies(journal)]
    since = bodies[10]["timestamp"]
    expected = reference(journal, since=timestamp_ns(since), decision="stop")
    assert expected
    assert export(capsys, journal, "--since", since, "--decision", "stop") == expected


# --- order and limits ---------------------------------------------------------------------------------------------


def test_newest_first_reverses_seq_order(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export(capsys, journal, "--newest-first") == reference(journal)[::-1]


def test_newest_first_with_limit_gives_the_newest_matching(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = reference(journal, tenant_id="t_99")[::-1][:4]
    assert export(capsys, journal, "--tenant", "t_99", "--newest-first", "--limit", "4") == expected


def test_limit_gives_the_oldest_matching(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export(capsys, journal, "--actor", "u_1", "--limit", "3") == reference(journal, actor="u_1")[:3]


# --- CloudEvents ------------------------------------------------------------------------------------------------


def test_cloudevents_export_is_structured_cloudevents_1_0(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        (origin,) = conn.execute("SELECT value FROM journal_meta WHERE key = 'origin'").fetchone()
    plain = export(capsys, journal)
    events = export(capsys, journal, "--format", "cloudevents")
    assert len(events) == len(plain)
    for event, body in zip(events, plain, strict=True):
        required = {"specversion", "id", "source", "type", "time", "datacontenttype", "data"}
        assert set(event) in (required, required | {"subject"})
        assert event["specversion"] == "1.0"
        assert event["id"] == body["event_id"]
        assert event["source"] == f"agentaudit://{origin}"
        assert event["type"] == f"dev.agentaudit.event.{body['kind']}"
        assert event["time"] == body["timestamp"]
        assert event["datacontenttype"] == "application/json"
        assert event["data"] == body
        assert event.get("subject") == (body.get("run_id") or None)
    assert {e["type"] for e in events} >= {
        "dev.agentaudit.event.journal_started",
        "dev.agentaudit.event.pre_exec",
        "dev.agentaudit.event.post_exec",
        "dev.agentaudit.event.violation",
        "dev.agentaudit.event.kill_switch",
    }


def test_cloudevents_export_takes_the_same_filters(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = export(capsys, journal, "--format", "cloudevents", "--kind", "violation")
    assert [e["data"] for e in events] == reference(journal, kind="violation")


# --- streaming and keyset pagination --------------------------------------------------------------------------


class CountingSink:
    """A stdout that keeps nothing: counts lines and characters."""

    def __init__(self) -> None:
        self.lines = 0
        self.chars = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        self.chars += len(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture(scope="module")
def big_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("big")) / "journal.db"
    write_journal(path, 50_000)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "cloudevents"])
def test_export_of_a_large_journal_runs_in_constant_memory(
    big_journal: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    with sqlite3.connect(f"file:{big_journal}?mode=ro", uri=True) as conn:
        (stored,) = conn.execute("SELECT sum(length(entry)) FROM journal").fetchone()
    bound = 4 * 1024 * 1024
    assert stored > 3 * bound, "holding the entries in memory would exceed the bound"
    sink = CountingSink()
    monkeypatch.setattr(sys, "stdout", sink)
    tracemalloc.start()
    try:
        code = cli.main(["export", str(big_journal), "--format", fmt])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0
    assert sink.lines == 50_000
    assert peak < bound, f"export peaked at {peak} bytes of Python memory"


def append(path: Path, bodies: list[Body]) -> None:
    """Appends bodies with the real writer (which takes the journal's exclusive lock for the duration)."""

    async def go() -> None:
        writer = JournalWriter(path, fixed_signer())
        await writer.start()
        try:
            for b in bodies:
                await writer.append(EventKind.PRE_EXEC, canonical_json(b), indexed_values(b), time.time_ns())
        finally:
            await writer.aclose()

    asyncio.run(go())


def varied(i: int) -> Body:
    """A body whose indexed and body-only fields vary with i."""
    return {
        "event_id": f"evt_{i:06d}",
        "kind": "pre_exec",
        "timestamp": "2026-11-27T00:00:00.000000000Z",
        "run_id": f"run_{i % 3}",
        "step_id": i,
        "tenant_id": "t_42",
        "agent_id": "support-agent",
        "action": ("crm.lookup", "crm.update", "kb.search", "refund.create")[i % 4],
        "actor": {"type": ("user", "service")[i % 2], "id": f"u_{i % 5}"},
        "decision": "allow",
        "reason": "allowed",
        "policy_layer": ("access", "limits")[i % 2],
        "policy_rule": "support_agent",
    }


PAGED_FILTERS = [
    pytest.param(EventFilter(), {}, id="all"),
    pytest.param(EventFilter(run_id="run_1"), {"run_id": "run_1"}, id="sql-filter"),
    pytest.param(EventFilter(actor="user:u_3"), {"actor": "user:u_3"}, id="body-filter"),
    pytest.param(
        EventFilter(action="crm.[u]*", policy_layer="limits"),
        {"action": "crm.[u]*", "policy_layer": "limits"},
        id="class+layer",
    ),
]


@pytest.fixture
def small_journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal.db"
    append(path, [varied(i) for i in range(120)])
    return path


@pytest.mark.parametrize(("flt", "want"), PAGED_FILTERS)
def test_oldest_first_pages_neither_skip_nor_repeat_while_entries_are_appended(
    small_journal: Path, flt: EventFilter, want: dict[str, Any]
) -> None:
    seen: list[int] = []
    after: int | None = None
    appended = 120
    while True:
        with closing(connect_readonly(small_journal)) as conn:
            page = [seq for seq, _ in select(conn, flt, after_seq=after, limit=7)]
        if not page:
            break
        seen += page
        after = page[-1]
        if appended < 160:  # new entries land after the cursor between pages
            append(small_journal, [varied(i) for i in range(appended, appended + 10)])
            appended += 10
    expected = [b["seq"] for b in reference(small_journal, **want)]
    assert seen == expected
    assert max(expected) > 120, "entries appended between pages were included"


@pytest.mark.parametrize(("flt", "want"), PAGED_FILTERS)
def test_newest_first_pages_are_stable_while_entries_are_appended(
    small_journal: Path, flt: EventFilter, want: dict[str, Any]
) -> None:
    newest = dataclasses.replace(flt, newest_first=True)
    expected = [b["seq"] for b in reference(small_journal, **want)][::-1]
    seen: list[int] = []
    after: int | None = None
    appended = 120
    while True:
        with closing(connect_readonly(small_journal)) as conn:
            page = [seq for seq, _ in select(conn, newest, after_seq=after, limit=7)]
        if not page:
            break
        seen += page
        after = page[-1]
        append(small_journal, [varied(i) for i in range(appended, appended + 10)])
        appended += 10
    assert seen == expected, "newer entries never shift the pages of a walk that started before them"


@pytest.mark.parametrize("page_size", [1, 3, 7, 512])
@pytest.mark.parametrize("newest_first", [False, True])
def test_internal_page_size_does_not_change_the_result(small_journal: Path, page_size: int, newest_first: bool) -> None:
    flt = EventFilter(actor="u_2", newest_first=newest_first)
    with closing(connect_readonly(small_journal)) as conn:
        got = [seq for seq, _ in select(conn, flt, page_size=page_size)]
        limited = [seq for seq, _ in select(conn, flt, page_size=page_size, limit=5)]
    expected = [b["seq"] for b in reference(small_journal, actor="u_2")]
    assert got == (expected[::-1] if newest_first else expected)
    assert limited == got[:5]


def test_through_seq_ignores_later_entries(small_journal: Path) -> None:
    with closing(connect_readonly(small_journal)) as conn:
        assert [s for s, _ in select(conn, EventFilter(), through_seq=9)] == list(range(10))
        newest = EventFilter(newest_first=True)
        assert [s for s, _ in select(conn, newest, through_seq=9, limit=3)] == [9, 8, 7]


# --- glob translation and time syntax -----------------------------------------------------------------------


@given(
    pattern=st.text(alphabet="ab.*?[]!-^", max_size=8),
    name=st.text(alphabet="ab.[]!-^*?", max_size=8),
)
def test_sqlite_glob_agrees_with_fnmatch(pattern: str, name: str) -> None:
    sql_glob, exact = glob_to_sqlite(pattern)
    with sqlite3.connect(":memory:") as conn:
        (sqlite_match,) = conn.execute("SELECT ? GLOB ?", (name, sql_glob)).fetchone()
    if exact:
        assert bool(sqlite_match) == fnmatch.fnmatchcase(name, pattern)
    elif fnmatch.fnmatchcase(name, pattern):
        assert sqlite_match, "an inexact translation still selects every match (a superset)"


NOW = 1_795_770_000_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-11-27T09:00:00Z", calendar.timegm((2026, 11, 27, 9, 0, 0)) * 10**9, id="utc"),
        pytest.param("2026-11-27t09:00:00z", calendar.timegm((2026, 11, 27, 9, 0, 0)) * 10**9, id="lower-case"),
        pytest.param(
            "2026-11-27T09:00:00.123456789Z",
            calendar.timegm((2026, 11, 27, 9, 0, 0)) * 10**9 + 123_456_789,
            id="nanoseconds",
        ),
        pytest.param(
            "2026-11-27T09:00:00.5Z", calendar.timegm((2026, 11, 27, 9, 0, 0)) * 10**9 + 500_000_000, id="fraction"
        ),
        pytest.param("2026-11-27T10:00:00+01:00", calendar.timegm((2026, 11, 27, 9, 0, 0)) * 10**9, id="offset"),
        pytest.param("2026-11-27T03:30:00-05:30", calendar.timegm((2026, 11, 27, 9, 0, 0)) * 10**9, id="neg-offset"),
        pytest.param("1969-12-31T23:59:59Z", -(10**9), id="before-epoch"),
        pytest.param("30s", NOW - 30 * 10**9, id="seconds-ago"),
        pytest.param("15m", NOW - 15 * 60 * 10**9, id="minutes-ago"),
        pytest.param("2h", NOW - 2 * 3600 * 10**9, id="hours-ago"),
        pytest.param("7d", NOW - 7 * 86400 * 10**9, id="days-ago"),
        pytest.param("0m", NOW, id="now"),
    ],
)
def test_parse_time_accepts_rfc3339_and_durations_ago(text: str, expected: int) -> None:
    assert parse_time(text, now_ns=NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("yesterday", "'yesterday' is not a time: use RFC 3339", id="word"),
        pytest.param("2026-11-27T09:00:00", "has no time zone: add Z", id="no-zone"),
        pytest.param("2026-11-27 09:00", "has no time zone", id="no-zone-no-seconds"),
        pytest.param("2026-02-30T00:00:00Z", "is not a valid time: day is out of range", id="no-such-day"),
        pytest.param("2026-11-27T25:00:00Z", "is not a valid time: hour must be", id="no-such-hour"),
        pytest.param("2026-11-27T09:00:00+24:00", "is not a valid time", id="offset-too-large"),
        pytest.param("-15m", "is not a time", id="negative-duration"),
        pytest.param("15 m", "is not a time", id="space"),
        pytest.param("1w", "is not a time", id="weeks"),
        pytest.param("", "is not a time", id="empty"),
    ],
)
def test_parse_time_rejects_with_a_precise_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_time(text, now_ns=NOW)


# --- bad flags --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["export", "--since", "yesterday"], "argument --since: 'yesterday' is not a time", id="since"),
        pytest.param(
            ["export", "--until", "2026-11-27T09:00:00"], "argument --until: '2026-11-27T09:00:00' has no", id="tz"
        ),
        pytest.param(["export", "--limit", "0"], "argument --limit: '0' is not a whole number >= 1", id="limit-0"),
        pytest.param(["export", "--limit", "ten"], "argument --limit: 'ten' is not a whole number", id="limit-word"),
        pytest.param(["export", "--format", "xml"], "argument --format: invalid choice: 'xml'", id="format"),
        pytest.param(["export", "--kind", "pre-exec"], "argument --kind: invalid choice: 'pre-exec'", id="kind"),
        pytest.param(["export", "--decision", "deny"], "argument --decision: invalid choice: 'deny'", id="decision"),
        pytest.param(
            ["export", "--actor", "user:"], "argument --actor: 'user:' is not an actor: use TYPE:ID", id="actor"
        ),
        pytest.param(["export", "--tenant", ""], "argument --tenant: must not be empty", id="empty"),
        pytest.param(["tail", "--lines", "-1"], "argument -n/--lines: '-1' is not a whole number >= 0", id="lines"),
        pytest.param(["tail", "--interval", "0"], "argument --interval: '0' is not a number of seconds", id="interval"),
        pytest.param(["tail", "--interval", "nan"], "argument --interval: 'nan' is not a number of seconds", id="nan"),
        pytest.param(
            ["export", "--since", "2026-11-27T10:00:00Z", "--until", "2026-11-27T09:00:00Z"],
            "agentaudit: --since must be earlier than --until",
            id="empty-range",
        ),
        pytest.param(
            ["tail", "--since", "1h", "--until", "2h"], "agentaudit: --since must be earlier than --until", id="tail"
        ),
    ],
)
def test_bad_flag_values_exit_2_with_a_precise_message(
    journal: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    command, *flags = args
    code, out, err = run(capsys, command, str(journal), *flags)
    assert code == 2
    assert out == ""
    assert message in err


@pytest.mark.parametrize("command", ["export", "tail"])
def test_missing_journal_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, _, err = run(capsys, command, str(tmp_path / "nope.db"))
    assert code == 2
    assert f"no journal at {tmp_path / 'nope.db'}" in err


# --- tail -----------------------------------------------------------------------------------------------------


def test_tail_prints_the_last_ten_matching_events_oldest_first(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "tail", str(journal), "--json", "--tenant", "t_99")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == reference(journal, tenant_id="t_99")[-10:]


@pytest.mark.parametrize("lines", [0, 1, 3, 1000])
def test_tail_lines_counts_matching_events(journal: Path, capsys: pytest.CaptureFixture[str], lines: int) -> None:
    code, out, _ = run(capsys, "tail", str(journal), "--json", "--decision", "stop", "-n", str(lines))
    assert code == 0
    expected = reference(journal, decision="stop")
    assert [json.loads(line) for line in out.splitlines()] == (expected[-lines:] if lines else [])


def test_tail_readable_line_shows_time_seq_kind_run_action_decision_reason(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [event] = reference(journal, kind="pre_exec", reason="bulk_email_blocked")
    code, out, _ = run(capsys, "tail", str(journal), "--reason", "bulk_email_blocked")
    assert code == 0
    line = out.rstrip("\n")
    assert "\n" not in line
    assert line == summary_line(event["seq"], {k: v for k, v in event.items() if k != "seq"})
    time_text = event["timestamp"][:10] + " " + event["timestamp"][11:23] + "Z"
    assert line.startswith(time_text)
    for part in (f"#{event['seq']}", "pre_exec", "run_a/4", "email.send", "stop", "bulk_email_blocked", "user:u_1"):
        assert part in line


def test_tail_readable_line_marks_missing_fields_and_shows_the_operator(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "tail", str(journal), "--kind", "kill_switch", "-n", "1")
    assert code == 0
    assert " kill_switch " in out
    assert out.rstrip().endswith("operation=release  scope=tenant  target=t_9  by operator:dev-operator")


def test_tail_readable_line_names_the_approval_to_grant(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [event] = reference(journal, decision="approval_required")
    code, out, _ = run(capsys, "tail", str(journal), "--decision", "approval_required")
    assert code == 0
    assert f"  approval_id={event['approval_id']}  by user:u_1" in out


def test_export_into_a_closed_pipe_ends_quietly(big_journal: Path) -> None:
    # 10 MB of output: far more than a pipe buffers, so the export is still writing when the reader goes away.
    export_cmd = subprocess.Popen(
        [*AGENTAUDIT, "export", str(big_journal)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    assert export_cmd.stdout is not None and export_cmd.stderr is not None
    export_cmd.stdout.readline()
    export_cmd.stdout.close()  # like `| head -1`
    assert export_cmd.wait(timeout=60) == 0
    assert export_cmd.stderr.read() == b""


class LineReader:
    """Reads a subprocess's stdout on a thread, so the test can wait for lines with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stdout: Any) -> None:
        for line in stdout:
            self._lines.put(line)

    def next(self, deadline: float) -> str:
        return self._lines.get(timeout=max(0.0, deadline - time.monotonic()))

    def pending(self) -> list[str]:
        lines = []
        while not self._lines.empty():
            lines.append(self._lines.get_nowait())
        return lines


@pytest.fixture
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = start_gateway(Path(tmp_path_factory.mktemp("tail")))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_tail_follow_prints_events_a_running_sidecar_appends(live: RunningGateway, sig: signal.Signals) -> None:
    channel, gateway = stub(live.unix_target)
    with channel:
        before = gateway.Decide(decide_request(run_id="run_f", step_id=1), timeout=10)
        proc = subprocess.Popen(
            [
                *AGENTAUDIT,
                "tail",
                str(live.journal_path),
                "-f",
                "--json",
                "--tenant",
                "t_42",
                "-n",
                "1",
                "--interval",
                ".05",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            reader = LineReader(proc)
            deadline = time.monotonic() + 30
            assert json.loads(reader.next(deadline))["event_id"] == before.event_id
            other = gateway.Decide(decide_request(run_id="run_g", step_id=1, tenant_id="t_7"), timeout=10)
            first = gateway.Decide(decide_request(run_id="run_f", step_id=2), timeout=10)
            second = gateway.Decide(decide_request(run_id="run_f", step_id=3, action="kb.search"), timeout=10)
            printed = [json.loads(reader.next(deadline)) for _ in range(2)]
            # Lines come in seq order, so the other tenant's earlier event would have come first.
            assert [e["event_id"] for e in printed] == [first.event_id, second.event_id]
            assert other.event_id not in {e["event_id"] for e in printed}
            assert printed[0]["seq"] < printed[1]["seq"]
            proc.send_signal(sig)
            assert proc.wait(timeout=15) == 0
            assert reader.pending() == []
            assert proc.stderr is not None
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def step_of(line: str) -> int:
    """The step of a readable tail line of run_h."""
    found = re.search(r" run_h/(\d+) ", line)
    assert found, line
    return int(found[1])


def test_tail_follow_with_zero_lines_prints_only_new_events(live: RunningGateway) -> None:
    channel, gateway = stub(live.unix_target)
    with channel:
        gateway.Decide(decide_request(run_id="run_h", step_id=1), timeout=10)
        proc = subprocess.Popen(
            [*AGENTAUDIT, "tail", str(live.journal_path), "-f", "-n", "0", "--interval", "0.05", "--run-id", "run_h"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            reader = LineReader(proc)
            deadline = time.monotonic() + 30
            # Nothing tells when the follower has started, so append a new event per round until one is printed.
            step, line = 1, ""
            while not line:
                assert time.monotonic() < deadline, "tail --follow printed nothing before the deadline"
                step += 1
                gateway.Decide(decide_request(run_id="run_h", step_id=step, action="kb.search"), timeout=10)
                try:
                    line = reader.next(min(deadline, time.monotonic() + 0.25))
                except queue.Empty:
                    continue
            printed = [step_of(line)]
            assert printed[0] >= 2, "the event that existed before the follower started is not printed"
            assert "kb.search" in line and " allow " in line
            while printed[-1] < step:
                printed.append(step_of(reader.next(deadline)))
            assert printed == list(range(printed[0], step + 1)), "every later event, in order, none twice"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert reader.pending() == []
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_search_cli_prints_a_table_and_pages_with_after(tmp_path: Path) -> None:

    path = tmp_path / "j.db"
    write_journal(path, 7)
    table = run_cli("search", str(path), "--run-id", "run_1", "--limit", "1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("TIME") and "run_1" in lines[1]
    assert lines[-1].startswith("1 events (more after seq 1: --after 1)")
    rest = run_cli("search", str(path), "--run-id", "run_1", "--after", "1", "--json")
    assert [json.loads(line)["seq"] for line in rest.stdout.splitlines()] == [4]
    missing = run_cli("search", str(tmp_path / "nope.db"))
    assert missing.returncode == 2
