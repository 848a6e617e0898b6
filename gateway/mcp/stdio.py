"""``agentaudit mcp stdio``: the MCP client spawns the proxy; the proxy spawns the real server, both over stdio.

The client side is read and written through asyncio's pipe transports, framed and parsed exactly as the SDK's
``stdio_server`` does (one JSON-RPC message per line, ``mcp_types.jsonrpc_message_adapter``), and handed to the
SDK's ``Server.run`` as the same pair of message streams. The SDK's ``stdio_server`` reads and writes through
``anyio.wrap_file``, which moves every line read, every write and every flush to a worker thread: three thread
hand-offs per message, a good part of the proxy's cost per call on a busy machine. When standard input or output
is not a pipe, socket or character device (asyncio cannot watch a regular file), the SDK's transport is used.

As the SDK's transport does, it takes file descriptors 0 and 1 for itself while it serves: 0 then reads the null
device and 1 writes to standard error, so nothing else in the process can write a stray line onto the wire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import StdioServerParameters
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from agentaudit_client import AsyncGatewayClient
from gateway.mcp.proxy import GoverningProxy, ProxyConfig
from gateway.mcp.upstream import Upstream

log = logging.getLogger("agentaudit.mcp")

# One JSON-RPC message per line; a line longer than this ends the connection (the SDK's transport has no bound).
MAX_LINE_BYTES = 1 << 28

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


def _watchable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


@asynccontextmanager
async def pipe_streams(stdin_fd: int = 0, stdout_fd: int = 1) -> AsyncIterator[Streams]:
    """The MCP message streams over the process's stdin and stdout, through asyncio pipe transports."""
    loop = asyncio.get_running_loop()
    # 1. Take the wire onto private descriptors, 2. point 0 at the null device and 1 at stderr, 3. restore both
    # on the way out (as the SDK's stdio_server does).
    wire_in, wire_out = os.dup(stdin_fd), os.dup(stdout_fd)  # owned (and closed) by the pipe transports
    saved_in, saved_out = os.dup(stdin_fd), os.dup(stdout_fd)  # what 0 and 1 get back
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, stdin_fd)
    os.close(null)
    os.dup2(2, stdout_fd)
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), os.fdopen(wire_out, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_client, from_server = anyio.create_memory_object_stream[SessionMessage](0)

    async def read_client() -> None:
        async with to_server:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, OSError) as exc:  # a line past the bound, or the pipe failing
                    log.error("reading the MCP client's stdin failed: %s", exc)
                    return
                if not line:
                    return  # the client closed stdin: the session is over
                if not line.strip():
                    continue
                item: SessionMessage | Exception
                try:
                    item = SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
                except Exception as exc:  # answered by the SDK's dispatcher, as over its own transport
                    item = exc
                await to_server.send(item)

    async def write_client() -> None:
        async with from_server:
            async for message in from_server:
                writer.write(message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")
                await writer.drain()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(read_client)
            group.start_soon(write_client)
            try:
                yield from_client, to_client
            finally:
                group.cancel_scope.cancel()
    finally:
        read_transport.close()
        write_transport.close()  # after what was written is flushed
        for saved, fd in ((saved_in, stdin_fd), (saved_out, stdout_fd)):
            os.dup2(saved, fd)
            os.close(saved)


@asynccontextmanager
async def client_streams() -> AsyncIterator[Any]:
    """Pipe transports when stdin and stdout can be watched, else the SDK's threaded ``stdio_server``."""
    if _watchable(0) and _watchable(1):
        async with pipe_streams() as streams:
            yield streams
    else:
        async with stdio_server() as streams:
            yield streams


async def serve(config: ProxyConfig, command: Sequence[str]) -> None:
    """Proxies stdin/stdout to ``command`` until the client closes stdin."""
    # The server inherits our environment, as it would if the client had spawned it directly.
    target = StdioServerParameters(command=command[0], args=list(command[1:]), env=dict(os.environ))
    proxy = GoverningProxy(
        config, Upstream(target), AsyncGatewayClient(config.sidecar, timeout=config.sidecar_timeout_s)
    )
    await proxy.start()
    try:
        with anyio.CancelScope() as serving, _stopping_on_signals(serving):
            async with client_streams() as (read, write):
                await proxy.server.run(read, write, proxy.server.create_initialization_options())
    finally:
        await proxy.aclose()  # after a SIGTERM too: the reports still in flight are acknowledged first


@contextmanager
def _stopping_on_signals(scope: anyio.CancelScope) -> Iterator[None]:
    """SIGTERM and SIGINT end the session as the client closing stdin would, so ``aclose`` runs."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, scope.cancel)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread: the host handles signals
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
