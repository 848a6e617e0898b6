"""A file writer without the signing key edits the state tables of a stopped sidecar: nothing enforced changes.

Each edit is made with plain SQL on the journal file (what anyone who can write the file can do), then a real
sidecar process restarts on it. What it enforces must still be what the signed events say, the mismatch must be
journaled once as ``state_mismatch``, and ``agentaudit verify`` must report it and exit 1.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agentaudit.v1 import operator_pb2, types_pb2
from gateway.journal.store import iter_bodies
from tests.conftest import RunningGateway, run_cli, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.operator_helpers import TOKENS, auth, operator_stub, prepare_dir

REFUND = {"order_id": "o_1", "amount": 250}


def decide(gw: RunningGateway, **fields: Any) -> Any:
    channel, gateway = stub(gw.unix_target)
    with channel:
        return gateway.Decide(decide_request(**fields), timeout=10)


def refund(gw: RunningGateway, **fields: Any) -> Any:
    return decide(gw, action="refund.create", args=REFUND, run_id="run_t", **fields)


def operate(gw: RunningGateway, method: str, request: Any, token: str) -> Any:
    channel, op = operator_stub(gw.operator_target)
    with channel:
        return getattr(op, method)(request, metadata=auth(token), timeout=10)


def grant(gw: RunningGateway, approval_id: str) -> None:
    request = operator_pb2.GrantApprovalRequest(approval_id=approval_id, comment="ok")
    operate(gw, "GrantApproval", request, TOKENS["alice"][0])


def edit(path: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute(sql, params).rowcount == 1


def mismatch_events(path: Path) -> list[dict[str, Any]]:
    return [body for _, body in iter_bodies(path, kind="state_mismatch")]


def verify(gw: RunningGateway) -> Any:
    return run_cli("verify", str(gw.journal_path), "--public-key", str(gw.public_key_path), "--json")


def tamper_grant_pending(gw: RunningGateway) -> Any:
    pending = refund(gw)

    def check(restarted: RunningGateway) -> None:
        resumed = refund(restarted, approval_id=pending.approval_id)
        assert (resumed.decision, resumed.reason) == (types_pb2.DECISION_APPROVAL_REQUIRED, "approval_pending")

    sql = "UPDATE approvals SET state = 'granted', resolved_by = 'mallory' WHERE approval_id = ?"
    return pending.approval_id, lambda: edit(gw.journal_path, sql, (pending.approval_id,)), check


def tamper_reset_used(gw: RunningGateway) -> Any:
    pending = refund(gw)
    grant(gw, pending.approval_id)
    assert refund(gw, approval_id=pending.approval_id).decision == types_pb2.DECISION_ALLOW

    def check(restarted: RunningGateway) -> None:
        assert refund(restarted, approval_id=pending.approval_id).decision == types_pb2.DECISION_STOP

    sql = "UPDATE approvals SET used = 0 WHERE approval_id = ?"
    return pending.approval_id, lambda: edit(gw.journal_path, sql, (pending.approval_id,)), check


def tamper_delete_switch(gw: RunningGateway) -> Any:
    request = operator_pb2.EngageKillSwitchRequest(
        scope=operator_pb2.KILL_SWITCH_SCOPE_TENANT, target="t_9", reason="incident"
    )
    operate(gw, "EngageKillSwitch", request, TOKENS["root"][0])

    def check(restarted: RunningGateway) -> None:
        stopped = decide(restarted, tenant_id="t_9", agent_id="triage-bot", run_id="run_cold")
        assert (stopped.decision, stopped.reason) == (types_pb2.DECISION_STOP, "kill_switch_engaged")

    sql = "DELETE FROM kill_switches WHERE scope = 'tenant' AND target = 't_9'"
    return "tenant:t_9", lambda: edit(gw.journal_path, sql), check


def tamper_add_switch(gw: RunningGateway) -> Any:
    assert decide(gw).decision == types_pb2.DECISION_ALLOW

    def check(restarted: RunningGateway) -> None:
        assert decide(restarted).decision == types_pb2.DECISION_ALLOW

    sql = "INSERT INTO kill_switches VALUES ('tenant', 't_42', 'forged', 'mallory', 1)"
    return "tenant:t_42", lambda: edit(gw.journal_path, sql), check


def tamper_raise_cursor(gw: RunningGateway) -> Any:
    def check(restarted: RunningGateway) -> None:
        assert decide(restarted).decision == types_pb2.DECISION_ALLOW

    origin = gw.public_key_path.read_text().split("+", 1)[0]
    sql = "INSERT OR REPLACE INTO forwarder_state VALUES (?, 1000000, 'forged')"
    return origin, lambda: edit(gw.journal_path, sql, (origin,)), check


@pytest.mark.parametrize(
    ("table", "tamper"),
    [
        pytest.param("approvals", tamper_grant_pending, id="grant-a-pending-approval"),
        pytest.param("approvals", tamper_reset_used, id="reset-a-used-approval"),
        pytest.param("kill_switches", tamper_delete_switch, id="delete-a-kill-switch"),
        pytest.param("kill_switches", tamper_add_switch, id="add-a-kill-switch"),
        pytest.param("forwarder_state", tamper_raise_cursor, id="raise-the-forwarder-cursor"),
    ],
)
def test_an_edited_state_table_changes_nothing_enforced_and_verify_reports_it(
    tmp_path: Path, table: str, tamper: Any
) -> None:
    directory = tmp_path / "gw"
    prepare_dir(directory)
    gw = start_gateway(directory)
    try:
        key, apply_edit, check = tamper(gw)
    finally:
        assert gw.stop() == 0
    assert verify(gw).returncode == 0, "the untouched journal verifies"
    apply_edit()

    for restart in range(2):
        gw = start_gateway(directory)
        try:
            check(gw)
        finally:
            assert gw.stop() == 0
        found = [(e["table"], e["key"]) for e in mismatch_events(gw.journal_path)]
        assert found == [(table, key)], f"journaled exactly once (after restart {restart + 1})"
        assert "contradicts the signed journal" in gw.log()

    result = verify(gw)
    assert result.returncode == 1, result.stdout + result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert [f["code"] for f in findings] == ["state_mismatch"]
    assert table in findings[0]["message"] and key in findings[0]["message"]
