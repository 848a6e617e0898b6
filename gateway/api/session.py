"""GatewayService.Session: Decide and ReportResult messages on one long-lived bidirectional stream.

A unary call costs grpc Python far more per call than a message on an open stream costs (ADR 0025).
Each message gets exactly what the unary call gives it (:meth:`GatewayServicer.decide_message` and
:meth:`~GatewayServicer.report_message`: the same validation, journaling and record-before-answer), answered by
its id, possibly out of order. What the stream adds, step by step:

1. **Open.** Refused UNAVAILABLE once the sidecar drains. The agent API takes no credentials (a local socket or
   loopback, docs/security.md); the metadata the unary path reads, ``traceparent`` (and ``tracestate`` for spans), is
   read once here and applies to every Decide that carries none.
2. **Read.** At most ``server.session_max_in_flight`` messages are read and not yet answered. At the bound the
   reader stops reading, and HTTP/2 flow control holds the client back (backpressure, never an error).
3. **Refuse per message.** A message that fails validation (or any other check) gets the status the unary call
   would have failed with, as a ``SessionStatus`` in its response; the stream goes on. The stream fails
   (INVALID_ARGUMENT) only when it is malformed: an id already in flight, a request with neither message, an
   undecodable request without a readable id. The messages in flight are answered first.
4. **Order.** A Decide read after a ReportResult on this stream is journaled after that report's post-event, and
   answered only after that report has been answered: a client holding a decision holds the acknowledgement of
   every report it sent before that Decide, and the journal's order follows the stream's. (The journal writer
   being FIFO is not enough on its own: a report whose pre-event is not cached reads the journal before it
   appends, so a Decide read after it would be queued first. The Decide waits for the report's post-event to be
   queued, which on the common path has happened before the Decide runs at all.)
5. **Drain.** :meth:`SessionHub.drain` (shutdown) makes every stream refuse the messages it reads from then on with
   UNAVAILABLE and end with OK once its messages in flight are answered. So after an OK end every request was
   either answered or never processed: a client may send the unanswered ones again elsewhere.
6. **Client gone.** A message in flight when the client hangs up runs to its journal commit anyway (its task is
   owned by the hub, not by the stream); only its answer is dropped. A unary call keeps its queued append too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from agentaudit.v1 import gateway_pb2
from gateway import metrics
from gateway.errors import AgentAuditError, FieldViolation, InvalidRequestError, ServiceUnavailableError
from gateway.rpc.handlers import Context
from gateway.rpc.status import to_rpc_status, to_status
from gateway.rpc.wire import diagnose, length_delimited_fields, top_level_varint
from gateway.tracecontext import traceparent_header

_R = TypeVar("_R")

if TYPE_CHECKING:
    from gateway.api.gateway_service import GatewayServicer
    from gateway.rpc.telemetry import Telemetry

log = logging.getLogger(__name__)

SESSION_METHOD = "Session"
DEFAULT_MAX_IN_FLIGHT = 256
"""``server.session_max_in_flight``: messages read and not yet answered, per stream."""
MAX_BATCH = 1024
"""Requests in one stream message at most (the proto says so): a bigger one is a malformed stream, so one message
cannot make the sidecar decode an unbounded number of requests at once."""

_SERVICE = "agentaudit.v1.GatewayService"
_DRAINING = "the sidecar is shutting down; reconnect (to another replica) and send again"
_END = object()  # the response queue's end marker
_PREFIXES = ("decide.", "report.")


@dataclass(frozen=True)
class UndecodableMessage:
    """Stands in for a SessionMessage whose bytes did not decode; ``id`` is None when even that is unreadable."""

    id: int | None
    violations: list[FieldViolation]


Incoming = gateway_pb2.SessionMessage | UndecodableMessage


def decode_request(data: bytes) -> list[Incoming]:
    """The session's deserializer: one stream message's requests, in order. Never raises: an element that does
    not decode is named as the unary call names it, and the others still decode; a message whose framing is
    broken is one UndecodableMessage without an id (the stream fails)."""
    try:
        return list(gateway_pb2.SessionRequest.FromString(data).messages)
    except DecodeError:
        pass
    parts = length_delimited_fields(data, gateway_pb2.SessionRequest.MESSAGES_FIELD_NUMBER)
    if parts is None:
        return [UndecodableMessage(None, [FieldViolation("messages", "the stream message does not decode")])]
    return [_decode_message(part) for part in parts]


def _decode_message(data: bytes) -> Incoming:
    try:
        return gateway_pb2.SessionMessage.FromString(data)
    except DecodeError:
        found = diagnose(data, gateway_pb2.SessionMessage.DESCRIPTOR)
        violations = [FieldViolation(_unprefixed(v.field), v.description) for v in found]
        return UndecodableMessage(top_level_varint(data, 1), violations)


def _unprefixed(field: str) -> str:
    for prefix in _PREFIXES:
        if field.startswith(prefix):
            return field[len(prefix) :]
    return field


class SessionHub:
    """Serves every Session stream of one servicer; owns the tasks of their messages and drains them."""

    def __init__(self, servicer: GatewayServicer, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self._servicer = servicer
        self.max_in_flight = max_in_flight
        self.telemetry: Telemetry | None = None
        self._streams: set[_Stream] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        # The unary calls' series: a dashboard sees a Decide as a Decide, whichever way it came.
        self.latency = {
            "decide": metrics.REQUEST_SECONDS.labels("Decide"),
            "report": metrics.REQUEST_SECONDS.labels("ReportResult"),
        }
        self.invalid = {
            "decide": metrics.INVALID_REQUESTS.labels("Decide"),
            "report": metrics.INVALID_REQUESTS.labels("ReportResult"),
        }

    @property
    def open_streams(self) -> int:
        """Streams currently open."""
        return len(self._streams)

    def drain(self) -> None:
        """Refuses new streams and new messages from now on; each stream ends once its messages are answered."""
        self._draining = True
        for stream in list(self._streams):
            stream.drain()

    async def aclose(self) -> None:
        """Drains, then waits for every message still being processed (including those of departed clients)."""
        self.drain()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(
        self, requests: AsyncIterator[list[Incoming]], context: Context
    ) -> AsyncIterator[gateway_pb2.SessionResponse]:
        """The stream handler: answers every message read, in the order the answers are ready; the answers
        ready at once go out in one stream message (a stream message costs grpc ~150 µs of CPU whatever it holds,
        so under load this is most of the stream's cost; at concurrency 1 it is one answer per message)."""
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _DRAINING)
        metadata = context.invocation_metadata() or ()
        stream = _Stream(self, self._servicer, traceparent_header(metadata))
        if self.telemetry is not None:  # the span's parent: the same header the journal's trace_id comes from
            stream.trace_metadata = tuple((k, v) for k, v in metadata if k in ("traceparent", "tracestate"))
        self._streams.add(stream)
        reader = asyncio.get_running_loop().create_task(stream.read(requests))
        out, slots = stream.out, stream.slots
        try:
            ended = False
            while not ended:
                answer = await out.get()
                if answer is _END:
                    break
                answers = [answer]
                while not out.empty():
                    more = out.get_nowait()
                    if more is _END:
                        ended = True
                        break
                    answers.append(more)
                yield gateway_pb2.SessionResponse(answers=answers)
                for _ in answers:
                    slots.release()
        finally:
            self._streams.discard(stream)
            reader.cancel()
        if stream.failure is not None:
            status = to_status(stream.failure)
            await context.abort(status.code, status.details, status.trailing_metadata)


class _Report:
    """A ReportResult read on a stream: ``queued`` once its place in the journal is fixed, ``done`` once answered."""

    __slots__ = ("done", "queued")

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.queued: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    def mark_queued(self) -> None:
        if not self.queued.done():
            self.queued.set_result(None)


class _Stream:
    """The state of one open Session: its in-flight ids, its unanswered reports, its end."""

    def __init__(self, hub: SessionHub, servicer: GatewayServicer, traceparent: str) -> None:
        self.hub = hub
        self.servicer = servicer
        self.traceparent = traceparent
        self.trace_metadata: tuple[tuple[str, Any], ...] = ()  # the stream's traceparent/tracestate, for spans
        self.out: asyncio.Queue[Any] = asyncio.Queue()  # bounded by the slots: one answer per slot taken
        self.slots = asyncio.Semaphore(hub.max_in_flight)
        self.ids: set[int] = set()
        self.reports: set[_Report] = set()  # reports read and not yet answered (step 4)
        self.reading = True
        self.draining = False
        self.failure: AgentAuditError | None = None

    def drain(self) -> None:
        self.draining = True
        self.stop_reading()

    def stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            if not self.ids:
                self.out.put_nowait(_END)

    def fail(self, error: AgentAuditError) -> None:
        """The stream is malformed: answer what is in flight, then end it with ``error``."""
        if self.failure is None:
            self.failure = error
        self.stop_reading()

    async def read(self, requests: AsyncIterator[list[Incoming]]) -> None:
        """Reads while a slot is free (step 2); ends at the client's half-close, a malformed request or a drain.

        A stream message's requests are dispatched in order, each when a slot is free; once the stream stops
        reading (malformed, draining), the rest of that message is not processed, as a later message would not be.
        """
        iterator = aiter(requests)
        try:
            while self.reading:
                await self.slots.acquire()  # the first request's slot: at the bound, nothing more is read
                try:
                    batch = await anext(iterator)
                except StopAsyncIteration:
                    self.slots.release()
                    break
                if not batch or len(batch) > MAX_BATCH:
                    self.slots.release()
                    why = f"holds {len(batch)} requests; one stream message carries 1 to {MAX_BATCH}"
                    self.fail(InvalidRequestError([FieldViolation("messages", why)]))
                    break
                for index, request in enumerate(batch):
                    if index:
                        await self.slots.acquire()
                    if not self.reading:
                        self.slots.release()
                        break
                    self.dispatch(request)
        except grpc.RpcError:
            pass  # the client went away; the handler is being cancelled
        finally:
            self.stop_reading()

    def dispatch(self, request: Incoming) -> None:
        if isinstance(request, UndecodableMessage):
            if request.id is None:
                self.fail(InvalidRequestError(request.violations))
                return
            if self._claim(request.id):
                self.answer(request.id, self._error(InvalidRequestError(request.violations)))
            return
        rid = request.id
        kind = request.WhichOneof("message")
        if kind is None:
            self.fail(InvalidRequestError([FieldViolation("message", "one of decide or report is required")]))
            return
        if not self._claim(rid):
            return
        if self.draining:
            self.answer(rid, self._error(ServiceUnavailableError(_DRAINING)))
            return
        if kind == "decide":
            prior = tuple(self.reports) if self.reports else ()
            self.hub.spawn(self.decide(rid, request.decide, prior))
        else:
            report = _Report()
            self.reports.add(report)
            self.hub.spawn(self.report(rid, request.report, report))

    def _claim(self, rid: int) -> bool:
        if rid in self.ids:
            self.fail(InvalidRequestError([FieldViolation("id", f"{rid} is already in flight on this stream")]))
            return False
        self.ids.add(rid)
        return True

    def answer(self, rid: int, response: gateway_pb2.SessionAnswer) -> None:
        response.id = rid
        self.ids.discard(rid)
        self.out.put_nowait(response)
        if not self.reading and not self.ids:
            self.out.put_nowait(_END)

    def _error(self, exc: BaseException, kind: str = "") -> gateway_pb2.SessionAnswer:
        if isinstance(exc, AgentAuditError):
            if isinstance(exc, InvalidRequestError) and kind:
                self.hub.invalid[kind].inc()
            log.debug("Session message refused: %s", exc)
        else:
            log.error("Session %s failed", kind or "message", exc_info=exc)
        status = to_rpc_status(exc)
        return gateway_pb2.SessionAnswer(
            error=gateway_pb2.SessionStatus(code=status.code, message=status.message, details=status.details)
        )

    async def _traced(self, method: str, request: Any, call: Callable[[], Awaitable[_R]]) -> _R:
        """``call()``, inside a server span named like the unary method when telemetry is on."""
        telemetry = self.hub.telemetry
        if telemetry is None:
            return await call()
        with telemetry.server_span(_SERVICE, method, request, self.trace_metadata) as span:
            result = await call()
            telemetry.annotate(span, result)
            return result

    async def decide(self, rid: int, request: gateway_pb2.DecideRequest, prior: tuple[_Report, ...]) -> None:
        started = time.perf_counter()
        unqueued = [report.queued for report in prior if not report.queued.done()]  # usually none (see step 4)
        if unqueued:
            await asyncio.wait(unqueued)  # step 4: journaled behind the earlier reports' post-events
        try:
            decided = await self._traced(
                "Decide", request, lambda: self.servicer.decide_message(request, self.traceparent)
            )
            response = gateway_pb2.SessionAnswer(decide=decided)
        except Exception as exc:  # every failure is this message's answer, never the stream's end
            response = self._error(exc, "decide")
        unanswered = [report.done for report in prior if not report.done.done()]  # usually none: asyncio.wait is dear
        if unanswered:
            await asyncio.wait(unanswered)  # step 4: earlier reports are answered first
        self.hub.latency["decide"].observe(time.perf_counter() - started)
        self.answer(rid, response)

    async def report(self, rid: int, request: gateway_pb2.ReportResultRequest, report: _Report) -> None:
        started = time.perf_counter()
        try:
            reported = await self._traced(
                "ReportResult", request, lambda: self.servicer.report_message(request, report.mark_queued)
            )
            response = gateway_pb2.SessionAnswer(report=reported)
        except Exception as exc:
            response = self._error(exc, "report")
        finally:
            report.mark_queued()  # a repeat, a refusal or a failure queued nothing: no Decide waits on it
        try:
            self.hub.latency["report"].observe(time.perf_counter() - started)
            self.answer(rid, response)
        finally:
            # After the answer is queued: a Decide waiting on this report is answered behind it (step 4).
            self.reports.discard(report)
            report.done.set_result(None)
