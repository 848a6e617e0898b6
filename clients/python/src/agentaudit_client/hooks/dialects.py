"""Each coding agent's hook protocol: what it sends on stdin, what it expects on stdout.

======================  ==========================  ==============================  =============================
agent                   before / after              pairs pre and post by           answer
======================  ==========================  ==============================  =============================
``claude-code``         PreToolUse / PostToolUse    ``tool_use_id``                 ``hookSpecificOutput``
``codex``               PreToolUse / PostToolUse    ``tool_use_id``                 ``hookSpecificOutput``
``cursor``              before* / after* Execution  generation id + tool and input  ``{"permission": ...}``
``gemini``              BeforeTool / AfterTool      session id + tool and input     ``{"decision": ...}``
======================  ==========================  ==============================  =============================

An allowed call gets an explicit allow only where the agent needs one (Cursor, Gemini); Claude Code and Codex
get no opinion, so their own permission rules still apply: the policy not objecting is no reason to skip them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

Phase = Literal["pre", "post"]
Verdict = Literal["allow", "deny", "ask"]

_READ = {"Read", "Grep", "Glob", "LS", "read_file", "read_many_files", "glob", "search_file_content", "list_directory"}
_SHELL = {"Bash", "shell", "local_shell", "exec_command", "run_shell_command", "BashOutput"}
_EDIT = {"Edit", "MultiEdit", "Write", "NotebookEdit", "apply_patch", "write_file", "replace"}
_WEB = {"WebFetch", "WebSearch", "web_fetch", "google_web_search"}


def tool_class(tool: str) -> str:
    """The class a tool belongs to, for per-class settings such as failing open: read, shell, edit, web, mcp, other."""
    if tool in _READ:
        return "read"
    if tool in _SHELL:
        return "shell"
    if tool in _EDIT:
        return "edit"
    if tool in _WEB:
        return "web"
    if tool.startswith(("mcp__", "mcp_", "mcp:")):
        return "mcp"
    return "other"


# NamedTuples, not dataclasses: as immutable, and building a dataclass at import (its generated methods) costs
# about a millisecond each, paid by every hook process.
class ToolEvent(NamedTuple):
    """One hook call, whatever the agent: a tool about to run (pre) or that ran (post)."""

    phase: Phase
    tool: str
    args: dict[str, Any]
    run_id: str
    pair_key: str
    cwd: str = ""
    output: Any = None
    error: str = ""


class Dialect(NamedTuple):
    """One agent's protocol: parse its payload, render an answer, and where its settings live."""

    name: str
    action_prefix: str
    parse: Callable[[Mapping[str, Any]], ToolEvent | None]
    render: Callable[[Phase, Verdict, str], dict[str, Any]]
    project_settings: str
    user_settings: str
    events: dict[Phase, list[str]]


def _digest(*parts: Any) -> str:
    data = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()[:32]


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # Cursor sends MCP tool input as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {"input": value}
    return dict(value) if isinstance(value, Mapping) else {"input": value}


def _claude_like(payload: Mapping[str, Any]) -> ToolEvent | None:
    event = payload.get("hook_event_name")
    phase: Phase
    if event == "PreToolUse":
        phase = "pre"
    elif event in ("PostToolUse", "PostToolUseFailure"):
        phase = "post"
    else:
        return None
    tool = str(payload.get("tool_name", ""))
    args = _as_dict(payload.get("tool_input") or {})
    key = str(payload.get("tool_use_id") or _digest(payload.get("session_id"), tool, args))
    error = str(payload.get("error", "")) if event == "PostToolUseFailure" else ""
    response = payload.get("tool_response")
    if isinstance(response, Mapping) and response.get("is_error"):
        error = error or str(response.get("content") or "tool error")
    return ToolEvent(
        phase, tool, args, str(payload.get("session_id", "")), key, str(payload.get("cwd", "")), response, error
    )


def _claude_render(phase: Phase, verdict: Verdict, reason: str) -> dict[str, Any]:
    if phase == "post" or verdict == "allow":
        return {}
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": verdict,
            "permissionDecisionReason": reason,
        }
    }


_CURSOR_EVENTS = {
    "beforeShellExecution": ("pre", "shell"),
    "afterShellExecution": ("post", "shell"),
    "beforeMCPExecution": ("pre", None),
    "afterMCPExecution": ("post", None),
    "beforeReadFile": ("pre", "read_file"),
}


def _cursor(payload: Mapping[str, Any]) -> ToolEvent | None:
    known = _CURSOR_EVENTS.get(str(payload.get("hook_event_name", "")))
    if known is None:
        return None
    phase, fixed_tool = known
    if fixed_tool == "shell":
        tool, args = "shell", {"command": payload.get("command", ""), "cwd": payload.get("cwd", "")}
        output = {"output": payload.get("output", "")}
    elif fixed_tool == "read_file":
        tool, args, output = "read_file", {"file_path": payload.get("file_path", "")}, None
    else:
        tool = f"mcp:{payload.get('tool_name', '')}"
        args, output = _as_dict(payload.get("tool_input") or {}), _as_dict(payload.get("result_json") or {})
    roots = payload.get("workspace_roots") or [""]
    key = _digest(payload.get("generation_id"), tool, args)
    return ToolEvent(phase, tool, args, str(payload.get("conversation_id", "")), key, str(roots[0]), output)  # type: ignore[arg-type]


def _cursor_render(phase: Phase, verdict: Verdict, reason: str) -> dict[str, Any]:
    if phase == "post":
        return {}
    answer: dict[str, Any] = {"permission": verdict}
    if verdict != "allow":
        answer |= {"user_message": reason, "agent_message": reason}
    return answer


def _gemini(payload: Mapping[str, Any]) -> ToolEvent | None:
    event = payload.get("hook_event_name")
    if event not in ("BeforeTool", "AfterTool"):
        return None
    phase: Phase = "pre" if event == "BeforeTool" else "post"
    tool = str(payload.get("tool_name", ""))
    args = _as_dict(payload.get("tool_input") or {})
    key = _digest(payload.get("session_id"), tool, args)
    return ToolEvent(
        phase,
        tool,
        args,
        str(payload.get("session_id", "")),
        key,
        str(payload.get("cwd", "")),
        payload.get("tool_response"),
    )


def _gemini_render(phase: Phase, verdict: Verdict, reason: str) -> dict[str, Any]:
    if phase == "post":
        return {}
    return {"decision": verdict} | ({"reason": reason} if verdict != "allow" else {})


DIALECTS: dict[str, Dialect] = {
    "claude-code": Dialect(
        "claude-code",
        "claude_code",
        _claude_like,
        _claude_render,
        ".claude/settings.json",
        "~/.claude/settings.json",
        {"pre": ["PreToolUse"], "post": ["PostToolUse"]},
    ),
    "codex": Dialect(
        "codex",
        "codex",
        _claude_like,
        _claude_render,
        ".codex/hooks.json",
        "~/.codex/hooks.json",
        {"pre": ["PreToolUse"], "post": ["PostToolUse"]},
    ),
    "cursor": Dialect(
        "cursor",
        "cursor",
        _cursor,
        _cursor_render,
        ".cursor/hooks.json",
        "~/.cursor/hooks.json",
        {"pre": ["beforeShellExecution", "beforeMCPExecution"], "post": ["afterShellExecution", "afterMCPExecution"]},
    ),
    "gemini": Dialect(
        "gemini",
        "gemini",
        _gemini,
        _gemini_render,
        ".gemini/settings.json",
        "~/.gemini/settings.json",
        {"pre": ["BeforeTool"], "post": ["AfterTool"]},
    ),
}
"""Every supported agent, by the name ``agentaudit hook NAME`` takes."""
