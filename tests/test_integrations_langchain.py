"""The LangChain / LangGraph adapter, end to end: a real ``create_agent`` driven by LangChain's own fake chat model
(scripted tool calls), a real LangGraph checkpointer, against a real ``agentaudit dev`` sidecar. Each test checks
what the agent did (which tools ran, what the model read) against what the journal holds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from agentaudit_client.integrations.langchain import INTERRUPT_KIND, AgentAuditMiddleware
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


class ScriptedChatModel(GenericFakeChatModel):
    """LangChain's fake chat model answering a fixed script; tools are "bound" by being ignored."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self


def script(*turns: AIMessage) -> ScriptedChatModel:
    return ScriptedChatModel(messages=iter([*turns, AIMessage(content="done")]))


def calls(name: str, args: dict[str, Any], count: int = 1) -> AIMessage:
    return AIMessage(
        content="", tool_calls=[{"name": name, "args": args, "id": f"call_{name}_{i}"} for i in range(count)]
    )


class Tools:
    """The seed's tools, counting every real execution."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self._lock = threading.Lock()

    def _mark(self, name: str) -> None:
        with self._lock:
            self.ran.append(name)

    def all(self) -> list[BaseTool]:
        @tool("crm.search")
        def crm_search(query: str) -> str:
            """Searches the CRM."""
            self._mark("crm.search")
            return f"3 customers match {query}"

        @tool("refund.create")
        def refund_create(order_id: str, amount: int) -> dict[str, Any]:
            """Refunds an order."""
            self._mark("refund.create")
            return {"refund_id": "r_1", "order_id": order_id, "amount": amount}

        @tool("crm.lookup")
        def crm_lookup(customer_id: str) -> dict[str, Any]:
            """Looks a customer up."""
            self._mark("crm.lookup")
            return LOOKUP_RESULT

        return [crm_search, refund_create, crm_lookup]


@pytest.fixture
def tools() -> Tools:
    return Tools()


@pytest.fixture
def middleware(gateway_server: RunningGateway) -> Iterator[AgentAuditMiddleware]:
    mw = AgentAuditMiddleware(sidecar=gateway_server.unix_target, tenant_id=TENANT, agent_id=AGENT, actor_id="u_1")
    yield mw
    mw.governor.close()


def tool_messages(messages: Sequence[BaseMessage]) -> list[ToolMessage]:
    return [m for m in messages if isinstance(m, ToolMessage)]


def test_a_crm_search_flood_is_stopped_by_the_tenant_rate_limit_and_the_stopped_calls_never_run(
    gateway_server: RunningGateway, tools: Tools, middleware: AgentAuditMiddleware
) -> None:
    agent = create_agent(
        script(calls("crm.search", {"query": "ann"}, FLOOD_CALLS)), tools.all(), middleware=[middleware]
    )
    result = agent.invoke(
        {"messages": [{"role": "user", "content": "find ann"}]}, {"configurable": {"thread_id": "lc_flood"}}
    )

    answers = tool_messages(result["messages"])
    stopped = [m for m in answers if m.status == "error"]
    assert len(answers) == FLOOD_CALLS
    assert stopped and all("rate_limited_tenant" in str(m.content) for m in stopped)
    journal = events(gateway_server, "lc_flood")
    pre = [e for e in journal if e["kind"] == "pre_exec"]
    post = [e for e in journal if e["kind"] == "post_exec"]
    assert len(pre) == FLOOD_CALLS
    assert {e["reason"] for e in pre if e["decision"] == "stop"} == {"rate_limited_tenant"}
    allowed = [e for e in pre if e["decision"] == "allow"]
    assert len(tools.ran) == len(allowed) == len(post) == FLOOD_CALLS - len(stopped)
    assert {e["pre_event_id"] for e in post} == {e["event_id"] for e in allowed}


def test_a_refund_waits_at_an_interrupt_until_a_human_grants_it_then_runs_exactly_once(
    gateway_server: RunningGateway, tools: Tools, middleware: AgentAuditMiddleware
) -> None:
    agent = create_agent(
        script(calls("refund.create", REFUND_ARGS)), tools.all(), middleware=[middleware], checkpointer=InMemorySaver()
    )
    config: Any = {"configurable": {"thread_id": "lc_refund"}}
    paused = agent.invoke({"messages": [{"role": "user", "content": "refund o_9"}]}, config)

    (pending,) = paused["__interrupt__"]
    assert pending.value["type"] == INTERRUPT_KIND
    assert pending.value["action"] == "refund.create"
    assert tools.ran == []
    assert grant_when_pending(gateway_server, "lc_refund") == pending.value["approval_id"]
    assert tools.ran == []  # granting alone runs nothing: the thread resumes when the app says so

    resumed = agent.invoke(Command(resume={"resumed": True}), config)

    assert tools.ran == ["refund.create"]
    (answer,) = tool_messages(resumed["messages"])
    assert answer.status == "success" and "r_1" in str(answer.content)
    assert kinds(gateway_server, "lc_refund") == [
        ("pre_exec", "refund.create", "approval_required"),
        ("approval_granted", "refund.create", ""),
        ("pre_exec", "refund.create", "allow"),
        ("post_exec", "refund.create", "allow"),
    ]


def test_resuming_before_the_human_answers_runs_nothing_and_says_the_approval_is_pending(
    gateway_server: RunningGateway, tools: Tools, middleware: AgentAuditMiddleware
) -> None:
    agent = create_agent(
        script(calls("refund.create", REFUND_ARGS)), tools.all(), middleware=[middleware], checkpointer=InMemorySaver()
    )
    config: Any = {"configurable": {"thread_id": "lc_early"}}
    agent.invoke({"messages": [{"role": "user", "content": "refund o_9"}]}, config)

    resumed = agent.invoke(Command(resume={"approved": True}), config)  # the app's "yes" is not a human approval

    assert tools.ran == []
    (answer,) = tool_messages(resumed["messages"])
    assert answer.status == "error" and "approval" in str(answer.content)
    first, again = events(gateway_server, "lc_early")
    assert (first["decision"], again["decision"]) == ("approval_required", "approval_required")
    assert again["approval_id"] == first["approval_id"] and again["reason"] == "approval_pending"


def test_an_allowed_lookup_runs_and_its_result_is_recorded(
    gateway_server: RunningGateway, tools: Tools, middleware: AgentAuditMiddleware
) -> None:
    agent = create_agent(script(calls("crm.lookup", LOOKUP_ARGS)), tools.all(), middleware=[middleware])

    async def run() -> dict[str, Any]:  # the async hooks (ainvoke) take the same path
        try:
            return await agent.ainvoke(
                {"messages": [{"role": "user", "content": "look up c_7"}]}, {"configurable": {"thread_id": "lc_lookup"}}
            )
        finally:
            await middleware.governor.aclose()

    result = asyncio.run(run())

    assert tools.ran == ["crm.lookup"]
    (answer,) = tool_messages(result["messages"])
    assert answer.status == "success"
    pre, post = events(gateway_server, "lc_lookup")
    assert (pre["kind"], pre["decision"], pre["action"]) == ("pre_exec", "allow", "crm.lookup")
    assert (post["kind"], post["status"], post["pre_event_id"]) == ("post_exec", "succeeded", pre["event_id"])
    assert post["output"] == LOOKUP_RESULT


def test_an_unreachable_sidecar_fails_closed_and_the_model_reads_why(tools: Tools, tmp_path: Any) -> None:
    middleware = AgentAuditMiddleware(sidecar=f"unix://{tmp_path}/none.sock", tenant_id=TENANT, timeout_s=2)
    agent = create_agent(script(calls("crm.lookup", LOOKUP_ARGS)), tools.all(), middleware=[middleware])

    result = agent.invoke({"messages": [{"role": "user", "content": "look up c_7"}]})

    assert tools.ran == []
    (answer,) = tool_messages(result["messages"])
    assert answer.status == "error" and "could not reach its sidecar" in str(answer.content)
