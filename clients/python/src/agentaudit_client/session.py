"""``AsyncSession``: Decide and ReportResult over one long-lived ``Session`` stream (docs/adr/0025-stream-session.md).

Open it with ``AsyncGatewayClient.session()``::

    async with client.session() as session:
        decision = await session.decide(run_id="r1", tenant_id="t", action="kb.search", args={...})
        await session.report_result(decision.event_id, status="succeeded")  # pipelined: returns once queued
    # leaving the block waits for every report's acknowledgement and raises if one failed

Guarantees:

* ``decide`` returns what the unary ``Decide`` returns, after the sidecar journaled it. A decide in flight when
  the stream breaks fails with ``UnavailableError`` and is never sent again by the session: a repeated Decide is
  a new pre-event (the sidecar counts it as attempt 2 of the step), not a deduplicated one.
* ``report_result`` (``wait=False``) returns once the report is queued on the stream. It is written with the
  next request, or ``report_linger_s`` (1 ms) later at the latest: an agent's next decide usually follows at
  once, and then one stream message (and, on the sidecar, one journal commit) carries both. ``0`` writes it at
  once. The session keeps every
  report not yet acknowledged and sends it again on a new stream after a break; ReportResult is idempotent per
  pre-event (the second answer says ``duplicate``), so a report is journaled once. ``flush()`` (and leaving the
  block) waits for every acknowledgement and raises the first failure (or, with ``on_report_error``, passes each
  failed report's error to that callback as it arrives, for a long-lived caller such as a proxy that logs them).
  ``wait=True`` awaits this one's ack.
* The sidecar answers a Decide only after every report sent before it on the stream was answered, so when
  ``decide`` returns, every earlier report's acknowledgement has been received (``unacknowledged`` says how
  many are still open: none sent before that decide).
* A sidecar without ``Session`` (UNIMPLEMENTED) is served by the unary calls instead, with the same results.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc

from . import _convert
from ._convert import ActorLike, DurationLike, ResultStatusLike, ScopeLike
from .errors import DeadlineExceededError, GatewayError, UnavailableError, from_rpc_error, from_status
from .models import DecideResult, ReportResult

_T = TypeVar("_T")
_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_MAX_BATCH = 256  # requests per stream message (the sidecar takes up to 1,024); the rest go in the next one
DEFAULT_REPORT_LINGER_S = 0.001
"""How long a pipelined report may wait for the next request to share its stream message (see ``report_result``)."""


class _SessionUnimplemented(Exception):
    """A decide refused because the sidecar has no Session: it was never processed, so it goes unary instead."""


def _status_of(exc: grpc.RpcError) -> gateway_pb2.SessionStatus:
    """A unary call's failure as the SessionStatus a stream would have answered."""
    metadata: Any = exc.trailing_metadata() if isinstance(exc, grpc.aio.AioRpcError) else None
    for key, value in metadata or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return gateway_pb2.SessionStatus.FromString(value)
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    return gateway_pb2.SessionStatus(code=code.value[0], message=details or "")


class AsyncSession:
    """One Session stream, opened on first use and re-opened (with backoff) after a break."""

    def __init__(
        self,
        stub: Any,
        metadata: Sequence[tuple[str, str]],
        timeout: float | None,
        report_linger_s: float = DEFAULT_REPORT_LINGER_S,
        on_report_error: Callable[[GatewayError], None] | None = None,
    ) -> None:
        if not 0 <= report_linger_s <= 1:
            raise ValueError(f"report_linger_s must be between 0 and 1 second, not {report_linger_s!r}")
        self._stub = stub
        self._on_report_error = on_report_error
        self._linger_s = report_linger_s
        self._linger: asyncio.TimerHandle | None = None
        self._lingering: set[asyncio.Task[None]] = set()
        self._metadata = tuple(metadata)
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._outbox: list[gateway_pb2.SessionMessage] = []  # queued for the next stream message (see _write)
        self._open_lock = asyncio.Lock()
        self._waiting: dict[int, asyncio.Future[gateway_pb2.SessionAnswer]] = {}
        self._decides: set[int] = set()
        self._unacked: dict[int, gateway_pb2.ReportResultRequest] = {}  # id on the current stream -> report
        self._failures: list[GatewayError] = []
        self._acked = asyncio.Event()
        self._unary = False
        self._breaks = 0
        self._closed = False
        self._reopening: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            with contextlib.suppress(GatewayError):
                await self.aclose()

    @property
    def unacknowledged(self) -> int:
        """Reports sent and not yet acknowledged."""
        return len(self._unacked)

    @property
    def uses_unary(self) -> bool:
        """True once the sidecar answered UNIMPLEMENTED to Session and the unary calls serve instead."""
        return self._unary

    async def _open(self) -> None:
        async with self._open_lock:
            if self._call is not None or self._unary:
                return
            if self._closed:
                raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "the session is closed")
            if self._breaks:
                await asyncio.sleep(_BACKOFF_S[min(self._breaks, len(_BACKOFF_S)) - 1])
            call = self._stub.Session(metadata=self._metadata)
            self._call = call
            self._outbox = []  # what was queued for a broken stream: decides failed, reports resent below
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            self._reader = asyncio.get_running_loop().create_task(self._read(call))
            resend, self._unacked = self._unacked, {}
            for old, report in resend.items():  # idempotent: journaled once, a repeat answers "duplicate"
                rid = next(self._ids)
                self._unacked[rid] = report
                if old in self._waiting:  # a caller awaiting this report (wait=True) hears of the new id
                    self._waiting[rid] = self._waiting.pop(old)
                await self._write(call, gateway_pb2.SessionMessage(id=rid, report=report))

    async def _write(self, call: Any, request: gateway_pb2.SessionMessage) -> None:
        """Sends ``request``, with every other one queued while the previous stream message was being written: one
        stream message costs grpc far more than what it holds, so concurrent callers share one."""
        if call is None:
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "the session broke; it reconnects on the next call")
        self._outbox.append(request)
        await self._send(call)

    async def _send(self, call: Any) -> None:
        """Writes everything queued (if anything): one stream message, or several of ``_MAX_BATCH``."""
        async with self._write_lock:
            if self._linger is not None:  # what lingers goes now
                self._linger.cancel()
                self._linger = None
            while self._outbox:  # empty already if a caller before us sent ours with theirs
                batch, self._outbox = self._outbox[:_MAX_BATCH], self._outbox[_MAX_BATCH:]
                try:
                    await call.write(gateway_pb2.SessionRequest(messages=batch))
                except (grpc.RpcError, grpc.aio.UsageError) as exc:  # the stream is gone (its reader says why)
                    if self._call is call:
                        self._call = None
                        self._breaks += 1
                    raise UnavailableError(grpc.StatusCode.UNAVAILABLE, f"the session broke: {exc}") from exc

    async def _read(self, call: Any) -> None:
        error: GatewayError | None = None
        try:
            async for response in call:
                for answer in response.answers:
                    self._deliver(answer)
            error = UnavailableError(grpc.StatusCode.UNAVAILABLE, "the sidecar ended the session")
            self._breaks = 0
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                self._unary = True
            error = from_rpc_error(exc)
            self._breaks += 1
        finally:
            if self._call is call:
                self._call = None
            self._broken(error or UnavailableError(grpc.StatusCode.UNAVAILABLE, "the session was closed"))

    def _deliver(self, response: gateway_pb2.SessionAnswer) -> None:
        rid = response.id
        report = self._unacked.pop(rid, None)
        if report is not None:
            if response.WhichOneof("result") == "error" and rid not in self._waiting:
                failure = from_status(response.error)
                if self._on_report_error is None:
                    self._failures.append(failure)  # raised by flush(); an awaited one raises there
                else:
                    try:
                        self._on_report_error(failure)
                    except Exception:  # a broken callback must not break the reader: flush() raises it instead
                        self._failures.append(failure)
            if not self._unacked:
                self._acked.set()
        self._decides.discard(rid)
        waiter = self._waiting.pop(rid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _broken(self, error: GatewayError) -> None:
        """In-flight decides fail (never resent); unacknowledged reports stay, for the next stream."""
        for rid in list(self._decides):
            waiter = self._waiting.pop(rid, None)
            if waiter is not None and not waiter.done() and self._unary:
                waiter.set_exception(_SessionUnimplemented())
            elif waiter is not None and not waiter.done():
                waiter.set_exception(
                    UnavailableError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"the session broke with this decide in flight ({error}); it may or may not have been "
                        "journaled, and is not sent again",
                    )
                )
        self._decides.clear()
        for rid, waiter in list(self._waiting.items()):  # awaited reports: they are resent, so keep waiting
            if rid not in self._unacked and not waiter.done():
                waiter.set_exception(error)
                del self._waiting[rid]
        if self._unacked and not self._closed and (self._reopening is None or self._reopening.done()):
            self._reopening = asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        """A new stream for the unacknowledged reports (or the unary calls, if Session is unimplemented)."""
        with contextlib.suppress(GatewayError, grpc.RpcError):
            if self._unary:
                await self._unary_resend()
            else:
                await self._open()

    async def _unary_resend(self) -> None:
        for rid, report in list(self._unacked.items()):
            try:
                answer = await self._stub.ReportResult(report, timeout=self._timeout, metadata=self._metadata)
                response = gateway_pb2.SessionAnswer(id=rid, report=answer)
            except grpc.RpcError as exc:
                response = gateway_pb2.SessionAnswer(id=rid, error=_status_of(exc))
            self._deliver(response)
        self._acked.set()

    async def _request(self, request: gateway_pb2.SessionMessage) -> gateway_pb2.SessionAnswer:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = waiter
        try:
            await self._write(self._call, request)
            return await asyncio.wait_for(waiter, self._timeout)
        except TimeoutError:
            message = "the sidecar did not answer in time"
            raise DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, message) from None
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            self._waiting.pop(request.id, None)

    async def decide(
        self,
        *,
        run_id: str,
        tenant_id: str,
        action: str,
        args: Mapping[str, Any] | None = None,
        step_id: int = 0,
        actor: ActorLike | None = None,
        agent_id: str = "",
        scope: ScopeLike | None = None,
        approval_id: str = "",
        traceparent: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> DecideResult:
        """``AsyncGatewayClient.decide`` on the stream; earlier reports are acknowledged when it returns."""
        request = _convert.decide_request(
            run_id=run_id,
            tenant_id=tenant_id,
            action=action,
            args=args,
            step_id=step_id,
            actor=actor,
            agent_id=agent_id,
            scope=scope,
            approval_id=approval_id,
            traceparent=traceparent,
            labels=labels,
        )
        await self._open()
        if not self._unary:
            rid = next(self._ids)
            self._decides.add(rid)
            try:
                response = await self._request(gateway_pb2.SessionMessage(id=rid, decide=request))
            except _SessionUnimplemented:
                pass  # the stream was refused before this decide was read: the unary call below is its only send
            else:
                if response.WhichOneof("result") == "error":
                    raise from_status(response.error)
                return _convert.decide_result(response.decide)
        try:
            return _convert.decide_result(
                await self._stub.Decide(request, timeout=self._timeout, metadata=self._metadata)
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def report_result(
        self,
        event_id: str,
        *,
        status: ResultStatusLike = "succeeded",
        error: str = "",
        output: Mapping[str, Any] | None = None,
        duration: DurationLike | None = None,
        wait: bool = False,
    ) -> ReportResult | None:
        """Queues a report (None); with ``wait=True`` returns its acknowledgement or raises its failure."""
        request = _convert.report_request(event_id, status=status, error=error, output=output, duration=duration)
        await self._open()
        if self._unary:
            try:
                answer = await self._stub.ReportResult(request, timeout=self._timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from exc
            return _convert.report_result(answer)
        rid = next(self._ids)
        self._unacked[rid] = request
        self._acked.clear()
        message = gateway_pb2.SessionMessage(id=rid, report=request)
        if not wait:
            if self._call is None:
                return None  # kept in _unacked: resent on the next stream
            if self._linger_s == 0:
                with contextlib.suppress(UnavailableError):  # kept in _unacked: resent on the next stream
                    await self._write(self._call, message)
                return None
            # It goes out with the next request (an agent's next decide usually follows at once: one stream
            # message, and one journal commit, for both), or after the linger at the latest.
            self._outbox.append(message)
            if self._linger is None:
                self._linger = asyncio.get_running_loop().call_later(self._linger_s, self._linger_over, self._call)
            return None
        response = await self._request(message)
        if response.WhichOneof("result") == "error":
            raise from_status(response.error)
        return _convert.report_result(response.report)

    def _linger_over(self, call: Any) -> None:
        self._linger = None
        if self._outbox and call is self._call:
            task = asyncio.get_running_loop().create_task(self._send_quietly(call))
            self._lingering.add(task)
            task.add_done_callback(self._lingering.discard)

    async def _send_quietly(self, call: Any) -> None:
        with contextlib.suppress(UnavailableError):  # the reports stay in _unacked: resent on the next stream
            await self._send(call)

    async def flush(self) -> None:
        """Waits until every report sent is acknowledged; raises the first failure (once)."""
        if self._outbox and self._call is not None:
            with contextlib.suppress(UnavailableError):
                await self._send(self._call)
        deadline = None if self._timeout is None else asyncio.get_running_loop().time() + self._timeout
        while self._unacked:
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"{len(self._unacked)} report(s) not acknowledged in time"
                )
            if self._call is None and not self._unary:
                await self._reopen()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), None if remaining is None else min(remaining, 0.5))
        if self._failures:
            first, self._failures = self._failures[0], []
            raise first

    async def aclose(self) -> None:
        """Flushes, then ends the stream."""
        try:
            await self.flush()
        finally:
            self._closed = True
            call, self._call = self._call, None
            if call is not None:
                with contextlib.suppress(grpc.RpcError, RuntimeError):
                    async with self._write_lock:
                        await call.done_writing()
            if self._reader is not None:
                with contextlib.suppress(asyncio.TimeoutError, grpc.RpcError):
                    await asyncio.wait_for(asyncio.shield(self._reader), 5.0)
                self._reader.cancel()


class Session:
    """The blocking face of :class:`AsyncSession` (``GatewayClient.session()``): the same stream and guarantees.

    The stream lives on its own event loop in a daemon thread (grpc's sync API has no cheap bidirectional
    stream a caller can write to from many threads); each call hands its work to that loop and waits. Use it as a
    context manager, or call ``close()``: that flushes (raising the first failed report) and stops the thread.
    """

    def __init__(
        self,
        target: str,
        metadata: Sequence[tuple[str, str]],
        timeout: float | None,
        report_linger_s: float = DEFAULT_REPORT_LINGER_S,
        on_report_error: Callable[[GatewayError], None] | None = None,
    ) -> None:
        if not 0 <= report_linger_s <= 1:
            raise ValueError(f"report_linger_s must be between 0 and 1 second, not {report_linger_s!r}")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agentaudit-session", daemon=True)
        self._thread.start()

        async def build() -> tuple[grpc.aio.Channel, AsyncSession]:
            channel = grpc.aio.insecure_channel(target)
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            return channel, AsyncSession(stub, metadata, timeout, report_linger_s, on_report_error)

        self._channel, self._session = self._run(build())

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(GatewayError):
                self.close()

    @property
    def unacknowledged(self) -> int:
        """Reports sent and not yet acknowledged."""
        return self._session.unacknowledged

    def decide(self, **kwargs: Any) -> DecideResult:
        """``AsyncSession.decide``, blocking (the same keyword arguments as ``GatewayClient.decide``)."""
        return self._run(self._session.decide(**kwargs))

    def report_result(self, event_id: str, *, wait: bool = False, **kwargs: Any) -> ReportResult | None:
        """``AsyncSession.report_result``, blocking until queued (or, with ``wait=True``, acknowledged)."""
        return self._run(self._session.report_result(event_id, wait=wait, **kwargs))

    def flush(self) -> None:
        """Waits until every report sent is acknowledged; raises the first failure (once)."""
        self._run(self._session.flush())

    def close(self) -> None:
        """Flushes, ends the stream and stops the session's thread."""
        if not self._thread.is_alive():
            return
        try:
            self._run(self._session.aclose())
        finally:
            self._run(self._channel.close(None))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            self._loop.close()
