"""Google ADK: a plugin whose ``before_tool_callback`` decides and ``after_tool_callback`` reports.

::

    from google.adk.apps import App
    from google.adk.runners import Runner
    from agentaudit_client import AsyncGatewayClient
    from agentaudit_client.integrations.adk import AgentAuditPlugin

    plugin = AgentAuditPlugin(AsyncGatewayClient(sidecar), tenant_id="t_42", agent_id="support-agent")
    runner = Runner(app=App(name="support", root_agent=agent, plugins=[plugin]), session_service=sessions)

A plugin applies to every agent and tool of the app. The run id is the ADK session id; a call is paired
across the callbacks by ``tool_context.function_call_id``. On ``stop`` the callback returns
``{"error": ..., "reason": ...}`` as the tool's result, so ADK skips the tool and the model reads why. On
``approval_required`` it waits through WaitApproval up to ``approval_wait_s`` for a human (the plugin has no
way to suspend the run), then runs the tool only if the sidecar then allows it. A tool that raises is reported
failed by ``on_tool_error_callback``.

Requires the ``adk`` extra (``pip install 'agentaudit-client[adk]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.adk.plugins.base_plugin import BasePlugin
from google.adk.tools.base_tool import BaseTool
from google.adk.tools.tool_context import ToolContext

from .._convert import ActorLike
from ..aio import AsyncGatewayClient
from ..models import DecideResult
from ._hooks_common import DEFAULT_APPROVAL_WAIT_S, ActionNames, ToolCallGovernor, blocked_message

__all__ = ["AgentAuditPlugin"]


class AgentAuditPlugin(BasePlugin):
    """Governs every tool call of an ADK runner (see the module docstring).

    Args:
        client: The asyncio client of the sidecar.
        tenant_id: Tenant every call is decided for.
        agent_id: The agent's id in the policy.
        actor: Who started the runs; by default the ADK session's user, as a user actor.
        run_id: A fixed run id instead of the session id.
        actions: Tool name to action name (ADK tool names cannot hold dots).
        approval_wait_s: How long a call awaiting approval waits for a human before it is refused.
    """

    def __init__(
        self,
        client: AsyncGatewayClient,
        *,
        tenant_id: str,
        agent_id: str = "",
        actor: ActorLike | None = None,
        run_id: str = "",
        actions: ActionNames = None,
        labels: Mapping[str, str] | None = None,
        approval_wait_s: float = DEFAULT_APPROVAL_WAIT_S,
    ) -> None:
        super().__init__(name="agentaudit")
        self.governor = ToolCallGovernor(client, tenant_id, agent_id, actor, run_id, actions, labels)
        self._default_actor = actor is None
        self.approval_wait_s = approval_wait_s

    async def before_tool_callback(
        self, *, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext
    ) -> dict[str, Any] | None:
        """Records the proposed call; returns a result (the tool is skipped) unless the sidecar allows it."""
        if self._default_actor and tool_context.user_id:
            self.governor.actor = ("user", tool_context.user_id)
        call_id = tool_context.function_call_id or ""
        run_id = tool_context.session.id
        decision = await self.governor.decide(run_id=run_id, tool_name=tool.name, args=tool_args, call_id=call_id)
        if decision.decision == "approval_required":
            decision = await self.governor.decide_after_approval(
                decision,
                run_id=run_id,
                tool_name=tool.name,
                args=tool_args,
                call_id=call_id,
                wait_s=self.approval_wait_s,
            )
        return None if decision.allowed else _blocked(decision)

    async def after_tool_callback(
        self, *, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext, result: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Reports the tool's result against its pre-event; the result reaches the model unchanged."""
        await self.governor.report(tool_context.function_call_id or "", output=result)
        return None

    async def on_tool_error_callback(
        self, *, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext, error: Exception
    ) -> dict[str, Any] | None:
        """Reports a tool that raised as failed; the error then takes its usual course."""
        await self.governor.report(tool_context.function_call_id or "", error=error)
        return None


def _blocked(decision: DecideResult) -> dict[str, Any]:
    """The tool result the model sees for a call that did not run."""
    return {
        "error": blocked_message(decision),
        "reason": decision.reason,
        "event_id": decision.event_id,
        **({"approval_id": decision.approval_id} if decision.approval_id else {}),
    }
