"""Repeated ``(run_id, step_id)`` pre-events are journaled with an ``attempt`` number, and a trace tells a retry
(the next attempt) from a replay (an attempt number the step already had).

The sidecar is a real ``agentaudit dev`` process driven through raw gRPC stubs; the journal is read back as
signed bodies. The trace cases use hand-made events, since the sidecar never writes a replay.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from gateway.cli.render import format_trace
from gateway.journal.store import iter_bodies
from gateway.journal.trace import AnomalyCode, build_trace
from tests.conftest import start_gateway
from tests.gateway_helpers import decide_request, stub

RUN = "run_attempts"


def decide(target: str, step: int, run_id: str = RUN) -> str:
    channel, gateway = stub(target)
    with channel:
        return str(gateway.Decide(decide_request(run_id=run_id, step_id=step), timeout=10).event_id)


def attempts(journal: Path, run_id: str = RUN) -> dict[str, tuple[int, int]]:
    """event id → (step, attempt) of the run's pre-events."""
    return {
        body["event_id"]: (body["step_id"], body["attempt"])
        for _, body in iter_bodies(journal, run_id=run_id, kind="pre_exec")
    }


def test_repeats_of_a_step_are_journaled_as_attempts_counted_across_a_restart(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "s")
    try:
        first = [decide(gw.unix_target, 1), decide(gw.unix_target, 1), decide(gw.unix_target, 2)]
        other = decide(gw.unix_target, 1, run_id="run_other")
    finally:
        gw.stop()
    gw = start_gateway(tmp_path / "s")
    try:
        # A fresh process has nothing in memory: the journal's index says step 1 already had two attempts.
        after_restart = decide(gw.unix_target, 1)
    finally:
        gw.stop()

    recorded = attempts(gw.journal_path)
    assert [recorded[e] for e in first] == [(1, 1), (1, 2), (2, 1)]
    assert recorded[after_restart] == (1, 3)
    assert attempts(gw.journal_path, "run_other")[other] == (1, 1)


def test_concurrent_repeats_of_one_step_get_distinct_attempts(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "s")
    ids: list[str] = []
    try:
        threads = [threading.Thread(target=lambda: ids.append(decide(gw.unix_target, 7))) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        gw.stop()

    recorded = attempts(gw.journal_path)
    assert len(ids) == 20
    assert sorted(recorded[e][1] for e in ids) == list(range(1, 21))


def test_every_pre_event_body_carries_attempt(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "s")
    try:
        decide(gw.unix_target, 1)
    finally:
        gw.stop()

    bodies = [body for _, body in iter_bodies(gw.journal_path, kind="pre_exec")]
    assert bodies and all(isinstance(body["attempt"], int) for body in bodies)


def pre(seq: int, step: int, attempt: int | None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "seq": seq,
        "kind": "pre_exec",
        "event_id": f"evt_{seq}",
        "timestamp": f"2026-11-27T10:00:00.{seq:03d}000000Z",
        "run_id": RUN,
        "step_id": step,
        "tenant_id": "t_42",
        "agent_id": "support-agent",
        "action": "crm.lookup",
        "actor": {"type": "user", "id": "u_1"},
        "decision": "stop",
        "reason": "rate_limited_tenant",
        "policy_layer": "limits",
        "policy_rule": "crm",
        "policy_version": "sha256:" + "a" * 64,
        "approval_id": "",
        "resumed_approval_id": "",
    }
    if attempt is not None:
        event["attempt"] = attempt
    return event


def test_trace_shows_a_retry_with_its_attempt_number() -> None:
    trace = build_trace([pre(1, 1, 1), pre(2, 1, 2)], run_id=RUN)

    lines = [line.split("  seq")[0].rstrip() for line in format_trace(trace).splitlines()]
    assert trace.anomalies == ()
    assert any(line.endswith("retry (attempt 2): stop  rate_limited_tenant  [limits/crm]") for line in lines), lines


def test_trace_flags_a_repeated_attempt_number_as_a_replay() -> None:
    trace = build_trace([pre(1, 1, 1), pre(2, 1, 2), pre(3, 1, 2)], run_id=RUN)

    assert [(a.code, a.seq, a.step_id) for a in trace.anomalies] == [(AnomalyCode.REPLAYED_ATTEMPT, 3, 1)]
    assert "is attempt 2 of step 1 again (the step is already at attempt 2)" in trace.anomalies[0].message
    assert "! replayed_attempt" in format_trace(trace)


def test_trace_of_a_journal_without_attempts_shows_retries_as_before() -> None:
    trace = build_trace([pre(1, 1, None), pre(2, 1, None)], run_id=RUN)

    assert trace.anomalies == ()
    assert any(
        line.split("  seq")[0].rstrip().endswith("retry: stop  rate_limited_tenant  [limits/crm]")
        for line in format_trace(trace).splitlines()
    )
