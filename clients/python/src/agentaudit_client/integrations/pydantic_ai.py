"""Pydantic AI adapter: a wrapper toolset (and a capability that applies it) deciding every tool call first.

::

    from pydantic_ai import Agent, DeferredToolRequests
    from agentaudit_client.integrations.pydantic_ai import AgentAudit

    agent = Agent(model, tools=[...], output_type=[str, DeferredToolRequests],
                  capabilities=[AgentAudit(tenant_id="t_42", agent_id="support-agent")])
    result = await agent.run("refund o_9")          # DeferredToolRequests while a human approval is open

How a tool call is governed (``AgentAuditToolset.call_tool``, which wraps the agent's whole toolset):

1. Decide. ``allow`` runs the tool and reports its return value (an exception is reported failed, and
   propagates as Pydantic AI would have it). ``stop`` raises ``ToolFailed`` with the reason, Pydantic AI's native
   failed tool result: the model reads it, and the tool never runs.
2. ``approval_required`` raises Pydantic AI's ``ApprovalRequired`` with the approval id in its metadata, so the
   run ends with ``DeferredToolRequests`` (the agent's ``output_type`` must allow it). Once a human has approved
   through the operator API, the app runs the agent again with ``message_history=result.all_messages()`` and
   ``deferred_tool_results=DeferredToolResults(approvals={call_id: True})`` (passing
   ``metadata=requests.metadata`` too when it resumes in another process). The app's "approved" is not the
   approval: the call is decided again with the approval id and runs only if the sidecar allows it; a resume
   before the human answered fails the call with ``approval_pending``.

Identity: the run id is the run's ``conversation_id``, which a resumed run keeps (its ``run_id`` is new each
run); ``AGENTAUDIT_RUN_ID`` overrides it. Tenant, agent and actor come from the settings.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import ApprovalRequired, RunContext, ToolFailed
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.tools import AgentDepsT
from pydantic_ai.toolsets import AbstractToolset, WrapperToolset
from pydantic_ai.toolsets.abstract import ToolsetTool

from ._common import (
    ActionNames,
    AdapterSettings,
    ToolCallGovernor,
    action_name,
    blocked_text,
    pending_text,
    tool_args,
    tool_output,
)

FRAMEWORK = "pydantic_ai"
APPROVAL_ID_KEY = "agentaudit_approval_id"
"""Key of the approval id in ``ApprovalRequired`` metadata (so in ``DeferredToolRequests.metadata``)."""


@dataclass
class _PendingApprovals:
    """Approval ids by tool call id, so an app resuming in this process need not pass the metadata back."""

    ids: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, tool_call_id: str, approval_id: str) -> None:
        with self.lock:
            self.ids[tool_call_id] = approval_id

    def take(self, tool_call_id: str) -> str:
        with self.lock:
            return self.ids.pop(tool_call_id, "")


@dataclass
class AgentAuditToolset(WrapperToolset[AgentDepsT]):
    """Wraps a toolset so each call is decided by the agentaudit sidecar first, and its result reported.

    Attributes:
        governor: Decides and reports (one per adapter; owns the client).
        actions: Tool name → action name (a mapping or a function); default the tool's name.
    """

    governor: ToolCallGovernor = field(kw_only=True)
    actions: ActionNames = field(default=None, kw_only=True)
    pending: _PendingApprovals = field(default_factory=_PendingApprovals, kw_only=True)

    def _approval_id(self, ctx: RunContext[AgentDepsT]) -> str:
        """The approval this call resumes with, when the app marked it approved."""
        if not ctx.tool_call_approved:
            return ""
        metadata = ctx.tool_call_metadata
        from_metadata = metadata.get(APPROVAL_ID_KEY, "") if isinstance(metadata, Mapping) else ""
        remembered = self.pending.take(ctx.tool_call_id or "")
        return str(from_metadata or remembered)

    async def call_tool(
        self, name: str, tool_args_: dict[str, Any], ctx: RunContext[AgentDepsT], tool: ToolsetTool[AgentDepsT]
    ) -> Any:
        """Decides the call; runs the wrapped tool only on allow and reports how it went."""
        run_id = self.governor.settings.run_id_for(ctx.conversation_id or ctx.run_id)
        action, args = action_name(name, self.actions), tool_args(tool_args_)
        approval_id = self._approval_id(ctx)
        decision = await self.governor.adecide(run_id, action, args, approval_id=approval_id)
        if decision.decision == "approval_required":
            if approval_id and decision.approval_id == approval_id:  # resumed before a human answered
                raise ToolFailed(pending_text(decision, action))
            self.pending.remember(ctx.tool_call_id or "", decision.approval_id)
            raise ApprovalRequired(
                metadata={
                    APPROVAL_ID_KEY: decision.approval_id,
                    "action": action,
                    "event_id": decision.event_id,
                    "message": pending_text(decision, action),
                }
            )
        if not decision.allowed:
            raise ToolFailed(blocked_text(decision, action))
        started = time.monotonic()
        try:
            value = await super().call_tool(name, tool_args_, ctx, tool)
        except BaseException as exc:
            await self.governor.areport(decision, started, error=exc)
            raise
        await self.governor.areport(decision, started, output=tool_output(value))
        return value


@dataclass(init=False)
class AgentAudit(AbstractCapability[AgentDepsT]):
    """The capability that wraps an agent's toolset in an ``AgentAuditToolset`` on every run.

    Args:
        settings: Where the sidecar is and who acts; default ``AdapterSettings.from_env(**identity)``.
        actions: Tool name → action name (a mapping or a function); default the tool's name.
        **identity: ``AdapterSettings`` fields (``tenant_id``, ``agent_id``, ``actor_id``, ``sidecar``, ...).
    """

    def __init__(
        self, settings: AdapterSettings | None = None, *, actions: ActionNames = None, **identity: Any
    ) -> None:
        self.settings = settings if settings is not None else AdapterSettings.from_env(**identity)
        self.governor = ToolCallGovernor(self.settings)
        self.actions = actions
        self.pending = _PendingApprovals()

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # built in code (it holds a client), never from an agent spec

    def get_wrapper_toolset(self, toolset: AbstractToolset[AgentDepsT]) -> AbstractToolset[AgentDepsT] | None:
        return AgentAuditToolset(toolset, governor=self.governor, actions=self.actions, pending=self.pending)


def install(settings: AdapterSettings) -> bool:
    """Makes every ``pydantic_ai.Agent`` created from now on carry an ``AgentAudit`` capability (first).

    Agents that already have one are left as they are. Returns False when already installed.
    """
    from pydantic_ai import Agent  # noqa: PLC0415 - the class whose constructor is patched

    original = Agent.__init__
    if getattr(original, "__agentaudit__", False):
        return False

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, capabilities: Any = None, **kwargs: Any) -> None:
        chain = list(capabilities or ())
        if not any(isinstance(c, AgentAudit) for c in chain):
            chain.insert(0, AgentAudit(settings))
        original(self, *args, capabilities=chain, **kwargs)

    __init__.__agentaudit__ = True  # type: ignore[attr-defined]
    __init__.__wrapped_original__ = original  # type: ignore[attr-defined]
    Agent.__init__ = __init__  # type: ignore[method-assign]
    return True


def uninstall() -> None:
    """Restores the original ``Agent.__init__``."""
    from pydantic_ai import Agent  # noqa: PLC0415

    original = getattr(Agent.__init__, "__wrapped_original__", None)
    if original is not None:
        Agent.__init__ = original  # type: ignore[method-assign]
