"""What the proxy passes through without governing: the upstream server's notifications, to the proxy's clients.

The SDK's server and client each answer their own peer, so a notification the real server sends (a tool-list
change, a log message, a resource update) reaches only the proxy's upstream client unless it is carried over.
Progress is not carried here: each ``tools/call`` relays its own progress against the caller's token
(``proxy._Call.forward``), and cancellation travels with the call (the SDK cancels the handler, which cancels
the upstream request).

Where a notification goes: one upstream connection serves every client of the proxy (over stdio there is one;
over HTTP there may be several), and a notification carries no request id, so it goes to every client
connection the proxy has seen. A connection with a ``tools/call`` in flight gets it on that call's stream
(which also reaches 2026-07-28 clients that have no standalone stream); any other, on its standalone stream.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import mcp_types as types
from mcp.client.session import IncomingMessage
from mcp.server.session import ServerSession

log = logging.getLogger("agentaudit.mcp")

# Past this many client connections the oldest is forgotten (HTTP sessions come and go without telling us).
MAX_CONNECTIONS = 1024
# Handled elsewhere: progress per call against the caller's token; an upstream cancel concerns its own requests.
_NOT_RELAYED = (types.ProgressNotification, types.CancelledNotification)


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
