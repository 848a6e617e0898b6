"""The layered policy engine: ``kill_switch → access → limits → approval → rules``.

The first layer that stops or requires approval decides; otherwise the action is allowed, naming the access
binding that granted it. Evaluation does no I/O. Limit state lives in a shared :class:`LimitState` (so it
survives reloads) and is consumed only when the answer lets the action run. With a shared limit store, the caller
checks and consumes in the store first and passes its :class:`SharedAnswer`, so evaluation stays pure (ADR 0015).
The clock is the wall clock (``time.time``): fixed windows are aligned to the epoch, and a restart replays
journaled wall-clock timestamps.

Shadow rules, and every rule of a policy in ``mode: shadow``, record what they would have decided (the first
such outcome is returned as ``Decision.shadow``) and let evaluation continue as if they had not matched.

A condition that fails at evaluation time fails closed: ``stop`` / ``policy_error`` naming its layer and rule
(for a shadow rule, the failure is only recorded as its shadow outcome).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from gateway import reasons
from gateway.policy import cel
from gateway.policy.cel import ConditionError
from gateway.policy.document import ON_STORE_ERROR_STOP, Limit, PolicyDocument, Rule
from gateway.policy.limits import LimitState, SharedAnswer, limit_key, numeric_field
from gateway.policy.model import ActionRequest, Decision, ShadowOutcome, Verdict

LAYER_KILL_SWITCH = "kill_switch"
LAYER_ACCESS = "access"
LAYER_LIMITS = "limits"
LAYER_APPROVAL = "approval"
LAYER_RULES = "rules"
DEFAULT_RULE = "default"

_APPLICABLE_CACHE_SIZE = 4096
Clock = Callable[[], float]


class _Evaluation:
    """Per-request scratch: the lazily built CEL context and the first shadow outcome."""

    __slots__ = ("_context", "needed", "request", "shadow", "steps")

    def __init__(self, request: ActionRequest, steps: int, needed: frozenset[str]) -> None:
        self.request = request
        self.steps = steps
        self.needed = needed
        self.shadow: ShadowOutcome | None = None
        self._context: Any = None

    def context(self) -> Any:
        if self._context is None:
            self._context = cel.context({name: self._variable(name) for name in self.needed})
        return self._context

    def _variable(self, name: str) -> Any:
        r = self.request
        match name:
            case "action":
                return r.action
            case "args":
                return dict(r.args)
            case "tenant":
                return r.tenant_id
            case "agent":
                return r.agent_id
            case "actor":
                return {"type": r.actor_type, "id": r.actor_id}
            case "scope":
                return r.scope
            case "labels":
                return dict(r.labels)
            case "run":
                return {"id": r.run_id, "steps": self.steps, "step_id": r.step_id}
            case "tool":
                return tool_variable(r.labels)
        raise KeyError(name)  # pragma: no cover - VARIABLES and this match are kept in step


# Labels the MCP proxy (gateway.mcp.proxy) sets on a tool call; annotations are the server's untrusted hints.
_TOOL_CHANGED_LABEL = "mcp.tool_changed"
_TOOL_ANNOTATION_PREFIX = "mcp.annotation."


def tool_variable(labels: Mapping[str, str]) -> dict[str, Any]:
    """The CEL ``tool`` variable: ``tool.changed`` and ``tool.annotations`` (false and empty off MCP)."""
    annotations = {
        key.removeprefix(_TOOL_ANNOTATION_PREFIX): value == "true"
        for key, value in labels.items()
        if key.startswith(_TOOL_ANNOTATION_PREFIX)
    }
    return {"changed": labels.get(_TOOL_CHANGED_LABEL) == "true", "annotations": annotations}


class _Applicable(NamedTuple):
    """What can apply to one action name, and which request variables its conditions read."""

    limits: tuple[Limit, ...]
    approvals: tuple[Rule, ...]
    rules: tuple[Rule, ...]
    needed: frozenset[str]


class RuntimeSwitch(Protocol):
    """An engaged operator kill switch."""

    @property
    def scope(self) -> str: ...

    @property
    def target(self) -> str: ...


class SwitchLookup(Protocol):
    """Finds the operator kill switch (engaged through the operator API) that covers a request."""

    def find(self, tenant_id: str, agent_id: str, run_id: str) -> RuntimeSwitch | None:
        """The switch that stops this request, if any."""
        ...


class LayeredPolicy:
    """Evaluates one policy document. Immutable apart from the shared limit state."""

    def __init__(
        self,
        document: PolicyDocument,
        state: LimitState,
        clock: Clock = time.time,
        switches: SwitchLookup | None = None,
    ) -> None:
        self.document = document
        self._state = state
        self._clock = clock
        self._switches = switches
        self._applicable: dict[str, _Applicable] = {}
        self._counts_steps = any(limit.kind == "steps" for limit in document.limits)

    @property
    def version(self) -> str:
        """Hash of the canonical policy document."""
        return self.document.version

    @property
    def counts_steps(self) -> bool:
        """Whether the policy has a steps budget (every Decide then counts a step of its run)."""
        return self._counts_steps

    @property
    def shadow(self) -> bool:
        """Whether the whole policy runs in shadow mode."""
        return self.document.shadow

    def limits_for(self, request: ActionRequest) -> tuple[Limit, ...]:
        """The limits ``request`` is subject to, in evaluation order."""
        r = request
        return tuple(
            x
            for x in self._for_action(r.action).limits
            if x.selector.tenants.match(r.tenant_id) and x.selector.agents.match(r.agent_id)
        )

    def _decision(
        self, verdict: Verdict, reason: str, layer: str, rule: str, ev: _Evaluation, **extra: Any
    ) -> Decision:
        return Decision(verdict, reason, layer, rule, self.document.version, shadow=ev.shadow, **extra)

    def _enforce(self, shadow: bool, ev: _Evaluation, outcome: ShadowOutcome) -> bool:
        """True if the outcome decides; False if it is only recorded (a shadow rule or a shadow policy)."""
        if shadow or self.document.shadow:
            if ev.shadow is None:
                ev.shadow = outcome
            return False
        return True

    def _for_action(self, action: str) -> _Applicable:
        """Limits and rules whose action globs match (cached per action name: most policies have few names)."""
        cached = self._applicable.get(action)
        if cached is None:
            doc = self.document
            approvals = tuple(x for x in doc.approvals if x.selector.actions.match(action))
            rules = tuple(x for x in doc.rules if x.selector.actions.match(action))
            conditions = [x.when for x in (*approvals, *rules)]
            conditions += [b.when for b in doc.access.bindings if b.actions.match(action)]
            cached = _Applicable(
                tuple(x for x in doc.limits if x.selector.actions.match(action)),
                approvals,
                rules,
                frozenset().union(*(c.variables for c in conditions if c is not None)),
            )
            if len(self._applicable) >= _APPLICABLE_CACHE_SIZE:
                self._applicable.clear()
            self._applicable[action] = cached
        return cached

    def evaluate(self, request: ActionRequest, shared: SharedAnswer | None = None) -> Decision:
        """Runs the layers in order; the first that decides wins.

        ``shared``: the shared limit store's answer for this request (None: no store, the in-process state).
        """
        now = self._clock()
        applicable = self._for_action(request.action)
        steps = shared.steps if shared is not None and shared.available else None
        ev = _Evaluation(request, self._state.steps(request.run_id) if steps is None else steps, applicable.needed)
        self._state.count_step(request.run_id)  # also while a store answers: the fallback's count stays current
        decided = self._kill_switch(ev) or self._access(ev)
        if decided is not None and not isinstance(decided, str):
            return decided
        granted_by = decided or DEFAULT_RULE
        consumed: list[tuple[Limit, tuple[str, ...], float]] = []
        decision = (
            self._limits(ev, applicable.limits, now, consumed, shared)
            or self._rules(ev, applicable.approvals, LAYER_APPROVAL)
            or self._rules(ev, applicable.rules, LAYER_RULES)
            or self._decision(Verdict.ALLOW, reasons.ALLOWED, LAYER_ACCESS, granted_by, ev)
        )
        if decision.verdict is Verdict.ALLOW:
            for limit, key, amount in consumed:
                self._consume(limit, key, amount, now)
        return decision

    def _kill_switch(self, ev: _Evaluation) -> Decision | None:
        r = ev.request
        if self._switches is not None:
            engaged = self._switches.find(r.tenant_id, r.agent_id, r.run_id)
            if engaged is not None:  # operator switches are never shadowed
                rule = f"operator:{engaged.scope}"
                return self._decision(Verdict.STOP, reasons.KILL_SWITCH_ENGAGED, LAYER_KILL_SWITCH, rule, ev)
        targets = {"global": "", "tenant": r.tenant_id, "agent": r.agent_id, "run": r.run_id}
        for switch in self.document.kill_switches:
            if switch.scope == "global" or switch.target.match(targets[switch.scope]):
                outcome = ShadowOutcome(Verdict.STOP, switch.reason, LAYER_KILL_SWITCH, switch.name)
                if self._enforce(switch.shadow, ev, outcome):
                    return self._decision(Verdict.STOP, switch.reason, LAYER_KILL_SWITCH, switch.name, ev)
        return None

    def _access(self, ev: _Evaluation) -> Decision | str | None:
        """The granting binding's name, a deny decision, or None when the default allows."""
        r = ev.request
        access = self.document.access
        for binding in access.bindings:
            if not (
                binding.actions.match(r.action)
                and binding.tenants.match(r.tenant_id)
                and binding.agents.match(r.agent_id)
                and (binding.actor_types is None or r.actor_type in binding.actor_types)
            ):
                continue
            if binding.when is not None:
                try:
                    if not binding.when.evaluate(ev.context()):
                        continue
                except ConditionError:
                    return self._decision(Verdict.STOP, reasons.POLICY_ERROR, LAYER_ACCESS, binding.name, ev)
            return binding.name
        if access.default_allow:
            return None
        outcome = ShadowOutcome(Verdict.STOP, reasons.ACCESS_DENIED, LAYER_ACCESS, DEFAULT_RULE)
        if self._enforce(False, ev, outcome):
            return self._decision(Verdict.STOP, reasons.ACCESS_DENIED, LAYER_ACCESS, DEFAULT_RULE, ev)
        return None

    def _limits(
        self,
        ev: _Evaluation,
        limits: tuple[Limit, ...],
        now: float,
        consumed: list[tuple[Limit, tuple[str, ...], float]],
        shared: SharedAnswer | None,
    ) -> Decision | None:
        r = ev.request
        for limit in limits:
            if not (limit.selector.tenants.match(r.tenant_id) and limit.selector.agents.match(r.agent_id)):
                continue
            key = limit_key(limit, r.tenant_id, r.agent_id, r.action, r.run_id)
            unavailable = shared is not None and not shared.available and limit.on_store_error == ON_STORE_ERROR_STOP
            if unavailable and limit.kind == "steps":
                retry_after, exceeded, reason = None, True, reasons.LIMITS_UNAVAILABLE
            elif limit.kind == "steps":
                retry_after, reason = None, limit.reason
                exceeded = ev.steps + 1 > limit.maximum
            else:
                amount = 1.0
                if limit.kind == "sum":
                    found = numeric_field(r.args, limit.field)
                    if found is None:
                        outcome = ShadowOutcome(Verdict.STOP, reasons.POLICY_ERROR, LAYER_LIMITS, limit.name)
                        if self._enforce(limit.shadow, ev, outcome):
                            return self._decision(Verdict.STOP, reasons.POLICY_ERROR, LAYER_LIMITS, limit.name, ev)
                        continue
                    amount = found
                reason = reasons.LIMITS_UNAVAILABLE if unavailable else limit.reason
                if unavailable:
                    retry_after, exceeded = None, True
                elif shared is not None and shared.available:
                    retry_after = shared.retry_after[limit.name]  # checked, and consumed, by the store
                    exceeded = retry_after is not None
                else:
                    retry_after = self._retry_after(limit, key, amount, now)
                    exceeded = retry_after is not None
                    consumed.append((limit, key, amount))
            if exceeded:
                outcome = ShadowOutcome(Verdict.STOP, reason, LAYER_LIMITS, limit.name)
                if self._enforce(limit.shadow, ev, outcome):
                    return self._decision(Verdict.STOP, reason, LAYER_LIMITS, limit.name, ev, retry_after_s=retry_after)
        return None

    def _retry_after(self, limit: Limit, key: tuple[str, ...], amount: float, now: float) -> float | None:
        state_key = (limit.fingerprint, key)
        if limit.kind == "rate":
            return self._state.bucket(state_key, now, limit.burst).retry_after(now, limit.rate, limit.burst)
        window = self._state.window(state_key, now, limit.window_s)
        return window.retry_after(now, limit.window_s, limit.maximum, amount)

    def _consume(self, limit: Limit, key: tuple[str, ...], amount: float, now: float) -> None:
        state_key = (limit.fingerprint, key)
        if limit.kind == "rate":
            self._state.bucket(state_key, now, limit.burst).take(now, limit.rate, limit.burst)
        else:
            self._state.window(state_key, now, limit.window_s).add(now, limit.window_s, amount)

    def _rules(self, ev: _Evaluation, rules: tuple[Rule, ...], layer: str) -> Decision | None:
        r = ev.request
        for rule in rules:
            if not (rule.selector.tenants.match(r.tenant_id) and rule.selector.agents.match(r.agent_id)):
                continue
            if r.approved and rule.verdict is Verdict.APPROVAL_REQUIRED:
                continue  # a granted approval bound to this exact action satisfies approval requirements
            try:
                matched = rule.when is None or rule.when.evaluate(ev.context())
            except ConditionError:
                outcome = ShadowOutcome(Verdict.STOP, reasons.POLICY_ERROR, layer, rule.name)
                if self._enforce(rule.shadow, ev, outcome):
                    return self._decision(Verdict.STOP, reasons.POLICY_ERROR, layer, rule.name, ev)
                continue
            if not matched:
                continue
            outcome = ShadowOutcome(rule.verdict, rule.reason, layer, rule.name)
            if self._enforce(rule.shadow, ev, outcome):
                return self._decision(
                    rule.verdict,
                    rule.reason,
                    layer,
                    rule.name,
                    ev,
                    approvers=rule.approvers,
                    approval_expires_s=rule.expires_s,
                    approval_parks=rule.parks,
                    approval_use_within_s=rule.use_within_s,
                    approvals_required=rule.approvals_required,
                )
        return None
