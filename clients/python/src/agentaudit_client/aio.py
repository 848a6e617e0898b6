"""The asyncio client: ``AsyncGatewayClient`` and its ``AsyncRun`` helper (same API, awaited)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import grpc
import grpc.aio

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc

from . import _convert
from ._convert import ActorLike, DurationLike, ResultStatusLike, ScopeLike
from ._guard import RunContext, Step, bind_args, failure, output_of, wait_seconds
from .address import grpc_target
from .errors import ApprovalRequired, DeadlineExceededError, GatewayError, from_rpc_error, raise_for_decision
from .models import ApprovalOutcome, DecideResult, ReportResult
from .session import DEFAULT_REPORT_LINGER_S, AsyncSession

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class AsyncGatewayClient:
    """asyncio client of the sidecar's GatewayService; the methods of ``GatewayClient``, awaited.

    Args:
        target: ``unix:///abs/path.sock``, ``unix:relative.sock``, ``unix://./relative.sock`` or ``HOST:PORT``
            (see :mod:`agentaudit_client.address`); a malformed one raises ``AddressError``.
        timeout: Deadline in seconds for each call (None: no deadline). ``wait_approval`` has its own.
        metadata: gRPC metadata sent with every call, as ``(key, value)`` pairs.

    Use it as an async context manager, or await ``aclose()`` when done.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 10.0,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self._channel = grpc.aio.insecure_channel(grpc_target(target))
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = tuple(metadata or ())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close(None)

    def session(
        self,
        *,
        report_linger_s: float = DEFAULT_REPORT_LINGER_S,
        on_report_error: Callable[[GatewayError], None] | None = None,
    ) -> AsyncSession:
        """A Session stream for decides and pipelined reports (``async with client.session() as s``).

        A pipelined report goes out with the next request, or ``report_linger_s`` later at the latest (0: at
        once). A pipelined report that fails is raised by ``flush()``, or given to ``on_report_error`` when set.
        Falls back to the unary calls against a sidecar without Session. See ``agentaudit_client.session``.
        """
        return AsyncSession(self._stub, self._metadata, self._timeout, report_linger_s, on_report_error)

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        deadline: float | None,
    ) -> _Response:
        """Calls ``method`` with the client's metadata and ``deadline`` seconds from now."""
        try:
            return await method(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

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
        """Asks whether an action may run. See ``GatewayClient.decide``."""
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
        return _convert.decide_result(await self._call(self._stub.Decide, request, self._timeout))

    async def report_result(
        self,
        event_id: str,
        *,
        status: ResultStatusLike = "succeeded",
        error: str = "",
        output: Mapping[str, Any] | None = None,
        duration: DurationLike | None = None,
    ) -> ReportResult:
        """Reports what happened when an allowed action ran. See ``GatewayClient.report_result``."""
        request = _convert.report_request(event_id, status=status, error=error, output=output, duration=duration)
        return _convert.report_result(await self._call(self._stub.ReportResult, request, self._timeout))

    async def wait_approval(
        self,
        approval_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline, sent to the server)
    ) -> ApprovalOutcome:
        """Waits until an approval is resolved or expires. See ``GatewayClient.wait_approval``."""
        request = gateway_pb2.WaitApprovalRequest(approval_id=approval_id)
        try:
            return _convert.approval_outcome(await self._call(self._stub.WaitApproval, request, timeout))
        except DeadlineExceededError:
            return ApprovalOutcome(state="pending")

    @contextlib.asynccontextmanager
    async def guard(
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
        wait_for_approval: timedelta | float | bool | None = None,
        next_step_id: Callable[[], int] | None = None,
    ) -> AsyncIterator[Step]:
        """Decides, runs the block only if allowed, and reports how it went. See ``GatewayClient.guard``.

        A cancelled block (``asyncio.CancelledError``) is reported "cancelled".

        With ``wait_for_approval`` (a ``timedelta``, seconds, or ``True`` for as long as the approval stays open),
        an "approval_required" answer is waited for (``WaitApproval``); once a human resolves it the step is
        decided again with the approval id (as step ``next_step_id()``, else ``step_id``), so the sidecar
        journals the resume and the block runs only if that is allowed. Denied or expired raise
        ``ActionStopped`` with the precise reason; still pending when the wait ends raises ``ApprovalRequired``.

        Raises:
            ActionStopped: The decision was "stop"; the block did not run.
            ApprovalRequired: The decision was "approval_required"; the block did not run.
            GatewayError: Deciding failed (the block did not run), or reporting a successful block did.
        """
        result = await self.decide(
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
        wait_s = wait_seconds(wait_for_approval)
        if result.decision == "approval_required" and wait_s is not None:
            outcome = await self.wait_approval(result.approval_id, timeout=None if wait_s == float("inf") else wait_s)
            if outcome.state == "pending":
                raise ApprovalRequired(result)
            # Resolved either way: ask again with the approval, so the sidecar journals the resume and names
            # the precise reason if it is refused (approval_denied, approval_expired, or a later layer's stop).
            result = await self.decide(
                run_id=run_id,
                tenant_id=tenant_id,
                action=action,
                args=args,
                step_id=next_step_id() if next_step_id is not None else step_id,
                actor=actor,
                agent_id=agent_id,
                scope=scope,
                approval_id=result.approval_id,
                traceparent=traceparent,
                labels=labels,
            )
        raise_for_decision(result)
        step = Step(result)
        started = time.monotonic()
        try:
            yield step
        except BaseException as exc:
            await self._report_failure(step, exc, time.monotonic() - started)
            raise
        step.report = await self.report_result(
            step.event_id, status="succeeded", output=step.output, duration=time.monotonic() - started
        )

    async def _report_failure(self, step: Step, exc: BaseException, elapsed: float) -> None:
        status, error = failure(exc)
        try:
            step.report = await self.report_result(step.event_id, status=status, error=error, duration=elapsed)
        except Exception as report_exc:
            # Whatever went wrong while reporting, the block's own exception is what the caller must see;
            # the lost report rides along as a note.
            exc.add_note(f"agentaudit: could not report the failure of {step.event_id}: {report_exc}")

    def run(
        self,
        run_id: str,
        *,
        tenant_id: str,
        agent_id: str = "",
        actor: ActorLike | None = None,
        scope: ScopeLike | None = None,
        traceparent: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> AsyncRun:
        """Starts an ``AsyncRun``: decisions sharing these fields, with step ids numbered from 1."""
        context = RunContext(run_id, tenant_id, agent_id, actor, scope, traceparent, labels)
        return AsyncRun(self, context)


class AsyncRun:
    """The steps of one agent run, numbered automatically. Create it with ``AsyncGatewayClient.run``."""

    def __init__(self, client: AsyncGatewayClient, context: RunContext) -> None:
        self._client = client
        self._context = context

    @property
    def run_id(self) -> str:
        """Identifies the run."""
        return self._context.run_id

    async def decide(
        self,
        action: str,
        args: Mapping[str, Any] | None = None,
        *,
        scope: ScopeLike | None = None,
        approval_id: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> DecideResult:
        """``AsyncGatewayClient.decide`` for the next step of this run."""
        kwargs = self._context.decide_kwargs(action, args, scope=scope, approval_id=approval_id, labels=labels)
        return await self._client.decide(**kwargs)

    def guard(
        self,
        action: str,
        args: Mapping[str, Any] | None = None,
        *,
        scope: ScopeLike | None = None,
        approval_id: str = "",
        labels: Mapping[str, str] | None = None,
        wait_for_approval: timedelta | float | bool | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Step]:
        """``AsyncGatewayClient.guard`` for the next step of this run (a resume after approval takes the step after)."""
        kwargs = self._context.decide_kwargs(action, args, scope=scope, approval_id=approval_id, labels=labels)
        return self._client.guard(**kwargs, wait_for_approval=wait_for_approval, next_step_id=self._context.next_step)

    def guarded(
        self,
        action: str,
        *,
        scope: ScopeLike | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Coroutine[Any, Any, _R]]]:
        """Decorates an ``async def`` so each call is a guarded step of this run.

        The call's arguments, named by the function's signature, are the action's args; the function
        runs only on allow, and its return value, if a dict, is reported as the output.
        """

        def decorate(func: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
            signature = inspect.signature(func)

            @functools.wraps(func)
            async def guarded_call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                arguments = bind_args(signature, args, kwargs)
                async with self.guard(action, arguments, scope=scope, labels=labels) as step:
                    value = await func(*args, **kwargs)
                    step.output = output_of(value)
                return value

            return guarded_call

        return decorate
