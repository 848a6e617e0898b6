"""The layered policy through a real sidecar: limits, shadow, fail-closed CEL, reloads journaled."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import pytest

from agentaudit.v1 import gateway_pb2, types_pb2
from gateway.journal.store import iter_bodies
from gateway.policy import EXAMPLE_POLICY
from tests.conftest import RunningGateway, run_cli
from tests.gateway_helpers import decide_request, stub
from tests.helpers import eventually


def events(path: Path, kind: str | None = None) -> list[dict[str, object]]:
    return [body for _, body in iter_bodies(path, kind=kind)]


def test_a_burst_of_crm_calls_is_rate_limited_per_tenant(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        # Until the first stop: the bucket refills at 10/s while the calls run, so on a slow moment more than the
        # burst of 20 may pass, but never more than the burst plus what the elapsed time refilled.
        started = time.monotonic()
        replies = []
        for i in range(200):
            replies.append(gw.Decide(decide_request(tenant_id="t_flood", action="crm.search", step_id=i), timeout=10))
            if replies[-1].decision != types_pb2.DECISION_ALLOW:
                break
        elapsed = time.monotonic() - started
        other_tenant = gw.Decide(decide_request(tenant_id="t_42", action="crm.search"), timeout=10)
    allowed = len(replies) - 1
    assert 20 <= allowed <= 20 + math.ceil(10 * elapsed) + 1, (allowed, elapsed)  # the burst, then the rate
    stopped = replies[-1]
    assert (stopped.decision, stopped.reason, stopped.policy_layer, stopped.policy_rule) == (
        types_pb2.DECISION_STOP,
        "rate_limited_tenant",
        "limits",
        "crm_per_tenant",
    )
    assert 0 < stopped.retry_after.ToTimedelta().total_seconds() <= 0.1
    assert other_tenant.decision == types_pb2.DECISION_ALLOW, "limits are per tenant"
    body = next(e for e in events(gateway_server.journal_path) if e["event_id"] == stopped.event_id)
    # From the nanoseconds: a timedelta keeps microseconds, and 62.500095 ms would round to 62 there, 63 here.
    wait_ms = stopped.retry_after.seconds * 1000 + stopped.retry_after.nanos / 1e6
    assert body["retry_after_ms"] == round(wait_ms)


def test_shadow_rule_is_journaled_but_the_agent_is_allowed(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        reply = gw.Decide(decide_request(action="crm.update", labels={"shift": "night"}), timeout=10)
    assert reply.decision == types_pb2.DECISION_ALLOW
    body = next(e for e in events(gateway_server.journal_path) if e["event_id"] == reply.event_id)
    assert (body["decision"], body["shadow_decision"], body["shadow_reason"], body["shadow_rule"]) == (
        "allow",
        "stop",
        "outside_business_hours",
        "trial_night_freeze",
    )


def test_a_cel_runtime_error_fails_closed_and_is_journaled(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        # size() of a number is a CEL type error at evaluation time.
        reply = gw.Decide(decide_request(action="email.send", args={"to": 5}), timeout=10)
    assert (reply.decision, reply.reason, reply.policy_layer, reply.policy_rule) == (
        types_pb2.DECISION_STOP,
        "policy_error",
        "rules",
        "no_bulk_email",
    )
    body = next(e for e in events(gateway_server.journal_path) if e["event_id"] == reply.event_id)
    assert body["reason"] == "policy_error"


def test_approval_rules_carry_approvers_and_expiry_into_the_journal(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        reply = gw.Decide(decide_request(action="refund.create", args={"amount": 250}), timeout=10)
    body = next(e for e in events(gateway_server.journal_path) if e["event_id"] == reply.event_id)
    assert (body["approvers"], body["approval_expires_in_s"], body["policy_layer"]) == (
        ["role:approver"],
        3600,
        "approval",
    )


def test_file_change_reloads_and_journals_policy_changed(gateway_server: RunningGateway) -> None:
    policy = gateway_server.dir / "policy.yaml"
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        before = gw.Decide(decide_request(action="kb.read"), timeout=10)
        assert before.decision == types_pb2.DECISION_ALLOW
        policy.write_text(EXAMPLE_POLICY.replace('actions: ["crm.search", "crm.lookup", "kb.*"]', 'actions: ["crm.*"]'))
        eventually(lambda: events(gateway_server.journal_path, "policy_changed"))
        changed = events(gateway_server.journal_path, "policy_changed")[0]
        # The change is journaled first and applied right after (a record before the new policy answers), so
        # the next answers may still come from the old version for a moment: ask until the new one answers.
        steps = iter(range(2, 1000))

        def answered_by_the_new_policy() -> gateway_pb2.DecideResponse | None:
            answer = gw.Decide(decide_request(action="kb.read", step_id=next(steps)), timeout=10)
            return answer if answer.policy_version == changed["new_version"] else None

        after = eventually(answered_by_the_new_policy, message="an answer from the new policy")
    assert (changed["old_version"], changed["new_version"]) == (before.policy_version, after.policy_version)
    assert changed["trigger"] == "file_change"
    assert changed["actor"]["type"] == "process_user"  # type: ignore[index]
    assert after.decision == types_pb2.DECISION_STOP and after.reason == "access_denied"


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        pytest.param(
            "version: 1\naccess: {default: deny}\nrules:\n  - name: x\n    decision: stop\n    when: 'args.a >'\n",
            "CEL syntax",
            id="cel-syntax",
        ),
        pytest.param(
            "version: 1\naccess: {default: deny}\nrules:\n  - name: x\n    decision: stop\n    when: 'nope > 1'\n",
            "unknown variable",
            id="cel-unknown-variable",
        ),
        pytest.param("version: 1\nlimits: []\n", "access: section is required", id="no-access"),
        pytest.param("version: [\n", "invalid YAML", id="yaml"),
    ],
)
def test_a_bad_policy_is_rejected_and_the_old_one_keeps_answering(
    gateway_server: RunningGateway, broken: str, message: str
) -> None:
    policy = gateway_server.dir / "policy.yaml"
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        version = gw.Decide(decide_request(), timeout=10).policy_version
        policy.write_text(broken)
        gateway_server.proc.send_signal(signal.SIGHUP)
        eventually(lambda: message in gateway_server.log())
        again = gw.Decide(decide_request(step_id=2), timeout=10)
    assert again.policy_version == version
    assert again.decision == types_pb2.DECISION_ALLOW
    assert f"{policy}:" in gateway_server.log(), "the rejection names the file"
    assert not events(gateway_server.journal_path, "policy_changed")


def test_sighup_reloads(gateway_server: RunningGateway) -> None:
    policy = gateway_server.dir / "policy.yaml"
    policy.write_text(EXAMPLE_POLICY.replace("mode: enforce", "mode: shadow"))
    gateway_server.proc.send_signal(signal.SIGHUP)
    eventually(lambda: events(gateway_server.journal_path, "policy_changed"))
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        reply = gw.Decide(decide_request(action="db.drop"), timeout=10)
    assert reply.decision == types_pb2.DECISION_ALLOW, "a shadow policy always allows"
    body = next(e for e in events(gateway_server.journal_path) if e["event_id"] == reply.event_id)
    assert (body["shadow_decision"], body["shadow_reason"]) == ("stop", "access_denied")


def test_policy_cli_checks_and_tests_the_example(gateway_server: RunningGateway) -> None:
    policy, tests = gateway_server.dir / "policy.yaml", gateway_server.dir / "policy_tests.yaml"
    checked = run_cli("policy", "check", str(policy))
    assert checked.returncode == 0 and "OK, version sha256:" in checked.stdout
    tested = run_cli("policy", "test", str(policy), str(tests))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.strip().endswith(" passed, 0 failed")
