"""The MCP server the MCP proxy benchmark calls: one tool, ``echo``, that answers its arguments at once.

Run: ``python -m bench.mcp_echo_server stdio`` or ``python -m bench.mcp_echo_server http PORT``.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

_SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}}


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[types.Tool(name="echo", description="Echoes.", input_schema=_SCHEMA)])


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=str(args.get("query", "")))], structured_content=args
    )


server = Server("bench-echo", on_list_tools=list_tools, on_call_tool=call_tool)


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
