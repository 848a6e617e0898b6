"""Decide as one use case: what happens between a validated request and the answer the agent gets.

The steps, in order (docs/architecture.md, "The Decide path"):

1. **Prepare**: redact and digest the args; compute the action key. With shared limits (``limits.store``),
   reserve in the store: one round trip that checks and consumes every limit the request is subject to, before
   the pure evaluation that uses its answer (ADR 0015).
2. **Gate**: while the journal's integrity is in doubt (a detected rollback not yet acknowledged), stop. With a
   fleet control channel (``control:``), stop with ``control_plane_unreachable`` until the first complete
   kill-switch set since start has been applied (waiting up to ``control.connect_wait_s`` for it first), and
   while the channel has been down for longer than ``control.max_staleness_s`` (ADR 0016).
3. **Resume or evaluate**: a request naming an approval is checked against it (and, if it holds, reserved so a
   concurrent resume cannot use it too) and then evaluated as approved; any other request is evaluated by the
   policy. A policy fault is a ``stop`` (fail closed), never an exception.
4. **Open an approval** for an ``approval_required`` decision: the state row commits with the pre-event.
5. **Record** the pre-event durably. If that fails the answer is ``stop`` / ``audit_unavailable`` and any
   reservation is undone: nothing is allowed without a record (ADR 0001).
6. **Commit or undo** the in-memory approval state, only after the record is durable; give back a shared
   reservation whenever the answer does not let the action run (or was not recorded).
7. **Alert** on stops and on newly opened approvals (queued, never blocking).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway import metrics, reasons
from gateway.alerts import Alert, alert_from_decision
from gateway.errors import JournalUnavailableError
from gateway.ids import new_approval_id, new_event_id, now_nanos, rfc3339_nanos
from gateway.journal.writer import StateChange
from gateway.policy.engine import LAYER_APPROVAL
from gateway.policy.model import ActionRequest, Decision, PolicyEngine, Verdict
from gateway.sidecar.approvals import Approval, ApprovalBook
from gateway.sidecar.recorder import AuditRecorder, PreparedAction
from gateway.sidecar.shared_limits import RedisLimits, Reservation

log = logging.getLogger(__name__)

LAYER_AUDIT = "audit"
LAYER_CONTROL = "control"
LAYER_POLICY = "policy"
# Set by the MCP proxy (gateway.mcp.proxy) on the first call after it sees a tool definition change.
TOOL_CHANGE_NEW_LABEL = "mcp.tool_change_new"


class PolicySource(Protocol):
    """Where the active policy comes from (the PolicyManager; swapped atomically on reload)."""

    @property
    def engine(self) -> PolicyEngine:
        """The policy evaluating requests now."""
        ...


class ControlGate(Protocol):
    """The fleet control channel as Decide sees it (gateway.sidecar.control.ControlClient)."""

    ready: bool
    """The first complete kill-switch set since start has been applied."""

    async def wait_ready(self) -> None:
        """Waits for the first complete set, up to the configured connect wait after start."""
        ...

    def blocked(self) -> bool:
        """Whether Decide must stop with ``control_plane_unreachable`` now."""
        ...


class AlertSink(Protocol):
    """Takes alerts without blocking (the AlertDispatcher)."""

    def notify(self, alert: Alert) -> None:
        """Queues an alert; never blocks, never raises."""
        ...


@dataclass(frozen=True)
class Answer:
    """What Decide answers: the decision and the ids the agent needs (``event_id`` is empty if unrecorded)."""

    decision: Decision
    event_id: str
    action_key: str
    approval_id: str = ""


@dataclass
class _Step:
    """One Decide in progress: what the steps above decided so far."""

    action: ActionRequest
    prepared: PreparedAction
    event_id: str
    engine: PolicyEngine  # one policy for the whole Decide, even if a reload lands in between
    reservation: Reservation | None = None  # what the shared limit store took for this request
    decision: Decision | None = None
    approval_id: str = ""
    state: list[StateChange] = dataclasses.field(default_factory=list)
    resumed: Approval | None = None  # the approval this request resumes with (reserved when it allows)
    created: Approval | None = None  # the approval this decision opens


class Decider:
    """Runs the Decide use case; the servicer only parses the request and formats the answer."""

    def __init__(
        self,
        policy: PolicySource,
        recorder: AuditRecorder,
        approvals: ApprovalBook,
        alerts: AlertSink | None = None,
        gate: Callable[[], str] | None = None,
        shared_limits: RedisLimits | None = None,
        control: ControlGate | None = None,
    ) -> None:
        self._policy = policy
        self._recorder = recorder
        self._approvals = approvals
        self._alerts = alerts
        self._gate = gate  # non-empty answer: journal integrity is in doubt, refuse until acknowledged
        self._shared_limits = shared_limits
        self._control = control

    async def decide(self, action: ActionRequest) -> Answer:
        """Decides and records one proposed action; returns only after its pre-event is durable."""
        prepared = self._recorder.prepare(
            action.action, action.args, tenant_id=action.tenant_id, normalised=action.args_normalised
        )
        if self._control is not None and not self._control.ready:
            await self._control.wait_ready()  # only until the first complete set after start (bounded)
        step = _Step(action, prepared, new_event_id(), self._policy.engine)
        if self._shared_limits is not None:
            step.reservation = await self._shared_limits.reserve(step.engine, action)
        step.decision = self._decide(step)
        if step.decision.verdict is Verdict.APPROVAL_REQUIRED and not step.approval_id:
            step.approval_id = new_approval_id()
            step.created, step.state = self._approvals.create(
                action, prepared.approval_binding, step.decision, step.approval_id, step.event_id
            )
        try:
            changed_event = ""
            if action.labels.get(TOOL_CHANGE_NEW_LABEL) == "true":
                changed_event = (await self._recorder.record_tool_changed(action)).event_id
            await self._recorder.record_decision(
                action, prepared, step.decision, step.approval_id, event_id=step.event_id, state=step.state
            )
        except JournalUnavailableError as exc:
            if step.reservation is not None:
                await step.reservation.release()
            return self._fail_closed(step, exc)
        if changed_event:
            self._alert_tool_changed(action, step.decision, changed_event)
        self._commit(step)
        decision = step.decision
        if step.reservation is not None and decision.verdict is not Verdict.ALLOW:
            await step.reservation.release()
        metrics.DECISIONS.labels(decision.verdict.value, decision.reason, decision.layer).inc()
        if log.isEnabledFor(logging.DEBUG):
            _log_decided(action, decision, step.event_id)
        # Alert on stops, and on approval requests when they are created (not on every early resume).
        if decision.verdict is Verdict.STOP or step.created is not None:
            self._alert(action, decision, step.event_id, step.approval_id)
        return Answer(decision, step.event_id, prepared.action_key, step.approval_id)

    def _decide(self, step: _Step) -> Decision:
        """Steps 2 and 3: the gate, then a resume or a policy evaluation."""
        blocked = self._gate() if self._gate is not None else ""
        if blocked:
            return Decision(Verdict.STOP, reasons.JOURNAL_RECOVERY_REQUIRED, LAYER_AUDIT, "", self._version())
        if self._control is not None and self._control.blocked():
            return Decision(Verdict.STOP, reasons.CONTROL_PLANE_UNREACHABLE, LAYER_CONTROL, "", self._version())
        if not step.action.approval_id:
            return self._evaluate(step, step.action)
        decision, step.resumed = self._resume(step)
        if step.resumed is None:
            return decision
        if decision.verdict is Verdict.ALLOW:
            step.state = self._approvals.use_statement(step.resumed)
        else:
            self._approvals.unreserve_if_reserved(step.resumed, decision)
        if decision.reason == reasons.APPROVAL_PENDING:
            step.approval_id = step.resumed.approval_id
        return decision

    def _resume(self, step: _Step) -> tuple[Decision, Approval | None]:
        """Decides a request that resumes with an approval: evaluated as approved only if the approval holds."""
        action = step.action
        reason, approval = self._approvals.check_resume(action, step.prepared.approval_binding, step.engine.version)
        if reason:
            verdict = Verdict.APPROVAL_REQUIRED if reason == reasons.APPROVAL_PENDING else Verdict.STOP
            rule = approval.policy_rule if approval is not None else ""
            return Decision(verdict, reason, LAYER_APPROVAL, rule, self._version()), approval
        # Every other layer still applies: a kill switch or an exhausted budget stops an approved action too.
        return self._evaluate(step, dataclasses.replace(action, approved=True)), approval

    def _evaluate(self, step: _Step, action: ActionRequest) -> Decision:
        engine = step.engine
        try:
            if step.reservation is not None:
                return engine.evaluate(action, step.reservation.answer)
            return engine.evaluate(action)
        except Exception:
            # Fail closed on a policy fault; the stop is still journaled.
            log.exception("policy evaluation failed for action %s", action.action)
            return Decision(Verdict.STOP, reasons.POLICY_ERROR, LAYER_POLICY, "", engine.version)

    def _commit(self, step: _Step) -> None:
        """Step 6: the pre-event is durable, so the approval state it carries becomes visible."""
        if step.created is not None:
            self._approvals.opened(step.created)
        if step.resumed is not None and step.decision is not None and step.decision.verdict is Verdict.ALLOW:
            self._approvals.used(step.resumed)

    def _fail_closed(self, step: _Step, exc: JournalUnavailableError) -> Answer:
        """Step 5 failed: undo the reservation and stop. Never allow what could not be recorded."""
        assert step.decision is not None
        if step.resumed is not None and step.decision.verdict is Verdict.ALLOW:
            self._approvals.unreserve(step.resumed)
        metrics.FAIL_CLOSED.inc()
        metrics.DECISIONS.labels("stop", reasons.AUDIT_UNAVAILABLE, LAYER_AUDIT).inc()
        action = step.action
        log.error("fail closed for run %s step %s: %s", action.run_id, action.step_id, exc)
        unrecorded = Decision(Verdict.STOP, reasons.AUDIT_UNAVAILABLE, LAYER_AUDIT, "", step.decision.policy_version)
        self._alert(action, unrecorded, "", "")  # the alert an operator most needs: nothing is being recorded
        return Answer(unrecorded, "", step.prepared.action_key)

    def _alert(self, action: ActionRequest, decision: Decision, event_id: str, approval_id: str) -> None:
        if self._alerts is None:
            return
        alert = alert_from_decision(
            action,
            decision,
            event_id=event_id,
            approval_id=approval_id,
            timestamp=rfc3339_nanos(now_nanos()),
            origin=self._recorder.origin,
        )
        self._alerts.notify(alert)

    def _alert_tool_changed(self, action: ActionRequest, decision: Decision, event_id: str) -> None:
        if self._alerts is None:
            return
        # The decision taken on the request that carried the change (a real one); reason and rule say what
        # happened, so a webhook filtering on reason tool_definition_changed receives it.
        changed = dataclasses.replace(
            decision, reason=reasons.TOOL_DEFINITION_CHANGED, layer="mcp", rule="tool_pinning"
        )
        alert = alert_from_decision(
            action,
            changed,
            event_id=event_id,
            approval_id="",
            timestamp=rfc3339_nanos(now_nanos()),
            origin=self._recorder.origin,
        )
        # Name the changed tool, also when the change came with the proxy's tools/list Decide.
        self._alerts.notify(dataclasses.replace(alert, action=action.labels.get("mcp.tool_action") or action.action))

    def _version(self) -> str:
        return self._policy.engine.version


def _log_decided(action: ActionRequest, decision: Decision, event_id: str) -> None:
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
            "event_id": event_id,
            "trace_id": action.traceparent[3:35],
        },
    )
