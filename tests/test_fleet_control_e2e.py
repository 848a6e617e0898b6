"""The fleet control plane end to end, all real processes: two collector replicas (`agentaudit collector`) on one
PostgreSQL database and sidecars (`agentaudit serve`) each holding a control stream to one replica.

* An approval opened on sidecar 1 (connected to replica A) is listed by replica B, granted there, and the agent
  blocked in WaitApproval on sidecar 1 resumes.
* A fleet kill switch engaged on one replica stops the next Decide on both sidecars.
* A sidecar started after a switch was engaged never answers allow inside the switch's scope.

Delays are printed; the bounds asserted are generous (the machine is shared), never performance pass/fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentaudit.v1 import gateway_pb2, operator_pb2, types_pb2
from tests.conftest import POSTGRES_DSN
from tests.fleet_processes import CollectorProcess, FleetOperator, SidecarProcess
from tests.gateway_helpers import decide_request, stub

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def module_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the module's fleet (skipped, or failed with AGENTAUDIT_REQUIRE_POSTGRES=1,
    when the server is unreachable)."""
    import asyncpg  # noqa: PLC0415

    name = f"aa_e2e_{uuid.uuid4().hex[:12]}"

    async def execute(statement: str) -> None:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(execute(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("AGENTAUDIT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"AGENTAUDIT_REQUIRE_POSTGRES=1 but PostgreSQL is unavailable: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield f"{POSTGRES_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@dataclass
class Fleet:
    a: CollectorProcess
    b: CollectorProcess
    one: SidecarProcess  # streams to replica A
    two: SidecarProcess  # streams to replica B
    late: SidecarProcess  # registered, started by the test that needs it (to replica A)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, module_database: str) -> Iterator[Fleet]:
    base = Path(tmp_path_factory.mktemp("fleet"))
    one = SidecarProcess.prepare(base / "s1", "fleet.e2e/sidecar-1")
    two = SidecarProcess.prepare(base / "s2", "fleet.e2e/sidecar-2")
    late = SidecarProcess.prepare(base / "s3", "fleet.e2e/sidecar-3")
    origins = [(s.origin, s.public_key) for s in (one, two, late)]
    a = CollectorProcess(base / "a", module_database, origins)
    b = CollectorProcess(base / "b", module_database, origins)
    started: list[Any] = []
    try:
        for process in (a, b):
            process.start()
            started.append(process)
        one.start(a.target)
        started.append(one)
        two.start(b.target)
        started.append(two)
        yield Fleet(a, b, one, two, late)
    finally:
        for process in reversed([*started, late]):
            process.stop()
        if os.environ.get("AGENTAUDIT_E2E_LOGS") == "1":
            for each in (a, b, one, two, late):
                print(f"--- {each.log_path}\n{each.log()[-4000:]}")


def decide(
    target: str, tenant: str, action: str = "kb.search", run_id: str = "", **fields: Any
) -> gateway_pb2.DecideResponse:
    channel, gateway = stub(target)
    with channel:
        run_id = run_id or f"run_{uuid.uuid4().hex[:8]}"  # a new run each: the example policy's step budget
        request = decide_request(run_id=run_id, tenant_id=tenant, action=action, **fields)
        reply: gateway_pb2.DecideResponse = gateway.Decide(request, timeout=DEADLINE_S)
        return reply


def until(check: Any, what: str, deadline_s: float = DEADLINE_S, interval_s: float = 0.01) -> Any:
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} after {deadline_s} s (last: {last})")


def test_an_approval_opened_on_sidecar_1_is_listed_and_granted_on_replica_b_and_the_agent_resumes(
    fleet: Fleet,
) -> None:
    ops_b, alice_b = FleetOperator(fleet.b, "ops"), FleetOperator(fleet.b, "alice")
    try:
        args = {"order_id": "o_1", "amount": 250}
        asked = decide(fleet.one.target, "t_refunds", "refund.create", run_id="run_refund", args=args)
        opened = time.perf_counter()
        assert asked.decision == types_pb2.DECISION_APPROVAL_REQUIRED and asked.approval_id
        approval_id = asked.approval_id

        def listed() -> Any:
            reply = ops_b("ListApprovals", tenant_id="t_refunds")
            return next((x for x in reply.approvals if x.approval_id == approval_id), None)

        approval = until(listed, "the approval is not listed by replica B", interval_s=0.005)
        delay = time.perf_counter() - opened
        print(f"\napproval opened on sidecar 1 (replica A's stream) → listed by replica B: {delay * 1000:.0f} ms")
        assert approval.origin == fleet.one.origin and approval.action == "refund.create"

        # the agent blocks in WaitApproval on sidecar 1 while the grant is given on replica B
        outcome: list[gateway_pb2.WaitApprovalResponse] = []
        channel, gateway = stub(fleet.one.target)
        waiter = threading.Thread(
            target=lambda: outcome.append(
                gateway.WaitApproval(gateway_pb2.WaitApprovalRequest(approval_id=approval_id), timeout=DEADLINE_S)
            )
        )
        waiter.start()
        time.sleep(0.3)  # the wait is in place
        granted_at = time.perf_counter()
        reply = alice_b("GrantApproval", approval_id=approval_id, comment="checked the order")
        assert reply.approval.state == gateway_pb2.APPROVAL_STATE_GRANTED
        waiter.join(DEADLINE_S)
        resumed = time.perf_counter() - granted_at
        channel.close()
        assert outcome and outcome[0].state == gateway_pb2.APPROVAL_STATE_GRANTED, outcome
        print(f"granted on replica B → WaitApproval on sidecar 1 returns: {resumed * 1000:.0f} ms")
        again = decide(
            fleet.one.target, "t_refunds", "refund.create", run_id="run_refund", args=args, approval_id=approval_id
        )
        assert again.decision == types_pb2.DECISION_ALLOW, again

        # the sidecar journaled the grant as its own event: alice the actor, via the collector's control key
        def used() -> Any:
            reply = ops_b("ListApprovals", state=gateway_pb2.APPROVAL_STATE_GRANTED, tenant_id="t_refunds")
            return next((x for x in reply.approvals if x.approval_id == approval_id and x.used), None)

        final = until(used, "the fleet does not show the approval used")
        assert final.resolved_by == "alice"
    finally:
        ops_b.close()
        alice_b.close()


def test_a_fleet_kill_switch_stops_the_next_decide_on_both_sidecars(fleet: Fleet) -> None:
    ops_a = FleetOperator(fleet.a, "ops")
    try:
        for sidecar in (fleet.one, fleet.two):
            assert decide(sidecar.target, "t_stop").decision == types_pb2.DECISION_ALLOW
        engaged = time.perf_counter()
        ops_a(
            "EngageKillSwitch",
            scope=operator_pb2.KILL_SWITCH_SCOPE_TENANT,
            target="t_stop",
            reason="fraud wave",
        )
        for name, sidecar in (("sidecar 1 (stream on A)", fleet.one), ("sidecar 2 (stream on B)", fleet.two)):
            stopped = until(
                lambda s=sidecar: (r := decide(s.target, "t_stop")).decision == types_pb2.DECISION_STOP and r,
                f"{name} still allows t_stop",
            )
            assert stopped.reason == "kill_switch_engaged"
            print(f"\nengaged on replica A → {name} stops: {(time.perf_counter() - engaged) * 1000:.0f} ms")
        for sidecar in (fleet.one, fleet.two):  # another tenant is not inside the switch
            assert decide(sidecar.target, "t_other").decision == types_pb2.DECISION_ALLOW

        ops_a("ReleaseKillSwitch", scope=operator_pb2.KILL_SWITCH_SCOPE_TENANT, target="t_stop")
        for sidecar in (fleet.one, fleet.two):
            until(
                lambda s=sidecar: decide(s.target, "t_stop").decision == types_pb2.DECISION_ALLOW,
                "the release did not reach a sidecar",
            )
    finally:
        ops_a.close()


class LateRelay:
    """A TCP relay from a fixed loopback port to a collector that listens only from :meth:`open` on: before it, a
    sidecar dialling the port is refused, as when its collector is not up yet (a hand-written stand-in for the
    network between them, the one thing outside the project here)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        with socket.socket() as probe:  # a port nobody listens on, until open()
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self.upstream)
                self._sockets += [client, upstream]
                for src, dst in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in [*([self._server] if self._server else []), *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_sidecar_started_after_a_switch_never_answers_allow_inside_it(fleet: Fleet) -> None:
    """Started while its collector cannot be reached, the sidecar has no kill-switch set: every Decide, in the
    switch's scope or not, stops with ``control_plane_unreachable`` (after ``connect_wait_s``), never allow. Once
    the collector is reachable the set arrives: the switched tenant stops with ``kill_switch_engaged``, others are
    allowed. (Started with the collector reachable, the set arrives before the first Decide and the gate is never
    seen: this order is what exercises it.)"""
    ops_b = FleetOperator(fleet.b, "ops")
    relay = LateRelay(fleet.a.target)
    try:
        ops_b("EngageKillSwitch", scope=operator_pb2.KILL_SWITCH_SCOPE_TENANT, target="t_late", reason="before start")
        fleet.late.start(relay.target, wait=False)
        first = until(lambda: _answer(fleet.late.target, "t_late"), "the late sidecar listening", 60, 0.05)
        unreachable = [(first.decision, first.reason), _pair(decide(fleet.late.target, "t_other"))]
        assert unreachable == [(types_pb2.DECISION_STOP, "control_plane_unreachable")] * 2, unreachable
        relay.open()
        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 90
        # From the collector being reachable until the set is applied (then a few more): never allow.
        while time.monotonic() < deadline:
            answers.append(_pair(decide(fleet.late.target, "t_late")))
            if sum(1 for _, reason in answers if reason == "kill_switch_engaged") >= 5:
                break
        assert all(decision != types_pb2.DECISION_ALLOW for decision, _ in answers), answers
        assert {reason for _, reason in answers} <= {"control_plane_unreachable", "kill_switch_engaged"}, answers
        assert answers[-1][1] == "kill_switch_engaged"
        print(f"\nthe late sidecar's answers for t_late: {len(answers)}, reasons {sorted({r for _, r in answers})}")
        assert decide(fleet.late.target, "t_other").decision == types_pb2.DECISION_ALLOW
    finally:
        ops_b.close()
        relay.close()


def _answer(target: str, tenant: str) -> gateway_pb2.DecideResponse | None:
    """A Decide's answer, or None while the sidecar is not listening yet."""
    try:
        return decide(target, tenant)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None


def _pair(reply: gateway_pb2.DecideResponse) -> tuple[int, str]:
    return reply.decision, reply.reason
