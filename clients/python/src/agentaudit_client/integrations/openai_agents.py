"""OpenAI Agents SDK: a tool input guardrail decides, ``needs_approval`` interrupts, an output guardrail reports.

::

    from agents import Agent, Runner
    from agentaudit_client import AsyncGatewayClient
    from agentaudit_client.integrations.openai_agents import AgentsGovernor

    governor = AgentsGovernor(AsyncGatewayClient(sidecar), tenant_id="t_42", agent_id="support-agent")
    agent = governor.govern(Agent(name="support", tools=[search, refund]))
    result = await Runner.run(agent, "refund order o_9")
    while result.interruptions:                       # approvals: a human answers through agentaudit
        result = await Runner.run(agent, await governor.resolve_interruptions(result))

``govern`` adds, to every function tool of the agent (in place):

1. ``needs_approval``: decides the call (the pre-event is journaled here, before anything runs). On
   ``approval_required`` the run stops with an interruption, the SDK's own approval primitive.
2. a tool input guardrail, run by the SDK just before the tool: allow lets the tool run; ``stop`` answers with
   ``reject_content``, so the tool is skipped and the model reads the reason. After an approval it decides again
   with the approval id, so the sidecar journals the resume and the tool runs only if it then allows.
3. a tool output guardrail: reports the tool's output against the pre-event, and passes it on unchanged.

``RunHooks.on_tool_start`` is not used: it runs concurrently with the tool and cannot stop it. The run id is the
trace's ``group_id`` (``RunConfig(group_id=...)``, the SDK's conversation id) when set, else its ``trace_id``;
a call keeps the run id it was first decided under across an interruption and resume.

Requires the ``openai-agents`` extra (``pip install 'agentaudit-client[openai-agents]'``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents import Agent, FunctionTool, RunContextWrapper, RunResult, RunState
from agents.tool_guardrails import (
    ToolGuardrailFunctionOutput,
    ToolInputGuardrail,
    ToolInputGuardrailData,
    ToolOutputGuardrail,
    ToolOutputGuardrailData,
)
from agents.tracing import get_current_trace

from ..models import DecideResult
from ._hooks_common import DEFAULT_APPROVAL_WAIT_S, ToolCallGovernor, blocked_message

__all__ = ["AgentsGovernor"]

NeedsApproval = bool | Callable[[RunContextWrapper[Any], dict[str, Any], str], Awaitable[bool]]


@dataclass
class _Decided:
    decision: DecideResult
    run_id: str
    args: dict[str, Any]


@dataclass
class AgentsGovernor(ToolCallGovernor):
    """Governs the function tools of OpenAI Agents SDK agents (see the module docstring).

    Args:
        approval_wait_s: How long ``resolve_interruptions`` waits for a human per interruption.
    """

    approval_wait_s: float = DEFAULT_APPROVAL_WAIT_S
    _decided: dict[str, _Decided] = field(default_factory=dict, repr=False)

    def govern(self, agent: Agent[Any]) -> Agent[Any]:
        """Governs every function tool of ``agent`` (in place) and returns it."""
        for tool in agent.tools:
            if isinstance(tool, FunctionTool):
                self.govern_tool(tool)
        return agent

    def govern_tool(self, tool: FunctionTool) -> FunctionTool:
        """Adds the approval check and the two guardrails to one function tool (in place; idempotent)."""
        if any(getattr(g, "name", "") == "agentaudit" for g in tool.tool_input_guardrails or ()):
            return tool
        tool.needs_approval = self._needs_approval(tool.name, tool.needs_approval)
        tool.tool_input_guardrails = [
            *(tool.tool_input_guardrails or ()),
            ToolInputGuardrail(guardrail_function=self._before_tool, name="agentaudit"),
        ]
        tool.tool_output_guardrails = [
            *(tool.tool_output_guardrails or ()),
            ToolOutputGuardrail(guardrail_function=self._after_tool, name="agentaudit"),
        ]
        return tool

    def _needs_approval(
        self, tool_name: str, own: NeedsApproval
    ) -> Callable[[RunContextWrapper[Any], dict[str, Any], str], Awaitable[bool]]:
        async def needs_approval(context: RunContextWrapper[Any], params: dict[str, Any], call_id: str) -> bool:
            run_id = _run_id()
            decision = await self.decide(run_id=run_id, tool_name=tool_name, args=params, call_id=call_id)
            self._decided[call_id] = _Decided(decision, run_id, params)
            if decision.decision == "approval_required":
                return True
            # The tool's own approval setting still applies to what the sidecar allows (or stops anyway).
            if callable(own):
                return await own(context, params, call_id)
            return bool(own) and decision.allowed

        return needs_approval

    async def _before_tool(self, data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        call_id = data.context.tool_call_id
        decided = self._decided.pop(call_id, None)
        if decided is None:  # a tool governed after needs_approval ran, or a resumed run from elsewhere
            args = _arguments(data.context.tool_arguments)
            decision = await self.decide(run_id=_run_id(), tool_name=data.context.tool_name, args=args, call_id=call_id)
        elif decided.decision.decision == "approval_required":
            # Resumed after an approval: ask again with it, so the sidecar checks a human granted it.
            decision = await self.decide(
                run_id=decided.run_id,
                tool_name=data.context.tool_name,
                args=decided.args,
                call_id=call_id,
                approval_id=decided.decision.approval_id,
            )
        else:
            decision = decided.decision
        if decision.allowed:
            return ToolGuardrailFunctionOutput.allow()
        return ToolGuardrailFunctionOutput.reject_content(blocked_message(decision), output_info=decision.reason)

    async def _after_tool(self, data: ToolOutputGuardrailData) -> ToolGuardrailFunctionOutput:
        await self.report(data.context.tool_call_id, output=data.output)
        return ToolGuardrailFunctionOutput.allow()

    async def resolve_interruptions(self, result: RunResult, *, wait_s: float | None = None) -> RunState[Any]:
        """Waits for a human to answer each approval the run stopped for, and returns the state to resume.

        Each interruption of a governed tool is approved in the state when the approval was granted (the tool
        input guardrail then confirms it with the sidecar), and rejected with the reason when it was denied,
        expired, or still pending after ``wait_s`` (default ``approval_wait_s``). Interruptions of tools this
        governor did not ask about are left for the caller.
        """
        state = result.to_state()
        for item in result.interruptions:
            decided = self._decided.get(_call_id(item.raw_item))
            if decided is None or decided.decision.decision != "approval_required":
                continue
            outcome = await self.client.wait_approval(
                decided.decision.approval_id, timeout=self.approval_wait_s if wait_s is None else wait_s
            )
            if outcome.granted:
                state.approve(item)
            else:
                message = f"agentaudit: approval {decided.decision.approval_id} {outcome.state}; the call was not run."
                state.reject(item, rejection_message=message)
        return state


def _run_id() -> str:
    trace = get_current_trace()
    if trace is None:
        return ""
    group = getattr(trace, "group_id", None)
    trace_id = trace.trace_id
    return str(group) if group else ("" if not trace_id or trace_id == "no-op" else str(trace_id))


def _arguments(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {"arguments": raw}
    return value if isinstance(value, dict) else {"arguments": value}


def _call_id(raw_item: Any) -> str:
    if isinstance(raw_item, dict):
        return str(raw_item.get("call_id", ""))
    return str(getattr(raw_item, "call_id", ""))
