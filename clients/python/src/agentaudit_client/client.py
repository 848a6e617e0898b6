"""The synchronous client: ``GatewayClient`` and its ``Run`` helper."""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import grpc

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc

from . import _convert
from ._convert import ActorLike, DurationLike, ResultStatusLike, ScopeLike
from ._guard import RunContext, Step, bind_args, failure, output_of, wait_seconds
from .address import grpc_target
from .errors import ApprovalRequired, DeadlineExceededError, GatewayError, from_rpc_error, raise_for_decision
from .models import ApprovalOutcome, DecideResult, ReportResult
from .session import DEFAULT_REPORT_LINGER_S, Session

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class GatewayClient:
    """Blocking client of the sidecar's GatewayService.

    Args:
        target: ``unix:///abs/path.sock``, ``unix:relative.sock``, ``unix://./relative.sock`` or ``HOST:PORT``
            (see :mod:`agentaudit_client.address`); a malformed one raises ``AddressError``.
        timeout: Deadline in seconds for each call (None: no deadline). ``wait_approval`` has its own.
        metadata: gRPC metadata sent with every call, as ``(key, value)`` pairs.

    Use it as a context manager, or call ``close()`` when done.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 10.0,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self._target = grpc_target(target)
        self._channel = grpc.insecure_channel(self._target)
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = tuple(metadata or ())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def session(
        self,
        *,
        report_linger_s: float = DEFAULT_REPORT_LINGER_S,
        on_report_error: Callable[[GatewayError], None] | None = None,
    ) -> Session:
        """A Session stream for decides and pipelined reports (``with client.session() as s``).

        The blocking face of ``AsyncGatewayClient.session()``; see ``agentaudit_client.session``.
        ``on_report_error`` is called on the session's own thread.
        """
        return Session(self._target, self._metadata, self._timeout, report_linger_s, on_report_error)

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        deadline: float | None,
    ) -> _Response:
        """Calls ``method`` with the client's metadata and ``deadline`` seconds from now."""
        try:
            return method(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def decide(
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
        """Asks whether an action may run; the sidecar journals the decision before answering.

        Args:
            run_id: Identifies the agent run.
            tenant_id: Tenant the run acts for.
            action: Action name, for example "refund.create".
            args: JSON-like arguments of the action.
            step_id: Step number, monotonic within the run.
            actor: Who initiated the run: an ``Actor`` or a tuple such as ``("user", "u_1")``.
            agent_id: Which agent proposes the action.
            scope: "user", "tenant" or "global" (or the ``Scope`` enum value).
            approval_id: Set when resuming after an approval.
            traceparent: W3C trace context.
            labels: Free-form string labels.

        Returns:
            The decision. "stop" and "approval_required" are returned, not raised.

        Raises:
            GatewayError: The call failed (see ``errors``).
        """
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
        return _convert.decide_result(self._call(self._stub.Decide, request, self._timeout))

    def report_result(
        self,
        event_id: str,
        *,
        status: ResultStatusLike = "succeeded",
        error: str = "",
        output: Mapping[str, Any] | None = None,
        duration: DurationLike | None = None,
    ) -> ReportResult:
        """Reports what happened when an allowed action ran. Idempotent per pre-event.

        Args:
            event_id: The ``event_id`` of the decision.
            status: "succeeded", "failed", "cancelled" or "timed_out" (or the ``ResultStatus`` value).
            error: Error message when the execution failed.
            output: JSON-like output of the action.
            duration: How long the execution took, in seconds or as a timedelta.

        Raises:
            NotFoundError: ``event_id`` is unknown.
            FailedPreconditionError: The action was not allowed (the attempt is journaled as a violation).
            GatewayError: The call failed otherwise.
        """
        request = _convert.report_request(event_id, status=status, error=error, output=output, duration=duration)
        return _convert.report_result(self._call(self._stub.ReportResult, request, self._timeout))

    def wait_approval(self, approval_id: str, *, timeout: float | None = None) -> ApprovalOutcome:
        """Blocks until an approval is resolved or expires.

        Args:
            approval_id: The ``approval_id`` of an "approval_required" decision.
            timeout: Seconds to wait at most (None: until the approval is resolved or expires).

        Returns:
            The outcome; its state is "pending" when ``timeout`` passed first.
        """
        request = gateway_pb2.WaitApprovalRequest(approval_id=approval_id)
        try:
            return _convert.approval_outcome(self._call(self._stub.WaitApproval, request, timeout))
        except DeadlineExceededError:
            return ApprovalOutcome(state="pending")

    @contextlib.contextmanager
    def guard(
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
    ) -> Iterator[Step]:
        """Decides, runs the block only if allowed, and reports how it went.

        Takes the arguments of ``decide``. On allow the block runs and is reported "succeeded" with its
        duration and ``step.output``; if it raises, it is reported "failed" (or "cancelled" for a
        ``BaseException`` such as ``KeyboardInterrupt``) and the exception propagates.

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
        result = self.decide(
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
            outcome = self.wait_approval(result.approval_id, timeout=None if wait_s == float("inf") else wait_s)
            if outcome.state == "pending":
                raise ApprovalRequired(result)
            # Resolved either way: ask again with the approval, so the sidecar journals the resume and names
            # the precise reason if it is refused (approval_denied, approval_expired, or a later layer's stop).
            result = self.decide(
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
            self._report_failure(step, exc, time.monotonic() - started)
            raise
        step.report = self.report_result(
            step.event_id, status="succeeded", output=step.output, duration=time.monotonic() - started
        )

    def _report_failure(self, step: Step, exc: BaseException, elapsed: float) -> None:
        status, error = failure(exc)
        try:
            step.report = self.report_result(step.event_id, status=status, error=error, duration=elapsed)
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
    ) -> Run:
        """Starts a ``Run``: decisions sharing these fields, with step ids numbered from 1."""
        context = RunContext(run_id, tenant_id, agent_id, actor, scope, traceparent, labels)
        return Run(self, context)


class Run:
    """The steps of one agent run, numbered automatically. Create it with ``GatewayClient.run``."""

    def __init__(self, client: GatewayClient, context: RunContext) -> None:
        self._client = client
        self._context = context

    @property
    def run_id(self) -> str:
        """Identifies the run."""
        return self._context.run_id

    def decide(
        self,
        action: str,
        args: Mapping[str, Any] | None = None,
        *,
        scope: ScopeLike | None = None,
        approval_id: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> DecideResult:
        """``GatewayClient.decide`` for the next step of this run."""
        kwargs = self._context.decide_kwargs(action, args, scope=scope, approval_id=approval_id, labels=labels)
        return self._client.decide(**kwargs)

    def guard(
        self,
        action: str,
        args: Mapping[str, Any] | None = None,
        *,
        scope: ScopeLike | None = None,
        approval_id: str = "",
        labels: Mapping[str, str] | None = None,
        wait_for_approval: timedelta | float | bool | None = None,
    ) -> contextlib.AbstractContextManager[Step]:
        """``GatewayClient.guard`` for the next step of this run (a resume after approval takes the step after)."""
        kwargs = self._context.decide_kwargs(action, args, scope=scope, approval_id=approval_id, labels=labels)
        return self._client.guard(**kwargs, wait_for_approval=wait_for_approval, next_step_id=self._context.next_step)

    def guarded(
        self,
        action: str,
        *,
        scope: ScopeLike | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """Decorates a function so each call is a guarded step of this run.

        The call's arguments, named by the function's signature, are the action's args; the function
        runs only on allow, and its return value, if a dict, is reported as the output.
        """

        def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
            signature = inspect.signature(func)

            @functools.wraps(func)
            def guarded_call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                arguments = bind_args(signature, args, kwargs)
                with self.guard(action, arguments, scope=scope, labels=labels) as step:
                    value = func(*args, **kwargs)
                    step.output = output_of(value)
                return value

            return guarded_call

        return decorate
