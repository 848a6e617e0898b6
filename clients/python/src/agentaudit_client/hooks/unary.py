"""A gRPC unary client for the hook only: HTTP/2 through ``h2``, no ``grpc`` import (docs/adr/0026).

A hook is a new process per tool call, and importing ``grpc`` is about half of its start-up (``grpc._cython``
imports asyncio and ssl). A unary call is small enough to make without it: one HTTP/2 stream on the sidecar's
own socket (the real gRPC server, no new listener), the request as one length-prefixed message, the answer as
one message and the ``grpc-status`` / ``grpc-message`` / ``grpc-status-details-bin`` trailers. ``h2`` (pure
Python, python-hyper) does the HTTP/2 framing, flow control and HPACK; nothing here encodes a frame by hand.

What gRPC's own client would answer, this answers alike, as a :class:`CallError` with the same status code:
nobody listening and a connection that closes before the call's status are UNAVAILABLE, no answer within the
deadline is DEADLINE_EXCEEDED (the deadline also goes to the server as ``grpc-timeout``), a server's status is
passed on with its message and details, and anything the server sends that is not a well-formed gRPC answer is
INTERNAL (or the code that gRPC's HTTP-to-gRPC status mapping gives a non-200 answer).

``h2`` is imported only once a connection is made, so an unreachable sidecar costs no HTTP/2 imports.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from agentaudit_client.models import ApprovalOutcome, DecideResult, ReportResult

from . import wire

_T = TypeVar("_T")

# The gRPC status codes by number (grpc.StatusCode without importing grpc).
CODE_NAMES = [
    *("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS"),
    *("PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED"),
    *("INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"),
]
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14
# The client's GatewayError subclass of each code (agentaudit_client.errors), which names the hook's deny reason.
_KINDS = {
    3: "InvalidRequestError",
    4: "DeadlineExceededError",
    5: "NotFoundError",
    8: "ResourceExhaustedError",
    9: "FailedPreconditionError",
    14: "UnavailableError",
}
# gRPC's mapping of an HTTP status other than 200 (doc/http-grpc-status-mapping.md in the grpc repository).
_HTTP_CODES = {400: INTERNAL, 401: 16, 403: 7, 404: UNIMPLEMENTED, 429: UNAVAILABLE, 502: UNAVAILABLE}
_HTTP_CODES |= {503: UNAVAILABLE, 504: UNAVAILABLE}
# gRPC's mapping of an HTTP/2 RST_STREAM error code (doc/PROTOCOL-HTTP2.md): CANCEL, REFUSED_STREAM, ...
_RESET_CODES = {7: UNAVAILABLE, 8: CANCELLED, 11: RESOURCE_EXHAUSTED, 12: 7}
_READ_BYTES = 65536
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default receive limit


class CallError(Exception):
    """A call that failed, with its gRPC status; ``str()`` reads as the client's ``GatewayError`` does."""

    def __init__(self, code: int, details: str, status_details: bytes = b"") -> None:
        self.code = code
        self.code_name = CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else "UNKNOWN"
        super().__init__(f"{self.code_name}: {details}" if details else self.code_name)
        self.details = details
        self.status_details = status_details  # a serialized google.rpc.Status, when the server sent one

    @property
    def kind(self) -> str:
        """The name of the ``agentaudit_client.errors`` class the gRPC client raises for this code."""
        return _KINDS.get(self.code, "GatewayError")

    def violations(self) -> list[tuple[str, str]]:
        """The ``(field, description)`` pairs of a ``google.rpc.BadRequest`` in the status details."""
        if not self.status_details:
            return []
        from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415 - only for a failed call

        found: list[tuple[str, str]] = []
        for detail in status_pb2.Status.FromString(self.status_details).details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                found.extend((v.field, v.description) for v in bad_request.field_violations)
        return found


class Endpoint(NamedTuple):
    """Where to connect: a socket family, its address and the ``:authority`` gRPC would send."""

    family: int
    address: Any
    authority: str


def endpoint(target: str) -> Endpoint | None:
    """The endpoint of a gRPC target (``agentaudit_client.address.grpc_target``'s output), or None.

    Unix sockets (``unix:///abs``, ``unix-abstract:name``), ``HOST:PORT`` and ``dns:///HOST:PORT`` are
    reached directly; anything else (``vsock:``, ``ipv4:`` address lists, a DNS authority) is left to gRPC."""
    if target.startswith("unix://"):
        return Endpoint(socket.AF_UNIX, target[len("unix://") :], "localhost")
    if target.startswith("unix-abstract:"):
        return Endpoint(socket.AF_UNIX, "\0" + target[len("unix-abstract:") :], "localhost")
    hostport = target[len("dns:///") :] if target.startswith("dns:///") else target
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in host or (":" in host and not host.startswith("[")):
        return None
    return Endpoint(socket.AF_INET6 if host.startswith("[") else -1, (host.strip("[]"), int(port)), hostport)


def _grpc_timeout(seconds: float) -> str:
    """The ``grpc-timeout`` header: at most 8 digits and a unit."""
    millis = max(1, int(seconds * 1000 + 0.999))
    return f"{millis}m" if millis < 10**8 else f"{min(int(seconds) + 1, 10**8 - 1)}S"


class Channel:
    """One connection to the sidecar, for the unary calls of one hook process (``with Channel(...) as c``).

    Args:
        where: The endpoint.
        timeout: Seconds allowed to connect; each :meth:`call` has its own deadline.
    """

    def __init__(self, where: Endpoint, timeout: float) -> None:
        self._where = where
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._conn: Any = None

    def __enter__(self) -> Channel:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connects; nobody listening raises UNAVAILABLE, no connection within the timeout DEADLINE_EXCEEDED."""
        family, address, _ = self._where
        try:
            if family == -1:  # a host name or an IPv4 address: let the resolver pick
                self._sock = socket.create_connection(address, timeout=self._timeout)
            else:
                self._sock = socket.socket(family, socket.SOCK_STREAM)
                self._sock.settimeout(self._timeout)
                self._sock.connect(address)
        except TimeoutError as exc:
            self.close()
            raise CallError(DEADLINE_EXCEEDED, f"no connection within {self._timeout:g} s") from exc
        except OSError as exc:
            self.close()
            raise CallError(UNAVAILABLE, _os_error(exc)) from exc
        if family != socket.AF_UNIX:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        """Closes the connection (no GOAWAY: the process ends right after, as a cancelled call's would)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._conn = None

    def call(self, method: str, request: bytes, timeout: float | None) -> bytes:
        """Calls ``method`` (``/package.Service/Method``) with a serialized request; the serialized answer.

        Raises:
            CallError: The call failed, with the status gRPC's client would report.
        """
        if self._sock is None:
            self.connect()  # the call before failed and closed it
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return _Call(self, deadline).run(method, request, timeout)
        except CallError:
            self.close()  # a failed call leaves the connection in no known state
            raise

    def _h2(self) -> Any:
        if self._conn is None:
            from h2.config import H2Configuration  # noqa: PLC0415 - only once there is a connection
            from h2.connection import H2Connection  # noqa: PLC0415

            self._conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            self._conn.initiate_connection()
        return self._conn


class _Call:
    """One stream: send the request, collect the answer's headers, message and trailers."""

    def __init__(self, channel: Channel, deadline: float | None) -> None:
        self.channel = channel
        self.conn = channel._h2()
        self.sock: socket.socket = channel._sock  # type: ignore[assignment]
        self.deadline = deadline
        self.stream_id = 0
        self.headers: dict[bytes, bytes] = {}
        self.trailers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.ended = False

    def run(self, method: str, request: bytes, timeout: float | None) -> bytes:
        from h2.exceptions import H2Error  # noqa: PLC0415

        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", method.encode()),
            (b":authority", self.channel._where.authority.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"agentaudit-hook (h2)"),
        ]
        if timeout is not None:
            headers.append((b"grpc-timeout", _grpc_timeout(timeout).encode()))
        try:
            self.stream_id = self.conn.get_next_available_stream_id()
            self.conn.send_headers(self.stream_id, headers)
            self._send(struct.pack(">BI", 0, len(request)) + request)
            while not self.ended:
                self._receive()
        except H2Error as exc:
            # Before any answer the peer is no HTTP/2 server (gRPC's client calls that UNAVAILABLE); after, a
            # broken answer.
            raise CallError(INTERNAL if self.headers else UNAVAILABLE, f"HTTP/2 protocol error: {exc}") from exc
        return self._answer()

    def _send(self, message: bytes) -> None:
        """Sends the request within the server's flow-control window, reading while the window is shut."""
        view = memoryview(message)
        while view and not self.ended:
            room = min(self.conn.local_flow_control_window(self.stream_id), self.conn.max_outbound_frame_size)
            if room <= 0:
                self._flush()
                self._receive()  # a WINDOW_UPDATE, or the server's early answer
                continue
            chunk, view = view[:room], view[room:]
            self.conn.send_data(self.stream_id, bytes(chunk), end_stream=not view)
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self._io(self.sock.sendall, data)

    def _receive(self) -> None:
        data = self._io(self.sock.recv, _READ_BYTES)
        if not data:
            raise CallError(UNAVAILABLE, "the sidecar closed the connection before the call's status")
        for event in self.conn.receive_data(data):
            self._on(event)
        self._flush()  # settings and ping acknowledgements, window updates

    def _on(self, event: Any) -> None:
        from h2 import events  # noqa: PLC0415 - already imported by h2.connection

        if isinstance(event, events.ResponseReceived) and event.stream_id == self.stream_id:
            self.headers = dict(event.headers)
        elif isinstance(event, events.DataReceived) and event.stream_id == self.stream_id:
            self.body += event.data
            if len(self.body) > MAX_MESSAGE_BYTES + 5:
                raise CallError(RESOURCE_EXHAUSTED, f"the answer is larger than {MAX_MESSAGE_BYTES} bytes")
            self.conn.acknowledge_received_data(event.flow_controlled_length, self.stream_id)
        elif isinstance(event, events.TrailersReceived) and event.stream_id == self.stream_id:
            self.trailers = dict(event.headers)
        elif isinstance(event, events.StreamEnded) and event.stream_id == self.stream_id:
            self.ended = True
        elif isinstance(event, events.StreamReset) and event.stream_id == self.stream_id:
            code = _RESET_CODES.get(int(event.error_code), INTERNAL)
            raise CallError(code, f"the stream was reset (HTTP/2 error {int(event.error_code)})")
        elif isinstance(event, events.ConnectionTerminated) and (event.last_stream_id or 0) < self.stream_id:
            # A GOAWAY before this stream: the server will not answer it (one at or past it still finishes).
            raise CallError(UNAVAILABLE, f"the sidecar closed the connection (GOAWAY {int(event.error_code or 0)})")

    def _io(self, op: Any, arg: Any) -> Any:
        """``op(arg)`` on the socket within the call's deadline; a socket error is UNAVAILABLE."""
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise CallError(DEADLINE_EXCEEDED, "Deadline Exceeded")
            self.sock.settimeout(left)
        else:
            self.sock.settimeout(None)
        try:
            return op(arg)
        except TimeoutError as exc:
            raise CallError(DEADLINE_EXCEEDED, "Deadline Exceeded") from exc
        except OSError as exc:
            raise CallError(UNAVAILABLE, _os_error(exc)) from exc

    def _answer(self) -> bytes:
        # A "Trailers-Only" answer (an error before any message) carries the status in its headers.
        status_from = self.trailers or self.headers
        http_status = self.headers.get(b":status", b"")
        if http_status != b"200":
            code = _HTTP_CODES.get(int(http_status) if http_status.isdigit() else 0, UNKNOWN)
            raise CallError(code, f"the sidecar answered HTTP {http_status.decode(errors='replace') or '?'}")
        raw = status_from.get(b"grpc-status")
        if raw is None or not raw.isdigit():
            raise CallError(INTERNAL, "the answer ended without a grpc-status")
        code = int(raw)
        if code != OK:
            message = _unquote(status_from.get(b"grpc-message", b""))
            raise CallError(code, message, _base64(status_from.get(b"grpc-status-details-bin")))
        if not self.headers.get(b"content-type", b"").startswith(b"application/grpc"):
            raise CallError(UNKNOWN, "the answer is not application/grpc")
        if len(self.body) < 5:
            raise CallError(INTERNAL, "the answer holds no message")
        compressed, length = struct.unpack(">BI", self.body[:5])
        if compressed:
            raise CallError(INTERNAL, "the answer is compressed, and none was asked for")
        if len(self.body) != 5 + length:
            raise CallError(INTERNAL, "the answer is not exactly one message")
        return bytes(self.body[5:])


def _os_error(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return f"nobody listens there: {exc}"
    return str(exc)


def _unquote(value: bytes) -> str:
    """``grpc-message`` is percent-encoded UTF-8."""
    if b"%" not in value:
        return value.decode("utf-8", errors="replace")
    from urllib.parse import unquote_to_bytes  # noqa: PLC0415 - only for an error message that needs it

    return unquote_to_bytes(value).decode("utf-8", errors="replace")


def _base64(value: bytes | None) -> bytes:
    """A ``-bin`` header's value: base64, padding optional."""
    if not value:
        return b""
    import base64  # noqa: PLC0415 - h2 imports it anyway

    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return b""


_SERVICE = "/agentaudit.v1.GatewayService/"


class GatewayCalls:
    """Decide, ReportResult and WaitApproval over a :class:`Channel`, with the sync client's conversions.

    The same keyword arguments and results as ``GatewayClient`` (``agentaudit_client._convert`` builds the
    requests and reads the answers for both), raising :class:`CallError` where it raises ``GatewayError``.
    """

    def __init__(self, where: Endpoint, timeout: float | None) -> None:
        self._channel = Channel(where, timeout if timeout is not None else 10.0)
        self._timeout = timeout

    def __enter__(self) -> GatewayCalls:
        self._channel.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def decide(self, **request: Any) -> DecideResult:
        """``GatewayClient.decide``, with the arguments :func:`.wire.decide_request` takes."""
        answer = self._channel.call(_SERVICE + "Decide", wire.decide_request(**request), self._timeout)
        return _parse(wire.decide_result, answer)

    def report_result(
        self, event_id: str, *, status: str = "succeeded", error: str = "", output: Any = None, duration: Any = None
    ) -> ReportResult:
        """``GatewayClient.report_result`` (``duration`` in seconds)."""
        request = wire.report_request(event_id, status=status, error=error, output=output, duration_s=duration)
        return _parse(wire.report_result, self._channel.call(_SERVICE + "ReportResult", request, self._timeout))

    def wait_approval(self, approval_id: str, *, timeout: float | None = None) -> ApprovalOutcome:
        """``GatewayClient.wait_approval``: still pending when ``timeout`` passes."""
        try:
            answer = self._channel.call(_SERVICE + "WaitApproval", wire.wait_approval_request(approval_id), timeout)
        except CallError as exc:
            if exc.code != DEADLINE_EXCEEDED:
                raise
            return ApprovalOutcome(state="pending")
        return _parse(wire.approval_outcome, answer)


def _parse(read: Callable[[bytes], _T], data: bytes) -> _T:
    """The answer read by ``read``; bytes that do not parse are INTERNAL, as gRPC's client reports them."""
    try:
        return read(data)
    except wire.WireError as exc:
        raise CallError(INTERNAL, f"the answer does not parse: {exc}") from exc
