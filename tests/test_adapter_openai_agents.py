"""The OpenAI Agents SDK adapter, driven by the SDK's own ScriptedModel, against a real `agentaudit dev` sidecar."""

from __future__ import annotations

import asyncio
from typing import Any

from agents import Agent, RunConfig, Runner, function_tool
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call

from agentaudit_client import AsyncGatewayClient
from agentaudit_client.integrations.openai_agents import AgentsGovernor
from tests.conftest import RunningGateway
from tests.framework_helpers import ACTIONS, FLOOD, REFUND, bodies, grant_when_pending, tape


def make_agent(model: ScriptedModel, ran: list[tuple[str, dict[str, Any]]]) -> Agent[Any]:
    @function_tool
    def crm_search(query: str) -> dict[str, Any]:
        """Searches the CRM."""
        ran.append(("crm_search", {"query": query}))
        return {"hits": 1}

    @function_tool
    def crm_lookup(customer_id: str) -> dict[str, Any]:
        """Looks a customer up."""
        ran.append(("crm_lookup", {"customer_id": customer_id}))
        return {"customer_id": customer_id, "tier": "gold"}

    @function_tool
    def refund_create(order_id: str, amount: int) -> dict[str, Any]:
        """Creates a refund."""
        ran.append(("refund_create", {"order_id": order_id, "amount": amount}))
        return {"refund_id": "r_1"}

    return Agent(name="support", model=model, tools=[crm_search, crm_lookup, refund_create])


def governor(client: AsyncGatewayClient, tenant: str = "t_42") -> AgentsGovernor:
    return AgentsGovernor(client, tenant, "support-agent", ("user", "u_1"), actions=ACTIONS, approval_wait_s=20)


def test_a_crm_search_flood_is_stopped_with_rate_limited_tenant(gateway_server: RunningGateway) -> None:
    ran: list[tuple[str, dict[str, Any]]] = []
    calls = [function_call("crm_search", {"query": f"q{i}"}, call_id=f"c{i}") for i in range(FLOOD)]
    model = ScriptedModel([ModelStep(output=calls), ModelStep(output=[assistant_message("done")])])

    async def scenario() -> Any:
        async with AsyncGatewayClient(gateway_server.unix_target) as client:
            agent = governor(client, "t_flood").govern(make_agent(model, ran))
            return await Runner.run(agent, "search a lot", run_config=RunConfig(group_id="run_oa_flood"))

    result = asyncio.run(scenario())
    pre = [b for b in bodies(gateway_server.journal_path, "pre_exec") if b["run_id"] == "run_oa_flood"]
    allowed = [b for b in pre if b["decision"] == "allow"]
    stopped = [b for b in pre if b["decision"] == "stop"]
    assert len(pre) == FLOOD
    assert stopped and {b["reason"] for b in stopped} == {"rate_limited_tenant"}
    assert len(ran) == len(allowed)  # the tool never ran on stop
    posts = {b["pre_event_id"] for b in bodies(gateway_server.journal_path, "post_exec")}
    assert posts == {b["event_id"] for b in allowed}
    tool_outputs = [str(item.output) for item in result.new_items if item.type == "tool_call_output_item"]
    assert sum("rate_limited_tenant" in out for out in tool_outputs) == len(stopped)  # the model read why


def test_a_refund_waits_for_a_human_then_runs_exactly_once(gateway_server: RunningGateway) -> None:
    ran: list[tuple[str, dict[str, Any]]] = []
    model = ScriptedModel(
        [
            ModelStep(output=[function_call("refund_create", REFUND, call_id="c_refund")]),
            ModelStep(output=[assistant_message("refunded")]),
        ]
    )

    async def scenario() -> Any:
        async with AsyncGatewayClient(gateway_server.unix_target, timeout=30) as client:
            gov = governor(client)
            agent = gov.govern(make_agent(model, ran))
            config = RunConfig(group_id="run_oa_refund")
            result = await Runner.run(agent, "refund o_9", run_config=config)
            assert result.interruptions, "the run should stop for the approval"
            assert ran == []  # nothing ran before a human answered
            human = grant_when_pending(gateway_server, "run_oa_refund")
            state = await gov.resolve_interruptions(result)
            human.join(5)
            return await Runner.run(agent, state, run_config=config)

    result = asyncio.run(scenario())
    assert result.final_output == "refunded"
    assert ran == [("refund_create", REFUND)]
    assert tape(gateway_server.journal_path, "refund.create") == [
        ("pre_exec", "refund.create", "approval_required"),
        ("approval_granted", "refund.create", ""),
        ("pre_exec", "refund.create", "allow"),
        ("post_exec", "refund.create", "allow"),
    ]


def test_a_crm_lookup_is_allowed_and_its_result_recorded(gateway_server: RunningGateway) -> None:
    ran: list[tuple[str, dict[str, Any]]] = []
    model = ScriptedModel(
        [
            ModelStep(output=[function_call("crm_lookup", {"customer_id": "c_7"}, call_id="c_look")]),
            ModelStep(output=[assistant_message("gold")]),
        ]
    )

    async def scenario() -> Any:
        async with AsyncGatewayClient(gateway_server.unix_target) as client:
            agent = governor(client).govern(make_agent(model, ran))
            return await Runner.run(agent, "who is c_7", run_config=RunConfig(group_id="run_oa_lookup"))

    result = asyncio.run(scenario())
    assert result.final_output == "gold"
    assert ran == [("crm_lookup", {"customer_id": "c_7"})]
    (pre,) = bodies(gateway_server.journal_path, "pre_exec")
    (post,) = bodies(gateway_server.journal_path, "post_exec")
    assert (pre["action"], pre["decision"], pre["run_id"]) == ("crm.lookup", "allow", "run_oa_lookup")
    assert (post["pre_event_id"], post["status"]) == (pre["event_id"], "succeeded")
    assert post["output"] == {"customer_id": "c_7", "tier": "gold"}
