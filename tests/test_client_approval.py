"""`guard(..., wait_for_approval=...)`: the whole approve-then-resume loop in the Python clients, on a real sidecar."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from agentaudit.v1 import operator_pb2
from agentaudit_client import ActionStopped, ApprovalRequired, AsyncGatewayClient, GatewayClient
from gateway.journal.store import iter_bodies
from tests.conftest import ROOT, RunningGateway
from tests.operator_helpers import auth, operator_stub

REFUND = {"order_id": "o_9", "amount": 250, "customer": {"email": "ann@example.com"}}


def resolve_when_pending(gw: RunningGateway, run_id: str, *, grant: bool) -> threading.Thread:
    """A human in another terminal: waits for the run's approval to be listed, then grants or denies it."""

    def act() -> None:
        channel, op = operator_stub(gw.operator_target)
        with channel:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                listed = op.ListApprovals(operator_pb2.ListApprovalsRequest(), metadata=auth(gw.operator_token))
                mine = [a for a in listed.approvals if a.run_id == run_id]
                if mine:
                    if grant:
                        request = operator_pb2.GrantApprovalRequest(approval_id=mine[0].approval_id, comment="ok")
                        op.GrantApproval(request, metadata=auth(gw.operator_token), timeout=10)
                    else:
                        request2 = operator_pb2.DenyApprovalRequest(approval_id=mine[0].approval_id, comment="no")
                        op.DenyApproval(request2, metadata=auth(gw.operator_token), timeout=10)
                    return
                time.sleep(0.05)
            raise AssertionError("the approval was never listed")

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def kinds_of_run(gw: RunningGateway, run_id: str) -> list[tuple[str, str]]:
    return [
        (body["kind"], body.get("decision", ""))
        for _, body in iter_bodies(gw.journal_path)
        if body.get("run_id") == run_id and body["kind"] in ("pre_exec", "post_exec", "approval_granted")
    ]


def test_guard_waits_for_a_human_then_runs_the_block_once(gateway_server: RunningGateway) -> None:
    ran: list[int] = []
    with GatewayClient(gateway_server.unix_target, timeout=30) as client:
        run = client.run("run_wait_ok", tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))
        human = resolve_when_pending(gateway_server, "run_wait_ok", grant=True)
        with run.guard("refund.create", REFUND, wait_for_approval=timedelta(seconds=20)) as step:
            ran.append(1)
            step.output = {"refund_id": "r_1"}
        human.join(5)
    assert ran == [1]
    assert step.decision.decision == "allow"
    assert step.report is not None
    assert kinds_of_run(gateway_server, "run_wait_ok") == [
        ("pre_exec", "approval_required"),
        ("approval_granted", ""),
        ("pre_exec", "allow"),
        ("post_exec", "allow"),
    ]


def test_a_denied_approval_raises_action_stopped_and_the_block_never_runs(gateway_server: RunningGateway) -> None:
    ran: list[int] = []

    async def scenario() -> None:
        async with AsyncGatewayClient(gateway_server.unix_target, timeout=30) as client:
            run = client.run("run_wait_no", tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))
            human = await asyncio.to_thread(resolve_when_pending, gateway_server, "run_wait_no", grant=False)
            with pytest.raises(ActionStopped) as stopped:
                async with run.guard("refund.create", REFUND, wait_for_approval=20):
                    ran.append(1)
            human.join(5)
            assert stopped.value.reason == "approval_denied"

    asyncio.run(scenario())
    assert ran == []


def test_still_pending_when_the_wait_ends_raises_approval_required(gateway_server: RunningGateway) -> None:
    with GatewayClient(gateway_server.unix_target, timeout=30) as client:
        run = client.run("run_wait_late", tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))
        started = time.monotonic()
        with pytest.raises(ApprovalRequired) as pending, run.guard("refund.create", REFUND, wait_for_approval=1.0):
            raise AssertionError("the block must not run")
        assert pending.value.approval_id
        assert time.monotonic() - started >= 0.7


def test_the_approval_example_runs_the_refund_once_a_human_approves(gateway_server: RunningGateway) -> None:
    """examples/approval_agent.py, as the README tells it: a second terminal approves."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "approval_agent.py"), "--target", gateway_server.unix_target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = proc.stdout.readline() if proc.stdout else ""
    run_id = first.split()[1].rstrip(":")
    human = resolve_when_pending(gateway_server, run_id, grant=True)
    out, _ = proc.communicate(timeout=60)
    human.join(5)
    assert proc.returncode == 0, first + out
    assert "refund made" in out
    assert kinds_of_run(gateway_server, run_id) == [
        ("pre_exec", "approval_required"),
        ("approval_granted", ""),
        ("pre_exec", "allow"),
        ("post_exec", "allow"),
    ]
