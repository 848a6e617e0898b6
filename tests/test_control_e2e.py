"""The control channel end to end: a real collector process (its ControlService and fleet operator API, SQLite
store) and real sidecar processes (``agentaudit dev`` with ``control:`` pointing at it)."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from agentaudit.v1 import gateway_pb2, operator_pb2, operator_pb2_grpc, types_pb2
from gateway import devenv, reasons
from gateway.journal.entry import decode_entry
from gateway.signing import Ed25519Signer, write_secret_file
from tests.conftest import AGENTAUDIT, ROOT, RunningGateway, free_port, start_gateway, wait_serving
from tests.gateway_helpers import decide_request, stub
from tests.helpers import eventually

TOKEN = "ops-token-for-the-control-tests"
STOP, ALLOW = types_pb2.DECISION_STOP, types_pb2.DECISION_ALLOW
SCOPE_TENANT = operator_pb2.KILL_SWITCH_SCOPE_TENANT


class CollectorProcess:
    """`agentaudit collector` with the fleet operator API, restartable (same database, same keys)."""

    def __init__(self, directory: Path, origins: list[tuple[str, Path]]) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port, self.operator_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"
        witness = Ed25519Signer.generate("control-e2e/collector")
        write_secret_file(directory / "witness.key", witness.encode_private() + "\n")
        (directory / "witness.pub").write_text(witness.verifier.encode() + "\n")
        self.control_name = witness.name
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        config = {
            "collector": {
                "listen": [self.target],
                "store": f"sqlite:///{directory / 'collector.db'}",
                "witness_key": "witness.key",
                "origins": [{"origin": o, "keys": [str(k)]} for o, k in origins],
                "operator": {
                    "listen": [f"127.0.0.1:{self.operator_port}"],
                    "tokens": [{"identity": "ops", "roles": ["admin", "approver", "auditor"], "sha256": digest}],
                },
            }
        }
        (directory / "collector.yaml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.directory / "collector.log", "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(
            [*AGENTAUDIT, "collector", "--config", str(self.directory / "collector.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        wait_serving(self.target, proc=self.proc)
        wait_serving(f"127.0.0.1:{self.operator_port}", proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Stops it; returns how long it took to exit."""
        started = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        return time.monotonic() - started

    def operator(self, method: str, **fields: Any) -> Any:
        with grpc.insecure_channel(f"127.0.0.1:{self.operator_port}") as channel:
            call = getattr(operator_pb2_grpc.OperatorServiceStub(channel), method)
            request = getattr(operator_pb2, f"{method}Request")(**fields)
            return call(request, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=30)


def sidecar_dir(directory: Path) -> tuple[Path, str]:
    devenv.prepare(directory, None, {})
    return directory, (directory / "signing.pub").read_text().split("+", 1)[0]


def point_at(directory: Path, collector: CollectorProcess, **control: Any) -> None:
    path = directory / devenv.CONFIG_FILE
    config = yaml.safe_load(path.read_text())
    config["forward"] = {"target": collector.target, "batch_max_age_s": 0.05, "backoff_max_s": 0.5}
    config["control"] = {
        "collector": collector.target,
        "control_key": str(collector.directory / "witness.pub"),
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "connect_wait_s": 20,
        **control,
    }
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[CollectorProcess, list[Path]]]:
    dirs = [sidecar_dir(tmp_path / name) for name in ("a", "b")]
    collector = CollectorProcess(tmp_path / "c", [(o, d / "signing.pub") for d, o in dirs])
    for d, _ in dirs:
        point_at(d, collector)
    collector.start()
    try:
        yield collector, [d for d, _ in dirs]
    finally:
        collector.stop()


def journal_bodies(path: Path, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT entry FROM journal WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    return [json.loads(decode_entry(bytes(r[0])).body) for r in rows]


def fleet_switches(journal: Path) -> set[str]:
    """The fleet switches the sidecar's signed kill_switch events leave engaged."""
    engaged: set[str] = set()
    for event in journal_bodies(journal, "kill_switch"):
        (engaged.add if event["operation"] == "engage" else engaged.discard)(event["target"])
    return engaged


def decision(gw: RunningGateway, tenant: str, step: int, run: str = "run_c") -> tuple[int, str]:
    channel, gateway = stub(gw.unix_target)
    with channel:
        reply = gateway.Decide(decide_request(run_id=run, tenant_id=tenant, step_id=step), timeout=60)
    return reply.decision, reply.reason


def test_a_fleet_kill_switch_stops_the_next_decide_on_both_sidecars(
    fleet: tuple[CollectorProcess, list[Path]],
) -> None:
    collector, dirs = fleet
    sidecars = [start_gateway(d, forward=True) for d in dirs]
    try:
        for gw in sidecars:
            assert decision(gw, "t_42", 1) == (ALLOW, "allowed")
        collector.operator("EngageKillSwitch", scope=SCOPE_TENANT, target="t_42", reason="fraud wave")
        for gw in sidecars:
            steps = iter(range(2, 10_000))
            eventually(lambda gw=gw: decision(gw, "t_42", next(steps))[1] == reasons.KILL_SWITCH_ENGAGED)  # type: ignore[misc]
            assert decision(gw, "t_7", 1)[0] == ALLOW
        collector.operator("ReleaseKillSwitch", scope=SCOPE_TENANT, target="t_42", reason="over")
        for gw in sidecars:
            steps = iter(range(10_000, 20_000))
            eventually(lambda gw=gw: decision(gw, "t_42", next(steps))[0] == ALLOW)  # type: ignore[misc]
            [engage, release] = journal_bodies(gw.journal_path, "kill_switch")
            assert (engage["operation"], engage["via"], engage["actor"]["id"]) == (
                "engage",
                collector.control_name,
                "ops",
            )
            assert (release["operation"], release["via"]) == ("release", collector.control_name)
    finally:
        for gw in sidecars:
            gw.stop()


def test_a_sidecar_started_after_the_switch_was_engaged_never_answers_allow_for_that_tenant(
    fleet: tuple[CollectorProcess, list[Path]],
) -> None:
    collector, dirs = fleet
    collector.operator("EngageKillSwitch", scope=SCOPE_TENANT, target="t_42", reason="engaged before start")
    gw = start_gateway(dirs[0], forward=True)
    try:
        # Its very first Decide, and every one after, is stopped: the set arrives before any answer.
        for step in range(1, 6):
            assert decision(gw, "t_42", step) == (STOP, reasons.KILL_SWITCH_ENGAGED)
        assert decision(gw, "t_7", 1)[0] == ALLOW
    finally:
        gw.stop()


def test_a_vote_on_the_collector_resumes_the_agent_blocked_in_wait_approval(
    fleet: tuple[CollectorProcess, list[Path]],
) -> None:
    collector, dirs = fleet
    gw = start_gateway(dirs[0], forward=True)
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            request = decide_request(run_id="run_w", action="refund.create", args={"order_id": "o_1", "amount": 250})
            asked = gateway.Decide(request, timeout=30)
            assert asked.decision == types_pb2.DECISION_APPROVAL_REQUIRED
            waiting = gateway.WaitApproval.future(
                gateway_pb2.WaitApprovalRequest(approval_id=asked.approval_id), timeout=60
            )
            # Listed on the collector (pushed up by the control stream, or forwarded), then granted there.
            eventually(
                lambda: any(a.approval_id == asked.approval_id for a in collector.operator("ListApprovals").approvals),
                message="the approval listed on the collector",
            )
            assert not waiting.done()
            collector.operator("GrantApproval", approval_id=asked.approval_id, comment="checked")
            assert waiting.result(60).state == gateway_pb2.APPROVAL_STATE_GRANTED
            resumed = gateway.Decide(
                decide_request(
                    run_id="run_w",
                    action="refund.create",
                    args={"order_id": "o_1", "amount": 250},
                    approval_id=asked.approval_id,
                ),
                timeout=30,
            )
            assert resumed.decision == ALLOW
        [granted] = journal_bodies(gw.journal_path, "approval_granted")
        assert (granted["actor"]["id"], granted["via"]) == ("ops", collector.control_name)
    finally:
        gw.stop()


def test_the_channel_cut_and_restored_under_load_loses_and_duplicates_nothing(
    fleet: tuple[CollectorProcess, list[Path]],
) -> None:
    collector, dirs = fleet
    gw = start_gateway(dirs[0], forward=True)
    stop = threading.Event()
    errors: list[str] = []

    def load() -> None:
        channel, gateway = stub(gw.unix_target)
        step = 0
        with channel:
            while not stop.is_set():
                step += 1
                try:
                    gateway.Decide(decide_request(run_id="run_load", tenant_id="t_load", step_id=step), timeout=60)
                except grpc.RpcError as exc:
                    # The sidecar restarting once, below: refused while it is down (UNAVAILABLE), or cancelled by its
                    # stop when still in flight (CANCELLED); neither is an answer the agent could act on.
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                        errors.append(str(exc.code()))

    loader = threading.Thread(target=load)
    loader.start()
    approvals = []
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            for i in range(4):
                args = {"order_id": f"o_{i}", "amount": 250}
                asked = gateway.Decide(decide_request(run_id=f"run_a{i}", action="refund.create", args=args))
                approvals.append(asked.approval_id)
        targets = [f"t_cut_{i}" for i in range(6)]
        for i, target in enumerate(targets):
            collector.operator("EngageKillSwitch", scope=SCOPE_TENANT, target=target, reason=f"round {i}")
            if i < len(approvals):
                eventually(
                    lambda i=i: any(
                        a.approval_id == approvals[i] for a in collector.operator("ListApprovals").approvals
                    )  # type: ignore[misc]
                )
                collector.operator("GrantApproval", approval_id=approvals[i], comment=f"round {i}")
            if i % 2 == 0:
                collector.stop(signal.SIGKILL)  # the channel is cut (the process killed mid-stream)
                time.sleep(0.3)
                collector.start()
            if i == 3:  # and the sidecar restarts once too
                gw.stop()
                gw = start_gateway(dirs[0], forward=True)
        for target in targets[::2]:
            collector.operator("ReleaseKillSwitch", scope=SCOPE_TENANT, target=target, reason="done")

        # What the fleet holds now; a switch engaged and released while the channel was down never reaches the
        # sidecar at all (the complete set on reconnect no longer has it), and that is right.
        fleet_now = {s.target for s in collector.operator("ListKillSwitches").kill_switches}
        assert fleet_now == set(targets) - set(targets[::2])

        def settled() -> bool:
            granted = {e["approval_id"] for e in journal_bodies(gw.journal_path, "approval_granted")}
            return fleet_switches(gw.journal_path) == fleet_now and granted == set(approvals)

        eventually(settled, timeout=60, message="the fleet's switches and every grant applied")
        time.sleep(1.5)  # a late duplicate, if any, would land now
    finally:
        stop.set()
        loader.join(60)
        gw.stop()
    events = journal_bodies(gw.journal_path, "kill_switch")
    counts = Counter((e["operation"], e["target"]) for e in events)
    assert all(n == 1 for n in counts.values()), counts  # nothing applied twice
    assert fleet_switches(gw.journal_path) == fleet_now
    grants = Counter(e["approval_id"] for e in journal_bodies(gw.journal_path, "approval_granted"))
    assert all(n == 1 for n in grants.values()) and set(grants) == set(approvals)
    singles = [e["control_seq"] for e in events if e.get("control_kind") == "kill_switch"]
    assert len(singles) == len(set(singles))  # no act applied twice
    assert not errors, errors[:5]


VOTE_SCRIPT = """
import asyncio, sys
from pathlib import Path
from gateway.collector.fleet import FleetControl
from gateway.collector.fleet_sqlite import SqliteFleetDb
from gateway.errors import NotFoundError
from gateway.identity import Operator
from gateway.signing import load_signer

async def main(directory, approval_id):
    key = load_signer(directory / "witness.key")  # the embedded collector's control key (its witness key)
    fleet = FleetControl(SqliteFleetDb(directory / "collector.db"), key, replica="test")
    await fleet.start()
    try:
        for _ in range(300):  # until the approval has reached the fleet tables
            try:
                voter = Operator("carol", frozenset({"approver"}))
                await fleet.vote(approval_id, grant=True, operator=voter, comment="central", channel="console")
                return
            except NotFoundError:
                await asyncio.sleep(0.1)
        sys.exit("the approval never reached the embedded collector")
    finally:
        await fleet.aclose()

asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
"""


def test_agentaudit_dev_answers_central_votes_with_zero_configuration(tmp_path: Path) -> None:
    """The embedded collector serves ControlService and the dev sidecar pins its key on its own: a vote recorded
    in the embedded collector's fleet tables (by another process, as a console would) resumes the agent."""
    gw = start_gateway(tmp_path / "dev", forward=True)  # the dev config as written: forward.target embedded
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            args = {"order_id": "o_9", "amount": 250}
            asked = gateway.Decide(decide_request(run_id="run_dev", action="refund.create", args=args), timeout=30)
            waiting = gateway.WaitApproval.future(
                gateway_pb2.WaitApprovalRequest(approval_id=asked.approval_id), timeout=60
            )
            # Waited for only until the sidecar has the answer: FleetControl.vote on the embedded collector's
            # SQLite file from a second process was seen not to return after its commit (left to the collector).
            voter = subprocess.Popen([sys.executable, "-c", VOTE_SCRIPT, str(gw.dir), asked.approval_id], cwd=ROOT)
            try:
                assert waiting.result(60).state == gateway_pb2.APPROVAL_STATE_GRANTED
            finally:
                voter.kill()
                voter.wait(10)
        [granted] = journal_bodies(gw.journal_path, "approval_granted")
        assert (granted["actor"]["id"], granted["channel"]) == ("carol", "console")
        assert granted["via"].startswith("agentaudit-dev-collector/")
    finally:
        gw.stop()
