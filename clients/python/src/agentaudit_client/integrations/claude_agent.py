"""Claude Agent SDK: ``PreToolUse`` decides, ``can_use_tool`` waits for a human, ``PostToolUse`` reports.

::

    from claude_agent_sdk import ClaudeAgentOptions
    from agentaudit_client import AsyncGatewayClient
    from agentaudit_client.integrations.claude_agent import ClaudeAgentGovernor

    governor = ClaudeAgentGovernor(AsyncGatewayClient(sidecar), tenant_id="t_42", agent_id="support-agent")
    options = governor.apply(ClaudeAgentOptions(allowed_tools=[...]))

The run id is the SDK's ``session_id``; a call is paired across the hooks by its ``tool_use_id``. On ``stop`` the
hook answers ``permissionDecision: deny`` with the reason, which Claude reads. On ``approval_required`` it answers
``ask``: the SDK then calls ``can_use_tool`` (its permission primitive), which waits through WaitApproval up to
``approval_wait_s`` for a human and allows only what the sidecar then allows. An allowed call gets no answer from
the hook (the SDK's own permission rules still apply): the sidecar not objecting is not a reason to skip them.

Requires the ``claude-agent`` extra (``pip install 'agentaudit-client[claude-agent]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from claude_agent_sdk import (
    ClaudeAgentOptions,
    HookContext,
    HookMatcher,
    PermissionResultAllow,
    PermissionResultDeny,
    ToolPermissionContext,
)

from ..models import DecideResult
from ._hooks_common import DEFAULT_APPROVAL_WAIT_S, ToolCallGovernor, blocked_message

__all__ = ["ClaudeAgentGovernor"]


@dataclass
class _Asked:
    decision: DecideResult
    run_id: str


@dataclass
class ClaudeAgentGovernor(ToolCallGovernor):
    """Hook callbacks and a ``can_use_tool`` for ``ClaudeAgentOptions`` (see the module docstring).

    Args:
        approval_wait_s: How long ``can_use_tool`` waits for a human before denying.
    """

    approval_wait_s: float = DEFAULT_APPROVAL_WAIT_S
    _asked: dict[str, _Asked] = field(default_factory=dict, repr=False)

    def hooks(self) -> dict[str, list[HookMatcher]]:
        """The ``hooks`` entries for ``ClaudeAgentOptions``: every tool, before and after."""
        return {
            "PreToolUse": [HookMatcher(matcher=None, hooks=[self.pre_tool_use])],  # type: ignore[list-item]
            "PostToolUse": [HookMatcher(matcher=None, hooks=[self.post_tool_use])],  # type: ignore[list-item]
        }

    def apply(self, options: ClaudeAgentOptions) -> ClaudeAgentOptions:
        """A copy of ``options`` with these hooks added to its own, and ``can_use_tool`` set."""
        merged: dict[str, list[HookMatcher]] = {k: list(v) for k, v in (options.hooks or {}).items()}
        for event, matchers in self.hooks().items():
            merged.setdefault(event, []).extend(matchers)
        return replace(options, hooks=merged, can_use_tool=self.can_use_tool)  # type: ignore[arg-type]

    async def pre_tool_use(
        self, input_data: Mapping[str, Any], tool_use_id: str | None, context: HookContext
    ) -> dict[str, Any]:
        """``PreToolUse``: records the proposed call and answers deny, ask, or nothing (allowed)."""
        call_id = tool_use_id or str(input_data.get("tool_use_id", ""))
        run_id = str(input_data.get("session_id", ""))
        tool_name = str(input_data.get("tool_name", ""))
        decision = await self.decide(
            run_id=run_id, tool_name=tool_name, args=input_data.get("tool_input"), call_id=call_id
        )
        if decision.allowed:
            return {}
        if decision.decision == "approval_required":
            self._asked[call_id] = _Asked(decision, run_id)
            return _permission("ask", blocked_message(decision))
        return _permission("deny", blocked_message(decision))

    async def can_use_tool(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResultAllow | PermissionResultDeny:
        """The SDK's permission prompt: for a call awaiting approval, waits for a human through the sidecar."""
        call_id = context.tool_use_id or ""
        asked = self._asked.pop(call_id, None)
        if asked is None:
            # Not ours to ask about: PreToolUse allowed it (or never saw it); decide now if it never did.
            if self.is_pending(call_id):
                return PermissionResultAllow()
            decision = await self.decide(run_id="", tool_name=tool_name, args=tool_input, call_id=call_id)
            return (
                PermissionResultAllow() if decision.allowed else PermissionResultDeny(message=blocked_message(decision))
            )
        decision = await self.decide_after_approval(
            asked.decision,
            run_id=asked.run_id,
            tool_name=tool_name,
            args=tool_input,
            call_id=call_id,
            wait_s=self.approval_wait_s,
        )
        if decision.allowed:
            return PermissionResultAllow()
        return PermissionResultDeny(message=blocked_message(decision))

    async def post_tool_use(
        self, input_data: Mapping[str, Any], tool_use_id: str | None, context: HookContext
    ) -> dict[str, Any]:
        """``PostToolUse``: reports the tool's response against the pre-event that allowed it."""
        call_id = tool_use_id or str(input_data.get("tool_use_id", ""))
        response = input_data.get("tool_response")
        error = _error_of(response)
        await self.report(call_id, output=None if error else response, error=error)
        return {}


def _permission(decision: str, reason: str) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": decision,
            "permissionDecisionReason": reason,
        }
    }


def _error_of(response: Any) -> str | None:
    """The error text of a failed tool's response (``is_error`` content blocks), else None."""
    if isinstance(response, Mapping) and response.get("is_error"):
        return str(response.get("content") or response.get("error") or "tool error")
    return None
