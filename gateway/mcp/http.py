"""``agentaudit mcp http``: a Streamable HTTP reverse proxy in front of a Streamable HTTP MCP server.

The SDK's server transport speaks every revision it supports, including the 2026-07-28 ``Mcp-Method`` /
``Mcp-Name`` headers (it checks them against the body); the governing itself is ``proxy.GoverningProxy``.
With a ``BearerConfig``, every request needs a valid bearer JWT and acts as the identity its claims map to
(``bearer.py``); without one, the identity is the flags'.
"""

from __future__ import annotations

import asyncio

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware

from agentaudit_client import AsyncGatewayClient
from gateway.mcp.bearer import BearerAuthMiddleware, BearerConfig, BearerVerifier
from gateway.mcp.proxy import GoverningProxy, ProxyConfig
from gateway.mcp.upstream import Upstream


def build(
    config: ProxyConfig, upstream_url: str, host: str = "127.0.0.1", bearer: BearerConfig | None = None
) -> tuple[GoverningProxy, Starlette]:
    """The proxy and its ASGI app (served at ``/mcp``), behind bearer-JWT verification when ``bearer`` is set."""
    proxy = GoverningProxy(
        config, Upstream(upstream_url), AsyncGatewayClient(config.sidecar, timeout=config.sidecar_timeout_s)
    )
    app = proxy.server.streamable_http_app(host=host)
    if bearer is not None:
        # Outermost, so a refused request never reaches the SDK's transport (nothing is decided for it).
        app.user_middleware.insert(
            0, Middleware(BearerAuthMiddleware, verifier=BearerVerifier(bearer, config.identity))
        )
    return proxy, app


async def serve(
    config: ProxyConfig,
    upstream_url: str,
    host: str,
    port: int,
    stop: asyncio.Event,
    bearer: BearerConfig | None = None,
) -> None:
    """Serves until ``stop`` is set."""
    proxy, app = build(config, upstream_url, host, bearer)
    await proxy.start()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(), name="mcp-http")
    try:
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        await proxy.aclose()
