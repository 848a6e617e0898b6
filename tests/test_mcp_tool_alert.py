"""The alert for a changed MCP tool definition, through a real sidecar and a real webhook receiver: it carries
the decision actually taken on the Decide that brought the change (never a made-up one), so the webhook's
``decisions`` filter lets it through, and reason and rule say what happened.
"""

from __future__ import annotations

from pathlib import Path

from agentaudit.v1 import gateway_pb2, types_pb2
from gateway.journal.store import iter_bodies
from tests.conftest import start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.helpers import eventually
from tests.operator_helpers import prepare_dir
from tests.test_alerts import Receiver, receiver  # noqa: F401 - the receiver fixture

# What the MCP proxy sends when a tools/list shows a changed definition (gateway.mcp.proxy._journal_change).
LIST_LABELS = {
    "mcp.server": "tools",
    "mcp.tool": "mutable",
    "mcp.tool_action": "mcp.tools.mutable",
    "mcp.tool_changed": "true",
    "mcp.tool_change_new": "true",
    "mcp.tool_digest": "b" * 64,
    "mcp.tool_pinned_digest": "a" * 64,
}


def test_tool_changed_alert_carries_the_real_decision_and_names_the_tool(
    receiver: Receiver,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    webhook = {"url": f"{receiver.url}/ce", "format": "cloudevents", "reasons": ["tool_definition_changed"]}
    prepare_dir(tmp_path / "gw", extra={"alerts": {"webhooks": [webhook]}})
    gw = start_gateway(tmp_path / "gw")
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            request = decide_request(run_id="run_mcp_alert", action="mcp.tools.tools/list", args={"tool": "mutable"})
            request.labels.update(LIST_LABELS)
            answer: gateway_pb2.DecideResponse = gateway.Decide(request, timeout=10)
        [delivered] = eventually(lambda: receiver.delivered("/ce"), message="the tool_changed alert")
    finally:
        gw.stop()
    # The example policy grants no mcp.* action, so the Decide that carried the change was a stop.
    assert answer.decision == types_pb2.DECISION_STOP
    assert delivered.body["type"] == "dev.agentaudit.decision.stop"
    data = delivered.body["data"]
    assert (data["decision"], data["reason"], data["policy_layer"], data["policy_rule"]) == (
        "stop",
        "tool_definition_changed",
        "mcp",
        "tool_pinning",
    )
    assert data["action"] == "mcp.tools.mutable"
    [changed] = [b for _, b in iter_bodies(gw.journal_path, run_id="run_mcp_alert") if b["kind"] == "tool_changed"]
    assert data["event_id"] == changed["event_id"] and changed["action"] == "mcp.tools.mutable"
