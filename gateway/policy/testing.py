"""``agentaudit policy test``: YAML test cases run against a policy, like ``opa test``.

Each case gets fresh limit state and a fake clock, so rate limits and budgets are tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.canonical import canonical_json
from gateway.errors import ConfigError
from gateway.policy.document import PolicyDocument, parse_duration
from gateway.policy.engine import LayeredPolicy
from gateway.policy.limits import LimitState
from gateway.policy.model import ActionRequest, Decision

_REQUEST_KEYS = {"action", "tenant", "agent", "actor", "args", "scope", "labels", "run", "step"}
_EXPECT_KEYS = {"decision", "reason", "layer", "rule", "retry_after", "shadow_decision", "shadow_reason"}
_CLOCK_START = 6_048_000_000.0  # a multiple of 1 s, 1 m, 1 h, 1 d and 7 d: common windows start with the case
_MAX_REPEAT = 100_000


@dataclass(frozen=True)
class CaseResult:
    """One case: whether it passed, what was expected, and what the policy answered."""

    name: str
    passed: bool
    expected: dict[str, Any]
    actual: dict[str, Any]


def _actual(decision: Decision) -> dict[str, Any]:
    return {
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "layer": decision.layer,
        "rule": decision.rule,
        "retry_after": None if decision.retry_after_s is None else round(decision.retry_after_s, 3),
        "shadow_decision": decision.shadow.verdict.value if decision.shadow else "",
        "shadow_reason": decision.shadow.reason if decision.shadow else "",
    }


def _request(raw: Mapping[str, Any], where: str, step: int) -> ActionRequest:
    unknown = set(raw) - _REQUEST_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown request key(s) {', '.join(sorted(map(str, unknown)))}")
    if not isinstance(raw.get("action"), str):
        raise ConfigError(f"{where}: request.action is required")
    actor = raw.get("actor") or {}
    args = raw.get("args") or {}
    labels = raw.get("labels") or {}
    if not isinstance(actor, dict) or not isinstance(args, dict) or not isinstance(labels, dict):
        raise ConfigError(f"{where}: request.actor, args and labels must be mappings")
    canonical_json(args)  # the same values a Decide could carry
    return ActionRequest(
        run_id=str(raw.get("run", "run_test")),
        step_id=int(raw.get("step", step)),
        tenant_id=str(raw.get("tenant", "t_test")),
        actor_type=str(actor.get("type", "user")),
        actor_id=str(actor.get("id", "u_test")),
        agent_id=str(raw.get("agent", "")),
        action=raw["action"],
        args=args,
        scope=str(raw.get("scope", "")),
        labels={str(k): str(v) for k, v in labels.items()},
    )


def load_cases(text: str, source: str) -> list[dict[str, Any]]:
    """Parses a test file (``tests: [{name, request, expect, repeat?, interval?}]``)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    cases = doc.get("tests") if isinstance(doc, dict) else None
    if not isinstance(cases, list) or not cases:
        raise ConfigError(f"{source}: expected a non-empty 'tests' list")
    for index, case in enumerate(cases):
        where = f"{source}: test #{index + 1}"
        if not isinstance(case, dict) or not isinstance(case.get("request"), dict):
            raise ConfigError(f"{where}: each test needs 'name', 'request' and 'expect'")
        expect = case.get("expect")
        if not isinstance(expect, dict) or not expect or set(expect) - _EXPECT_KEYS:
            raise ConfigError(f"{where}: 'expect' must map some of {', '.join(sorted(_EXPECT_KEYS))}")
    return cases


class _FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def run_cases(document: PolicyDocument, cases: list[dict[str, Any]], source: str) -> list[CaseResult]:
    """Runs every case against a fresh engine; returns one result per case."""
    results = []
    for index, case in enumerate(cases):
        where = f"{source}: test #{index + 1}"
        name = str(case.get("name", f"test #{index + 1}"))
        clock = _FakeClock(_CLOCK_START)
        engine = LayeredPolicy(document, LimitState(), clock=clock)
        repeat = case.get("repeat", 1)
        if not isinstance(repeat, int) or not 1 <= repeat <= _MAX_REPEAT:
            raise ConfigError(f"{where}: 'repeat' must be 1..{_MAX_REPEAT}")
        interval = parse_duration(case.get("interval", 0))
        if interval is None:
            raise ConfigError(f"{where}: 'interval' must be a duration like 0.1s")
        decision = None
        for step in range(1, repeat + 1):
            decision = engine.evaluate(_request(case["request"], where, step))
            clock.now += interval
        assert decision is not None
        actual = _actual(decision)
        expected = dict(case["expect"])
        passed = all(actual.get(k) == v for k, v in expected.items())
        results.append(CaseResult(name, passed, expected, actual))
    return results
