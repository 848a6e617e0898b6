"""GatewayService: the agent-facing RPCs. Thin: parse → evaluate → record → respond."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import duration_pb2

from agentaudit.v1 import gateway_pb2, types_pb2
from gateway import metrics, reasons
from gateway.api import validation
from gateway.api.wire import Undecodable, deserializer
from gateway.config import ServerConfig
from gateway.errors import (
    AgentAuditError,
    InvalidRequestError,
    JournalUnavailableError,
    NotImplementedYetError,
    ViolationError,
    to_status,
)
from gateway.ids import new_approval_id
from gateway.policy.model import ActionRequest, Decision, PolicyEngine, Verdict
from gateway.recorder import AuditRecorder

log = logging.getLogger(__name__)

SERVICE_NAME = "agentaudit.v1.GatewayService"
LAYER_AUDIT = "audit"
LAYER_POLICY = "policy"

_VERDICTS = {
    Verdict.ALLOW: types_pb2.DECISION_ALLOW,
    Verdict.STOP: types_pb2.DECISION_STOP,
    Verdict.APPROVAL_REQUIRED: types_pb2.DECISION_APPROVAL_REQUIRED,
}

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class PolicySource(Protocol):
    """Where the active policy comes from (the PolicyManager; swapped atomically on reload)."""

    @property
    def engine(self) -> PolicyEngine:
        """The policy evaluating requests now."""
        ...


class GatewayServicer:
    """Implements Decide, ReportResult and WaitApproval."""

    def __init__(self, policy: PolicySource, recorder: AuditRecorder, limits: ServerConfig) -> None:
        self._policy = policy
        self._recorder = recorder
        self._limits = limits

    async def decide(self, request: gateway_pb2.DecideRequest) -> gateway_pb2.DecideResponse:
        """Evaluates and records one proposed action. Answers only after the pre-event is durable."""
        action = validation.parse_decide(
            request, max_args_bytes=self._limits.max_args_bytes, max_depth=self._limits.max_depth
        )
        prepared = self._recorder.prepare(action.action, action.args, normalised=action.args_normalised)
        decision = self._evaluate(action)
        approval_id = new_approval_id() if decision.verdict is Verdict.APPROVAL_REQUIRED else ""
        try:
            event = await self._recorder.record_decision(action, prepared, decision, approval_id)
        except JournalUnavailableError as exc:
            # Fail closed: never allow what could not be recorded.
            metrics.FAIL_CLOSED.inc()
            metrics.DECISIONS.labels("stop", reasons.AUDIT_UNAVAILABLE, LAYER_AUDIT).inc()
            log.error("fail closed for run %s step %s: %s", action.run_id, action.step_id, exc)
            return gateway_pb2.DecideResponse(
                decision=types_pb2.DECISION_STOP,
                reason=reasons.AUDIT_UNAVAILABLE,
                policy_layer=LAYER_AUDIT,
                policy_version=decision.policy_version,
                action_key=prepared.action_key,
            )
        metrics.DECISIONS.labels(decision.verdict.value, decision.reason, decision.layer).inc()
        response = gateway_pb2.DecideResponse(
            decision=_VERDICTS[decision.verdict],
            reason=decision.reason,
            policy_layer=decision.layer,
            policy_rule=decision.rule,
            policy_version=decision.policy_version,
            event_id=event.event_id,
            action_key=prepared.action_key,
            approval_id=approval_id,
        )
        if decision.retry_after_s is not None:
            response.retry_after.CopyFrom(_duration(decision.retry_after_s))
        return response

    def _evaluate(self, action: ActionRequest) -> Decision:
        engine = self._policy.engine
        try:
            return engine.evaluate(action)
        except Exception:
            # Fail closed on a policy fault; the stop is still journaled.
            log.exception("policy evaluation failed for action %s", action.action)
            return Decision(Verdict.STOP, reasons.POLICY_ERROR, LAYER_POLICY, "", engine.version)

    async def report_result(self, request: gateway_pb2.ReportResultRequest) -> gateway_pb2.ReportResultResponse:
        """Records the post-event of an allowed action (idempotent); a non-allowed one is a violation."""
        event_id, status, error, output, duration_ns = validation.parse_report(
            request, max_output_bytes=self._limits.max_args_bytes, max_depth=self._limits.max_depth
        )
        try:
            outcome = await self._recorder.record_result(event_id, status, error, output, duration_ns)
        except ViolationError:
            metrics.VIOLATIONS.inc()
            raise
        return gateway_pb2.ReportResultResponse(event_id=outcome.event_id, duplicate=outcome.duplicate)

    async def wait_approval(self, request: gateway_pb2.WaitApprovalRequest) -> gateway_pb2.WaitApprovalResponse:
        """Not available until the approvals work lands."""
        raise NotImplementedYetError("WaitApproval is not implemented yet (it comes with the approvals API)")


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _unary(
    method: str, call: Callable[[Any], Awaitable[Any]]
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    """Wraps a servicer method: request decoding failures and our errors become statuses in one place."""

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if isinstance(request, Undecodable):
                raise InvalidRequestError(request.violations)
            return await call(request)
        except AgentAuditError as exc:
            if isinstance(exc, InvalidRequestError):
                metrics.INVALID_REQUESTS.labels(method).inc()
            log.debug("%s refused: %s", method, exc)
            status = to_status(exc)
        except Exception as exc:
            log.exception("%s failed", method)
            status = to_status(exc)
        await context.abort(status.code, status.details, status.trailing_metadata)

    return handler


def generic_handler(servicer: GatewayServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The GatewayService handlers, with decoders that turn undecodable bytes into INVALID_ARGUMENT."""
    methods: dict[str, tuple[Callable[[Any], Awaitable[Any]], Any]] = {
        "Decide": (servicer.decide, gateway_pb2.DecideRequest),
        "ReportResult": (servicer.report_result, gateway_pb2.ReportResultRequest),
        "WaitApproval": (servicer.wait_approval, gateway_pb2.WaitApprovalRequest),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _unary(name, call),
            request_deserializer=deserializer(request_type),
            response_serializer=lambda message: message.SerializeToString(),
        )
        for name, (call, request_type) in methods.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
