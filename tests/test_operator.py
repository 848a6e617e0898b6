"""The operator API end to end: the approval chain, approval misuse, kill switches, policy, authentication."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentaudit.v1 import gateway_pb2, operator_pb2, types_pb2
from agentaudit_client import ApprovalRequired, GatewayClient
from gateway.journal.store import iter_bodies
from gateway.policy import EXAMPLE_POLICY
from tests.conftest import RunningGateway, free_port, run_cli, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.helpers import eventually
from tests.operator_helpers import TOKENS, auth, make_ca, operator_stub, prepare_dir

REFUND = {"order_id": "o_1", "amount": 250}


def events(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    return [body for _, body in iter_bodies(path, kind=kind)]


@pytest.fixture
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = Path(tmp_path_factory.mktemp("op"))
    prepare_dir(directory)
    gw = start_gateway(directory)
    try:
        yield gw
    finally:
        gw.stop()


def ask_refund(gw: RunningGateway, **overrides: Any) -> gateway_pb2.DecideResponse:
    channel, gateway = stub(gw.unix_target)
    fields: dict[str, Any] = {"action": "refund.create", "args": REFUND, "run_id": "run_981"}
    fields.update(overrides)
    with channel:
        return gateway.Decide(decide_request(**fields), timeout=10)


def grant(gw: RunningGateway, approval_id: str, token: str = TOKENS["alice"][0]) -> operator_pb2.GrantApprovalResponse:
    channel, op = operator_stub(gw.operator_target)
    with channel:
        return op.GrantApproval(
            operator_pb2.GrantApprovalRequest(approval_id=approval_id, comment="ok"), metadata=auth(token), timeout=10
        )


def test_full_approval_chain_through_the_client_with_wait_approval(sidecar: RunningGateway) -> None:
    run = "run_chain"
    with GatewayClient(sidecar.unix_target) as client:
        agent = client.run(run, tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))
        with pytest.raises(ApprovalRequired) as pending, agent.guard("refund.create", REFUND):
            pytest.fail("ran without approval")
        approval_id = pending.value.approval_id
        waited: dict[str, Any] = {}
        waiter = threading.Thread(target=lambda: waited.update(outcome=client.wait_approval(approval_id, timeout=30)))
        waiter.start()
        # The human approves through the CLI, with the dev operator's credential.
        approved = run_cli(
            "approve",
            approval_id,
            "--comment",
            "refund ok",
            "--operator",
            sidecar.operator_target,
            "--token-file",
            str(sidecar.dir / "operator.token"),
        )
        assert approved.returncode == 0, approved.stderr
        waiter.join(timeout=30)
        assert waited["outcome"].state == "granted"
        assert waited["outcome"].resolved_by == "", "the agent port never says who resolved an approval"
        resumed = client.decide(
            run_id=run,
            tenant_id="t_42",
            action="refund.create",
            args=REFUND,
            step_id=2,
            agent_id="support-agent",
            actor=("user", "u_1"),
            approval_id=approval_id,
        )
        assert (resumed.decision, resumed.reason) == ("allow", "allowed")
        client.report_result(resumed.event_id, status="succeeded", output={"refund_id": "rf_1"}, duration=0.24)
    chain = [
        (e["kind"], e.get("decision"), e.get("reason")) for e in events(sidecar.journal_path) if e.get("run_id") == run
    ]
    assert chain == [
        ("pre_exec", "approval_required", "approval_required"),
        ("approval_granted", None, None),
        ("pre_exec", "allow", "allowed"),
        ("post_exec", "allow", "allowed"),
    ]
    granted = events(sidecar.journal_path, "approval_granted")[0]
    assert granted["actor"] == {"type": "operator", "id": "dev-operator"}
    assert granted["comment"] == "refund ok"
    resumed_event = [e for e in events(sidecar.journal_path, "pre_exec") if e["run_id"] == run][-1]
    assert resumed_event["resumed_approval_id"] == approval_id


@pytest.mark.parametrize(
    ("misuse", "reason"),
    [
        pytest.param({"args": {"order_id": "o_1", "amount": 900}}, "approval_mismatch", id="mismatched-args"),
        pytest.param({"tenant_id": "t_other"}, "approval_mismatch", id="wrong-tenant"),
        pytest.param({"run_id": "run_other"}, "approval_mismatch", id="wrong-run"),
        pytest.param({"approval_id": "apr_forged"}, "approval_not_found", id="unknown-id"),
    ],
)
def test_a_granted_approval_only_allows_the_exact_action(
    sidecar: RunningGateway, misuse: dict[str, Any], reason: str
) -> None:
    pending = ask_refund(sidecar)
    grant(sidecar, pending.approval_id)
    fields = {"approval_id": pending.approval_id, **misuse}
    refused = ask_refund(sidecar, **fields)
    assert (refused.decision, refused.reason, refused.policy_layer) == (types_pb2.DECISION_STOP, reason, "approval")
    # The refusal did not consume the approval: the exact action still goes through.
    allowed = ask_refund(sidecar, approval_id=pending.approval_id)
    assert allowed.decision == types_pb2.DECISION_ALLOW


def test_an_approval_is_single_use(sidecar: RunningGateway) -> None:
    pending = ask_refund(sidecar)
    grant(sidecar, pending.approval_id)
    assert ask_refund(sidecar, approval_id=pending.approval_id).decision == types_pb2.DECISION_ALLOW
    again = ask_refund(sidecar, approval_id=pending.approval_id)
    assert (again.decision, again.reason) == (types_pb2.DECISION_STOP, "approval_used")


def test_resuming_before_resolution_is_still_pending_and_denied_stops(sidecar: RunningGateway) -> None:
    pending = ask_refund(sidecar)
    early = ask_refund(sidecar, approval_id=pending.approval_id)
    assert (early.decision, early.reason, early.approval_id) == (
        types_pb2.DECISION_APPROVAL_REQUIRED,
        "approval_pending",
        pending.approval_id,
    )
    channel, op = operator_stub(sidecar.operator_target)
    with channel:
        op.DenyApproval(
            operator_pb2.DenyApprovalRequest(approval_id=pending.approval_id, comment="not this customer"),
            metadata=auth(TOKENS["alice"][0]),
            timeout=10,
        )
    denied = ask_refund(sidecar, approval_id=pending.approval_id)
    assert (denied.decision, denied.reason) == (types_pb2.DECISION_STOP, "approval_denied")
    assert events(sidecar.journal_path, "approval_denied")[0]["actor"]["id"] == "alice"


def test_an_expired_approval_is_journaled_and_cannot_be_granted(tmp_path: Path) -> None:
    prepare_dir(tmp_path / "gw", policy=EXAMPLE_POLICY.replace("expires_in: 1h", "expires_in: 1s"))
    gw = start_gateway(tmp_path / "gw")
    try:
        pending = ask_refund(gw)
        eventually(lambda: events(gw.journal_path, "approval_expired"))
        with pytest.raises(grpc.RpcError) as info:
            grant(gw, pending.approval_id)
        assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
        late = ask_refund(gw, approval_id=pending.approval_id)
        assert (late.decision, late.reason) == (types_pb2.DECISION_STOP, "approval_expired")
        expired = events(gw.journal_path, "approval_expired")[0]
        assert expired["approval_id"] == pending.approval_id
        assert expired["actor"] == {"type": "system", "id": "agentaudit"}
    finally:
        gw.stop()


@pytest.mark.parametrize(
    ("metadata", "code", "method"),
    [
        pytest.param([], grpc.StatusCode.UNAUTHENTICATED, "GrantApproval", id="no-credential"),
        pytest.param(auth("not-a-token"), grpc.StatusCode.UNAUTHENTICATED, "GrantApproval", id="bad-token"),
        pytest.param(auth(TOKENS["bob"][0]), grpc.StatusCode.PERMISSION_DENIED, "GrantApproval", id="auditor-approves"),
        pytest.param(
            auth(TOKENS["alice"][0]),
            grpc.StatusCode.PERMISSION_DENIED,
            "ReleaseKillSwitch",
            id="approver-releases-switch",
        ),
        pytest.param(
            auth(TOKENS["alice"][0]), grpc.StatusCode.PERMISSION_DENIED, "ReloadPolicy", id="approver-reloads"
        ),
    ],
)
def test_operator_calls_are_authenticated_authorised_and_refusals_journaled(
    sidecar: RunningGateway, metadata: list[tuple[str, str]], code: grpc.StatusCode, method: str
) -> None:
    pending = ask_refund(sidecar)
    requests = {
        "GrantApproval": operator_pb2.GrantApprovalRequest(approval_id=pending.approval_id),
        "ReleaseKillSwitch": operator_pb2.ReleaseKillSwitchRequest(scope=operator_pb2.KILL_SWITCH_SCOPE_GLOBAL),
        "ReloadPolicy": operator_pb2.ReloadPolicyRequest(),
    }
    channel, op = operator_stub(sidecar.operator_target)
    with channel, pytest.raises(grpc.RpcError) as info:
        getattr(op, method)(requests[method], metadata=metadata, timeout=10)
    assert info.value.code() == code
    [denied] = events(sidecar.journal_path, "operator_denied")
    assert denied["method"] == method
    assert denied["reason"] == ("unauthenticated" if code == grpc.StatusCode.UNAUTHENTICATED else "permission_denied")
    assert "not-a-token" not in str(denied), "credentials are never journaled"


def test_an_approver_cannot_approve_their_own_run(sidecar: RunningGateway) -> None:
    pending = ask_refund(sidecar, actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_USER, id="alice"))
    with pytest.raises(grpc.RpcError) as info:
        grant(sidecar, pending.approval_id)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "cannot approve" in (info.value.details() or "")
    assert events(sidecar.journal_path, "operator_denied")


def test_pending_approvals_survive_a_restart(tmp_path: Path) -> None:
    prepare_dir(tmp_path / "gw")
    gw = start_gateway(tmp_path / "gw")
    pending = ask_refund(gw)
    assert gw.stop() == 0
    gw = start_gateway(tmp_path / "gw")
    try:
        channel, op = operator_stub(gw.operator_target)
        with channel:
            listed = op.ListApprovals(operator_pb2.ListApprovalsRequest(), metadata=auth(TOKENS["bob"][0]), timeout=10)
        assert [a.approval_id for a in listed.approvals] == [pending.approval_id]
        assert listed.approvals[0].action == "refund.create"
        grant(gw, pending.approval_id)
        assert ask_refund(gw, approval_id=pending.approval_id).decision == types_pb2.DECISION_ALLOW
    finally:
        gw.stop()


@pytest.mark.parametrize(
    ("scope", "target", "request_fields"),
    [
        pytest.param(operator_pb2.KILL_SWITCH_SCOPE_GLOBAL, "", {}, id="global"),
        pytest.param(operator_pb2.KILL_SWITCH_SCOPE_TENANT, "t_42", {}, id="tenant"),
        pytest.param(operator_pb2.KILL_SWITCH_SCOPE_AGENT, "support-agent", {}, id="agent"),
        pytest.param(operator_pb2.KILL_SWITCH_SCOPE_RUN, "run_hot", {"run_id": "run_hot"}, id="run"),
    ],
)
def test_kill_switch_at_each_scope_persists_across_a_restart(
    tmp_path: Path, scope: int, target: str, request_fields: dict[str, str]
) -> None:
    prepare_dir(tmp_path / "gw")
    gw = start_gateway(tmp_path / "gw")
    root = auth(TOKENS["root"][0])
    channel, op = operator_stub(gw.operator_target)
    with channel:
        op.EngageKillSwitch(
            operator_pb2.EngageKillSwitchRequest(scope=scope, target=target, reason="incident 42"),
            metadata=root,
            timeout=10,
        )
    channel, gateway = stub(gw.unix_target)
    with channel:
        stopped = gateway.Decide(decide_request(**request_fields), timeout=10)
        other = gateway.Decide(decide_request(tenant_id="t_9", agent_id="triage-bot", run_id="run_cold"), timeout=10)
    assert (stopped.decision, stopped.reason, stopped.policy_layer) == (
        types_pb2.DECISION_STOP,
        "kill_switch_engaged",
        "kill_switch",
    )
    assert (other.decision == types_pb2.DECISION_STOP) == (scope == operator_pb2.KILL_SWITCH_SCOPE_GLOBAL)
    assert gw.stop() == 0
    gw = start_gateway(tmp_path / "gw")
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            assert gateway.Decide(decide_request(**request_fields), timeout=10).reason == "kill_switch_engaged"
        channel, op = operator_stub(gw.operator_target)
        with channel:
            op.ReleaseKillSwitch(
                operator_pb2.ReleaseKillSwitchRequest(scope=scope, target=target, reason="fixed"),
                metadata=root,
                timeout=10,
            )
        channel, gateway = stub(gw.unix_target)
        with channel:
            assert gateway.Decide(decide_request(**request_fields), timeout=10).decision == types_pb2.DECISION_ALLOW
        switch_events = events(gw.journal_path, "kill_switch")
        assert [(e["operation"], e["actor"]["id"]) for e in switch_events] == [("engage", "root"), ("release", "root")]
    finally:
        gw.stop()


def test_kill_switch_cli_engage_status_release(sidecar: RunningGateway) -> None:
    common = ["--operator", sidecar.operator_target, "--token-file", str(sidecar.dir / "operator.token")]
    assert (
        run_cli(
            "kill-switch", "engage", "--scope", "tenant", "--target", "t_42", "--reason", "drill", *common
        ).returncode
        == 0
    )
    status = run_cli("kill-switch", "status", *common)
    assert "tenant" in status.stdout and "t_42" in status.stdout and "dev-operator" in status.stdout
    assert run_cli("kill-switch", "release", "--scope", "tenant", "--target", "t_42", *common).returncode == 0
    missing = run_cli("kill-switch", "release", "--scope", "tenant", "--target", "t_42", *common)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_policy_get_and_reload_through_the_api_are_journaled_with_the_operator(sidecar: RunningGateway) -> None:
    root = auth(TOKENS["root"][0])
    channel, op = operator_stub(sidecar.operator_target)
    with channel:
        current = op.GetPolicy(operator_pb2.GetPolicyRequest(), metadata=auth(TOKENS["bob"][0]), timeout=10)
        assert current.version.startswith("sha256:") and "refunds_need_approval" in current.document
        with pytest.raises(grpc.RpcError) as info:
            op.ReloadPolicy(operator_pb2.ReloadPolicyRequest(document="version: 1\n"), metadata=root, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        changed = op.ReloadPolicy(
            operator_pb2.ReloadPolicyRequest(document=current.document.replace("burst: 20", "burst: 5")),
            metadata=root,
            timeout=10,
        )
    assert changed.changed and changed.old_version == current.version
    event = events(sidecar.journal_path, "policy_changed")[0]
    assert event["actor"] == {"type": "operator", "id": "root"}
    assert event["event_id"] == changed.event_id
    assert "burst: 5" in (sidecar.dir / "policy.yaml").read_text(), "a submitted policy is persisted to the file"


def test_policy_reload_cli(sidecar: RunningGateway) -> None:
    (sidecar.dir / "policy.yaml").write_text(EXAMPLE_POLICY.replace("max: 200", "max: 300"))
    reloaded = run_cli(
        "policy", "reload", "--operator", sidecar.operator_target, "--token-file", str(sidecar.dir / "operator.token")
    )
    assert reloaded.returncode == 0, reloaded.stderr
    assert "active" in reloaded.stdout or "unchanged" in reloaded.stdout  # the file watch may have been first
    assert events(sidecar.journal_path, "policy_changed")


def test_mutual_tls_identifies_the_operator_by_certificate(tmp_path: Path) -> None:
    certs = make_ca(tmp_path, ["127.0.0.1", "localhost"], client_cn="carol")
    port = free_port()
    tls = {
        "cert": str(certs["server_cert"]),
        "key": str(certs["server_key"]),
        "client_ca": str(certs["ca_cert"]),
        "identities": {"carol": ["approver"]},
    }
    prepare_dir(tmp_path / "gw")
    import yaml  # noqa: PLC0415

    config_path = tmp_path / "gw" / "agentaudit.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["operator"]["tls"] = tls
    config_path.write_text(yaml.safe_dump(config))
    directory = tmp_path / "gw"
    gw = start_gateway(directory, operator_listen=f"127.0.0.1:{port}")
    try:
        pending = ask_refund(gw)
        common = [
            "--operator",
            f"localhost:{port}",
            "--tls-ca",
            str(certs["ca_cert"]),
            "--tls-cert",
            str(certs["client_cert"]),
            "--tls-key",
            str(certs["client_key"]),
            "--token-file",
            "/dev/null",
        ]
        approved = run_cli("approve", pending.approval_id, *common)
        assert approved.returncode == 0, approved.stderr
        assert events(gw.journal_path, "approval_granted")[0]["actor"]["id"] == "carol"
        no_cert = run_cli(
            "approvals", "--operator", f"localhost:{port}", "--tls-ca", str(certs["ca_cert"]), "--timeout", "3"
        )
        assert no_cert.returncode != 0, "a TLS listener requires a client certificate"
    finally:
        gw.stop()
