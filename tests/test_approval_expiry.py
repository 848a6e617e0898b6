"""A granted approval has its own use-by time: expired, denied and abandoned are three distinct outcomes.

Most tests run a real sidecar process on a policy whose approval rules have short clocks:

- ``refund.create``: ``expires_in: 2s`` (so a grant is usable for 2 s too, counted from the grant);
- ``ticket.close``: ``expires_in: 2s`` but ``use_within: 1h`` (a grant outlives the ask's clock);
- ``ticket.escalate``: ``expires_in: never`` (the ask parks until someone answers it).

Nothing sleeps: each waits for the sidecar's expiry task to journal an outcome, polling with a deadline.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaudit.v1 import gateway_pb2, operator_pb2, types_pb2
from gateway import reasons
from gateway.canonical import canonical_json
from gateway.identity import Operator
from gateway.ids import new_event_id
from gateway.journal.entry import EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.state import NEVER_NS, use_by_ns
from gateway.journal.store import JournalReader, iter_bodies
from gateway.journal.writer import JournalWriter, now_nanos
from gateway.policy import document
from gateway.policy.engine import LayeredPolicy
from gateway.policy.limits import LimitState
from gateway.policy.model import ActionRequest, Decision, Verdict
from gateway.redaction import Redactor
from gateway.sidecar.approvals import ApprovalBook
from gateway.sidecar.recorder import AuditRecorder
from tests.conftest import RunningGateway, run_cli, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.helpers import eventually
from tests.journal_helpers import body, fixed_signer
from tests.operator_helpers import TOKENS, auth, operator_stub, prepare_dir

EXAMPLE_POLICY = Path(document.__file__).with_name("example_policy.yaml")
QUICK = "refund.create"  # expires_in: 2s
LONG_USE = "ticket.close"  # expires_in: 2s, use_within: 1h
PARKED = "ticket.escalate"  # expires_in: never
STATES = gateway_pb2.ApprovalState


RULES = {
    QUICK: {"name": "quick_refunds", "expires_in": "2s"},
    LONG_USE: {"name": "long_use_tickets", "expires_in": "2s", "use_within": "1h"},
    PARKED: {"name": "parked_escalations", "expires_in": "never"},
}


def short_clock_policy(*actions: str) -> str:
    """The example policy with the approval rules of ``actions`` (default: all three above) in place of its own."""
    policy = yaml.safe_load(EXAMPLE_POLICY.read_text())
    policy["approval"] = [
        {**RULES[action], "actions": [action], "approvers": ["role:approver"]} for action in actions or RULES
    ]
    policy["rules"] = []
    return yaml.safe_dump(policy)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """A dev directory whose policy has only the quick rule (a policy today's main also parses)."""
    path = tmp_path / "gw"
    prepare_dir(path, policy=short_clock_policy(QUICK))
    return path


@pytest.fixture
def sidecar(directory: Path) -> Any:
    gw = start_gateway(directory)
    try:
        yield gw
    finally:
        assert gw.stop() == 0


@pytest.fixture
def all_rules_directory(tmp_path: Path) -> Path:
    """A dev directory whose policy has all three rules (use_within and never included)."""
    path = tmp_path / "gw"
    prepare_dir(path, policy=short_clock_policy())
    return path


@pytest.fixture
def all_rules_sidecar(all_rules_directory: Path) -> Any:
    gw = start_gateway(all_rules_directory)
    try:
        yield gw
    finally:
        assert gw.stop() == 0


def decide(gw: RunningGateway, action: str, run_id: str, **fields: Any) -> Any:
    channel, gateway = stub(gw.unix_target)
    with channel:
        return gateway.Decide(decide_request(run_id=run_id, action=action, args={"amount": 1}, **fields), timeout=10)


def ask(gw: RunningGateway, action: str, run_id: str) -> str:
    asked = decide(gw, action, run_id)
    assert asked.decision == types_pb2.DECISION_APPROVAL_REQUIRED, asked
    return str(asked.approval_id)


def resume(gw: RunningGateway, action: str, run_id: str, approval_id: str) -> tuple[int, str]:
    resumed = decide(gw, action, run_id, step_id=2, approval_id=approval_id)
    return resumed.decision, resumed.reason


def resolve(gw: RunningGateway, approval_id: str, *, grant: bool) -> None:
    channel, op = operator_stub(gw.operator_target)
    method, message = ("GrantApproval", "GrantApprovalRequest") if grant else ("DenyApproval", "DenyApprovalRequest")
    request = getattr(operator_pb2, message)(approval_id=approval_id, comment="ok")
    with channel:
        getattr(op, method)(request, metadata=auth(TOKENS["alice"][0]), timeout=10)


def wait_state(gw: RunningGateway, approval_id: str, timeout_s: float = 10) -> int:
    """WaitApproval on the agent port: returns at once unless the approval is pending, then waits up to timeout_s."""
    channel, gateway = stub(gw.unix_target)
    with channel:
        reply = gateway.WaitApproval(gateway_pb2.WaitApprovalRequest(approval_id=approval_id), timeout=timeout_s)
    return int(reply.state)


def until_state(gw: RunningGateway, approval_id: str, state: int) -> None:
    eventually(lambda: wait_state(gw, approval_id) == state, message=f"{approval_id} {STATES.Name(state)}")


def journaled(gw: RunningGateway, approval_id: str) -> list[str]:
    """The approval events of one approval, in order."""
    return [
        b["kind"]
        for _, b in iter_bodies(gw.journal_path)
        if b.get("kind", "").startswith("approval_") and b.get("approval_id") == approval_id
    ]


def verify(gw: RunningGateway) -> None:
    result = run_cli("verify", str(gw.journal_path), "--public-key", str(gw.public_key_path))
    assert result.returncode == 0, result.stdout + result.stderr


def past_two_seconds(gw: RunningGateway) -> None:
    """Returns once 2 s have passed: an approval asked now under the quick rule has expired (WaitApproval blocks)."""
    clock = ask(gw, QUICK, "run_clock")
    assert wait_state(gw, clock) == STATES.Value("APPROVAL_STATE_EXPIRED")


def test_a_grant_nobody_uses_in_time_is_abandoned_and_the_resume_stops(sidecar: RunningGateway) -> None:
    approval_id = ask(sidecar, QUICK, "run_a")
    resolve(sidecar, approval_id, grant=True)  # at once: the ask's own 2 s are no use-by time for the grant
    past_two_seconds(sidecar)  # the grant's 2 s, counted from the grant, have passed too
    assert resume(sidecar, QUICK, "run_a", approval_id) == (types_pb2.DECISION_STOP, reasons.APPROVAL_ABANDONED)
    until_state(sidecar, approval_id, STATES.Value("APPROVAL_STATE_ABANDONED"))
    assert journaled(sidecar, approval_id) == ["approval_granted", "approval_abandoned"]
    (abandoned,) = [b for _, b in iter_bodies(sidecar.journal_path, kind="approval_abandoned")]
    assert abandoned["actor"] == {"type": "system", "id": "agentaudit"}
    verify(sidecar)


def test_expiry_denial_and_abandonment_are_distinct_outcomes(sidecar: RunningGateway) -> None:
    expired, denied, abandoned = (ask(sidecar, QUICK, f"run_{name}") for name in ("e", "d", "a"))
    resolve(sidecar, denied, grant=False)
    resolve(sidecar, abandoned, grant=True)
    outcomes = {}
    for name, approval_id in (("e", expired), ("d", denied), ("a", abandoned)):
        unsettled = (STATES.Value("APPROVAL_STATE_PENDING"), STATES.Value("APPROVAL_STATE_GRANTED"))
        eventually(lambda a=approval_id: wait_state(sidecar, a) not in unsettled, message=f"{name} settled")
        outcomes[name] = (
            STATES.Name(wait_state(sidecar, approval_id)),
            resume(sidecar, QUICK, f"run_{name}", approval_id),
            journaled(sidecar, approval_id)[-1],
        )
    stop = types_pb2.DECISION_STOP
    assert outcomes == {
        "e": ("APPROVAL_STATE_EXPIRED", (stop, reasons.APPROVAL_EXPIRED), "approval_expired"),
        "d": ("APPROVAL_STATE_DENIED", (stop, reasons.APPROVAL_DENIED), "approval_denied"),
        "a": ("APPROVAL_STATE_ABANDONED", (stop, reasons.APPROVAL_ABANDONED), "approval_abandoned"),
    }
    verify(sidecar)


def test_use_within_longer_than_expires_in_keeps_the_grant_usable_across_a_restart(all_rules_directory: Path) -> None:
    gw = start_gateway(all_rules_directory)
    try:
        long_use = ask(gw, LONG_USE, "run_l")
        resolve(gw, long_use, grant=True)
    finally:
        assert gw.stop() == 0
    gw = start_gateway(all_rules_directory)  # the grant's use-by comes back from the signed events (use_within)
    try:
        past_two_seconds(gw)
        assert wait_state(gw, long_use) == STATES.Value("APPROVAL_STATE_GRANTED")
        assert resume(gw, LONG_USE, "run_l", long_use) == (types_pb2.DECISION_ALLOW, reasons.ALLOWED)
    finally:
        assert gw.stop() == 0
    assert [b for _, b in iter_bodies(gw.journal_path, kind="state_mismatch")] == []
    verify(gw)


def test_an_approval_that_never_expires_parks_until_answered(all_rules_sidecar: RunningGateway) -> None:
    sidecar = all_rules_sidecar
    parked = ask(sidecar, PARKED, "run_p")
    past_two_seconds(sidecar)
    # WaitApproval waits out the caller's deadline and answers "still pending": no clock of its own ends it.
    assert wait_state(sidecar, parked, timeout_s=1) == STATES.Value("APPROVAL_STATE_PENDING")
    assert resume(sidecar, PARKED, "run_p", parked) == (types_pb2.DECISION_APPROVAL_REQUIRED, reasons.APPROVAL_PENDING)
    resolve(sidecar, parked, grant=True)
    assert resume(sidecar, PARKED, "run_p", parked) == (types_pb2.DECISION_ALLOW, reasons.ALLOWED)
    (asked,) = [
        b
        for _, b in iter_bodies(sidecar.journal_path, kind="pre_exec")
        if b["approval_id"] == parked and not b["resumed_approval_id"]
    ]
    assert asked["approval_expires_in_s"] == "never"
    verify(sidecar)


def test_a_restart_keeps_the_grants_use_by_time_and_its_abandonment(directory: Path) -> None:
    gw = start_gateway(directory)
    try:
        quick = ask(gw, QUICK, "run_q")
        resolve(gw, quick, grant=True)
    finally:
        assert gw.stop() == 0
    verify(gw)

    gw = start_gateway(directory)  # the use-by time comes back from the signed grant event
    try:
        past_two_seconds(gw)
        assert resume(gw, QUICK, "run_q", quick) == (types_pb2.DECISION_STOP, reasons.APPROVAL_ABANDONED)
        until_state(gw, quick, STATES.Value("APPROVAL_STATE_ABANDONED"))
    finally:
        assert gw.stop() == 0

    gw = start_gateway(directory)  # and the abandonment from the signed approval_abandoned event
    try:
        assert wait_state(gw, quick) == STATES.Value("APPROVAL_STATE_ABANDONED")
        assert resume(gw, QUICK, "run_q", quick)[0] == types_pb2.DECISION_STOP
    finally:
        assert gw.stop() == 0
    assert journaled(gw, quick) == ["approval_granted", "approval_abandoned"]
    assert [b for _, b in iter_bodies(gw.journal_path, kind="state_mismatch")] == []
    verify(gw)


# --- the parsing and the expiry task's decision, on ApprovalBook with a real journal -----------------------------


@pytest.mark.parametrize(
    ("times", "parsed"),
    [
        pytest.param({}, (3600, False, None), id="defaults"),
        pytest.param({"expires_in": "2s", "use_within": "10m"}, (2, False, 600), id="use-within"),
        pytest.param({"expires_in": "never"}, (None, True, None), id="never"),
        pytest.param({"expires_in": "never", "use_within": "15m"}, (None, True, 900), id="never-then-use-within"),
    ],
)
def test_approval_rules_parse_expires_in_and_use_within(times: dict[str, str], parsed: tuple[Any, ...]) -> None:
    policy = {"version": 1, "access": {}, "approval": [{"name": "a", "actions": ["x"], **times}]}
    (rule,) = document.parse_policy(yaml.safe_dump(policy), "p.yaml").approvals
    assert (rule.expires_s, rule.parks, rule.use_within_s) == parsed


@pytest.mark.parametrize(
    "times",
    [pytest.param({"use_within": "never"}, id="use-within-never"), pytest.param({"use_within": "0s"}, id="zero")],
)
def test_a_grant_always_lapses(times: dict[str, str]) -> None:
    policy = {"version": 1, "access": {}, "approval": [{"name": "a", "actions": ["x"], **times}]}
    with pytest.raises(Exception, match="'use_within' must be a positive duration"):
        document.parse_policy(yaml.safe_dump(policy), "p.yaml")


HOUR_NS = 3600 * 1_000_000_000


def test_the_expiry_task_leaves_a_parked_approval_pending_past_the_default_hour(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "journal.db"
        writer, reader = JournalWriter(path, fixed_signer()), JournalReader(path)
        recorder = AuditRecorder(writer, reader, Redactor.create(os.urandom(32), [], True))
        book = ApprovalBook(recorder, reader, expiry_check_s=3600)
        await writer.start()
        await book.start()
        try:
            engine = LayeredPolicy(document.parse_policy(short_clock_policy(), "p.yaml"), LimitState())
            parked_decision = engine.evaluate(_request(PARKED))
            assert parked_decision.approval_parks
            default = Decision(Verdict.APPROVAL_REQUIRED, reasons.APPROVAL_REQUIRED, "approval", "d", "v1")
            approvals = []
            for approval_id, decision in (("apr_parked", parked_decision), ("apr_default", default)):
                approval, state = book.create(_request(PARKED), "ab_1", decision, approval_id, f"evt_{approval_id}")
                event = body(0, event_id=new_event_id())
                await writer.append(
                    EventKind.PRE_EXEC, canonical_json(event), indexed_values(event), now_nanos(), state
                )
                book.opened(approval)
                approval.created_ns -= 2 * HOUR_NS  # as if asked two hours ago
                approvals.append(approval)
            parked, hourly = approvals
            hourly.expires_ns -= 2 * HOUR_NS
            assert parked.expires_ns == NEVER_NS
            assert await book.expire_due() == 1
            assert (parked.state, hourly.state) == ("pending", "expired")
            granted, _ = await book.resolve("apr_parked", True, Operator("alice", frozenset({"approver"})), "ok")
            # The grant of a parked approval still lapses: the default hour from the grant (no use_within here).
            assert granted.expires_ns == use_by_ns(granted, granted.resolved_ns or 0) < NEVER_NS
            assert granted.expires_ns - (granted.resolved_ns or 0) == HOUR_NS
        finally:
            await book.aclose()
            await writer.aclose()
            await reader.aclose()

    asyncio.run(main())


def _request(action: str) -> ActionRequest:
    return ActionRequest("run_1", 1, "t_42", "user", "u_1", "support-agent", action, {"n": 1}, "tenant")
