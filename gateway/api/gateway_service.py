"""GatewayService: the agent-facing RPCs. Thin: parse → use case → respond."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from agentaudit.v1 import gateway_pb2
from gateway import metrics
from gateway.api import convert, validation
from gateway.api.session import SESSION_METHOD, SessionHub, decode_request
from gateway.config import ServerConfig
from gateway.errors import FieldViolation, InvalidRequestError, ViolationError
from gateway.rpc.handlers import Context, service_handler
from gateway.sidecar.approvals import ApprovalBook
from gateway.sidecar.decider import AlertSink, ControlGate, Decider, PolicySource
from gateway.sidecar.recorder import AuditRecorder
from gateway.sidecar.shared_limits import RedisLimits
from gateway.tracecontext import traceparent_header

if TYPE_CHECKING:
    from gateway.rpc.telemetry import Telemetry

SERVICE_NAME = "agentaudit.v1.GatewayService"


class GatewayServicer:
    """Implements Decide, ReportResult and WaitApproval, and the Session that carries the first two."""

    def __init__(
        self,
        policy: PolicySource,
        recorder: AuditRecorder,
        limits: ServerConfig,
        approvals: ApprovalBook,
        alerts: AlertSink | None = None,
        gate: Callable[[], str] | None = None,
        shared_limits: RedisLimits | None = None,
        control: ControlGate | None = None,
    ) -> None:
        self._decider = Decider(policy, recorder, approvals, alerts, gate, shared_limits, control)
        self._recorder = recorder
        self._limits = limits
        self._approvals = approvals
        self.sessions = SessionHub(self, limits.session_max_in_flight)

    def drain(self) -> None:
        """Shutdown began: Session streams refuse new messages and end once their messages are answered."""
        self.sessions.drain()

    async def decide(self, request: gateway_pb2.DecideRequest, context: Context) -> gateway_pb2.DecideResponse:
        """Evaluates and records one proposed action. Answers only after the pre-event is durable."""
        header = "" if request.traceparent else traceparent_header(context.invocation_metadata())
        return await self.decide_message(request, header)

    async def decide_message(self, request: gateway_pb2.DecideRequest, traceparent: str) -> gateway_pb2.DecideResponse:
        """Decide's use case, shared by the unary call and the Session (``traceparent``: the call's header)."""
        if not request.traceparent:
            request.traceparent = traceparent
        action = validation.parse_decide(
            request, max_args_bytes=self._limits.max_args_bytes, max_depth=self._limits.max_depth
        )
        return convert.decide_response(await self._decider.decide(action))

    async def report_result(
        self, request: gateway_pb2.ReportResultRequest, context: Context
    ) -> gateway_pb2.ReportResultResponse:
        """Records the post-event of an allowed action (idempotent); a non-allowed one is a violation."""
        return await self.report_message(request)

    async def report_message(
        self, request: gateway_pb2.ReportResultRequest, queued: Callable[[], None] | None = None
    ) -> gateway_pb2.ReportResultResponse:
        """ReportResult's use case, shared by the unary call and the Session (``queued``: see ``record_result``)."""
        event_id, status, error, output, duration_ns = validation.parse_report(
            request, max_output_bytes=self._limits.max_args_bytes, max_depth=self._limits.max_depth
        )
        try:
            outcome = await self._recorder.record_result(event_id, status, error, output, duration_ns, queued)
        except ViolationError:
            metrics.VIOLATIONS.inc()
            raise
        return gateway_pb2.ReportResultResponse(event_id=outcome.event_id, duplicate=outcome.duplicate)

    async def wait_approval(
        self, request: gateway_pb2.WaitApprovalRequest, context: Context
    ) -> gateway_pb2.WaitApprovalResponse:
        """Blocks until the approval is resolved or expires, or the call's deadline is near."""
        if not request.approval_id or len(request.approval_id) > 128:
            raise InvalidRequestError([FieldViolation("approval_id", "is required (at most 128 bytes)")])
        remaining = context.time_remaining()
        # Answer a little before the client's deadline so it gets "still pending" rather than DEADLINE_EXCEEDED.
        timeout = None if remaining is None else max(0.0, remaining - 0.25)
        return convert.wait_approval_response(await self._approvals.wait(request.approval_id, timeout))


def generic_handler(servicer: GatewayServicer, telemetry: Telemetry | None = None) -> grpc.GenericRpcHandler[Any, Any]:
    """The GatewayService handlers (each in a span when ``telemetry`` is given)."""
    servicer.sessions.telemetry = telemetry
    return service_handler(
        SERVICE_NAME,
        {
            "Decide": (servicer.decide, gateway_pb2.DecideRequest),
            "ReportResult": (servicer.report_result, gateway_pb2.ReportResultRequest),
            "WaitApproval": (servicer.wait_approval, gateway_pb2.WaitApprovalRequest),
        },
        telemetry=telemetry,
        bidi={SESSION_METHOD: (servicer.sessions.handle, decode_request)},
    )
