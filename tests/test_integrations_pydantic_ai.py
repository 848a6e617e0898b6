"""The Pydantic AI adapter, end to end: a real ``Agent`` driven by Pydantic AI's own ``FunctionModel`` (scripted
tool calls), its deferred-tool approval flow, against a real ``agentaudit dev`` sidecar. Each test checks what the
agent did (which tools ran, what the model read) against what the journal holds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentaudit_client.integrations.pydantic_ai import APPROVAL_ID_KEY, AgentAudit
from tests.adapter_helpers import (
    AGENT,
    FLOOD_CALLS,
    LOOKUP_ARGS,
    LOOKUP_RESULT,
    REFUND_ARGS,
    TENANT,
    events,
    grant_when_pending,
    kinds,
)
from tests.conftest import RunningGateway


def scripted(name: str, args: dict[str, Any], count: int = 1) -> tuple[FunctionModel, list[list[str]]]:
    """A model that calls ``name`` ``count`` times in its first turn, then answers with what the tools said."""
    seen: list[list[str]] = []

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        returns = [p for p in last.parts if not isinstance(p, TextPart)] if isinstance(last, ModelRequest) else []
        answered = [p for p in returns if getattr(p, "part_kind", "") in ("tool-return", "retry-prompt")]
        if answered:
            seen.append([str(getattr(p, "content", "")) for p in answered])
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(
            parts=[ToolCallPart(name, dict(args), tool_call_id=f"call_{name}_{i}") for i in range(count)]
        )

    return FunctionModel(respond), seen


class Tools:
    """The seed's tools, counting every real execution."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self._lock = threading.Lock()

    def register(self, agent: Agent[None, Any]) -> None:
        def mark(name: str) -> None:
            with self._lock:
                self.ran.append(name)

        @agent.tool_plain(name="crm.search")
        def crm_search(query: str) -> str:
            """Searches the CRM."""
            mark("crm.search")
            return f"3 customers match {query}"

        @agent.tool_plain(name="refund.create")
        def refund_create(order_id: str, amount: int) -> dict[str, Any]:
            """Refunds an order."""
            mark("refund.create")
            return {"refund_id": "r_1", "order_id": order_id, "amount": amount}

        @agent.tool_plain(name="crm.lookup")
        def crm_lookup(customer_id: str) -> dict[str, Any]:
            """Looks a customer up."""
            mark("crm.lookup")
            return LOOKUP_RESULT


@pytest.fixture
def tools() -> Tools:
    return Tools()


@pytest.fixture
def audit(gateway_server: RunningGateway) -> Iterator[AgentAudit[None]]:
    capability: AgentAudit[None] = AgentAudit(
        sidecar=gateway_server.unix_target, tenant_id=TENANT, agent_id=AGENT, actor_id="u_1"
    )
    yield capability
    capability.governor.close()


def agent_for(model: FunctionModel, tools: Tools, audit: AgentAudit[None]) -> Agent[None, Any]:
    agent: Agent[None, Any] = Agent(model, output_type=[str, DeferredToolRequests], capabilities=[audit])
    tools.register(agent)
    return agent


def run(coro: Any, audit: AgentAudit[None]) -> Any:
    async def main() -> Any:
        try:
            return await coro
        finally:
            await audit.governor.aclose()

    return asyncio.run(main())


def test_a_crm_search_flood_is_stopped_by_the_tenant_rate_limit_and_the_stopped_calls_never_run(
    gateway_server: RunningGateway, tools: Tools, audit: AgentAudit[None]
) -> None:
    model, seen = scripted("crm.search", {"query": "ann"}, FLOOD_CALLS)
    agent = agent_for(model, tools, audit)

    result = run(agent.run("find ann", conversation_id="pa_flood"), audit)

    assert result.output == "done"
    (answers,) = seen
    stopped = [a for a in answers if "rate_limited_tenant" in a]
    assert len(answers) == FLOOD_CALLS and stopped
    journal = events(gateway_server, "pa_flood")
    pre = [e for e in journal if e["kind"] == "pre_exec"]
    post = [e for e in journal if e["kind"] == "post_exec"]
    assert len(pre) == FLOOD_CALLS
    assert {e["reason"] for e in pre if e["decision"] == "stop"} == {"rate_limited_tenant"}
    allowed = [e for e in pre if e["decision"] == "allow"]
    assert len(tools.ran) == len(allowed) == len(post) == FLOOD_CALLS - len(stopped)
    assert {e["pre_event_id"] for e in post} == {e["event_id"] for e in allowed}


def test_a_refund_is_deferred_until_a_human_grants_it_then_runs_exactly_once(
    gateway_server: RunningGateway, tools: Tools, audit: AgentAudit[None]
) -> None:
    model, _ = scripted("refund.create", REFUND_ARGS)
    agent = agent_for(model, tools, audit)

    async def scenario() -> tuple[Any, Any]:
        first = await agent.run("refund o_9", conversation_id="pa_refund")
        assert isinstance(first.output, DeferredToolRequests)
        assert tools.ran == []
        (call,) = first.output.approvals
        approval_id = await asyncio.to_thread(grant_when_pending, gateway_server, "pa_refund")
        assert first.output.metadata[call.tool_call_id][APPROVAL_ID_KEY] == approval_id
        assert tools.ran == []  # granting alone runs nothing: the app resumes the run
        resumed = await agent.run(
            message_history=first.all_messages(),
            deferred_tool_results=DeferredToolResults(approvals={call.tool_call_id: True}),
        )
        return first, resumed

    _, resumed = run(scenario(), audit)

    assert resumed.output == "done"
    assert tools.ran == ["refund.create"]
    assert kinds(gateway_server, "pa_refund") == [
        ("pre_exec", "refund.create", "approval_required"),
        ("approval_granted", "refund.create", ""),
        ("pre_exec", "refund.create", "allow"),
        ("post_exec", "refund.create", "allow"),
    ]


def test_marking_a_call_approved_before_the_human_answers_runs_nothing(
    gateway_server: RunningGateway, tools: Tools, audit: AgentAudit[None]
) -> None:
    model, seen = scripted("refund.create", REFUND_ARGS)
    agent = agent_for(model, tools, audit)

    async def scenario() -> Any:
        first = await agent.run("refund o_9", conversation_id="pa_early")
        (call,) = first.output.approvals
        return await agent.run(  # the app's "approved" is not a human approval
            message_history=first.all_messages(),
            deferred_tool_results=DeferredToolResults(approvals={call.tool_call_id: True}),
        )

    run(scenario(), audit)

    assert tools.ran == []
    assert "approval" in seen[-1][0]
    first, again = events(gateway_server, "pa_early")
    assert again["approval_id"] == first["approval_id"] and again["reason"] == "approval_pending"


def test_an_allowed_lookup_runs_and_its_result_is_recorded(
    gateway_server: RunningGateway, tools: Tools, audit: AgentAudit[None]
) -> None:
    model, _ = scripted("crm.lookup", LOOKUP_ARGS)
    agent = agent_for(model, tools, audit)

    result = run(agent.run("look up c_7", conversation_id="pa_lookup"), audit)

    assert result.output == "done"
    assert tools.ran == ["crm.lookup"]
    pre, post = events(gateway_server, "pa_lookup")
    assert (pre["kind"], pre["decision"], pre["action"]) == ("pre_exec", "allow", "crm.lookup")
    assert (post["kind"], post["status"], post["pre_event_id"]) == ("post_exec", "succeeded", pre["event_id"])
    assert post["output"] == LOOKUP_RESULT


def test_an_unreachable_sidecar_fails_closed_and_the_model_reads_why(tools: Tools, tmp_path: Any) -> None:
    audit: AgentAudit[None] = AgentAudit(sidecar=f"unix://{tmp_path}/none.sock", tenant_id=TENANT, timeout_s=2)
    model, seen = scripted("crm.lookup", LOOKUP_ARGS)
    agent = agent_for(model, tools, audit)

    run(agent.run("look up c_7"), audit)

    assert tools.ran == []
    assert "could not reach its sidecar" in seen[-1][0]
