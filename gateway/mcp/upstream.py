"""The real MCP server behind the proxy: one SDK ``Client`` owned by one task, reconnected after a crash.

The SDK client lives in anyio task groups that must be entered and left by the same task, so a single owner
task holds it; callers borrow it. When the server dies mid-call, the caller reports the failure and marks the
connection broken; the owner reconnects before the next call, so the proxy outlives its server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.client.session import MessageHandlerFnT

log = logging.getLogger("agentaudit.mcp")


class UpstreamUnavailableError(Exception):
    """The upstream MCP server cannot be reached right now."""


class Upstream:
    """A reconnecting connection to one MCP server (a command over stdio, or a Streamable HTTP URL)."""

    def __init__(self, target: StdioServerParameters | str, connect_timeout_s: float = 30.0) -> None:
        self._target = target
        # What the server sends unasked (notifications, transport errors); set by the proxy before start().
        self.on_message: MessageHandlerFnT | None = None
        self._connect_timeout_s = connect_timeout_s
        self._client: Client | None = None
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def start(self) -> None:
        """Starts the owner task (it connects in the background)."""
        self._task = asyncio.create_task(self._own(), name="mcp-upstream")

    async def aclose(self) -> None:
        """Disconnects and stops the owner task."""
        self._closing = True
        self._broken.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _own(self) -> None:
        while not self._closing:
            self._broken.clear()
            try:
                async with Client(self._target, mode="legacy", cache=None, message_handler=self.on_message) as client:
                    self._client, self._failure = client, None
                    self._ready.set()
                    await self._broken.wait()
            except Exception as exc:  # a dead server surfaces here; the next borrow retries
                log.warning("upstream MCP server connection ended: %s", exc)
                self._failure = exc
            finally:
                self._client = None
                self._ready.clear()
            if not self._closing:
                self._ready.set()  # wake borrowers so they see the failure instead of hanging
                await asyncio.sleep(0)
                self._ready.clear()

    async def client(self) -> Client:
        """The connected client, waiting for the (re)connection."""
        deadline = asyncio.get_running_loop().time() + self._connect_timeout_s
        while self._client is None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._closing:
                raise UpstreamUnavailableError(f"upstream MCP server unavailable: {self._failure}")
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except TimeoutError:
                continue
            if self._client is None and self._failure is not None:
                raise UpstreamUnavailableError(f"upstream MCP server unavailable: {self._failure}")
        return self._client

    def mark_broken(self) -> None:
        """The caller saw the connection fail: reconnect before the next call."""
        # Forget the client now, so a call arriving before the owner task runs waits for the new connection.
        self._client = None
        self._ready.clear()
        self._broken.set()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls ``Client.<method>``; a connection failure marks the connection broken and re-raises."""
        client = await self.client()
        try:
            return await getattr(client, method)(*args, **kwargs)
        except Exception:
            # Tool failures arrive as results (isError), so an exception here is the transport or the server
            # process failing: reconnect rather than guess whether the session is still usable.
            self.mark_broken()
            raise
