"""The Claude Agent SDK adapter: its hook callables and ``can_use_tool``, called as the SDK calls them (with the
SDK's own types), around real tool functions, against a real `agentaudit dev` sidecar."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from claude_agent_sdk import (
    ClaudeAgentOptions,
    HookContext,
    HookMatcher,
    PermissionResultAllow,
    PermissionResultDeny,
    PostToolUseHookInput,
    PreToolUseHookInput,
    ToolPermissionContext,
)

from agentaudit_client import AsyncGatewayClient
from agentaudit_client.integrations.claude_agent import ClaudeAgentGovernor
from tests.conftest import RunningGateway
from tests.framework_helpers import ACTIONS, FLOOD, REFUND, bodies, grant_when_pending, tape

CONTEXT = HookContext(signal=None)


class ScriptedSession:
    """What the SDK does around one tool call: PreToolUse, the permission check on ask, the tool, PostToolUse."""

    def __init__(self, governor: ClaudeAgentGovernor, options: ClaudeAgentOptions, session_id: str) -> None:
        self.governor = governor
        self.options = options
        self.session_id = session_id
        self.ran: list[tuple[str, dict[str, Any]]] = []

    async def use(self, tool: str, args: dict[str, Any], tool_use_id: str, run: Callable[..., Any]) -> str:
        """Returns "ran", or the reason text Claude would read instead of the tool's result."""
        base = {"session_id": self.session_id, "transcript_path": "/tmp/t.jsonl", "cwd": "/tmp"}
        pre = PreToolUseHookInput(
            **base, hook_event_name="PreToolUse", tool_name=tool, tool_input=args, tool_use_id=tool_use_id
        )
        (hook,) = self.options.hooks["PreToolUse"][-1].hooks  # type: ignore[index]
        answer = await hook(pre, tool_use_id, CONTEXT)
        decision = answer.get("hookSpecificOutput", {}).get("permissionDecision")
        if decision == "deny":
            return str(answer["hookSpecificOutput"]["permissionDecisionReason"])
        if decision == "ask":
            assert self.options.can_use_tool is not None
            verdict = await self.options.can_use_tool(tool, args, ToolPermissionContext(tool_use_id=tool_use_id))
            if isinstance(verdict, PermissionResultDeny):
                return verdict.message
            assert isinstance(verdict, PermissionResultAllow)
        output = run(**args)
        self.ran.append((tool, args))
        post = PostToolUseHookInput(
            **base,
            hook_event_name="PostToolUse",
            tool_name=tool,
            tool_input=args,
            tool_response=output,
            tool_use_id=tool_use_id,
        )
        (post_hook,) = self.options.hooks["PostToolUse"][-1].hooks  # type: ignore[index]
        await post_hook(post, tool_use_id, CONTEXT)
        return "ran"


def scenario(gw: RunningGateway, session_id: str, calls: list[tuple[str, dict[str, Any]]], tenant: str = "t_42") -> Any:
    async def go() -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
        async with AsyncGatewayClient(gw.unix_target, timeout=30) as client:
            governor = ClaudeAgentGovernor(
                client, tenant, "support-agent", ("user", "u_1"), actions=ACTIONS, approval_wait_s=20
            )
            options = governor.apply(ClaudeAgentOptions(allowed_tools=list(ACTIONS)))
            session = ScriptedSession(governor, options, session_id)

            def tool(**kwargs: Any) -> dict[str, Any]:
                return {"ok": True, **kwargs}

            answers = await asyncio.gather(
                *(session.use(name, args, f"toolu_{i}", tool) for i, (name, args) in enumerate(calls))
            )
            return list(answers), session.ran

    return asyncio.run(go())


def test_apply_keeps_the_users_own_hooks() -> None:
    async def mine(*_: Any) -> dict[str, Any]:
        return {}

    async def apply() -> ClaudeAgentOptions:
        # A grpc.aio channel belongs to an event loop: make the client inside one.
        async with AsyncGatewayClient("127.0.0.1:1") as client:
            options = ClaudeAgentOptions(hooks={"PreToolUse": [HookMatcher(matcher="Bash", hooks=[mine])]})
            return ClaudeAgentGovernor(client, "t_42").apply(options)

    applied = asyncio.run(apply())
    assert applied.hooks is not None
    assert [m.matcher for m in applied.hooks["PreToolUse"]] == ["Bash", None]
    assert applied.can_use_tool is not None


def test_a_crm_search_flood_is_stopped_with_rate_limited_tenant(gateway_server: RunningGateway) -> None:
    answers, ran = scenario(
        gateway_server, "cl_flood", [("crm_search", {"query": f"q{i}"}) for i in range(FLOOD)], tenant="t_flood"
    )
    pre = bodies(gateway_server.journal_path, "pre_exec")
    allowed = [b for b in pre if b["decision"] == "allow"]
    stopped = [b for b in pre if b["decision"] == "stop"]
    assert len(pre) == FLOOD and stopped
    assert {b["reason"] for b in stopped} == {"rate_limited_tenant"}
    assert len(ran) == len(allowed)  # the tool never ran on stop
    assert sum("rate_limited_tenant" in a for a in answers) == len(stopped)  # Claude read why
    assert {b["pre_event_id"] for b in bodies(gateway_server.journal_path, "post_exec")} == {
        b["event_id"] for b in allowed
    }


def test_a_refund_waits_for_a_human_then_runs_exactly_once(gateway_server: RunningGateway) -> None:
    human = grant_when_pending(gateway_server, "cl_refund")
    answers, ran = scenario(gateway_server, "cl_refund", [("refund_create", REFUND)])
    human.join(5)
    assert answers == ["ran"]
    assert ran == [("refund_create", REFUND)]
    assert tape(gateway_server.journal_path, "refund.create") == [
        ("pre_exec", "refund.create", "approval_required"),
        ("approval_granted", "refund.create", ""),
        ("pre_exec", "refund.create", "allow"),
        ("post_exec", "refund.create", "allow"),
    ]


def test_a_denied_refund_never_runs(gateway_server: RunningGateway) -> None:
    human = grant_when_pending(gateway_server, "cl_denied", grant=False)
    answers, ran = scenario(gateway_server, "cl_denied", [("refund_create", REFUND)])
    human.join(5)
    assert ran == []
    assert "approval_denied" in answers[0]


def test_a_crm_lookup_is_allowed_and_its_result_recorded(gateway_server: RunningGateway) -> None:
    answers, ran = scenario(gateway_server, "cl_look", [("crm_lookup", {"customer_id": "c_7"})])
    assert answers == ["ran"]
    assert ran == [("crm_lookup", {"customer_id": "c_7"})]
    (pre,) = bodies(gateway_server.journal_path, "pre_exec")
    (post,) = bodies(gateway_server.journal_path, "post_exec")
    assert (pre["action"], pre["decision"], pre["run_id"]) == ("crm.lookup", "allow", "cl_look")
    assert (post["pre_event_id"], post["status"]) == (pre["event_id"], "succeeded")
    assert post["output"] == {"ok": True, "customer_id": "c_7"}
