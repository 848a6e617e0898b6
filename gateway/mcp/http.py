"""``agentaudit mcp http``: a Streamable HTTP reverse proxy in front of a Streamable HTTP MCP server.

The SDK's server transport speaks every revision it supports, including the 2026-07-28 ``Mcp-Method`` /
``Mcp-Name`` headers (it checks them against the body); the governing itself is ``proxy.GoverningProxy``.
"""

from __future__ import annotations

import asyncio

import uvicorn
from starlette.applications import Starlette

from agentaudit_client import AsyncGatewayClient
from gateway.mcp.proxy import GoverningProxy, ProxyConfig
from gateway.mcp.upstream import Upstream


def build(config: ProxyConfig, upstream_url: str, host: str = "127.0.0.1") -> tuple[GoverningProxy, Starlette]:
    """The proxy and its ASGI app (served at ``/mcp``)."""
    proxy = GoverningProxy(
        config, Upstream(upstream_url), AsyncGatewayClient(config.sidecar, timeout=config.sidecar_timeout_s)
    )
    return proxy, proxy.server.streamable_http_app(host=host)


async def serve(config: ProxyConfig, upstream_url: str, host: str, port: int, stop: asyncio.Event) -> None:
    """Serves until ``stop`` is set."""
    proxy, app = build(config, upstream_url, host)
    await proxy.start()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(), name="mcp-http")
    try:
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        await proxy.aclose()
