"""What the proxy passes through without governing: the upstream server's notifications and requests, to its clients.

The SDK's server and client each answer their own peer, so a notification the real server sends (a tool-list
change, a log message, a resource update) reaches only the proxy's upstream client unless it is carried over.
Progress is not carried here: each ``tools/call`` relays its own progress against the caller's token
(``proxy._Call.forward``), and cancellation travels with the call (the SDK cancels the handler, which cancels
the upstream request).

Where a notification goes: one upstream connection serves every client of the proxy (over stdio there is one;
over HTTP there may be several), and a notification carries no request id, so it goes to every client
connection the proxy has seen. A connection with a ``tools/call`` in flight gets it on that call's stream
(which also reaches 2026-07-28 clients that have no standalone stream); any other, on its standalone stream.

The server's requests to the client (``sampling/createMessage``, ``roots/list``, ``elicitation/create``) are
answered by the client whose ``tools/call`` the server is running: the SDK's client session of the upstream
connection takes each request (its callbacks), the SDK's server session of that call sends it on to the client on
the call's own stream, and the client's answer (or its JSON-RPC error) goes back unchanged. They are not governed
(no Decide, nothing journaled): the call they happen in is. A request names no call, so it goes to the one client
connection with a call in flight; when none has one, or several connections do (an HTTP proxy shared by clients
running calls at the same time), it is refused with a JSON-RPC error rather than sent to a client that may not be
the one the server works for.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import mcp_types as types
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.message import ServerMessageMetadata

log = logging.getLogger("agentaudit.mcp")

# Past this many client connections the oldest is forgotten (HTTP sessions come and go without telling us).
MAX_CONNECTIONS = 1024
# Handled elsewhere: progress per call against the caller's token; an upstream cancel concerns its own requests.
_NOT_RELAYED = (types.ProgressNotification, types.CancelledNotification)
_ResultT = TypeVar("_ResultT", bound=types.Result)


@dataclass
class _Connection:
    standalone: ServerSession | None = None  # handshake-era connections only: 2026-07-28 has no standalone stream
    calls: dict[types.RequestId, ServerSession] = field(default_factory=dict)


def _connection_key(session: ServerSession) -> int:
    # A ServerSession is per request; the connection it speaks for is the identity we need (no public accessor).
    return id(getattr(session, "_connection", session))


class NotificationRelay:
    """Carries the upstream server's notifications to every client connection of the proxy."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._connections: OrderedDict[int, _Connection] = OrderedDict()
        self._max = max_connections

    def _entry(self, session: ServerSession) -> _Connection:
        key = _connection_key(session)
        entry = self._connections.get(key)
        if entry is None:
            entry = self._connections[key] = _Connection()
            while len(self._connections) > self._max:
                self._connections.popitem(last=False)
        else:
            self._connections.move_to_end(key)
        return entry

    def seen(self, session: ServerSession) -> None:
        """Remembers a handshake-era connection: its standalone stream receives relayed notifications."""
        self._entry(session).standalone = session

    @contextmanager
    def in_call(self, session: ServerSession, request_id: types.RequestId | None) -> Iterator[None]:
        """While a call runs, its connection's notifications ride that call's stream."""
        if request_id is None:
            yield
            return
        entry = self._entry(session)
        entry.calls[request_id] = session
        try:
            yield
        finally:
            entry.calls.pop(request_id, None)
            if entry.standalone is None and not entry.calls:
                self._connections.pop(_connection_key(session), None)

    def call_in_flight(self) -> tuple[ServerSession, types.RequestId] | None:
        """The latest call of the one client connection with calls in flight; None if none or several have."""
        busy = [entry for entry in self._connections.values() if entry.calls]
        if len(busy) != 1:
            return None
        request_id, session = next(reversed(busy[0].calls.items()))
        return session, request_id

    async def sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        """The upstream session's sampling callback: asks the calling client, answers what it answered."""
        capability = types.ClientCapabilities(sampling=types.SamplingCapability())
        request = types.CreateMessageRequest(params=params)
        if params.tools is not None or params.tool_choice is not None:
            return await self._ask(request, types.CreateMessageResultWithTools, capability)
        return await self._ask(request, types.CreateMessageResult, capability)

    async def elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        """The upstream session's elicitation callback (form or URL, as the server sent it)."""
        capability = types.ClientCapabilities(elicitation=types.ElicitationCapability())
        return await self._ask(types.ElicitRequest(params=params), types.ElicitResult, capability)

    async def list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        """The upstream session's roots callback."""
        capability = types.ClientCapabilities(roots=types.RootsCapability())
        return await self._ask(types.ListRootsRequest(), types.ListRootsResult, capability)

    async def _ask(
        self, request: Any, result_type: type[_ResultT], capability: types.ClientCapabilities
    ) -> _ResultT | types.ErrorData:
        method = request.method
        target = self.call_in_flight()
        if target is None:
            log.warning("not relaying the server's %s: no single client call it could belong to", method)
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message=f"agentaudit: {method} is relayed only during a tool call of a single client",
            )
        session, request_id = target
        if not session.check_client_capability(capability):
            return types.ErrorData(
                code=types.METHOD_NOT_FOUND, message=f"agentaudit: the client did not declare support for {method}"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # roots is deprecated as of 2026-07-28; still relayed for older
                return await session.send_request(
                    request, result_type, metadata=ServerMessageMetadata(related_request_id=request_id)
                )
        except MCPError as exc:  # the client's own JSON-RPC error, passed back as it came
            return exc.error
        except NoBackChannelError:
            # 2026-07-28 clients take no server requests during a call (they answer input_required results).
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message=f"agentaudit: the client cannot be sent {method} during a call at its protocol revision",
            )

    async def relay(self, message: IncomingMessage) -> None:
        """The upstream client's message handler: relays a notification, logs a transport error."""
        if isinstance(message, Exception):
            log.warning("upstream MCP server sent something unreadable: %s", message)
            return
        if isinstance(message, _NOT_RELAYED):
            return
        for key, entry in list(self._connections.items()):
            call = next(iter(entry.calls.items()), None)
            try:
                if call is not None:
                    await _send(call[1], message, call[0])
                elif entry.standalone is not None:
                    await _send(entry.standalone, message, None)
            except Exception as exc:  # a client that went away: forget it, keep relaying to the others
                log.debug("dropping client connection after a failed relay: %s", exc)
                self._connections.pop(key, None)


async def _send(session: ServerSession, message: types.ServerNotification, request_id: types.RequestId | None) -> None:
    if isinstance(message, types.LoggingMessageNotification):
        p = message.params
        # Through the session's own gate: a 2026-07-28 client receives only the levels its request opted in to.
        await session.send_log_message(p.level, p.data, p.logger, related_request_id=request_id)
        return
    await session.send_notification(message, related_request_id=request_id)
