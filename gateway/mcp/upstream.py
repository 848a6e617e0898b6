"""The real MCP server behind the proxy: one SDK ``ClientSession`` owned by one task, reconnected after a crash.

The SDK session lives in anyio task groups that must be entered and left by the same task, so a single owner
task holds it; callers borrow it. When the server dies mid-call, the caller reports the failure and marks the
connection broken; the owner reconnects before the next call, so the proxy outlives its server.

The proxy builds the session from the SDK's own layers (a transport, a ``JSONRPCDispatcher``, a
``ClientSession``) rather than through ``mcp.Client``, so that ``tools/call`` can go through the dispatcher
with the client's parameters and come back as the server's result dictionary: no request model built and
dumped, no result model validated and dumped again per call (the proxy's server side validates the result once,
for the client's revision). Everything else uses the session's typed methods.

Over HTTP one ``httpx2.AsyncClient`` serves every connection of the proxy's life, and its transport reads each
response to its end before releasing it: the SDK closes a POST's SSE stream as soon as the JSON-RPC response has
arrived, which otherwise throws the TCP connection away and opens a new one for the next call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import ClientSession, StdioServerParameters
from mcp.client.session import ElicitationFnT, ListRootsFnT, MessageHandlerFnT, SamplingFnT
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import CallOptions, ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher

log = logging.getLogger("agentaudit.mcp")

# The SDK's own defaults for MCP over HTTP: 30 s to connect or write, 300 s to read (a call may run long).
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
# How long a released response may take to deliver its last bytes before its connection is dropped instead.
DRAIN_TIMEOUT_S = 0.25
DRAIN_MAX_BYTES = 1 << 16
# JSON-RPC errors that mean the connection itself failed (anything else is the server's answer).
_CONNECTION_ERRORS = frozenset({types.CONNECTION_CLOSED})


class UpstreamUnavailableError(Exception):
    """The upstream MCP server cannot be reached right now."""


class _DrainOnClose(httpx2.AsyncByteStream):
    """A response body that, when released early, reads its remaining bytes (bounded) so its connection is reused."""

    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner
        self._chunks = inner.__aiter__()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        drained = 0
        try:
            with anyio.move_on_after(DRAIN_TIMEOUT_S):
                async for chunk in self._chunks:
                    drained += len(chunk)
                    if drained > DRAIN_MAX_BYTES:
                        break
        except Exception as exc:  # the connection is not reusable: closing it below is all there is to do
            log.debug("upstream response not drained: %s", exc)
        finally:
            with anyio.CancelScope(shield=True):  # closed even when the caller is being cancelled
                await self._inner.aclose()


class _ReusingTransport(httpx2.AsyncBaseTransport):
    """``httpx2``'s own transport, with response bodies that drain on close (see ``_DrainOnClose``)."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if isinstance(response.stream, httpx2.AsyncByteStream):
            response.stream = _DrainOnClose(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class Upstream:
    """A reconnecting connection to one MCP server (a command over stdio, or a Streamable HTTP URL)."""

    def __init__(self, target: StdioServerParameters | str, connect_timeout_s: float = 30.0) -> None:
        self._target = target
        # Set by the proxy before start(): what the server sends unasked (notifications, transport errors), and
        # the server's own requests to the client (relayed to the proxy's client, relay.py).
        self.on_message: MessageHandlerFnT | None = None
        self.on_sampling: SamplingFnT | None = None
        self.on_elicitation: ElicitationFnT | None = None
        self.on_list_roots: ListRootsFnT | None = None
        self._connect_timeout_s = connect_timeout_s
        self._session: ClientSession | None = None
        self._dispatcher: JSONRPCDispatcher[Any] | None = None
        self._call_options: CallOptions = {}
        self._http: httpx2.AsyncClient | None = None
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def start(self) -> None:
        """Starts the owner task (it connects in the background)."""
        if isinstance(self._target, str):
            self._http = httpx2.AsyncClient(timeout=HTTP_TIMEOUT, transport=_ReusingTransport())
        self._task = asyncio.create_task(self._own(), name="mcp-upstream")

    async def aclose(self) -> None:
        """Disconnects, stops the owner task, closes the HTTP client."""
        self._closing = True
        self._broken.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _own(self) -> None:
        while not self._closing:
            self._broken.clear()
            connected = False
            try:
                async with AsyncExitStack() as stack:
                    if isinstance(self._target, str):
                        transport = streamable_http_client(self._target, http_client=self._http)
                    else:
                        transport = stdio_client(self._target)
                    read, write = await stack.enter_async_context(transport)
                    dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(read, write)
                    session = ClientSession(
                        dispatcher=dispatcher,
                        message_handler=self.on_message,
                        sampling_callback=self.on_sampling,
                        elicitation_callback=self.on_elicitation,
                        list_roots_callback=self.on_list_roots,
                    )
                    await stack.enter_async_context(session)
                    with anyio.fail_after(self._connect_timeout_s):
                        await session.initialize()
                    # What ClientSession stamps on every request of a handshake-era connection (HTTP reads it).
                    self._call_options = {"headers": {MCP_PROTOCOL_VERSION_HEADER: str(session.protocol_version)}}
                    self._session, self._dispatcher, self._failure = session, dispatcher, None
                    connected = True
                    self._ready.set()
                    await self._broken.wait()
            except Exception as exc:  # a dead server surfaces here; the next borrow retries
                log.warning("upstream MCP server connection ended: %s", exc)
                # Closing a connection already known broken (a server that died mid-call) may raise too; that is
                # not news for the next caller, who waits for the reconnection instead. Only a failure to connect
                # is told to the callers waiting.
                if not connected:
                    self._failure = exc
            finally:
                self._session = self._dispatcher = None
                self._ready.clear()
            if not self._closing:
                self._ready.set()  # wake borrowers so they see the failure instead of hanging
                await asyncio.sleep(0)
                self._ready.clear()

    async def session(self) -> ClientSession:
        """The connected session, waiting for the (re)connection."""
        deadline = asyncio.get_running_loop().time() + self._connect_timeout_s
        while self._session is None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._closing:
                raise UpstreamUnavailableError(f"upstream MCP server unavailable: {self._failure}")
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except TimeoutError:
                continue
            if self._session is None and self._failure is not None:
                raise UpstreamUnavailableError(f"upstream MCP server unavailable: {self._failure}")
        return self._session

    def mark_broken(self) -> None:
        """The caller saw the connection fail: reconnect before the next call."""
        # Forget the session now, so a call arriving before the owner task runs waits for the new connection.
        self._session = self._dispatcher = None
        self._ready.clear()
        self._broken.set()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls ``ClientSession.<method>``; a connection failure marks the connection broken and re-raises."""
        session = await self.session()
        try:
            return await getattr(session, method)(*args, **kwargs)
        except Exception as exc:
            self._failed(exc)
            raise

    async def call_tool(self, params: Mapping[str, Any], on_progress: ProgressFnT | None = None) -> dict[str, Any]:
        """Sends ``tools/call`` with these (wire) parameters; returns the server's result as it came (a dict)."""
        await self.session()
        dispatcher = self._dispatcher
        if dispatcher is None:  # broken between the wait and now
            raise UpstreamUnavailableError(f"upstream MCP server unavailable: {self._failure}")
        options: CallOptions = {"headers": dict(self._call_options.get("headers", {}))}
        if on_progress is not None:
            options["on_progress"] = on_progress
        try:
            return await dispatcher.send_raw_request("tools/call", params, options)
        except Exception as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: Exception) -> None:
        # Tool failures arrive as results (isError), and a JSON-RPC error is the server answering; anything else
        # is the transport or the server process failing: reconnect rather than guess whether it still works.
        if isinstance(exc, MCPError) and exc.code not in _CONNECTION_ERRORS:
            return
        self.mark_broken()
