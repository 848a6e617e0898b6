"""``agentaudit mcp stdio``: the MCP client spawns the proxy; the proxy spawns the real server, both over stdio."""

from __future__ import annotations

import os
from collections.abc import Sequence

from mcp import StdioServerParameters
from mcp.server.stdio import stdio_server

from agentaudit_client import AsyncGatewayClient
from gateway.mcp.proxy import GoverningProxy, ProxyConfig
from gateway.mcp.upstream import Upstream


async def serve(config: ProxyConfig, command: Sequence[str]) -> None:
    """Proxies stdin/stdout to ``command`` until the client closes stdin."""
    # The server inherits our environment, as it would if the client had spawned it directly.
    target = StdioServerParameters(command=command[0], args=list(command[1:]), env=dict(os.environ))
    proxy = GoverningProxy(
        config, Upstream(target), AsyncGatewayClient(config.sidecar, timeout=config.sidecar_timeout_s)
    )
    await proxy.start()
    try:
        async with stdio_server() as (read, write):
            await proxy.server.run(read, write, proxy.server.create_initialization_options())
    finally:
        await proxy.aclose()
