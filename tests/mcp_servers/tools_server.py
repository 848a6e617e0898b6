"""A small real MCP server for the proxy tests: read and write tools, one that fails, one that crashes the
process, one whose definition changes (its description is read from $MCP_TEST_DESCRIPTION_FILE), and three for
what the proxy passes through: one that reports progress, one that sends notifications (a tool-list change, a
log message, a resource update) while it runs, and one that runs until it is cancelled.

Run: ``python -m tests.mcp_servers.tools_server stdio`` or ``... http PORT``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

CALLS_FILE = os.environ.get("MCP_TEST_CALLS_FILE", "")  # one line per executed call: proof of "exactly once"
_OBJECT = {"type": "object", "properties": {"id": {"type": "string"}, "amount": {"type": "number"}}}


def _record(line: str) -> None:
    if CALLS_FILE:
        with open(CALLS_FILE, "a") as out:
            out.write(line + "\n")


def _description() -> str:
    path = os.environ.get("MCP_TEST_DESCRIPTION_FILE", "")
    return Path(path).read_text() if path and Path(path).exists() else "Echoes its input."


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    ro = types.ToolAnnotations(read_only_hint=True)
    rw = types.ToolAnnotations(destructive_hint=True, read_only_hint=False)
    return types.ListToolsResult(
        tools=[
            types.Tool(name="read_record", description="Reads a record.", input_schema=_OBJECT, annotations=ro),
            types.Tool(name="write_record", description="Writes a record.", input_schema=_OBJECT, annotations=rw),
            types.Tool(name="admin_delete", description="Deletes everything.", input_schema=_OBJECT),
            types.Tool(name="fail", description="Always fails.", input_schema=_OBJECT),
            types.Tool(name="crash", description="Kills the server mid-call.", input_schema=_OBJECT),
            types.Tool(name="mutable", description=_description(), input_schema=_OBJECT),
            types.Tool(name="progress", description="Reports progress three times.", input_schema=_OBJECT),
            types.Tool(name="notify", description="Sends notifications while it runs.", input_schema=_OBJECT),
            types.Tool(name="wait_cancel", description="Runs until cancelled.", input_schema=_OBJECT),
        ]
    )


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    _record(f"{params.name} {args.get('id', '')}")
    if params.name == "crash":
        os._exit(3)
    if params.name == "fail":
        return types.CallToolResult(
            content=[types.TextContent(type="text", text="record store offline")], is_error=True
        )
    if params.name == "progress":
        for step in (1, 2, 3):
            await ctx.session.report_progress(step, 3, f"step {step}")
    if params.name == "notify":
        # Related to this call, as a server reports what happens while a call runs: over HTTP they then ride the
        # call's own stream, so they reach the proxy before the result does.
        related = ctx.request_id
        await ctx.session.send_notification(types.ToolListChangedNotification(), related_request_id=related)
        updated = types.ResourceUpdatedNotificationParams(uri="test://records/r1")
        await ctx.session.send_notification(
            types.ResourceUpdatedNotification(params=updated), related_request_id=related
        )
        await ctx.session.send_log_message(
            "warning", {"note": "from the server"}, logger="tools", related_request_id=related
        )
    if params.name == "wait_cancel":
        try:
            await anyio.sleep_forever()
        finally:
            _record(f"cancelled {args.get('id', '')}")
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{params.name} ok {args.get('id', '')}")],
        structured_content={"tool": params.name, "id": args.get("id", "")},
    )


server = Server("test-tools", on_list_tools=list_tools, on_call_tool=call_tool)


async def _stdio() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    if sys.argv[1] == "stdio":
        anyio.run(_stdio)
    else:
        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")


if __name__ == "__main__":
    main()
