"""GatewayService: the agent-facing RPCs. Thin: parse → evaluate → record → respond."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf import duration_pb2

from agentaudit.v1 import gateway_pb2, types_pb2
from gateway import metrics, reasons
from gateway.alerts import Alert, alert_from_decision
from gateway.api import validation
from gateway.config import ServerConfig
from gateway.errors import FieldViolation, InvalidRequestError, JournalUnavailableError, ViolationError
from gateway.ids import new_approval_id, new_event_id, rfc3339_nanos
from gateway.journal.writer import StateChange, now_nanos
from gateway.policy.engine import LAYER_APPROVAL
from gateway.policy.model import ActionRequest, Decision, PolicyEngine, Verdict
from gateway.rpc.handlers import Context, service_handler
from gateway.sidecar.approvals import DENIED, EXPIRED, GRANTED, PENDING, Approval, ApprovalBook
from gateway.sidecar.recorder import AuditRecorder, PreparedAction
from gateway.tracecontext import traceparent_header

if TYPE_CHECKING:
    from gateway.rpc.telemetry import Telemetry

log = logging.getLogger(__name__)

SERVICE_NAME = "agentaudit.v1.GatewayService"
LAYER_AUDIT = "audit"
LAYER_POLICY = "policy"

_VERDICTS = {
    Verdict.ALLOW: types_pb2.DECISION_ALLOW,
    Verdict.STOP: types_pb2.DECISION_STOP,
    Verdict.APPROVAL_REQUIRED: types_pb2.DECISION_APPROVAL_REQUIRED,
}
APPROVAL_STATES = {
    PENDING: gateway_pb2.APPROVAL_STATE_PENDING,
    GRANTED: gateway_pb2.APPROVAL_STATE_GRANTED,
    DENIED: gateway_pb2.APPROVAL_STATE_DENIED,
    EXPIRED: gateway_pb2.APPROVAL_STATE_EXPIRED,
}


class PolicySource(Protocol):
    """Where the active policy comes from (the PolicyManager; swapped atomically on reload)."""

    @property
    def engine(self) -> PolicyEngine:
        """The policy evaluating requests now."""
        ...


class AlertSink(Protocol):
    """Takes alerts without blocking (the AlertDispatcher)."""

    def notify(self, alert: Alert) -> None:
        """Queues an alert; never blocks, never raises."""
        ...


class GatewayServicer:
    """Implements Decide, ReportResult and WaitApproval."""

    def __init__(
        self,
        policy: PolicySource,
        recorder: AuditRecorder,
        limits: ServerConfig,
        approvals: ApprovalBook,
        alerts: AlertSink | None = None,
        gate: Callable[[], str] | None = None,
    ) -> None:
        self._policy = policy
        self._recorder = recorder
        self._limits = limits
        self._approvals = approvals
        self._alerts = alerts
        self._gate = gate  # non-empty answer: journal integrity is in doubt, refuse until acknowledged

    async def decide(self, request: gateway_pb2.DecideRequest, context: Context) -> gateway_pb2.DecideResponse:
        """Evaluates and records one proposed action. Answers only after the pre-event is durable."""
        if not request.traceparent:
            request.traceparent = traceparent_header(context.invocation_metadata())
        action = validation.parse_decide(
            request, max_args_bytes=self._limits.max_args_bytes, max_depth=self._limits.max_depth
        )
        prepared = self._recorder.prepare(action.action, action.args, normalised=action.args_normalised)
        event_id = new_event_id()
        approval_id = ""
        state: list[StateChange] = []
        resumed: Approval | None = None
        created: Approval | None = None
        blocked = self._gate() if self._gate is not None else ""
        if blocked:
            version = self._policy.engine.version
            decision = Decision(Verdict.STOP, reasons.JOURNAL_RECOVERY_REQUIRED, LAYER_AUDIT, "", version)
        elif action.approval_id:
            decision, resumed = self._resume(action, prepared)
            if decision.verdict is Verdict.ALLOW and resumed is not None:
                state = self._approvals.use_statement(resumed)
            elif resumed is not None:
                self._approvals.unreserve_if_reserved(resumed, decision)
            if decision.reason == reasons.APPROVAL_PENDING and resumed is not None:
                approval_id = resumed.approval_id
        else:
            decision = self._evaluate(action)
        if decision.verdict is Verdict.APPROVAL_REQUIRED and not approval_id:
            approval_id = new_approval_id()
            created, state = self._approvals.create(action, prepared.action_key, decision, approval_id, event_id)
        try:
            event = await self._recorder.record_decision(
                action, prepared, decision, approval_id, event_id=event_id, state=state
            )
        except JournalUnavailableError as exc:
            if resumed is not None and decision.verdict is Verdict.ALLOW:
                self._approvals.unreserve(resumed)
            # Fail closed: never allow what could not be recorded.
            metrics.FAIL_CLOSED.inc()
            metrics.DECISIONS.labels("stop", reasons.AUDIT_UNAVAILABLE, LAYER_AUDIT).inc()
            log.error("fail closed for run %s step %s: %s", action.run_id, action.step_id, exc)
            unrecorded = Decision(Verdict.STOP, reasons.AUDIT_UNAVAILABLE, LAYER_AUDIT, "", decision.policy_version)
            self._alert(action, unrecorded, "", "")  # the alert an operator most needs: nothing is being recorded
            return gateway_pb2.DecideResponse(
                decision=types_pb2.DECISION_STOP,
                reason=reasons.AUDIT_UNAVAILABLE,
                policy_layer=LAYER_AUDIT,
                policy_version=decision.policy_version,
                action_key=prepared.action_key,
            )
        if created is not None:
            self._approvals.opened(created)
        if resumed is not None and decision.verdict is Verdict.ALLOW:
            self._approvals.used(resumed)
        metrics.DECISIONS.labels(decision.verdict.value, decision.reason, decision.layer).inc()
        if log.isEnabledFor(logging.DEBUG):
            # Ids and outcome only: argument values never reach a log line (docs/operations.md, Logs).
            log.debug(
                "decided %s/%s",
                decision.verdict.value,
                decision.reason,
                extra={
                    "run_id": action.run_id,
                    "step_id": action.step_id,
                    "action": action.action,
                    "layer": decision.layer,
                    "rule": decision.rule,
                    "event_id": event.event_id,
                    "trace_id": action.traceparent[3:35],
                },
            )
        # Alert on stops, and on approval requests when they are created (not on every early resume).
        if decision.verdict is Verdict.STOP or created is not None:
            self._alert(action, decision, event.event_id, approval_id)
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

    def _alert(self, action: ActionRequest, decision: Decision, event_id: str, approval_id: str) -> None:
        if self._alerts is None:
            return
        timestamp = rfc3339_nanos(now_nanos())
        alert = alert_from_decision(
            action,
            decision,
            event_id=event_id,
            approval_id=approval_id,
            timestamp=timestamp,
            origin=self._recorder.origin,
        )
        self._alerts.notify(alert)

    def _resume(self, action: ActionRequest, prepared: PreparedAction) -> tuple[Decision, Approval | None]:
        """Decides a request that resumes with an approval: evaluated as approved only if the approval holds."""
        reason, approval = self._approvals.check_resume(action, prepared.action_key)
        if reason:
            verdict = Verdict.APPROVAL_REQUIRED if reason == reasons.APPROVAL_PENDING else Verdict.STOP
            rule = approval.policy_rule if approval is not None else ""
            return Decision(verdict, reason, LAYER_APPROVAL, rule, self._policy.engine.version), approval
        # Every other layer still applies: a kill switch or an exhausted budget stops an approved action too.
        return self._evaluate(dataclasses.replace(action, approved=True)), approval

    def _evaluate(self, action: ActionRequest) -> Decision:
        engine = self._policy.engine
        try:
            return engine.evaluate(action)
        except Exception:
            # Fail closed on a policy fault; the stop is still journaled.
            log.exception("policy evaluation failed for action %s", action.action)
            return Decision(Verdict.STOP, reasons.POLICY_ERROR, LAYER_POLICY, "", engine.version)

    async def report_result(
        self, request: gateway_pb2.ReportResultRequest, context: Context
    ) -> gateway_pb2.ReportResultResponse:
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

    async def wait_approval(
        self, request: gateway_pb2.WaitApprovalRequest, context: Context
    ) -> gateway_pb2.WaitApprovalResponse:
        """Blocks until the approval is resolved or expires, or the call's deadline is near."""
        if not request.approval_id or len(request.approval_id) > 128:
            raise InvalidRequestError([FieldViolation("approval_id", "is required (at most 128 bytes)")])
        remaining = context.time_remaining()
        # Answer a little before the client's deadline so it gets "still pending" rather than DEADLINE_EXCEEDED.
        timeout = None if remaining is None else max(0.0, remaining - 0.25)
        approval = await self._approvals.wait(request.approval_id, timeout)
        return gateway_pb2.WaitApprovalResponse(
            state=APPROVAL_STATES[approval.state], resolved_by=approval.resolved_by, comment=approval.comment
        )


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def generic_handler(servicer: GatewayServicer, telemetry: Telemetry | None = None) -> grpc.GenericRpcHandler[Any, Any]:
    """The GatewayService handlers (each in a span when ``telemetry`` is given)."""
    return service_handler(
        SERVICE_NAME,
        {
            "Decide": (servicer.decide, gateway_pb2.DecideRequest),
            "ReportResult": (servicer.report_result, gateway_pb2.ReportResultRequest),
            "WaitApproval": (servicer.wait_approval, gateway_pb2.WaitApprovalRequest),
        },
        telemetry=telemetry,
    )
