"""The MCP proxy benchmark's baseline: a pass-through built from the same SDK layers, with no governing at all.

``python -m bench.mcp_passthrough stdio -- COMMAND [ARGS...]`` or ``python -m bench.mcp_passthrough http PORT URL``.

It is ``agentaudit mcp`` with ``GoverningProxy`` taken out: the SDK's lowlevel ``Server`` on the client side (over
the proxy's own stdio pipe transport, or the SDK's Streamable HTTP app under uvicorn), the proxy's ``Upstream``
(an SDK ``ClientSession`` over its own dispatcher, ``tools/call`` sent raw) on the server side, uvloop and a
frozen start-up heap, as the proxy runs. No Decide, no ReportResult, no identity, labels or pinning: proxied
minus this is what governing costs; this minus a direct call is what a second MCP hop through the SDK costs.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

import mcp_types as types
import uvicorn
import uvloop
from mcp import StdioServerParameters
from mcp.server.lowlevel import Server

from gateway.mcp.stdio import client_streams
from gateway.mcp.upstream import Upstream


def _server(upstream: Upstream) -> Server[Any]:
    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        listed: types.ListToolsResult = await upstream.call("list_tools")
        return listed

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
        return await upstream.call_tool({"name": params.name, "arguments": dict(params.arguments or {})})

    return Server("bench-passthrough", on_list_tools=list_tools, on_call_tool=call_tool)


async def _stdio(command: list[str]) -> None:
    upstream = Upstream(StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ)))
    server = _server(upstream)
    await upstream.start()
    gc.collect()
    gc.freeze()
    try:
        async with client_streams() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    finally:
        await upstream.aclose()


async def _http(port: int, url: str) -> None:
    upstream = Upstream(url)
    server = _server(upstream)
    await upstream.start()
    gc.collect()
    gc.freeze()
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")  # as the proxy
    try:
        await uvicorn.Server(config).serve()
    finally:
        await upstream.aclose()


def main() -> None:
    if sys.argv[1] == "stdio":
        uvloop.run(_stdio([a for a in sys.argv[2:] if a != "--"]))
    else:
        uvloop.run(_http(int(sys.argv[2]), sys.argv[3]))


if __name__ == "__main__":
    main()
