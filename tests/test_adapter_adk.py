"""The Google ADK plugin, driven by a scripted ``BaseLlm``, against a real `agentaudit dev` sidecar."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.apps import App
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.genai import types

from agentaudit_client import AsyncGatewayClient
from agentaudit_client.integrations.adk import AgentAuditPlugin
from tests.conftest import RunningGateway
from tests.framework_helpers import ACTIONS, FLOOD, REFUND, bodies, grant_when_pending, tape


class ScriptedLlm(BaseLlm):
    """A model that answers each turn from a script: a list of function calls, then a text."""

    script: list[list[types.Part]]
    seen: list[LlmRequest] = []

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self.seen.append(llm_request)
        parts = self.script.pop(0) if self.script else [types.Part(text="done")]
        yield LlmResponse(content=types.Content(role="model", parts=parts))


def call(name: str, args: dict[str, Any], call_id: str) -> types.Part:
    return types.Part(function_call=types.FunctionCall(name=name, args=args, id=call_id))


def run_agent(gw: RunningGateway, script: list[list[types.Part]], session: str, tenant: str = "t_42") -> list[Any]:
    """Runs one user turn of an ADK agent with the plugin; returns what the tools ran and the tool responses."""
    ran: list[tuple[str, dict[str, Any]]] = []

    def crm_search(query: str) -> dict[str, Any]:
        """Searches the CRM."""
        ran.append(("crm_search", {"query": query}))
        return {"hits": 1}

    def crm_lookup(customer_id: str) -> dict[str, Any]:
        """Looks a customer up."""
        ran.append(("crm_lookup", {"customer_id": customer_id}))
        return {"customer_id": customer_id, "tier": "gold"}

    def refund_create(order_id: str, amount: int) -> dict[str, Any]:
        """Creates a refund."""
        ran.append(("refund_create", {"order_id": order_id, "amount": amount}))
        return {"refund_id": "r_1"}

    async def scenario() -> list[Any]:
        async with AsyncGatewayClient(gw.unix_target, timeout=30) as client:
            plugin = AgentAuditPlugin(
                client, tenant_id=tenant, agent_id="support-agent", actions=ACTIONS, approval_wait_s=20
            )
            agent = LlmAgent(
                name="support",
                model=ScriptedLlm(model="scripted", script=script),
                tools=[crm_search, crm_lookup, refund_create],
            )
            runner = InMemoryRunner(app=App(name="support", root_agent=agent, plugins=[plugin]))
            await runner.session_service.create_session(app_name="support", user_id="u_1", session_id=session)
            responses = []
            message = types.Content(role="user", parts=[types.Part(text="go")])
            async for event in runner.run_async(user_id="u_1", session_id=session, new_message=message):
                responses += [r.response for r in event.get_function_responses()]
            return responses

    return [ran, asyncio.run(scenario())]


def test_a_crm_search_flood_is_stopped_with_rate_limited_tenant(gateway_server: RunningGateway) -> None:
    script = [[call("crm_search", {"query": f"q{i}"}, f"c{i}") for i in range(FLOOD)]]
    ran, responses = run_agent(gateway_server, script, "adk_flood", tenant="t_flood")
    pre = [b for b in bodies(gateway_server.journal_path, "pre_exec") if b["run_id"] == "adk_flood"]
    allowed = [b for b in pre if b["decision"] == "allow"]
    stopped = [b for b in pre if b["decision"] == "stop"]
    assert len(pre) == FLOOD
    assert stopped and {b["reason"] for b in stopped} == {"rate_limited_tenant"}
    assert len(ran) == len(allowed)  # the tool never ran on stop
    assert {b["pre_event_id"] for b in bodies(gateway_server.journal_path, "post_exec")} == {
        b["event_id"] for b in allowed
    }
    assert sum(r.get("reason") == "rate_limited_tenant" for r in responses) == len(stopped)  # the model read why


def test_a_refund_waits_for_a_human_then_runs_exactly_once(gateway_server: RunningGateway) -> None:
    human = grant_when_pending(gateway_server, "adk_refund")
    ran, _ = run_agent(gateway_server, [[call("refund_create", REFUND, "c_refund")]], "adk_refund")
    human.join(5)
    assert ran == [("refund_create", REFUND)]
    assert tape(gateway_server.journal_path, "refund.create") == [
        ("pre_exec", "refund.create", "approval_required"),
        ("approval_granted", "refund.create", ""),
        ("pre_exec", "refund.create", "allow"),
        ("post_exec", "refund.create", "allow"),
    ]


def test_a_denied_refund_never_runs(gateway_server: RunningGateway) -> None:
    human = grant_when_pending(gateway_server, "adk_denied", grant=False)
    ran, responses = run_agent(gateway_server, [[call("refund_create", REFUND, "c_refund")]], "adk_denied")
    human.join(5)
    assert ran == []
    assert [r.get("reason") for r in responses] == ["approval_denied"]


def test_a_crm_lookup_is_allowed_and_its_result_recorded(gateway_server: RunningGateway) -> None:
    ran, responses = run_agent(gateway_server, [[call("crm_lookup", {"customer_id": "c_7"}, "c_look")]], "adk_look")
    assert ran == [("crm_lookup", {"customer_id": "c_7"})]
    assert responses == [{"customer_id": "c_7", "tier": "gold"}]
    (pre,) = bodies(gateway_server.journal_path, "pre_exec")
    (post,) = bodies(gateway_server.journal_path, "post_exec")
    assert (pre["action"], pre["decision"], pre["run_id"]) == ("crm.lookup", "allow", "adk_look")
    assert pre["actor"] == {"type": "user", "id": "u_1"}
    assert (post["pre_event_id"], post["status"], post["output"]) == (pre["event_id"], "succeeded", responses[0])
