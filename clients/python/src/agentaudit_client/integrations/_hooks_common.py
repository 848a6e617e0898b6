"""What the framework adapters share: one tool call decided before it runs, reported after it ran.

A framework calls us twice per tool call, at points it chooses (a guardrail, a plugin callback, a hook), and
hands us its own id for the call each time. :class:`ToolCallGovernor` keeps the pre-event's id under that call
id between the two, so the result is reported against the decision that let the tool run, and forgets it once
reported. Nothing here imports a framework; each adapter turns these answers into its framework's own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._convert import ActorLike
from .._guard import MAX_ERROR_BYTES, RunContext
from ..aio import AsyncGatewayClient
from ..models import DecideResult

ActionNames = Mapping[str, str] | Callable[[str], str] | None
"""How a framework's tool name becomes the policy's action name: a mapping (unlisted names unchanged), a
function, or None for the tool name as it is. Frameworks forbid dots in tool names, policies like them."""

DEFAULT_APPROVAL_WAIT_S = 300.0
"""How long an adapter without an approval primitive of its own waits for a human by default."""


def blocked_message(decision: DecideResult) -> str:
    """The text a model reads when a tool call is not allowed: the reason code first, then how to proceed."""
    if decision.decision == "approval_required":
        return (
            f"agentaudit: approval_required: this call needs a human approval (approval {decision.approval_id}); "
            "it was not run."
        )
    retry = f" Retry after {decision.retry_after:g} s." if decision.retry_after else ""
    return f"agentaudit: stopped ({decision.reason}) by policy rule {decision.policy_rule or 'default'}.{retry}"


def plain_output(value: Any) -> dict[str, Any]:
    """A tool's return value as the JSON object ReportResult takes (non-dicts under ``result``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return {"result": _plain(value)}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    dump = getattr(value, "model_dump", None)  # pydantic models, which every framework here returns
    if callable(dump):
        return _plain(dump(mode="json"))
    return str(value)


@dataclass
class _Pending:
    event_id: str
    started: float


@dataclass
class ToolCallGovernor:
    """Decides tool calls for one agent and reports their results, pairing the two by the framework's call id.

    Args:
        client: The asyncio client of the sidecar.
        tenant_id: Tenant every call is decided for.
        agent_id: The agent's id in the policy.
        actor: Who started the runs, ``("user", "u_1")`` or an ``Actor``.
        run_id: A fixed run id; by default each adapter names runs after the framework's own run or session.
        actions: Tool name to action name (see :data:`ActionNames`).
        labels: Labels sent with every decision.
    """

    client: AsyncGatewayClient
    tenant_id: str
    agent_id: str = ""
    actor: ActorLike | None = None
    run_id: str = ""
    actions: ActionNames = None
    labels: Mapping[str, str] | None = None
    _default_run: str = field(default_factory=lambda: f"run_{uuid.uuid4().hex[:16]}", repr=False)
    _runs: dict[str, RunContext] = field(default_factory=dict, repr=False)
    _pending: dict[str, _Pending] = field(default_factory=dict, repr=False)

    def action_name(self, tool_name: str) -> str:
        """The action name the policy sees for a tool."""
        if self.actions is None:
            return tool_name
        if callable(self.actions):
            return self.actions(tool_name)
        return self.actions.get(tool_name, tool_name)

    def _run(self, run_id: str) -> RunContext:
        run_id = self.run_id or run_id or self._default_run
        context = self._runs.get(run_id)
        if context is None:
            context = self._runs[run_id] = RunContext(
                run_id, self.tenant_id, self.agent_id, self.actor, labels=self.labels
            )
        return context

    async def decide(
        self, *, run_id: str, tool_name: str, args: Mapping[str, Any] | None, call_id: str, approval_id: str = ""
    ) -> DecideResult:
        """Decides a call as the next step of its run; on allow, remembers the pre-event for ``report``."""
        context = self._run(run_id)
        kwargs = context.decide_kwargs(
            self.action_name(tool_name), dict(args or {}), scope=None, approval_id=approval_id, labels=None
        )
        decision = await self.client.decide(**kwargs)
        if decision.allowed:
            self._pending[call_id] = _Pending(decision.event_id, time.monotonic())
        return decision

    async def decide_after_approval(
        self,
        decision: DecideResult,
        *,
        run_id: str,
        tool_name: str,
        args: Mapping[str, Any] | None,
        call_id: str,
        wait_s: float,
    ) -> DecideResult:
        """Waits up to ``wait_s`` for a human to resolve ``decision``'s approval, then decides again with it.

        Returns ``decision`` unchanged when the approval is still pending at the end of the wait, else the new
        decision (allow when granted, stop with approval_denied or approval_expired otherwise).
        """
        outcome = await self.client.wait_approval(decision.approval_id, timeout=wait_s)
        if outcome.state == "pending":
            return decision
        return await self.decide(
            run_id=run_id, tool_name=tool_name, args=args, call_id=call_id, approval_id=decision.approval_id
        )

    def is_pending(self, call_id: str) -> bool:
        """True when ``call_id`` was allowed and its result is not reported yet."""
        return call_id in self._pending

    async def report(self, call_id: str, *, output: Any = None, error: BaseException | str | None = None) -> None:
        """Reports the result of an allowed call (succeeded, or failed with ``error``); unknown ids are ignored."""
        pending = self._pending.pop(call_id, None)
        if pending is None:
            return
        duration = time.monotonic() - pending.started
        if error is None:
            await self.client.report_result(
                pending.event_id, status="succeeded", output=plain_output(output), duration=duration
            )
            return
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        message = text.encode()[:MAX_ERROR_BYTES].decode(errors="ignore")
        await self.client.report_result(pending.event_id, status="failed", error=message, duration=duration)
