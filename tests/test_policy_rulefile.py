"""The stand-in glob rule policy: first match decides; bad documents are refused with file, line and rule."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.policy.model import ActionRequest, Verdict
from gateway.policy.rulefile import EXAMPLE_POLICY, parse_policy


def request(action: str, tenant: str = "t_42", agent: str = "support-agent") -> ActionRequest:
    return ActionRequest(
        run_id="r",
        step_id=1,
        tenant_id=tenant,
        actor_type="user",
        actor_id="u",
        agent_id=agent,
        action=action,
        args={},
        scope="",
    )


@pytest.mark.parametrize(
    ("action", "tenant", "verdict", "reason", "rule"),
    [
        pytest.param(
            "crm.search", "t_flood", Verdict.STOP, "rate_limited_tenant", "flood_tenant_crm_search", id="flood"
        ),
        pytest.param("crm.search", "t_42", Verdict.ALLOW, "allowed", "", id="normal-search"),
        pytest.param(
            "refund.create",
            "t_42",
            Verdict.APPROVAL_REQUIRED,
            "approval_required",
            "refunds_need_approval",
            id="refund",
        ),
        pytest.param(
            "crm.delete_customer", "t_42", Verdict.STOP, "stopped_by_rule", "no_customer_deletes", id="delete"
        ),
        pytest.param("email.send", "t_42", Verdict.ALLOW, "allowed", "", id="default"),
    ],
)
def test_example_policy_decisions(action: str, tenant: str, verdict: Verdict, reason: str, rule: str) -> None:
    policy = parse_policy(EXAMPLE_POLICY)
    decision = policy.evaluate(request(action, tenant))
    assert (decision.verdict, decision.reason, decision.rule) == (verdict, reason, rule)
    assert decision.policy_version == policy.version


def test_retry_after_is_carried_by_rate_limit_rules() -> None:
    decision = parse_policy(EXAMPLE_POLICY).evaluate(request("crm.search", "t_flood"))
    assert decision.retry_after_s == 1.0


def test_version_changes_with_content_but_not_with_formatting() -> None:
    a = parse_policy(EXAMPLE_POLICY).version
    b = parse_policy("# a comment\n" + EXAMPLE_POLICY).version
    c = parse_policy(EXAMPLE_POLICY.replace("retry_after: 1.0", "retry_after: 2.0")).version
    assert a == b != c


def test_default_stop() -> None:
    policy = parse_policy("version: 1\ndefault: stop\nrules: []\n")
    decision = policy.evaluate(request("anything"))
    assert (decision.verdict, decision.layer) == (Verdict.STOP, "default")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param("version: 2\n", "'version' must be 1", id="version"),
        pytest.param(
            "version: 1\nrules:\n  - name: a\n    action: x\n    decision: maybe\n",
            r"p.yaml:3: rule 'a': decision must be one of",
            id="bad-decision",
        ),
        pytest.param(
            "version: 1\nrules:\n  - name: a\n    decision: stop\n",
            r"p.yaml:3: rule 'a': 'action'",
            id="missing-action",
        ),
        pytest.param(
            "version: 1\nrules:\n  - name: a\n    action: x\n    decision: stop\n    reason: Bad Reason\n",
            "snake_case",
            id="bad-reason",
        ),
        pytest.param(
            "version: 1\nrules:\n  - name: a\n    action: x\n    decision: stop\n    when: x\n",
            "unknown key",
            id="unknown-key",
        ),
        pytest.param(
            "version: 1\nrules:\n  - {name: a, action: x, decision: stop}\n  - {name: a, action: y, decision: stop}\n",
            r"p.yaml:4: rule 'a': duplicate",
            id="duplicate",
        ),
        pytest.param("version: 1\ndefault: approval_required\n", "default", id="bad-default"),
        pytest.param("rules: [\n", "invalid YAML", id="yaml"),
    ],
)
def test_bad_policies_are_refused_precisely(doc: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(doc, "p.yaml")
