"""Four-eyes approvals enforced by a real sidecar: ``approvals_required: 2`` on the example policy's refund rule.

Every test runs ``agentaudit dev`` as a process and talks to it over gRPC (and the CLI): votes are journaled
``approval_voted`` until the second distinct approver grants, one person votes once under any spelling, the run's
own actor and people outside the rule never count, a restart (even SIGKILL) keeps the votes because they are derived
from the signed journal, and a hand-edited ``approval_votes`` row is ignored and reported.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from agentaudit.v1 import gateway_pb2, operator_pb2, types_pb2
from gateway import devenv
from gateway.errors import ConfigError
from gateway.journal.store import iter_bodies
from gateway.policy import EXAMPLE_POLICY
from gateway.policy.document import parse_policy
from tests.conftest import RunningGateway, run_cli, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.operator_helpers import TOKENS, auth, operator_stub, prepare_dir
from tests.test_approval_races import error_reason

REFUND = {"order_id": "o_4", "amount": 250}
_RULE = '    approvers: ["role:approver"]\n    expires_in: 1h'
assert _RULE in EXAMPLE_POLICY
FOUR_EYES_POLICY = EXAMPLE_POLICY.replace(
    _RULE, '    approvers: ["role:approver"]\n    approvals_required: 2\n    expires_in: 1h'
)
CROWD = [f"approver{i:02d}" for i in range(20)]
# identity -> roles. ALICE and its full-width form are alice under another spelling; U_1 is the example
# requests' own actor (user u_1); root is an admin, allowed to call GrantApproval but not among the rule's approvers.
APPROVERS = {
    "carol": ["approver"],
    "dave": ["approver"],
    "ALICE": ["approver"],
    "\uff21\uff2c\uff29\uff23\uff25": ["approver"],
    "U_1": ["approver"],
    **{name: ["approver"] for name in CROWD},
}


def token_of(identity: str) -> str:
    if identity in TOKENS:
        return TOKENS[identity][0]
    return "tok-" + hashlib.sha256(identity.encode()).hexdigest()[:24]


def prepare(directory: Path, policy: str = FOUR_EYES_POLICY) -> None:
    """A dev directory with the four-eyes policy and a token for every identity above."""
    prepare_dir(directory, policy=policy)
    config_path = directory / devenv.CONFIG_FILE
    config = yaml.safe_load(config_path.read_text())
    config["operator"]["tokens"] += [
        {"identity": name, "roles": roles, "sha256": hashlib.sha256(token_of(name).encode()).hexdigest()}
        for name, roles in APPROVERS.items()
    ]
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    directory = Path(tmp_path_factory.mktemp("four"))
    prepare(directory)
    gw = start_gateway(directory)
    try:
        yield gw
    finally:
        gw.stop()


def ask(gw: RunningGateway, run_id: str, **fields: Any) -> gateway_pb2.DecideResponse:
    channel, gateway = stub(gw.unix_target)
    with channel:
        return gateway.Decide(decide_request(action="refund.create", args=REFUND, run_id=run_id, **fields), timeout=20)


def answer(gw: RunningGateway, approval_id: str, who: str, *, grant: bool = True, comment: str = "ok") -> Any:
    channel, op = operator_stub(gw.operator_target)
    with channel:
        if grant:
            request: Any = operator_pb2.GrantApprovalRequest(approval_id=approval_id, comment=comment)
            return op.GrantApproval(request, metadata=auth(token_of(who)), timeout=30)
        request = operator_pb2.DenyApprovalRequest(approval_id=approval_id, comment=comment)
        return op.DenyApproval(request, metadata=auth(token_of(who)), timeout=30)


def refused(gw: RunningGateway, approval_id: str, who: str, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        answer(gw, approval_id, who, **kw)
    return err.value


def wait_state(gw: RunningGateway, approval_id: str, timeout_s: float) -> int:
    channel, gateway = stub(gw.unix_target)
    with channel:
        request = gateway_pb2.WaitApprovalRequest(approval_id=approval_id)
        return int(gateway.WaitApproval(request, timeout=timeout_s).state)


def kinds_of(gw: RunningGateway, approval_id: str) -> list[str]:
    return [
        body["kind"]
        for _, body in iter_bodies(gw.journal_path)
        if body.get("approval_id") == approval_id and body["kind"] != "pre_exec"
    ]


def bodies_of(gw: RunningGateway, approval_id: str, kind: str) -> list[dict[str, Any]]:
    return [b for _, b in iter_bodies(gw.journal_path, kind=kind) if b.get("approval_id") == approval_id]


def listed(gw: RunningGateway, approval_id: str) -> operator_pb2.Approval:
    channel, op = operator_stub(gw.operator_target)
    with channel:
        reply = op.ListApprovals(operator_pb2.ListApprovalsRequest(), metadata=auth(TOKENS["bob"][0]), timeout=20)
    return next(a for a in reply.approvals if a.approval_id == approval_id)


def votes(approval: operator_pb2.Approval) -> list[tuple[str, bool]]:
    return [(v.approver, v.grant) for v in approval.votes]


# --- the rule --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("0", "'approvals_required' must be a whole number from 1 to 10, got 0", id="zero"),
        pytest.param("11", "from 1 to 10, got 11", id="eleven"),
        pytest.param('"2"', "from 1 to 10, got '2'", id="string"),
        pytest.param("true", "from 1 to 10, got True", id="bool"),
        pytest.param("1.5", "from 1 to 10, got 1.5", id="fraction"),
    ],
)
def test_a_bad_approvals_required_is_refused_naming_the_rule(value: str, message: str) -> None:
    policy = FOUR_EYES_POLICY.replace("approvals_required: 2", f"approvals_required: {value}")
    with pytest.raises(ConfigError) as err:
        parse_policy(policy, "policy.yaml")
    text = str(err.value)
    assert "approval rule 'refunds_need_approval'" in text and message in text
    assert text.startswith("policy.yaml:")  # at its line


def test_approvals_required_belongs_to_approval_rules_and_needs_enough_named_approvers() -> None:
    assert parse_policy(FOUR_EYES_POLICY).approvals[0].approvals_required == 2
    assert parse_policy(EXAMPLE_POLICY).approvals[0].approvals_required == 1
    stop_rule = "    decision: stop\n    reason: bulk_email_blocked"
    with pytest.raises(ConfigError, match="apply only to approval_required rules"):
        parse_policy(EXAMPLE_POLICY.replace(stop_rule, stop_rule + "\n    approvals_required: 2"))
    two_spellings = FOUR_EYES_POLICY.replace('["role:approver"]', '["alice", "ALICE"]')
    with pytest.raises(ConfigError, match="names only 1 distinct identities"):
        parse_policy(two_spellings)
    assert parse_policy(FOUR_EYES_POLICY.replace('["role:approver"]', '["alice", "carol"]'))


# --- votes on a real sidecar -----------------------------------------------------------------------------------


def test_the_second_distinct_approver_grants_and_the_blocked_agent_resumes(sidecar: RunningGateway) -> None:
    pending = ask(sidecar, "run_4e_main")
    assert pending.decision == types_pb2.DECISION_APPROVAL_REQUIRED
    approval_id = pending.approval_id
    (asked,) = [b for _, b in iter_bodies(sidecar.journal_path, kind="pre_exec") if b["approval_id"] == approval_id]
    assert asked["approvals_required"] == 2 and asked["policy_version"].startswith("sha256:")

    first = answer(sidecar, approval_id, "alice")
    assert first.approval.state == gateway_pb2.APPROVAL_STATE_PENDING
    assert first.approval.approvals_required == 2 and votes(first.approval) == [("alice", True)]
    assert first.approval.votes[0].channel == "cli" and first.approval.resolved_by == ""
    assert kinds_of(sidecar, approval_id) == ["approval_voted"]
    (voted,) = bodies_of(sidecar, approval_id, "approval_voted")
    assert voted["event_id"] == first.event_id and voted["actor"] == {"type": "operator", "id": "alice"}
    assert (voted["grant"], voted["approvals"], voted["approvals_required"], voted["channel"]) == (True, 1, 2, "cli")

    # The agent is still blocked: a resume is pending, and WaitApproval keeps waiting.
    early = ask(sidecar, "run_4e_main", approval_id=approval_id)
    assert (early.decision, early.reason) == (types_pb2.DECISION_APPROVAL_REQUIRED, "approval_pending")
    assert wait_state(sidecar, approval_id, 1.5) == gateway_pb2.APPROVAL_STATE_PENDING

    # One vote per person, under any spelling.
    for spelling in ("alice", "ALICE", "\uff21\uff2c\uff29\uff23\uff25"):
        error = refused(sidecar, approval_id, spelling)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, spelling
        assert error_reason(error) == "APPROVAL_ALREADY_VOTED", spelling
        assert error_reason(refused(sidecar, approval_id, spelling, grant=False, comment="no")) == (
            "APPROVAL_ALREADY_VOTED"
        )
    # The run's own actor (user u_1, here as operator U_1) and an admin outside the rule's approvers never count.
    assert refused(sidecar, approval_id, "U_1").code() == grpc.StatusCode.PERMISSION_DENIED
    assert "initiated run" in (refused(sidecar, approval_id, "U_1").details() or "")
    assert refused(sidecar, approval_id, "root").code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(sidecar, approval_id, "bob").code() == grpc.StatusCode.PERMISSION_DENIED  # an auditor
    assert kinds_of(sidecar, approval_id) == ["approval_voted"], "refusals journal no vote"
    assert [b["method"] for _, b in iter_bodies(sidecar.journal_path, kind="operator_denied")].count(
        "GrantApproval"
    ) >= 3

    waited: list[int] = []
    waiter = threading.Thread(target=lambda: waited.append(wait_state(sidecar, approval_id, 60)))
    waiter.start()
    second = answer(sidecar, approval_id, "carol", comment="checked the order")
    waiter.join(60)
    assert second.approval.state == gateway_pb2.APPROVAL_STATE_GRANTED
    assert second.approval.resolved_by == "carol" and votes(second.approval) == [("alice", True), ("carol", True)]
    assert waited == [gateway_pb2.APPROVAL_STATE_GRANTED], "WaitApproval returns at the grant"
    assert kinds_of(sidecar, approval_id) == ["approval_voted", "approval_granted"]
    (granted,) = bodies_of(sidecar, approval_id, "approval_granted")
    assert (granted["approvals"], granted["approvals_required"], granted["comment"]) == (2, 2, "checked the order")
    assert error_reason(refused(sidecar, approval_id, "dave")) == "APPROVAL_ALREADY_RESOLVED"

    resumed = ask(sidecar, "run_4e_main", approval_id=approval_id)
    assert resumed.decision == types_pb2.DECISION_ALLOW

    done = run_cli("verify", str(sidecar.journal_path), "--public-key", str(sidecar.public_key_path), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["findings"] == []


def test_a_denial_needs_a_comment_and_resolves_at_once(sidecar: RunningGateway) -> None:
    approval_id = ask(sidecar, "run_4e_deny").approval_id
    answer(sidecar, approval_id, "alice")
    blank = refused(sidecar, approval_id, "carol", grant=False, comment="  ")
    assert blank.code() == grpc.StatusCode.INVALID_ARGUMENT and "justification" in (blank.details() or "")
    assert kinds_of(sidecar, approval_id) == ["approval_voted"]

    denied = answer(sidecar, approval_id, "carol", grant=False, comment="wrong customer")
    assert denied.approval.state == gateway_pb2.APPROVAL_STATE_DENIED
    assert votes(denied.approval) == [("alice", True), ("carol", False)]
    assert kinds_of(sidecar, approval_id) == ["approval_voted", "approval_denied"]
    resumed = ask(sidecar, "run_4e_deny", approval_id=approval_id)
    assert (resumed.decision, resumed.reason) == (types_pb2.DECISION_STOP, "approval_denied")

    # Without an earlier vote too: one denial is enough.
    other = ask(sidecar, "run_4e_deny2").approval_id
    assert answer(sidecar, other, "dave", grant=False, comment="no").approval.state == (
        gateway_pb2.APPROVAL_STATE_DENIED
    )
    assert kinds_of(sidecar, other) == ["approval_denied"]


def test_twenty_concurrent_votes_yield_exactly_one_grant(sidecar: RunningGateway) -> None:
    approval_id = ask(sidecar, "run_4e_crowd").approval_id

    def vote(who: str) -> Any:
        try:
            return answer(sidecar, approval_id, who)
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(len(CROWD)) as pool:
        outcomes = list(pool.map(vote, CROWD))
    won = [o for o in outcomes if not isinstance(o, grpc.RpcError)]
    lost = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert sorted(o.approval.state for o in won) == [
        gateway_pb2.APPROVAL_STATE_PENDING,
        gateway_pb2.APPROVAL_STATE_GRANTED,
    ]
    assert {error_reason(e) for e in lost} == {"APPROVAL_ALREADY_RESOLVED"} and len(lost) == len(CROWD) - 2
    # Answers queue one at a time: each loser found the approval granted, none lost to a vote still in flight.
    granted_by = next(o.approval.resolved_by for o in won if o.approval.state == gateway_pb2.APPROVAL_STATE_GRANTED)
    assert all(f"is already granted by {granted_by}" in (e.details() or "") for e in lost)
    assert kinds_of(sidecar, approval_id) == ["approval_voted", "approval_granted"]
    assert ask(sidecar, "run_4e_crowd", approval_id=approval_id).decision == types_pb2.DECISION_ALLOW


def test_the_cli_prints_progress_and_trace_shows_the_votes(sidecar: RunningGateway, tmp_path: Path) -> None:
    approval_id = ask(sidecar, "run_4e_cli").approval_id

    def approve(who: str) -> str:
        token_file = tmp_path / f"{who}.token"
        token_file.write_text(token_of(who))
        token_file.chmod(0o600)
        done = run_cli(
            "approve", approval_id, "--comment", f"{who} checked", "--operator", sidecar.operator_target,
            "--token-file", str(token_file),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    bob_token = tmp_path / "bob.token"
    bob_token.write_text(TOKENS["bob"][0])
    bob_token.chmod(0o600)
    listing = ["approvals", "--operator", sidecar.operator_target, "--token-file", str(bob_token)]

    def mine() -> dict[str, Any]:
        shown = run_cli(*listing, "--json")
        assert shown.returncode == 0, shown.stderr
        return next(r for r in map(json.loads, shown.stdout.splitlines()) if r["approval_id"] == approval_id)

    assert (mine()["approvals_required"], mine()["votes"]) == (2, [])
    assert "approved by alice: 1 of 2 approvals, still pending" in approve("alice")
    assert [(v["approver"], v["grant"], v["channel"]) for v in mine()["votes"]] == [("alice", True, "cli")]
    table = run_cli(*listing).stdout
    assert "1 of 2 approval(s): alice (yes, cli)" in table, table
    assert f"{approval_id} granted by carol (2 of 2 approvals)" in approve("carol")
    trace = run_cli("trace", "run_4e_cli", "--journal", str(sidecar.journal_path))
    assert f"approval {approval_id} approved by alice, 1 of 2 approvals, still pending" in trace.stdout, trace.stdout
    assert f"approval {approval_id} granted by carol, 2 of 2 approvals" in trace.stdout
    assert "unresolved_approval" not in trace.stdout


def test_a_grant_after_a_policy_change_is_refused_and_a_denial_still_closes_it(sidecar: RunningGateway) -> None:
    """An approval asked under another policy version can never be used: a vote towards a grant is refused with
    ``approval_policy_changed`` (nothing journaled), so approvers are not asked for a grant that does nothing; a
    denial still closes the approval and the waiting agent learns it."""
    approval_id = ask(sidecar, "run_4e_policy_vote").approval_id
    before = kinds_of(sidecar, approval_id)
    changed = FOUR_EYES_POLICY.replace("expires_in: 30m", "expires_in: 25m")
    assert changed != FOUR_EYES_POLICY
    channel, op = operator_stub(sidecar.operator_target)
    with channel:
        reload = op.ReloadPolicy(
            operator_pb2.ReloadPolicyRequest(document=changed), metadata=auth(TOKENS["root"][0]), timeout=30
        )
    try:
        assert reload.changed
        err = refused(sidecar, approval_id, "alice")
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(err) == "APPROVAL_POLICY_CHANGED", err.details()
        assert kinds_of(sidecar, approval_id) == before  # the refused vote left no event
        answer(sidecar, approval_id, "carol", grant=False, comment="asked under the old policy")
        assert wait_state(sidecar, approval_id, 10) == gateway_pb2.APPROVAL_STATE_DENIED
    finally:  # the module's other tests use the four-eyes policy
        channel, op = operator_stub(sidecar.operator_target)
        with channel:
            request = operator_pb2.ReloadPolicyRequest(document=FOUR_EYES_POLICY)
            op.ReloadPolicy(request, metadata=auth(TOKENS["root"][0]), timeout=30)


def test_a_grant_is_bound_to_the_policy_version_it_was_asked_under(sidecar: RunningGateway) -> None:
    approval_id = ask(sidecar, "run_4e_policy").approval_id
    answer(sidecar, approval_id, "alice")
    answer(sidecar, approval_id, "carol")
    changed = FOUR_EYES_POLICY.replace("expires_in: 30m", "expires_in: 20m")
    assert changed != FOUR_EYES_POLICY
    channel, op = operator_stub(sidecar.operator_target)
    with channel:
        reload = op.ReloadPolicy(
            operator_pb2.ReloadPolicyRequest(document=changed), metadata=auth(TOKENS["root"][0]), timeout=30
        )
    try:
        assert reload.changed
        resumed = ask(sidecar, "run_4e_policy", approval_id=approval_id)
        assert (resumed.decision, resumed.reason) == (types_pb2.DECISION_STOP, "approval_policy_changed")
    finally:  # the module's other tests use the four-eyes policy
        channel, op = operator_stub(sidecar.operator_target)
        with channel:
            request = operator_pb2.ReloadPolicyRequest(document=FOUR_EYES_POLICY)
            op.ReloadPolicy(request, metadata=auth(TOKENS["root"][0]), timeout=30)
    # Asked again under the current policy, the action gets a new approval.
    again = ask(sidecar, "run_4e_policy", step_id=2)
    assert again.decision == types_pb2.DECISION_APPROVAL_REQUIRED and again.approval_id != approval_id


# --- restart and tamper ----------------------------------------------------------------------------------------


def test_a_vote_survives_sigkill_and_still_counts_once(tmp_path: Path) -> None:
    directory = tmp_path / "gw"
    prepare(directory)
    gw = start_gateway(directory)
    try:
        approval_id = ask(gw, "run_4e_kill").approval_id
        answer(gw, approval_id, "alice")
    finally:
        gw.stop(signal.SIGKILL)
    gw = start_gateway(directory)
    try:
        assert votes(listed(gw, approval_id)) == [("alice", True)]
        assert listed(gw, approval_id).approvals_required == 2
        assert error_reason(refused(gw, approval_id, "ALICE")) == "APPROVAL_ALREADY_VOTED"
        assert ask(gw, "run_4e_kill", approval_id=approval_id).reason == "approval_pending"
        assert answer(gw, approval_id, "carol").approval.state == gateway_pb2.APPROVAL_STATE_GRANTED
        assert ask(gw, "run_4e_kill", approval_id=approval_id).decision == types_pb2.DECISION_ALLOW
        assert not list(iter_bodies(gw.journal_path, kind="state_mismatch"))
    finally:
        assert gw.stop() == 0


def _forge_vote(path: Path, approval_id: str) -> None:
    """Adds carol's approval by hand, as if she had voted (what anyone who can write the file can do)."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO approval_votes (approval_id, approver, identity, granted, channel, voted_ns, event_id) "
            "VALUES (?, 'carol', 'carol', 1, 'cli', 1, 'evt_forged')",
            (approval_id,),
        )


def _drop_vote(path: Path, approval_id: str) -> None:
    """Deletes alice's vote row, hoping she may vote again."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("DELETE FROM approval_votes WHERE approval_id = ?", (approval_id,)).rowcount == 1


@pytest.mark.parametrize(
    ("tamper", "who", "detail"),
    [
        pytest.param(_forge_vote, "carol", "no signed vote of carol", id="forge-a-vote"),
        pytest.param(_drop_vote, "alice", "row missing for a signed vote", id="delete-a-vote"),
    ],
)
def test_an_edited_vote_row_is_ignored_and_reported(tmp_path: Path, tamper: Any, who: str, detail: str) -> None:
    directory = tmp_path / "gw"
    prepare(directory)
    gw = start_gateway(directory)
    try:
        approval_id = ask(gw, "run_4e_tamper").approval_id
        answer(gw, approval_id, "alice")
    finally:
        assert gw.stop() == 0
    tamper(gw.journal_path, approval_id)

    gw = start_gateway(directory)
    try:
        # What counts is the signed events: alice voted, nobody else.
        assert votes(listed(gw, approval_id)) == [("alice", True)]
        assert error_reason(refused(gw, approval_id, "alice")) == "APPROVAL_ALREADY_VOTED"
        assert ask(gw, "run_4e_tamper", approval_id=approval_id).reason == "approval_pending"
        mismatches = [
            (b["table"], b["key"], b["detail"]) for _, b in iter_bodies(gw.journal_path, kind="state_mismatch")
        ]
        assert mismatches == [("approval_votes", f"{approval_id}:{who}", detail)]
        assert "contradicts the signed journal" in gw.log()
    finally:
        assert gw.stop() == 0

    result = run_cli("verify", str(gw.journal_path), "--public-key", str(gw.public_key_path), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert [f["code"] for f in findings] == ["state_mismatch"] and "approval_votes" in findings[0]["message"]

    gw = start_gateway(directory)
    try:
        # carol's real vote replaces the forged row (or is the second after alice's): the grant follows the events.
        granted = answer(gw, approval_id, "carol" if who == "carol" else "dave")
        assert granted.approval.state == gateway_pb2.APPROVAL_STATE_GRANTED
        assert ask(gw, "run_4e_tamper", approval_id=approval_id).decision == types_pb2.DECISION_ALLOW
        assert len(list(iter_bodies(gw.journal_path, kind="state_mismatch"))) == 1, "journaled once"
    finally:
        assert gw.stop() == 0


# --- the collector mirror ---------------------------------------------------------------------------------------


def test_the_collector_mirror_shows_the_sidecars_votes(tmp_path: Path) -> None:
    from tests.test_fleet_e2e import fleet_view  # noqa: PLC0415

    directory = tmp_path / "gw"
    prepare(directory)
    gw = start_gateway(directory, forward=True)
    try:
        approval_id = ask(gw, "run_4e_fleet").approval_id
        opened = fleet_view(gw, approval_id, lambda a: a.state == "pending")
        assert opened.approvals_required == 2 and opened.votes == ()

        answer(gw, approval_id, "alice", comment="first look")
        voted = fleet_view(gw, approval_id, lambda a: len(a.votes) == 1)
        assert voted.state == "pending"
        assert [(v.approver, v.grant, v.channel, v.comment) for v in voted.votes] == [
            ("alice", True, "cli", "first look")
        ]

        answer(gw, approval_id, "carol")
        granted = fleet_view(gw, approval_id, lambda a: a.state == "granted")
        assert [(v.approver, v.grant) for v in granted.votes] == [("alice", True), ("carol", True)]
        assert granted.resolved_by == "carol"
    finally:
        gw.stop()


# --- the signed derivation, pure ----------------------------------------------------------------------------------


def _asked(approval_id: str, required: int | None = 2) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "pre_exec",
        "event_id": f"evt_ask_{approval_id}",
        "decision": "approval_required",
        "approval_id": approval_id,
        "resumed_approval_id": "",
        "tenant_id": "t_42",
        "run_id": "run_1",
        "actor": {"type": "user", "id": "u_1"},
        "approval_expires_in_s": 3600,
        "policy_version": "sha256:v1",
    }
    if required is not None:
        body["approvals_required"] = required
    return body


def _answer(kind: str, approval_id: str, who: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "event_id": f"evt_{kind}_{who}",
        "approval_id": approval_id,
        "actor": {"type": "operator", "id": who},
        "comment": "",
        **fields,
    }


def test_the_fold_counts_one_signed_vote_per_person_and_reads_the_ask() -> None:
    from gateway.journal.state import SignedStateFold, reconcile_votes  # noqa: PLC0415

    fold = SignedStateFold()
    fold.add("pre_exec", 1, _asked("apr_a"))
    fold.add("approval_voted", 2, _answer("approval_voted", "apr_a", "alice", grant=True, via="c1", control_seq=7))
    fold.add("approval_voted", 3, _answer("approval_voted", "apr_a", "ALICE", grant=True))  # never counted twice
    (signed,) = fold.open_approvals()
    assert (signed.approvals_required, signed.policy_version, signed.state) == (2, "sha256:v1", "pending")
    assert [(v.identity, v.grant, v.via, v.voted_ns) for v in signed.votes] == [("alice", True, "c1", 2)]
    fold.add("approval_granted", 4, _answer("approval_granted", "apr_a", "carol"))
    fold.add("approval_voted", 5, _answer("approval_voted", "apr_a", "dave", grant=True))  # after the grant: nothing
    assert [v.identity for v in fold.approvals["apr_a"].votes] == ["alice", "carol"]
    assert fold.approvals["apr_a"].state == "granted"

    # A journal from before four-eyes: no approvals_required (one approver) and no vote rows for its grants.
    fold.add("pre_exec", 6, _asked("apr_old", required=None))
    fold.add("approval_granted", 7, _answer("approval_granted", "apr_old", "alice"))
    assert fold.approvals["apr_old"].approvals_required == 1
    assert reconcile_votes([], fold) == [], "votes of resolved approvals need no rows"

    fold.add("pre_exec", 8, _asked("apr_b"))
    fold.add("approval_voted", 9, _answer("approval_voted", "apr_b", "alice", grant=True))
    (missing,) = reconcile_votes([], fold)
    assert (missing.table, missing.key, missing.detail) == (
        "approval_votes",
        "apr_b:alice",
        "row missing for a signed vote",
    )
