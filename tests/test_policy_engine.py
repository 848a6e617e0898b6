"""The layered engine in-process, with a fake clock: every layer, limits and budgets, shadow, reload state."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.policy import EXAMPLE_POLICY, EXAMPLE_POLICY_TESTS
from gateway.policy.document import parse_policy
from gateway.policy.engine import LayeredPolicy
from gateway.policy.limits import LimitState
from gateway.policy.model import ActionRequest, Verdict
from gateway.policy.testing import load_cases, run_cases


class FakeClock:
    def __init__(self) -> None:
        self.now = 6_048_000_000.0  # window-aligned (a multiple of 7 days)

    def __call__(self) -> float:
        return self.now


def request(action: str = "crm.lookup", **overrides: Any) -> ActionRequest:
    fields: dict[str, Any] = {
        "run_id": "run_1",
        "step_id": 1,
        "tenant_id": "t_42",
        "actor_type": "user",
        "actor_id": "u_1",
        "agent_id": "support-agent",
        "action": action,
        "args": {},
        "scope": "tenant",
    }
    fields.update(overrides)
    return ActionRequest(**fields)


ACCESS_ALL = "access:\n  default: allow\n"


def engine(text: str, clock: FakeClock | None = None, state: LimitState | None = None) -> LayeredPolicy:
    return LayeredPolicy(parse_policy(text, "p.yaml"), state or LimitState(), clock or FakeClock())


def test_the_shipped_example_tests_pass() -> None:
    document = parse_policy(EXAMPLE_POLICY, "example_policy.yaml")
    results = run_cases(document, load_cases(EXAMPLE_POLICY_TESTS, "tests.yaml"), "tests.yaml")
    assert [r.name for r in results if not r.passed] == []
    reasons = {r.actual["reason"] for r in results}
    layers = {r.actual["layer"] for r in results}
    assert layers == {"kill_switch", "access", "limits", "approval", "rules"}
    assert {"kill_switch_engaged", "access_denied", "rate_limited_tenant", "budget_exceeded"} <= reasons
    assert {"step_budget_exceeded", "approval_required", "bulk_email_blocked", "policy_error", "allowed"} <= reasons


def test_rate_limit_refills_over_time_and_reports_retry_after() -> None:
    clock = FakeClock()
    policy = engine(
        f"version: 1\n{ACCESS_ALL}limits:\n  - {{name: r, type: rate, key: [agent], rate: 2/s, burst: 2}}\n", clock
    )
    assert [policy.evaluate(request()).verdict for _ in range(2)] == [Verdict.ALLOW] * 2
    stopped = policy.evaluate(request())
    assert (stopped.verdict, stopped.reason, stopped.retry_after_s) == (Verdict.STOP, "rate_limited_agent", 0.5)
    clock.now += 0.25
    assert policy.evaluate(request()).retry_after_s == 0.25
    clock.now += 0.25
    assert policy.evaluate(request()).verdict is Verdict.ALLOW


def test_only_allowed_actions_consume_quota() -> None:
    text = (
        f"version: 1\n{ACCESS_ALL}limits:\n  - {{name: r, type: count, max: 1, window: 1h}}\n"
        "approval:\n  - {name: a, when: 'args.big == true'}\n"
    )
    policy = engine(text)
    assert policy.evaluate(request(args={"big": True})).verdict is Verdict.APPROVAL_REQUIRED
    assert policy.evaluate(request(args={"big": False})).verdict is Verdict.ALLOW
    assert policy.evaluate(request(args={"big": False})).reason == "budget_exceeded"


def test_sum_budget_resets_with_the_window() -> None:
    clock = FakeClock()
    text = f"version: 1\n{ACCESS_ALL}limits:\n  - {{name: s, type: sum, field: order.amount, max: 100, window: 1d}}\n"
    policy = engine(text, clock)
    assert policy.evaluate(request(args={"order": {"amount": 60}})).verdict is Verdict.ALLOW
    over = policy.evaluate(request(args={"order": {"amount": 60}}))
    assert (over.reason, over.retry_after_s) == ("budget_exceeded", 86400.0)
    clock.now += 86400
    assert policy.evaluate(request(args={"order": {"amount": 60}})).verdict is Verdict.ALLOW


def test_step_budget_counts_every_proposal_of_a_run() -> None:
    policy = engine(f"version: 1\n{ACCESS_ALL}limits:\n  - {{name: s, type: steps, max: 2}}\n")
    answers = [policy.evaluate(request(run_id="r")).reason for _ in range(3)]
    assert answers == ["allowed", "allowed", "step_budget_exceeded"]
    assert policy.evaluate(request(run_id="other")).verdict is Verdict.ALLOW


def test_limit_state_survives_a_reload_where_the_rule_is_unchanged() -> None:
    clock, state = FakeClock(), LimitState()
    limit = "  - {name: r, type: rate, rate: 1/h, burst: 1}\n"
    first = engine(f"version: 1\n{ACCESS_ALL}limits:\n{limit}", clock, state)
    assert first.evaluate(request()).verdict is Verdict.ALLOW
    same_rule = engine(f"version: 1\nmode: enforce\n{ACCESS_ALL}limits:\n{limit}", clock, state)
    assert same_rule.evaluate(request()).reason == "rate_limited_tenant"
    changed = parse_policy(f"version: 1\n{ACCESS_ALL}limits:\n  - {{name: r, type: rate, rate: 2/h, burst: 1}}\n")
    state.retain(x.fingerprint for x in changed.limits)
    assert LayeredPolicy(changed, state, clock).evaluate(request()).verdict is Verdict.ALLOW


@pytest.mark.parametrize(
    ("text", "verdict", "shadow"),
    [
        pytest.param(
            f"version: 1\n{ACCESS_ALL}rules:\n  - {{name: r, decision: stop, when: 'true', shadow: true}}\n",
            Verdict.ALLOW,
            ("stop", "stopped_by_rule", "rules", "r"),
            id="shadow-rule",
        ),
        pytest.param(
            "version: 1\nmode: shadow\naccess: {default: deny}\n",
            Verdict.ALLOW,
            ("stop", "access_denied", "access", "default"),
            id="shadow-policy",
        ),
        pytest.param(
            f"version: 1\n{ACCESS_ALL}rules:\n  - {{name: s, decision: stop, when: 'true', shadow: true}}\n"
            "  - {name: e, decision: approval_required, when: 'true'}\n",
            Verdict.APPROVAL_REQUIRED,
            ("stop", "stopped_by_rule", "rules", "s"),
            id="shadow-then-enforced",
        ),
    ],
)
def test_shadow_records_what_enforcement_would_decide(
    text: str, verdict: Verdict, shadow: tuple[str, str, str, str]
) -> None:
    decision = engine(text).evaluate(request())
    assert decision.verdict is verdict
    assert decision.shadow is not None
    assert (
        decision.shadow.verdict.value,
        decision.shadow.reason,
        decision.shadow.layer,
        decision.shadow.rule,
    ) == shadow


@pytest.mark.parametrize(
    "when",
    [
        pytest.param("args.missing > 1", id="missing-field"),
        pytest.param("size(args.n) > 1", id="type-error"),
        pytest.param("args.n", id="non-boolean"),
    ],
)
def test_a_condition_failing_at_evaluation_stops_with_policy_error(when: str) -> None:
    policy = engine(f"version: 1\n{ACCESS_ALL}rules:\n  - {{name: r, decision: stop, when: '{when}'}}\n")
    decision = policy.evaluate(request(args={"n": 5}))
    assert (decision.verdict, decision.reason, decision.layer, decision.rule) == (
        Verdict.STOP,
        "policy_error",
        "rules",
        "r",
    )


def test_conditions_see_every_documented_variable() -> None:
    when = (
        "action == 'crm.lookup' && tenant == 't_42' && agent == 'support-agent' && actor.type == 'user' && "
        "scope == 'tenant' && labels.env == 'prod' && run.steps == 1 && args.n == 5"
    )
    policy = engine(f'version: 1\n{ACCESS_ALL}rules:\n  - name: r\n    decision: stop\n    when: "{when}"\n')
    assert policy.evaluate(request(args={"n": 5}, labels={"env": "prod"})).verdict is Verdict.ALLOW  # run.steps 0
    assert policy.evaluate(request(args={"n": 5}, labels={"env": "prod"})).verdict is Verdict.STOP


@pytest.mark.parametrize(
    ("scope", "target", "request_field"),
    [
        pytest.param("global", None, {}, id="global"),
        pytest.param("tenant", "t_9", {"tenant_id": "t_9"}, id="tenant"),
        pytest.param("agent", "bot-*", {"agent_id": "bot-1"}, id="agent"),
        pytest.param("run", "run_x", {"run_id": "run_x"}, id="run"),
    ],
)
def test_kill_switches_stop_everything_in_their_scope(
    scope: str, target: str | None, request_field: dict[str, str]
) -> None:
    target_line = f", target: [{target!r}]" if target else ""
    policy = engine(f"version: 1\n{ACCESS_ALL}kill_switch:\n  - {{name: k, scope: {scope}{target_line}}}\n")
    stopped = policy.evaluate(request(**request_field))
    assert (stopped.verdict, stopped.reason, stopped.layer) == (Verdict.STOP, "kill_switch_engaged", "kill_switch")
    if scope != "global":
        assert policy.evaluate(request()).verdict is Verdict.ALLOW


def test_access_bindings_select_by_agent_tenant_actor_type_and_condition() -> None:
    text = """version: 1
access:
  roles:
    reader: {actions: ["crm.read*"]}
  bindings:
    - {name: tenant_bound, roles: [reader], tenants: ["t_1"], agents: ["a"], actor_types: [service]}
    - {name: scoped, roles: [reader], agents: ["b"], when: "scope != 'global'"}
"""
    policy = engine(text)

    def check(**kw: Any) -> str:
        d = policy.evaluate(request("crm.read", **kw))
        return d.rule if d.verdict is Verdict.ALLOW else d.reason

    assert check(tenant_id="t_1", agent_id="a", actor_type="service") == "tenant_bound"
    assert check(tenant_id="t_2", agent_id="a", actor_type="service") == "access_denied"
    assert check(tenant_id="t_1", agent_id="a", actor_type="user") == "access_denied"
    assert check(agent_id="b", scope="tenant") == "scoped"
    assert check(agent_id="b", scope="global") == "access_denied"
    assert policy.evaluate(request("crm.write", agent_id="b")).reason == "access_denied"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("version: 2\n", r"p.yaml:1: policy: 'version' must be 1", id="version"),
        pytest.param("version: 1\nmode: audit\naccess: {}\n", r"p.yaml:2: policy: 'mode'", id="mode"),
        pytest.param("version: 1\n", "access: section is required", id="no-access"),
        pytest.param("version: 1\naccess: {}\nextra: 1\n", r"unknown key\(s\) extra", id="unknown-section"),
        pytest.param(
            "version: 1\naccess:\n  bindings:\n    - {name: b, roles: [ghost]}\n",
            r"p.yaml:4: access binding 'b': unknown role\(s\) ghost",
            id="unknown-role",
        ),
        pytest.param(
            "version: 1\naccess: {}\nlimits:\n  - {name: l, type: rate, rate: fast}\n",
            r"p.yaml:4: limits rule 'l': 'rate' must be a positive rate",
            id="bad-rate",
        ),
        pytest.param(
            "version: 1\naccess: {}\nlimits:\n  - {name: l, type: count, max: 5, window: soon}\n",
            r"limits rule 'l': 'window' must be a positive duration",
            id="bad-window",
        ),
        pytest.param(
            "version: 1\naccess: {}\nlimits:\n  - {name: l, type: sum, max: 5, window: 1h}\n",
            r"limits rule 'l': 'field' must be a dotted path",
            id="sum-without-field",
        ),
        pytest.param(
            "version: 1\naccess: {}\nlimits:\n  - {name: l, type: steps, max: 5, window: 1h}\n",
            r"limits rule 'l': unknown key\(s\) window",
            id="steps-with-window",
        ),
        pytest.param(
            "version: 1\naccess: {}\nrules:\n  - {name: r, decision: stop}\n",
            r"p.yaml:4: rules rule 'r': 'when' \(a CEL condition\) is required",
            id="rule-without-when",
        ),
        pytest.param(
            "version: 1\naccess: {}\nrules:\n  - name: r\n    decision: stop\n    when: 'args.a >'\n",
            r"p.yaml:6: rules rule 'r': CEL syntax error",
            id="cel-syntax",
        ),
        pytest.param(
            "version: 1\naccess: {}\nrules:\n  - {name: r, decision: stop, when: 'secret == 1'}\n",
            r"unknown variable\(s\) secret",
            id="cel-unknown-variable",
        ),
        pytest.param(
            "version: 1\naccess: {}\nrules:\n  - {name: r, decision: stop, when: '1 + \"a\" == 2'}\n",
            "fails on any request",
            id="cel-type-error",
        ),
        pytest.param(
            "version: 1\naccess: {}\nrules:\n  - {name: r, decision: stop, when: 'action'}\n",
            "not a boolean",
            id="cel-not-boolean",
        ),
        pytest.param(
            "version: 1\naccess: {}\nrules:\n  - {name: r, decision: stop, when: 'true'}\n"
            "  - {name: r, decision: stop, when: 'true'}\n",
            r"p.yaml:5: rules rule 'r': duplicate rule name",
            id="duplicate-name",
        ),
        pytest.param(
            "version: 1\naccess: {}\nrules:\n  - {name: r, decision: allow, when: 'true'}\n",
            "'decision' must be one of stop, approval_required",
            id="rule-cannot-allow",
        ),
        pytest.param(
            "version: 1\naccess: {}\nkill_switch:\n  - {name: k, scope: tenant}\n",
            "a tenant switch needs 'target'",
            id="switch-without-target",
        ),
        pytest.param(
            "version: 1\naccess: {}\napproval:\n  - {name: a, expires_in: soon}\n",
            "'expires_in' must be a positive duration",
            id="bad-expiry",
        ),
    ],
)
def test_bad_policies_are_refused_with_file_line_and_rule(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(text, "p.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "version: 1\naccess: {}\n\nextra: 1\n",
            r"^p.yaml:4: policy: unknown key\(s\) extra ",
            id="unknown-top-level-key",
        ),
        pytest.param(
            "version: 1\naccess: {}\nlimits:\n  - name: crm_per_tenant\n    type: rate\n"
            "    rate: 10/s\n    brust: 20\n",
            r"^p.yaml:7: limits rule 'crm_per_tenant': unknown key\(s\) brust ",
            id="named-limit-unknown-key",
        ),
        pytest.param(
            "version: 1\naccess: {}\nlimits:\n  - {name: a, type: steps, max: 5}\n  - {name: b, type: steps, max: 5}\n"
            "  - name: third\n    type: steps\n    max: 5\n    colour: red\n",
            r"^p.yaml:9: limits rule 'third': unknown key\(s\) colour ",
            id="third-limit-by-name",
        ),
        pytest.param(
            "version: 1\naccess: {}\nrules:\n  - name: r\n    when: 'true'\n    decison: stop\n",
            r"^p.yaml:6: rules rule 'r': unknown key\(s\) decison ",
            id="named-rule-unknown-key",
        ),
        pytest.param(
            "version: 1\naccess: {}\nkill_switch:\n  - name: k\n    scope: global\n    targte: x\n",
            r"^p.yaml:6: kill_switch rule 'k': unknown key\(s\) targte ",
            id="named-switch-unknown-key",
        ),
        pytest.param(
            "version: 1\naccess:\n  bindings:\n    - name: b\n      roels: [r]\n",
            r"^p.yaml:5: access binding 'b': unknown key\(s\) roels ",
            id="named-binding-unknown-key",
        ),
        pytest.param(
            "version: 1\naccess: {}\nlimits:\n  - type: steps\n    max: 5\n    colour: red\n",
            r"^p.yaml:6: limits rule #1: unknown key\(s\) colour ",
            id="unnamed-limit-by-position",
        ),
    ],
)
def test_unknown_keys_are_reported_at_their_own_line_and_rules_by_name(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(text, "p.yaml")


def test_policy_version_ignores_formatting_but_not_content() -> None:
    a = parse_policy(EXAMPLE_POLICY).version
    assert parse_policy("# comment\n" + EXAMPLE_POLICY).version == a
    assert parse_policy(EXAMPLE_POLICY.replace("burst: 20", "burst: 21")).version != a
