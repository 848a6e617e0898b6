"""``agentaudit policy test``: YAML test cases run against a policy, like ``opa test``.

Each case gets fresh limit state and a fake clock, so rate limits and budgets are tested without sleeping.

A case can also assert what the journal would redact from its request (``expect: {redacted_paths: [...]}``: the
pre-event's ``redacted_paths`` for its args and labels). Redaction is configuration, not policy, so the file may
carry the ``audit`` settings to test with (``audit: {redact_fields: [...], detectors: {phone: false}}``, at the top
for every case or in one case for that case); without them the defaults of ``audit.redact_fields`` and
``audit.detectors`` apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.canonical import canonical_json
from gateway.config import AuditConfig, DetectorsConfig
from gateway.errors import ConfigError
from gateway.policy.document import PolicyDocument, parse_duration
from gateway.policy.engine import LayeredPolicy
from gateway.policy.limits import LimitState
from gateway.policy.model import ActionRequest, Decision
from gateway.redaction import DETECTOR_NAMES, Redactor

_REQUEST_KEYS = {"action", "tenant", "agent", "actor", "args", "scope", "labels", "run", "step"}
_EXPECT_KEYS = {
    *("decision", "reason", "layer", "rule", "retry_after", "shadow_decision", "shadow_reason"),
    "redacted_paths",
}
_AUDIT_KEYS = {"redact_fields", "detectors"}
_TEST_HMAC_KEY = bytes(32)  # paths only: no digest computed here is ever stored
_CLOCK_START = 6_048_000_000.0  # a multiple of 1 s, 1 m, 1 h, 1 d and 7 d: common windows start with the case
_MAX_REPEAT = 100_000


@dataclass(frozen=True)
class CaseResult:
    """One case: whether it passed, what was expected, and what the policy answered."""

    name: str
    passed: bool
    expected: dict[str, Any]
    actual: dict[str, Any]


def _actual(decision: Decision, request: ActionRequest, redactor: Redactor) -> dict[str, Any]:
    paths = [*redactor.redact(dict(request.args), "args").paths, *redactor.redact(dict(request.labels), "labels").paths]
    return {
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "layer": decision.layer,
        "rule": decision.rule,
        "retry_after": None if decision.retry_after_s is None else round(decision.retry_after_s, 3),
        "shadow_decision": decision.shadow.verdict.value if decision.shadow else "",
        "shadow_reason": decision.shadow.reason if decision.shadow else "",
        "redacted_paths": sorted(paths),
    }


def redactor_for(doc: Any, source: str) -> Redactor:
    """The redactor a test case asks for (its optional ``audit`` mapping), else the configured defaults."""
    defaults = AuditConfig()
    raw = doc.get("audit") if isinstance(doc, dict) else None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict) or set(raw) - _AUDIT_KEYS:
        raise ConfigError(f"{source}: 'audit' may set only {', '.join(sorted(_AUDIT_KEYS))}")
    fields = raw.get("redact_fields", list(defaults.redact_fields))
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise ConfigError(f"{source}: audit.redact_fields must be a list of strings")
    detectors = raw.get("detectors") or {}
    if not isinstance(detectors, dict) or set(detectors) - set(DETECTOR_NAMES):
        raise ConfigError(f"{source}: audit.detectors maps {', '.join(DETECTOR_NAMES)} to true or false")
    if not all(isinstance(v, bool) for v in detectors.values()):
        raise ConfigError(f"{source}: audit.detectors values must be true or false")
    enabled = DetectorsConfig(**detectors).enabled()
    return Redactor.create(_TEST_HMAC_KEY, fields, hash_args=False, detectors=enabled)


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
    shared_audit = doc.get("audit")
    for index, case in enumerate(cases):
        where = f"{source}: test #{index + 1}"
        if not isinstance(case, dict) or not isinstance(case.get("request"), dict):
            raise ConfigError(f"{where}: each test needs 'name', 'request' and 'expect'")
        if shared_audit is not None and "audit" not in case:
            cases[index] = {**case, "audit": shared_audit}
        redactor_for(cases[index], where)  # reject bad audit settings before any case runs
        expect = case.get("expect")
        if not isinstance(expect, dict) or not expect or set(expect) - _EXPECT_KEYS:
            raise ConfigError(f"{where}: 'expect' must map some of {', '.join(sorted(_EXPECT_KEYS))}")
    return cases


class _FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def run_cases(
    document: PolicyDocument, cases: list[dict[str, Any]], source: str, redactor: Redactor | None = None
) -> list[CaseResult]:
    """Runs every case against a fresh engine; returns one result per case.

    ``redactor``: what ``redacted_paths`` expectations are checked with (default: the case's ``audit`` settings).
    """
    results = []
    for index, case in enumerate(cases):
        where = f"{source}: test #{index + 1}"
        case_redactor = redactor or redactor_for(case, where)
        name = str(case.get("name", f"test #{index + 1}"))
        clock = _FakeClock(_CLOCK_START)
        engine = LayeredPolicy(document, LimitState(), clock=clock)
        repeat = case.get("repeat", 1)
        if not isinstance(repeat, int) or not 1 <= repeat <= _MAX_REPEAT:
            raise ConfigError(f"{where}: 'repeat' must be 1..{_MAX_REPEAT}")
        interval = parse_duration(case.get("interval", 0))
        if interval is None:
            raise ConfigError(f"{where}: 'interval' must be a duration like 0.1s")
        decision = request = None
        for step in range(1, repeat + 1):
            request = _request(case["request"], where, step)
            decision = engine.evaluate(request)
            clock.now += interval
        assert decision is not None and request is not None
        actual = _actual(decision, request, case_redactor)
        expected = dict(case["expect"])
        if "redacted_paths" in expected and isinstance(expected["redacted_paths"], list):
            expected["redacted_paths"] = sorted(expected["redacted_paths"])  # any order in the file
        passed = all(actual.get(k) == v for k, v in expected.items())
        results.append(CaseResult(name, passed, expected, actual))
    return results
