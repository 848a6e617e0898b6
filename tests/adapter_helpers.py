"""What the framework-adapter tests share: the seed scenarios' tool calls, a human approver, the journal of a run."""

from __future__ import annotations

from typing import Any

from agentaudit.v1 import operator_pb2
from gateway.journal.store import iter_bodies
from tests.conftest import RunningGateway
from tests.helpers import eventually
from tests.operator_helpers import auth, operator_stub

TENANT = "t_42"
AGENT = "support-agent"
FLOOD_CALLS = 40
"""More crm.search calls in one model turn than the example policy's burst (20 per tenant) lets through."""
REFUND_ARGS: dict[str, Any] = {"order_id": "o_9", "amount": 250}
LOOKUP_ARGS: dict[str, Any] = {"customer_id": "c_7"}
LOOKUP_RESULT: dict[str, Any] = {"customer_id": "c_7", "name": "Ann", "tier": "gold"}


def events(gw: RunningGateway, run_id: str) -> list[dict[str, Any]]:
    """The signed bodies journaled for ``run_id``, in seq order."""
    return [body for _, body in iter_bodies(gw.journal_path, run_id=run_id)]


def kinds(gw: RunningGateway, run_id: str) -> list[tuple[str, str, str]]:
    """(kind, action, decision) of each of the run's events."""
    return [(e["kind"], e.get("action", ""), e.get("decision", "")) for e in events(gw, run_id)]


def grant_when_pending(gw: RunningGateway, run_id: str) -> str:
    """A human at the operator API: waits until the run's approval is listed, grants it, returns its id."""
    channel, op = operator_stub(gw.operator_target)
    with channel:

        def pending() -> str:
            listed = op.ListApprovals(operator_pb2.ListApprovalsRequest(), metadata=auth(gw.operator_token))
            return next((a.approval_id for a in listed.approvals if a.run_id == run_id), "")

        approval_id = eventually(pending, message=f"a pending approval for {run_id}")
        request = operator_pb2.GrantApprovalRequest(approval_id=approval_id, comment="checked the order")
        op.GrantApproval(request, metadata=auth(gw.operator_token), timeout=10)
    return approval_id
