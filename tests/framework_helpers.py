"""Helpers the OpenAI Agents, ADK, Claude Agent SDK and hook tests share: a human approving, the journal tape."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from agentaudit.v1 import operator_pb2
from gateway.journal.store import iter_bodies
from tests.conftest import RunningGateway
from tests.operator_helpers import auth, operator_stub

ACTIONS = {"crm_search": "crm.search", "crm_lookup": "crm.lookup", "refund_create": "refund.create"}
"""Framework tool names (no dots allowed) to the example policy's action names."""

REFUND = {"order_id": "o_9", "amount": 250}
"""A refund above the example policy's 100 threshold: approval_required."""

FLOOD = 25
"""crm.search calls in one burst: more than the example policy's burst of 20 per tenant."""


def grant_when_pending(gw: RunningGateway, run_id: str = "", *, grant: bool = True) -> threading.Thread:
    """A human at the operator API: waits for an approval (of ``run_id``, or any), then grants or denies it."""

    def act() -> None:
        channel, op = operator_stub(gw.operator_target)
        with channel:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                listed = op.ListApprovals(operator_pb2.ListApprovalsRequest(), metadata=auth(gw.operator_token))
                mine = [a for a in listed.approvals if not run_id or a.run_id == run_id]
                if mine:
                    if grant:
                        op.GrantApproval(
                            operator_pb2.GrantApprovalRequest(approval_id=mine[0].approval_id, comment="ok"),
                            metadata=auth(gw.operator_token),
                            timeout=10,
                        )
                    else:
                        op.DenyApproval(
                            operator_pb2.DenyApprovalRequest(approval_id=mine[0].approval_id, comment="no"),
                            metadata=auth(gw.operator_token),
                            timeout=10,
                        )
                    return
                time.sleep(0.05)
            raise AssertionError("no approval was ever listed")

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def tape(journal: Path, action: str | None = None) -> list[tuple[str, str, str]]:
    """(kind, action, decision) of every tool-call event, in journal order, optionally of one action only."""
    rows = []
    for _, body in iter_bodies(journal):
        if body["kind"] not in ("pre_exec", "post_exec", "approval_granted", "approval_denied", "violation"):
            continue
        name = str(body.get("action", ""))
        if action is None or name == action or body["kind"].startswith("approval"):
            rows.append((body["kind"], name, body.get("decision", "")))
    return rows


def bodies(journal: Path, kind: str) -> list[dict[str, Any]]:
    """Every body of one kind, in journal order."""
    return [body for _, body in iter_bodies(journal, kind=kind)]
