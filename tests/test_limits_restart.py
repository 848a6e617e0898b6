"""A restart never widens a limit: limit state is rebuilt from the journal's pre-events before the first Decide.

Replay itself on a fake clock (pure), the journal scan on a real journal file (it reads the signed bytes, not the
columns), and the whole thing across a SIGKILL of a real sidecar process.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentaudit.v1 import types_pb2
from gateway.canonical import canonical_json
from gateway.journal import replay
from gateway.journal.entry import EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.writer import JournalWriter
from gateway.policy.document import parse_policy
from gateway.policy.engine import LayeredPolicy
from gateway.policy.limits import LimitState, replay_since
from gateway.policy.model import Verdict
from gateway.signing import Ed25519Signer
from tests.conftest import start_gateway
from tests.gateway_helpers import decide_request, journal_event_ids, stub
from tests.test_policy_engine import ACCESS_ALL, FakeClock, request

DAY = 86_400.0
LIMITS = """
limits:
  - {name: refund_total, type: sum, actions: ["refund.create"], key: [tenant], field: amount, max: 5000, window: 24h}
  - {name: export_count, type: count, actions: ["report.export"], key: [tenant], max: 3, window: 24h}
  - {name: run_steps, type: steps, actions: ["step.*"], max: 6}
  - {name: search_rate, type: rate, actions: ["crm.search"], key: [tenant], rate: 1/h, burst: 2,
     reason: rate_limited_tenant}
"""
POLICY = f"version: 1\n{ACCESS_ALL}{LIMITS}"


@dataclass(frozen=True)
class Past:
    unix_nanos: int
    body: dict[str, Any]


def past(at: float, action: str, decision: str = "allow", **fields: Any) -> Past:
    body = {"kind": "pre_exec", "run_id": "run_1", "tenant_id": "t_42", "agent_id": "support-agent"}
    body.update(action=action, decision=decision, args=fields.pop("args", {}), **fields)
    return Past(int(at * 1e9), body)


def rebuilt(events: list[Past], clock: FakeClock, text: str = POLICY) -> LayeredPolicy:
    """The engine a restarted sidecar would run: fresh state, replayed at the clock's now."""
    document, state = parse_policy(text, "p.yaml"), LimitState()
    state.replay(events, document.limits, clock())
    return LayeredPolicy(document, state, clock)


def test_sum_budget_replays_the_current_windows_allowed_amounts() -> None:
    clock = FakeClock()
    clock.now += 3600
    events = [
        past(clock.now - 1800, "refund.create", args={"amount": 4000}),
        past(clock.now - 1700, "refund.create", "stop", args={"amount": 900}),  # refused: consumed nothing
        past(clock.now - 2 * 3600, "refund.create", args={"amount": 5000}),  # the previous window
    ]
    policy = rebuilt(events, clock)
    refused = policy.evaluate(request("refund.create", args={"amount": 1001}))
    assert (refused.verdict, refused.rule) == (Verdict.STOP, "refund_total")
    assert refused.retry_after_s == pytest.approx(DAY - 3600)
    assert policy.evaluate(request("refund.create", args={"amount": 1000})).verdict is Verdict.ALLOW


def test_count_budget_replays_allowed_events_including_shadow_allows() -> None:
    clock = FakeClock()
    clock.now += 60
    # A shadow allow let the action run, so it consumed quota live (docs/policy.md) and counts on replay too.
    shadow = {"shadow_decision": "stop", "shadow_rule": "export_count"}
    events = [past(clock.now - 30, "report.export"), past(clock.now - 20, "report.export", **shadow)]
    events += [past(clock.now - 10, "report.export", "approval_required")]
    policy = rebuilt(events, clock)
    assert policy.evaluate(request("report.export")).verdict is Verdict.ALLOW
    assert policy.evaluate(request("report.export")).reason == "budget_exceeded"


def test_step_budget_counts_every_journaled_proposal_of_the_run_whatever_its_answer() -> None:
    clock = FakeClock()
    events = [past(clock.now - 60 + i, "step.go", "stop" if i % 2 else "allow") for i in range(6)]
    policy = rebuilt(events, clock)
    assert policy.evaluate(request("step.go")).reason == "step_budget_exceeded"
    assert policy.evaluate(request("step.go", run_id="run_2")).verdict is Verdict.ALLOW


def test_a_rebuilt_bucket_is_never_fuller_than_the_real_one_could_be() -> None:
    clock = FakeClock()
    text = f"version: 1\n{ACCESS_ALL}limits:\n  - {{name: r, type: rate, key: [tenant], rate: 1/s, burst: 4}}\n"
    # Four allowed calls in the last second: a real bucket holds at most ~1 token now (if it was full before
    # them); the rebuilt one starts empty burst / rate seconds ago, so it holds less, never more.
    events = [past(clock.now - 1 + i * 0.25, "crm.search") for i in range(4)]
    policy = rebuilt(events, clock, text)
    limited = policy.evaluate(request("crm.search"))
    assert (limited.verdict, limited.reason) == (Verdict.STOP, "rate_limited_tenant")
    assert limited.retry_after_s == pytest.approx(1.0)
    clock.now += 1
    assert policy.evaluate(request("crm.search")).verdict is Verdict.ALLOW
    # Calls older than burst / rate seconds cannot have left the bucket below full.
    old = [past(clock.now - 10 + i * 0.1, "crm.search") for i in range(4)]
    fresh = rebuilt(old, clock, text)
    assert [fresh.evaluate(request("crm.search")).verdict for _ in range(5)] == [Verdict.ALLOW] * 4 + [Verdict.STOP]


def test_a_redacted_sum_amount_counts_as_the_whole_budget() -> None:
    clock = FakeClock()
    clock.now += 60
    events = [past(clock.now - 10, "refund.create", args={}, redacted_paths=["args.amount"])]
    policy = rebuilt(events, clock)
    assert policy.evaluate(request("refund.create", args={"amount": 1})).reason == "budget_exceeded"
    # An amount that was simply absent was refused live (policy_error) or skipped by a shadow limit: no quota.
    assert (
        rebuilt([past(clock.now - 10, "refund.create")], clock)
        .evaluate(request("refund.create", args={"amount": 5000}))
        .verdict
        is Verdict.ALLOW
    )


def test_replay_reads_back_only_as_far_as_the_longest_window() -> None:
    document = parse_policy(POLICY, "p.yaml")
    now = 6_048_000_000.0 + 7200  # two hours into a UTC day
    assert replay_since(document.limits, now) == now - DAY  # the steps horizon is the longest here
    counts = [limit for limit in document.limits if limit.kind in ("count", "sum")]
    assert replay_since(counts, now) == now - 7200  # the start of the current 24h window
    assert replay_since((), now) is None


def test_windows_are_aligned_to_utc_by_default() -> None:
    # The engine's default clock is the wall clock: a 24h window ends at the next 00:00 UTC (monotonic time would
    # align it to the machine's boot instead).
    text = f"version: 1\n{ACCESS_ALL}limits:\n  - {{name: c, type: count, key: [tenant], max: 0, window: 24h}}\n"
    policy = LayeredPolicy(parse_policy(text, "p.yaml"), LimitState())
    until_midnight = DAY - time.time() % DAY
    assert policy.evaluate(request()).retry_after_s == pytest.approx(until_midnight, abs=5)


# The journal scan, on a real journal file.


async def write_journal(path: Path, bodies: list[tuple[int, dict[str, Any]]]) -> None:
    writer = JournalWriter(path, Ed25519Signer("test/replay", bytes(32)), max_batch=2000)
    await writer.start()
    try:
        for chunk in range(0, len(bodies), 2000):
            await asyncio.gather(
                *(
                    writer.append(EventKind[str(b["kind"]).upper()], canonical_json(b), indexed_values(b), nanos)
                    for nanos, b in bodies[chunk : chunk + 2000]
                )
            )
    finally:
        await writer.aclose()


def body(index: int, kind: str = "pre_exec", decision: str = "allow") -> dict[str, Any]:
    return {"kind": kind, "event_id": f"ev_{index}", "run_id": f"run_{index % 3}", "decision": decision}


def scan(path: Path, since_nanos: int) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        start = replay.first_seq_since(conn, since_nanos)
        return [str(e.body["event_id"]) for e in replay.iter_pre_events(conn, start, since_nanos)]


def test_the_scan_decides_on_the_signed_bytes_not_on_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    since = 1_000_000
    bodies = [(since - 10 + i, body(i)) for i in range(10)]  # before the span
    bodies += [(since + i, body(10 + i, "post_exec" if i % 4 == 3 else "pre_exec")) for i in range(10)]
    asyncio.run(write_journal(path, bodies))
    expected = [f"ev_{10 + i}" for i in range(10) if i % 4 != 3]
    assert scan(path, since) == expected
    # Edit the convenience columns (as someone with the file could): hide the span's start, relabel kinds.
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER journal_no_update")
        conn.execute("UPDATE journal SET unix_nanos = 0 WHERE seq IN (10, 11, 12)")
        conn.execute("UPDATE journal SET kind = 'post_exec', decision = 'stop', run_id = NULL WHERE seq >= 10")
    assert scan(path, since) == expected
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        # Earlier steps are found through the run index: still confirmed against the body, never assumed.
        assert replay.count_pre_events_before(conn, ["run_0", "run_9"], 10) == {"run_0": 4, "run_9": 0}


# A real sidecar, SIGKILLed near its limits and restarted.


def test_sigkill_and_restart_keeps_every_budget_and_rate_limit(tmp_path: Path) -> None:
    directory = tmp_path / "gw"
    directory.mkdir()
    (directory / "policy.yaml").write_text(POLICY)
    acknowledged: list[str] = []

    def decide(target: str, action: str, tenant: str, run: str, step: int, **args: Any) -> tuple[int, str]:
        channel, gw = stub(target)
        with channel:
            reply = gw.Decide(decide_request(run, tenant, action, args or None, step), timeout=10)
        acknowledged.append(reply.event_id)
        return reply.decision, reply.reason

    allow = (types_pb2.DECISION_ALLOW, "allowed")
    gw = start_gateway(directory)
    try:
        target = gw.unix_target
        assert decide(target, "refund.create", "t_sum", "run_a", 1, amount=4000) == allow
        assert [decide(target, "report.export", "t_count", "run_b", i) for i in range(1, 4)] == [allow] * 3
        assert [decide(target, "step.go", "t_steps", "run_c", i) for i in range(1, 7)] == [allow] * 6
        assert [decide(target, "crm.search", "t_rate", "run_d", i) for i in range(1, 3)] == [allow] * 2
    finally:
        gw.stop(signal.SIGKILL)
    stored = journal_event_ids(gw.journal_path)
    assert [e for e in acknowledged if e not in stored] == [], "an acknowledged decision was lost"

    gw = start_gateway(directory)
    try:
        target = gw.unix_target
        stop = types_pb2.DECISION_STOP
        assert decide(target, "refund.create", "t_sum", "run_a", 2, amount=1001) == (stop, "budget_exceeded")
        assert decide(target, "refund.create", "t_sum", "run_a", 3, amount=1000) == allow
        assert decide(target, "report.export", "t_count", "run_b", 4) == (stop, "budget_exceeded")
        assert decide(target, "step.go", "t_steps", "run_c", 7) == (stop, "step_budget_exceeded")
        assert decide(target, "crm.search", "t_rate", "run_d", 3) == (stop, "rate_limited_tenant")
        assert decide(target, "crm.search", "t_other", "run_e", 1) == allow, "limits stay per tenant"
        assert "limit state rebuilt from 12 pre-events" in gw.log()
    except grpc.RpcError as exc:
        raise AssertionError(f"{exc}\n{gw.log()}") from exc
    finally:
        gw.stop()
    stored = journal_event_ids(gw.journal_path)
    assert len(acknowledged) == 18
    assert [e for e in acknowledged if e not in stored] == [], "an acknowledged decision was lost"
