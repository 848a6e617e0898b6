"""LangChain 1.x / LangGraph adapter: an agent middleware that decides every tool call before it runs.

::

    from langchain.agents import create_agent
    from agentaudit_client.integrations.langchain import AgentAuditMiddleware

    agent = create_agent(model, tools, middleware=[AgentAuditMiddleware(tenant_id="t_42", agent_id="support-agent")],
                         checkpointer=InMemorySaver())
    agent.invoke({"messages": [...]}, {"configurable": {"thread_id": "run_1"}})

How a tool call is governed (the same hooks LangChain's own human-in-the-loop middleware uses):

1. ``after_model`` (its own graph node, checkpointed when it ends) decides each tool call of the model's answer
   and keeps the decisions in the agent state. Deciding there, not in the tool node, is what makes an approval
   resumable: LangGraph re-runs an interrupted node from its start, and a Decide inside it would open a second
   approval on every resume.
2. ``wrap_tool_call`` / ``awrap_tool_call`` (outermost when listed first) takes the call's decision (deciding
   again if the call's name or args changed since, or if it never went through ``after_model``):
   ``allow`` runs the tool and reports its result (a ``ToolMessage`` with ``status="error"`` is reported
   failed); ``stop`` answers an error ``ToolMessage`` carrying the reason, and the tool never runs;
   ``approval_required`` calls LangGraph's ``interrupt`` with the approval (the app sees ``__interrupt__``).
   The app resumes with ``Command(resume=...)`` once a human has approved through the operator API; the resume
   value is not an approval (only the sidecar's record of a human is): the call is decided again with the
   approval id, and runs only if the sidecar allows it. With ``approvals="wait"`` (no checkpointer) the call
   blocks in WaitApproval up to the settings' bound instead.

Identity: the run id is the LangGraph ``thread_id`` (so a resumed thread stays one run), else one run per
middleware instance; ``AGENTAUDIT_RUN_ID`` overrides both. Tenant, agent and actor come from the settings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain.agents.middleware.types import PrivateStateAttr
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.config import get_config
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt

from ..models import DecideResult
from ._common import (
    ActionNames,
    AdapterSettings,
    ToolCallGovernor,
    action_name,
    blocked_text,
    tool_args,
    tool_output,
)

FRAMEWORK = "langchain"
INTERRUPT_KIND = "agentaudit_approval"
"""``type`` of the interrupt value an approval raises, so an app can tell it from its own interrupts."""

ApprovalMode = Literal["interrupt", "wait"]
_Result = ToolMessage | Command[Any]


class AgentAuditState(AgentState[Any]):
    """The agent state plus the decisions ``after_model`` made for the pending tool calls (private)."""

    agentaudit_decisions: NotRequired[Annotated[dict[str, dict[str, Any]], PrivateStateAttr]]


@dataclasses.dataclass(frozen=True)
class _Call:
    """One tool call as the sidecar sees it."""

    id: str
    run_id: str
    action: str
    args: dict[str, Any]


class AgentAuditMiddleware(AgentMiddleware[AgentAuditState, Any, Any]):
    """Decides each tool call through the agentaudit sidecar, runs it only if allowed, reports its result.

    Args:
        settings: Where the sidecar is and who acts; default ``AdapterSettings.from_env(**identity)``.
        actions: Tool name → action name (a mapping or a function); default the tool's name.
        approvals: ``"interrupt"`` (LangGraph ``interrupt``; needs a checkpointer) or ``"wait"`` (WaitApproval,
            bounded by ``settings.approval_wait_s``).
        **identity: ``AdapterSettings`` fields (``tenant_id``, ``agent_id``, ``actor_id``, ``sidecar``, ...)
            when ``settings`` is not given.
    """

    state_schema = AgentAuditState

    def __init__(
        self,
        settings: AdapterSettings | None = None,
        *,
        actions: ActionNames = None,
        approvals: ApprovalMode = "interrupt",
        **identity: Any,
    ) -> None:
        super().__init__()
        self.settings = settings if settings is not None else AdapterSettings.from_env(**identity)
        self.governor = ToolCallGovernor(self.settings)
        self.actions = actions
        self.approvals = approvals
        # The run when the graph has no thread: one per middleware (so per agent), fixed unless the env sets one.
        self._default_run_id = self.settings.run_id_for("run_" + uuid.uuid4().hex)

    # --- identity --------------------------------------------------------------------------------------------

    def _run_id(self, config: Mapping[str, Any] | None) -> str:
        configurable = (config or {}).get("configurable") or {}
        thread_id = configurable.get("thread_id")
        return self.settings.run_id_for(thread_id) if thread_id else self._default_run_id

    def _call(self, tool_call: Mapping[str, Any], run_id: str) -> _Call:
        return _Call(
            str(tool_call.get("id") or ""),
            run_id,
            action_name(tool_call["name"], self.actions),
            tool_args(tool_call.get("args")),
        )

    def _pending_calls(self, state: Mapping[str, Any]) -> list[_Call]:
        messages = state.get("messages") or []
        last = messages[-1] if messages else None
        if not isinstance(last, AIMessage) or not last.tool_calls:
            return []
        run_id = self._run_id(get_config())
        return [self._call(call, run_id) for call in last.tool_calls]

    @staticmethod
    def _stored(request: ToolCallRequest, call: _Call) -> DecideResult | None:
        """The decision ``after_model`` made for this very call (same action and args), if any."""
        state = request.state if isinstance(request.state, Mapping) else {}
        stored = (state.get("agentaudit_decisions") or {}).get(call.id)
        if not stored or stored.get("action") != call.action or stored.get("args") != call.args:
            return None
        return DecideResult(**stored["decision"])

    @staticmethod
    def _state_update(decided: list[tuple[_Call, DecideResult]]) -> dict[str, Any] | None:
        if not decided:
            return None
        return {
            "agentaudit_decisions": {
                call.id: {"action": call.action, "args": call.args, "decision": _fields(decision)}
                for call, decision in decided
            }
        }

    # --- after_model: decide, checkpointed ---------------------------------------------------------------------

    def after_model(self, state: AgentAuditState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Decides the model's tool calls (recorded before any runs) and keeps the answers in the state."""
        calls = self._pending_calls(state)
        return self._state_update([(call, self.governor.decide(call.run_id, call.action, call.args)) for call in calls])

    async def aafter_model(self, state: AgentAuditState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """``after_model``, awaited."""
        calls = self._pending_calls(state)
        decided = [(call, await self.governor.adecide(call.run_id, call.action, call.args)) for call in calls]
        return self._state_update(decided)

    # --- wrap_tool_call: enforce, report ---------------------------------------------------------------------

    def _interrupt_value(self, call: _Call, decision: DecideResult) -> dict[str, Any]:
        return {
            "type": INTERRUPT_KIND,
            "approval_id": decision.approval_id,
            "action": call.action,
            "tool_call_id": call.id,
            "event_id": decision.event_id,
            "reason": decision.reason,
            "message": blocked_text(decision, call.action),
        }

    def wrap_tool_call(self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], _Result]) -> _Result:
        """Runs the tool only if the sidecar allows it; reports what it returned."""
        call = self._call(request.tool_call, self._run_id(request.runtime.config if request.runtime else None))
        decision = self._stored(request, call) or self.governor.decide(call.run_id, call.action, call.args)
        if decision.decision == "approval_required":
            if self.approvals == "interrupt":
                interrupt(self._interrupt_value(call, decision))  # raises until the app resumes the thread
                decision = self.governor.decide(call.run_id, call.action, call.args, approval_id=decision.approval_id)
            else:
                decision = self.governor.wait_and_resume(call.run_id, call.action, call.args, decision)
        if not decision.allowed:
            return _blocked_message(request, call, decision)
        started = time.monotonic()
        try:
            result = handler(request)
        except BaseException as exc:
            self.governor.report(decision, started, error=exc)
            raise
        output, error = _outcome(result)
        self.governor.report(decision, started, output=output, error=error)
        return result

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[_Result]]
    ) -> _Result:
        """``wrap_tool_call``, awaited."""
        call = self._call(request.tool_call, self._run_id(request.runtime.config if request.runtime else None))
        decision = self._stored(request, call) or await self.governor.adecide(call.run_id, call.action, call.args)
        if decision.decision == "approval_required":
            if self.approvals == "interrupt":
                interrupt(self._interrupt_value(call, decision))
                decision = await self.governor.adecide(
                    call.run_id, call.action, call.args, approval_id=decision.approval_id
                )
            else:
                decision = await self.governor.await_and_resume(call.run_id, call.action, call.args, decision)
        if not decision.allowed:
            return _blocked_message(request, call, decision)
        started = time.monotonic()
        try:
            result = await handler(request)
        except BaseException as exc:
            await self.governor.areport(decision, started, error=exc)
            raise
        output, error = _outcome(result)
        await self.governor.areport(decision, started, output=output, error=error)
        return result


_DECISION_FIELDS = tuple(f.name for f in dataclasses.fields(DecideResult))


def _fields(decision: DecideResult) -> dict[str, Any]:
    """``dataclasses.asdict`` of a decision, without its deep copy (every field is a str, a float or None)."""
    return {name: getattr(decision, name) for name in _DECISION_FIELDS}


def _blocked_message(request: ToolCallRequest, call: _Call, decision: DecideResult) -> ToolMessage:
    """LangChain's native failed tool answer: the model reads the reason; the tool did not run."""
    return ToolMessage(
        content=blocked_text(decision, call.action),
        tool_call_id=call.id,
        name=request.tool_call["name"],
        status="error",
        artifact={"agentaudit": _fields(decision)},
    )


def _outcome(result: _Result) -> tuple[dict[str, Any] | None, str | None]:
    """The output to report for a tool's answer, and its error text when the tool answered a failure."""
    if isinstance(result, ToolMessage):
        content = result.content if isinstance(result.content, str) else tool_output(result.content)
        if result.status == "error":
            return None, content if isinstance(content, str) else str(content)
        return tool_output(_parsed(content)), None
    return None, None  # a Command updates the graph; there is no output to record


def _parsed(content: Any) -> Any:
    """A tool's JSON answer as data again (LangChain serialises a returned dict into the message's text)."""
    if isinstance(content, str) and content[:1] in ("{", "["):
        try:
            return json.loads(content)
        except ValueError:
            return content
    return content


def install(settings: AdapterSettings) -> bool:
    """Makes ``langchain.agents.create_agent`` add an ``AgentAuditMiddleware`` (outermost) to every agent.

    Agents created before this call, or with an ``AgentAuditMiddleware`` of their own, are left as they are.
    Returns False when already installed.
    """
    from langchain import agents  # noqa: PLC0415 - the module whose attribute is patched

    original = agents.create_agent
    if getattr(original, "__agentaudit__", False):
        return False

    @functools.wraps(original)
    def create_agent(*args: Any, middleware: Any = (), **kwargs: Any) -> Any:
        chain = list(middleware or ())
        if not any(isinstance(m, AgentAuditMiddleware) for m in chain):
            chain.insert(0, AgentAuditMiddleware(settings))
        return original(*args, middleware=chain, **kwargs)

    create_agent.__agentaudit__ = True  # type: ignore[attr-defined]
    create_agent.__wrapped_original__ = original  # type: ignore[attr-defined]
    agents.create_agent = create_agent
    return True


def uninstall() -> None:
    """Restores the original ``create_agent``."""
    from langchain import agents  # noqa: PLC0415

    original = getattr(agents.create_agent, "__wrapped_original__", None)
    if original is not None:
        agents.create_agent = original
