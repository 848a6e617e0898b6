"""The sidecar's end of the control channel against a scripted collector on a real gRPC server: a real sidecar
(in-process, its own journal), messages signed as the collector signs them, and some no collector would send."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from gateway import reasons
from gateway.app import Sidecar
from gateway.control.message import APPROVAL_VOTE, KILL_SWITCH
from gateway.journal.entry import decode_entry
from tests.control_helpers import (
    FORGER,
    Partition,
    ScriptedCollector,
    decide,
    origin_signer,
    running_sidecar,
    scripted_server,
    sidecar_config,
)
from tests.helpers import eventually_async

STOP, ALLOW = types_pb2.DECISION_STOP, types_pb2.DECISION_ALLOW


def run(coro: Awaitable[None], timeout_s: float = 120) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout_s))  # type: ignore[arg-type]


def journal_bodies(journal: Path, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT entry FROM journal WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    return [json.loads(decode_entry(bytes(r[0])).body) for r in rows]


def kill_switch_events(journal: Path) -> list[dict[str, Any]]:
    return journal_bodies(journal, "kill_switch")


def journal_size(journal: Path) -> int:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM journal").fetchone()[0])


Scenario = Callable[[Sidecar, ScriptedCollector, str], Awaitable[None]]


def with_sidecar(tmp_path: Path, scenario: Scenario, *, initial_set: bool = True, **control: Any) -> None:
    async def main() -> None:
        collector = ScriptedCollector()
        async with scripted_server(tmp_path, collector) as address:
            cfg = sidecar_config(tmp_path / "sc", address, **control)
            origin = origin_signer(tmp_path / "sc")
            collector.origin_keys = [origin.verifier]
            if initial_set:
                collector.initial_set = []
            async with running_sidecar(cfg) as sidecar:
                await eventually_async(lambda: collector.open_streams == 1, message="the control stream")
                await scenario(sidecar, collector, origin.name)

    run(main())


@pytest.mark.parametrize(
    ("how", "word"),
    [
        pytest.param("forged", "forged", id="forged"),
        pytest.param("replayed", "replayed", id="replayed"),
        pytest.param("expired", "stale", id="expired"),
        pytest.param("wrong_origin", "wrong_origin", id="wrong-origin"),
    ],
)
def test_a_bad_control_message_is_refused_logged_acked_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str, word: str
) -> None:
    async def scenario(sidecar: Sidecar, collector: ScriptedCollector, origin: str) -> None:
        assert (await decide(sidecar, tenant_id="t_42")).decision == ALLOW
        # A real engage at seq 5 first, so "replayed" has something to replay.
        engage = collector.message(origin, 5, KILL_SWITCH, {"action": "release", "scope": "tenant", "target": "t_9"})
        collector.send(engage)
        await collector.ack_of(5)
        before = journal_size(sidecar.config.journal.path)
        fields = {"action": "engage", "scope": "tenant", "target": "t_42", "reason": "fraud", "operator": "ops"}
        if how == "forged":
            bad = collector.message(origin, 6, KILL_SWITCH, fields, signer=FORGER)
        elif how == "replayed":
            bad = collector.message(origin, 5, KILL_SWITCH, fields)
        elif how == "expired":
            bad = collector.message(origin, 6, KILL_SWITCH, fields, now_ns=time.time_ns() - 120 * 10**9)
        else:
            bad = collector.message("someone-else", 6, KILL_SWITCH, fields)
        caplog.clear()
        collector.send(bad)
        ack = await collector.ack_of(6 if how != "replayed" else 5, 1 if how != "replayed" else 2)
        assert ack.refused == word and ack.message
        assert any(r.levelno == logging.WARNING and word in r.getMessage() for r in caplog.records)
        assert sidecar.switches is not None and sidecar.switches.find("t_42", "", "") is None
        assert journal_size(sidecar.config.journal.path) == before
        assert (await decide(sidecar, tenant_id="t_42", step_id=2)).decision == ALLOW

    with_sidecar(tmp_path, scenario)


def test_a_fleet_kill_switch_stops_the_next_decide_and_its_release_lets_it_through(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar, collector: ScriptedCollector, origin: str) -> None:
        assert (await decide(sidecar, tenant_id="t_42")).decision == ALLOW
        engage = {"action": "engage", "scope": "tenant", "target": "t_42", "reason": "fraud wave", "operator": "ops"}
        collector.send(collector.message(origin, 7, KILL_SWITCH, engage))
        assert (await collector.ack_of(7)).refused == ""
        stopped = await decide(sidecar, tenant_id="t_42", step_id=2)
        assert (stopped.decision, stopped.reason) == (STOP, reasons.KILL_SWITCH_ENGAGED)
        assert (await decide(sidecar, tenant_id="t_7", step_id=3)).decision == ALLOW
        collector.send(collector.message(origin, 9, KILL_SWITCH, {**engage, "action": "release", "reason": ""}))
        assert (await collector.ack_of(9)).refused == ""
        assert (await decide(sidecar, tenant_id="t_42", step_id=4)).decision == ALLOW
        events = kill_switch_events(sidecar.config.journal.path)
        assert [(e["operation"], e["via"], e["control_seq"], e["actor"]["id"]) for e in events] == [
            ("engage", "control.test/collector", 7, "ops"),
            ("release", "control.test/collector", 9, "ops"),
        ]

    with_sidecar(tmp_path, scenario)


def test_the_complete_set_engages_what_is_new_and_releases_only_that_collectors_switches(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar, collector: ScriptedCollector, origin: str) -> None:
        board = sidecar.switches
        assert board is not None
        await collector.ack_of(0)  # the stream's own (empty) set
        await board.engage("agent", "local-bot", "engaged here", "alice")  # a local switch: never the fleet's
        collector.send(collector.set_message(origin, 0, ("tenant", "t_1", "a"), ("run", "r", "b"), head=3))
        assert (await collector.ack_of(0, 2)).refused == ""
        assert {(s.scope, s.target, s.via) for s in board.engaged()} == {
            ("agent", "local-bot", ""),
            ("tenant", "t_1", "control.test/collector"),
            ("run", "r", "control.test/collector"),
        }
        collector.send(collector.set_message(origin, 0, ("run", "r", "b"), head=4))
        await collector.ack_of(0, 3)
        assert {(s.scope, s.target) for s in board.engaged()} == {("agent", "local-bot"), ("run", "r")}
        # The same set again journals nothing.
        before = journal_size(sidecar.config.journal.path)
        collector.send(collector.set_message(origin, 0, ("run", "r", "b"), head=4))
        assert (await collector.ack_of(0, 4)).refused == ""
        assert journal_size(sidecar.config.journal.path) == before
        # A single change the set already covered (seq <= its head) is refused as replayed.
        release = {"action": "release", "scope": "run", "target": "r", "reason": "", "operator": "o"}
        collector.send(collector.message(origin, 4, KILL_SWITCH, release))
        assert (await collector.ack_of(4)).refused == "replayed"
        assert board.find_exact("run", "r") is not None

    with_sidecar(tmp_path, scenario)


def test_a_set_made_for_another_stream_is_refused(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar, collector: ScriptedCollector, origin: str) -> None:
        await collector.ack_of(0)
        other = collector.set_message(origin, 0, head=9, nonce=b"\x01" * 32)  # an empty set: would release all
        engage = {"action": "engage", "scope": "global", "target": "", "reason": "stop all", "operator": "o"}
        collector.send(collector.message(origin, 10, KILL_SWITCH, engage))
        await collector.ack_of(10)
        collector.send(other)
        ack = await collector.ack_of(0, 2)
        assert ack.refused == "replayed" and "another stream" in ack.message
        assert sidecar.switches is not None and sidecar.switches.find("t", "a", "r") is not None

    with_sidecar(tmp_path, scenario)


def test_before_the_first_set_decide_waits_and_then_stops_with_control_plane_unreachable(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar, collector: ScriptedCollector, origin: str) -> None:
        started = time.monotonic()
        reply = await decide(sidecar, tenant_id="t_42")
        assert (reply.decision, reply.reason) == (STOP, reasons.CONTROL_PLANE_UNREACHABLE)
        assert time.monotonic() - started >= 0.5  # it waited for the set first
        assert sidecar.health.problems.get("control")
        # The set arrives (with a switch for t_42): t_42 stays stopped, others are allowed again.
        collector.send(collector.set_message(origin, 0, ("tenant", "t_42", "fraud"), head=2))
        await collector.ack_of(0)
        stopped = await decide(sidecar, tenant_id="t_42", step_id=2)
        assert (stopped.decision, stopped.reason) == (STOP, reasons.KILL_SWITCH_ENGAGED)
        assert (await decide(sidecar, tenant_id="t_1", step_id=3)).decision == ALLOW
        await eventually_async(lambda: "control" not in sidecar.health.problems, message="health recovered")

    with_sidecar(tmp_path, scenario, initial_set=False, connect_wait_s=0.6)


def test_a_decide_waiting_for_the_first_set_gets_the_switch_it_carries(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar, collector: ScriptedCollector, origin: str) -> None:
        await eventually_async(lambda: collector.open_streams == 1, message="the stream")
        waiting = asyncio.ensure_future(decide(sidecar, tenant_id="t_42"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        collector.send(collector.set_message(origin, 0, ("tenant", "t_42", "fraud"), head=2))
        reply = await waiting
        assert (reply.decision, reply.reason) == (STOP, reasons.KILL_SWITCH_ENGAGED)

    with_sidecar(tmp_path, scenario, initial_set=False, connect_wait_s=30)


def test_max_staleness_stops_with_control_plane_unreachable_and_recovers_on_reconnect(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar, collector: ScriptedCollector, origin: str) -> None:
        assert (await decide(sidecar)).decision == ALLOW
        collector.accepting = False
        collector.cut()
        await eventually_async(lambda: sidecar.control is not None and not sidecar.control.streaming)
        assert (await decide(sidecar, step_id=2)).decision == ALLOW  # within max_staleness_s: the last set holds
        await asyncio.sleep(0.8)
        reply = await decide(sidecar, step_id=3)
        assert (reply.decision, reply.reason) == (STOP, reasons.CONTROL_PLANE_UNREACHABLE)
        await eventually_async(lambda: "control" in sidecar.health.problems, message="health reports control")
        collector.accepting = True
        await eventually_async(lambda: sidecar.control is not None and sidecar.control.streaming, message="reconnect")
        assert (await decide(sidecar, step_id=4)).decision == ALLOW
        assert collector.streams >= 2

    with_sidecar(tmp_path, scenario, max_staleness_s=0.6)


def test_applied_seq_is_derived_from_the_journal_on_restart(tmp_path: Path) -> None:
    async def main() -> None:
        collector = ScriptedCollector()
        async with scripted_server(tmp_path, collector) as address:
            cfg = sidecar_config(tmp_path / "sc", address)
            origin = origin_signer(tmp_path / "sc")
            collector.origin_keys = [origin.verifier]
            collector.initial_set = []
            engage = {"action": "engage", "scope": "tenant", "target": "t_42", "reason": "fraud", "operator": "o"}
            async with running_sidecar(cfg):
                await eventually_async(lambda: collector.streams == 1)
                collector.send(collector.message(origin.name, 12, KILL_SWITCH, engage))
                await collector.ack_of(12)
            assert [h.applied_seq for h in collector.hellos] == [0]
            collector.initial_set, collector.head = [("tenant", "t_42", "fraud")], 12  # the fleet's state now
            before = len(kill_switch_events(cfg.journal.path))
            async with running_sidecar(cfg) as sidecar:
                await eventually_async(lambda: collector.streams == 2)
                assert collector.hellos[-1].applied_seq == 12
                # The engage survives too, as a fleet switch (its via comes from the signed event).
                assert sidecar.switches is not None
                found = sidecar.switches.find("t_42", "", "")
                assert found is not None and found.via == "control.test/collector"
                await collector.ack_of(12, 2)  # the new stream's set, as of the hello's applied seq
                # Sent again (a replay across the restart): refused.
                collector.send(collector.message(origin.name, 12, KILL_SWITCH, engage))
                assert (await collector.ack_of(12, 3)).refused == "replayed"
                assert len(kill_switch_events(cfg.journal.path)) == before  # the set found it engaged already

    run(main())


def test_a_vote_resolves_the_approval_and_the_blocked_agent_resumes(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar, collector: ScriptedCollector, origin: str) -> None:
        args = {"order_id": "o_1", "amount": 250}
        asked = await decide(sidecar, action="refund.create", args=args, run_id="run_v")
        assert asked.decision == types_pb2.DECISION_APPROVAL_REQUIRED
        approval_id = asked.approval_id
        # The approval_required pre-event is pushed up at once.
        await eventually_async(lambda: any(e.seq == asked_seq(e) for e in collector.reports), message="report")
        async with grpc.aio.insecure_channel(sidecar.bound[0]) as channel:
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            waiting = asyncio.ensure_future(
                gateway.WaitApproval(gateway_pb2.WaitApprovalRequest(approval_id=approval_id), timeout=60)
            )
            await asyncio.sleep(0.2)
            assert not waiting.done()
            vote = {
                "approval_id": approval_id,
                "grant": True,
                "approver": "alice@example.com",
                "roles": ["approver"],
                "channel": "cli",
                "comment": "checked",
            }
            collector.send(collector.message(origin, 20, APPROVAL_VOTE, vote))
            assert (await collector.ack_of(20)).refused == ""
            assert (await waiting).state == gateway_pb2.APPROVAL_STATE_GRANTED
        granted = journal_bodies(sidecar.config.journal.path, "approval_granted")
        assert [(g["actor"]["id"], g["via"], g["control_seq"], g["channel"]) for g in granted] == [
            ("alice@example.com", "control.test/collector", 20, "cli")
        ]
        resumed = await decide(sidecar, action="refund.create", args=args, run_id="run_v", approval_id=approval_id)
        assert resumed.decision == ALLOW
        # A second vote for it is refused with the sidecar's word.
        collector.send(collector.message(origin, 21, APPROVAL_VOTE, {**vote, "approver": "bob"}))
        assert (await collector.ack_of(21)).refused == reasons.APPROVAL_ALREADY_RESOLVED
        await eventually_async(lambda: len(collector.reports) >= 3, message="grant and use reported")

    with_sidecar(tmp_path, scenario)


def asked_seq(entry: Any) -> int:
    body = json.loads(decode_entry(entry.entry).body)
    return int(entry.seq) if body.get("decision") == "approval_required" else -1


def test_a_relayed_vote_counts_as_applied_after_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        collector = ScriptedCollector()
        async with scripted_server(tmp_path, collector) as address:
            cfg = sidecar_config(tmp_path / "sc", address)
            origin = origin_signer(tmp_path / "sc")
            collector.origin_keys, collector.initial_set = [origin.verifier], []
            async with running_sidecar(cfg) as sidecar:
                await eventually_async(lambda: collector.open_streams == 1)
                asked = await decide(sidecar, action="refund.create", args={"amount": 250}, run_id="run_r")
                vote = {"approval_id": asked.approval_id, "grant": False, "approver": "bob", "roles": ["approver"]}
                collector.send(collector.message(origin.name, 31, APPROVAL_VOTE, {**vote, "comment": "no"}))
                assert (await collector.ack_of(31)).refused == ""
            async with running_sidecar(cfg):
                await eventually_async(lambda: collector.streams == 2)
                assert [h.applied_seq for h in collector.hellos] == [0, 31]

    run(main())


def test_a_full_report_queue_drops_to_forwarding_without_blocking(tmp_path: Path) -> None:
    from gateway import metrics  # noqa: PLC0415
    from gateway.sidecar.control import ControlClient  # noqa: PLC0415
    from gateway.signing import Ed25519Signer  # noqa: PLC0415
    from tests.control_helpers import CONTROL_KEY  # noqa: PLC0415

    async def main() -> None:
        signer = Ed25519Signer("control.test/origin", bytes([5]) * 32)
        client = ControlClient(
            "unix:///nowhere",
            None,
            CONTROL_KEY.verifier,
            signer,
            None,
            None,
            None,
            report_queue_max=2,  # type: ignore[arg-type]
        )
        before = metrics.CONTROL_REPORTS_DROPPED._value.get()
        for seq in range(5):
            client.report(seq)
        assert client.reports_dropped == 3
        assert metrics.CONTROL_REPORTS_DROPPED._value.get() - before == 3

    run(main())


def test_four_eyes_votes_from_the_collector_grant_at_the_second_distinct_approver(tmp_path: Path) -> None:
    async def main() -> None:
        collector = ScriptedCollector()
        async with scripted_server(tmp_path, collector) as address:
            cfg = sidecar_config(tmp_path / "sc", address)
            policy = cfg.policy.path
            policy.write_text(
                policy.read_text().replace(
                    'approvers: ["role:approver"]\n', 'approvers: ["role:approver"]\n    approvals_required: 2\n', 1
                )
            )
            origin = origin_signer(tmp_path / "sc")
            collector.origin_keys, collector.initial_set = [origin.verifier], []
            async with running_sidecar(cfg) as sidecar:
                await eventually_async(lambda: collector.open_streams == 1)
                asked = await decide(sidecar, action="refund.create", args={"amount": 250}, run_id="run_4")
                vote = {"approval_id": asked.approval_id, "grant": True, "roles": ["approver"], "comment": "ok"}
                collector.send(collector.message(origin.name, 40, APPROVAL_VOTE, {**vote, "approver": "alice"}))
                assert (await collector.ack_of(40)).refused == ""
                assert sidecar.approvals is not None
                assert (await sidecar.approvals.get(asked.approval_id)).state == "pending"
                collector.send(collector.message(origin.name, 41, APPROVAL_VOTE, {**vote, "approver": "ALICE"}))
                assert (await collector.ack_of(41)).refused == reasons.APPROVAL_ALREADY_VOTED
                collector.send(collector.message(origin.name, 42, APPROVAL_VOTE, {**vote, "approver": "bob"}))
                assert (await collector.ack_of(42)).refused == ""
                assert (await sidecar.approvals.get(asked.approval_id)).state == "granted"
                [voted] = journal_bodies(cfg.journal.path, "approval_voted")
                [granted] = journal_bodies(cfg.journal.path, "approval_granted")
                assert (voted["actor"]["id"], voted["via"], voted["control_seq"]) == ("alice", CONTROL_NAME, 40)
                assert (granted["actor"]["id"], granted["via"], granted["control_seq"]) == ("bob", CONTROL_NAME, 42)
            async with running_sidecar(cfg):
                await eventually_async(lambda: collector.streams == 2)
                assert collector.hellos[-1].applied_seq == 42

    run(main())


CONTROL_NAME = "control.test/collector"


def test_a_silent_partition_is_noticed_by_the_sidecars_own_keepalive(tmp_path: Path) -> None:
    """A cut network that closes nothing: the collector's own keepalive drops its end, but that close never reaches
    the sidecar. Without pings of its own the sidecar would go on reporting ``connected`` and allowing actions with
    no kill switch able to reach it; with them it notices, reconnects and, past ``max_staleness_s``, stops."""

    async def main() -> None:
        collector = ScriptedCollector()
        async with scripted_server(tmp_path, collector, tcp=True) as address:
            partition = Partition(address)
            try:
                relay = await partition.start()
                cfg = sidecar_config(tmp_path / "sc", relay, keepalive_s=5.0, max_staleness_s=1.0)
                collector.origin_keys, collector.initial_set = [origin_signer(tmp_path / "sc").verifier], []
                async with running_sidecar(cfg) as sidecar:
                    control = sidecar.control
                    assert control is not None
                    await eventually_async(lambda: control.state() == "connected", message="the control stream")
                    assert (await decide(sidecar, run_id="run_p1")).decision == ALLOW
                    partition.silent = True
                    cut = time.monotonic()
                    # keepalive 5 s + 5 s unanswered; without the sidecar's pings this never happens
                    await eventually_async(
                        lambda: control.state() != "connected", timeout=40, message="the sidecar noticing the cut"
                    )
                    noticed = time.monotonic() - cut
                    await eventually_async(control.blocked, timeout=10, message="max_staleness_s")
                    stopped = await decide(sidecar, run_id="run_p2")
                    assert (stopped.decision, stopped.reason) == (STOP, reasons.CONTROL_PLANE_UNREACHABLE)
                    print(f"\nsilent partition noticed by the sidecar's keepalive after {noticed:.1f} s")
            finally:
                await partition.close()

    run(main())
