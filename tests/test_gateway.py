"""GatewayService end to end against a real sidecar subprocess: decisions, results, violations, services."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentaudit.v1 import gateway_pb2, types_pb2
from gateway.journal.store import iter_bodies
from tests.conftest import ROOT, RunningGateway, run_cli, start_gateway
from tests.gateway_helpers import decide_request, journal_count, stub


def events(path: Path, **filters: str) -> list[dict[str, object]]:
    return [body for _, body in iter_bodies(path, **filters)]  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize(
    ("tenant", "action", "decision", "reason", "rule"),
    [
        pytest.param(
            "t_frozen",
            "crm.search",
            types_pb2.DECISION_STOP,
            "kill_switch_engaged",
            "frozen_tenant",
            id="kill-switch",
        ),
        pytest.param(
            "t_42",
            "refund.create",
            types_pb2.DECISION_APPROVAL_REQUIRED,
            "approval_required",
            "refunds_need_approval",
            id="approval",
        ),
        pytest.param("t_42", "crm.lookup", types_pb2.DECISION_ALLOW, "allowed", "support_agent", id="allow"),
    ],
)
def test_decide_answers_and_journals_before_answering(
    gateway_server: RunningGateway, transport: str, tenant: str, action: str, decision: int, reason: str, rule: str
) -> None:
    target = gateway_server.unix_target if transport == "unix" else gateway_server.tcp_target
    channel, gw = stub(target)
    with channel:
        reply = gw.Decide(
            decide_request(tenant_id=tenant, action=action, args={"order_id": "o_1", "amount": 250}), timeout=10
        )
    assert (reply.decision, reply.reason, reply.policy_rule) == (decision, reason, rule)
    assert reply.policy_version.startswith("sha256:")
    assert reply.action_key.startswith("ak_")
    assert bool(reply.approval_id) == (decision == types_pb2.DECISION_APPROVAL_REQUIRED)
    assert not reply.HasField("retry_after")
    # The answer came after the commit, so the event is already readable by another process.
    [event] = [e for e in events(gateway_server.journal_path) if e["event_id"] == reply.event_id]
    assert event["kind"] == "pre_exec"
    assert event["decision"] == {1: "allow", 2: "stop", 3: "approval_required"}[decision]
    assert event["reason"] == reason
    assert event["policy_version"] == reply.policy_version


def test_action_key_is_stable_for_equal_name_and_args(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        a = gw.Decide(decide_request(args={"x": 1, "y": [1, 2]}, step_id=1), timeout=10).action_key
        b = gw.Decide(decide_request(args={"y": [1, 2], "x": 1.0}, step_id=2, run_id="other"), timeout=10).action_key
        c = gw.Decide(decide_request(args={"x": 2, "y": [1, 2]}, step_id=3), timeout=10).action_key
        d = gw.Decide(decide_request(action="crm.other", args={"x": 1, "y": [1, 2]}), timeout=10).action_key
    assert a == b
    assert len({a, c, d}) == 3


def test_report_result_links_post_event_and_is_idempotent(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        pre = gw.Decide(decide_request(), timeout=10)
        report = gateway_pb2.ReportResultRequest(event_id=pre.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED)
        report.duration.FromMilliseconds(240)
        report.output.update({"ok": True})
        first = gw.ReportResult(report, timeout=10)
        again = gw.ReportResult(report, timeout=10)
    assert not first.duplicate and again.duplicate
    assert first.event_id == again.event_id
    posts = events(gateway_server.journal_path, kind="post_exec")
    assert len(posts) == 1
    post = posts[0]
    pre_event = next(e for e in events(gateway_server.journal_path) if e["event_id"] == pre.event_id)
    assert post["pre_event_id"] == pre.event_id
    assert post["status"] == "succeeded"
    assert post["duration_ns"] == 240_000_000
    with sqlite3.connect(gateway_server.journal_path) as conn:
        seq, leaf = conn.execute("SELECT seq, leaf_hash FROM journal WHERE event_id = ?", (pre.event_id,)).fetchone()
    assert post["pre_event_seq"] == seq
    assert post["pre_leaf_hash"] == bytes(leaf).hex()
    assert post["run_id"] == pre_event["run_id"]


@pytest.mark.parametrize(
    ("tenant", "action", "violation_reason"),
    [
        pytest.param("t_frozen", "crm.search", "executed_after_stop", id="after-stop"),
        pytest.param("t_42", "refund.create", "executed_without_approval", id="without-approval"),
    ],
)
def test_reporting_a_non_allowed_action_is_a_journaled_violation(
    gateway_server: RunningGateway, tenant: str, action: str, violation_reason: str
) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        pre = gw.Decide(decide_request(tenant_id=tenant, action=action, args={"amount": 250}), timeout=10)
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                gw.ReportResult(gateway_pb2.ReportResultRequest(event_id=pre.event_id, status=1), timeout=10)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    violations = events(gateway_server.journal_path, kind="violation")
    assert len(violations) == 1, "a repeated report does not journal a second violation"
    assert violations[0]["reason"] == violation_reason
    assert violations[0]["pre_event_id"] == pre.event_id
    assert journal_count(gateway_server.journal_path, "kind = 'post_exec'") == 0


@pytest.mark.parametrize("event_id", ["evt_unknown", "not an id"])
def test_report_result_for_unknown_event_is_not_found(gateway_server: RunningGateway, event_id: str) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel, pytest.raises(grpc.RpcError) as info:
        gw.ReportResult(gateway_pb2.ReportResultRequest(event_id=event_id, status=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_report_result_on_a_post_event_is_not_found(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        pre = gw.Decide(decide_request(), timeout=10)
        post = gw.ReportResult(gateway_pb2.ReportResultRequest(event_id=pre.event_id, status=1), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            gw.ReportResult(gateway_pb2.ReportResultRequest(event_id=post.event_id, status=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_results_and_duplicates_survive_a_restart(tmp_path: Path) -> None:
    gw1 = start_gateway(tmp_path / "gw")
    channel, gw = stub(gw1.unix_target)
    with channel:
        reported = gw.Decide(decide_request(step_id=1), timeout=10)
        gw.ReportResult(gateway_pb2.ReportResultRequest(event_id=reported.event_id, status=1), timeout=10)
        pending = gw.Decide(decide_request(step_id=2), timeout=10)
    assert gw1.stop() == 0
    gw2 = start_gateway(tmp_path / "gw")
    try:
        channel, gw = stub(gw2.unix_target)
        with channel:
            again = gw.ReportResult(gateway_pb2.ReportResultRequest(event_id=reported.event_id, status=1), timeout=10)
            late = gw.ReportResult(gateway_pb2.ReportResultRequest(event_id=pending.event_id, status=2), timeout=10)
        assert again.duplicate
        assert not late.duplicate
        started = events(gw2.journal_path, kind="journal_started")
        assert [e["resumed_at_seq"] for e in started] == [0, 4]
    finally:
        gw2.stop()
    result = run_cli("verify", str(gw2.journal_path), "--public-key", str(gw2.public_key_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_wait_approval_for_an_unknown_id_is_not_found(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel, pytest.raises(grpc.RpcError) as info:
        gw.WaitApproval(gateway_pb2.WaitApprovalRequest(approval_id="apr_unknown"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection_are_served(gateway_server: RunningGateway) -> None:
    with grpc.insecure_channel(gateway_server.tcp_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "agentaudit.v1.GatewayService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in replies[0].list_services_response.service}
        described = list(
            reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="agentaudit.v1.GatewayService")])
            )
        )
    assert {
        "agentaudit.v1.GatewayService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert described[0].file_descriptor_response.file_descriptor_proto  # the schema, not only the names


def test_reflection_loaded_on_first_use_answers_concurrent_first_calls(gateway_server: RunningGateway) -> None:
    # gateway/rpc/reflection.py builds the servicer on the first reflection call: several at once must all be
    # answered, on the operator listener too.
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answers: list[set[str]] = []

    def ask() -> None:
        with grpc.insecure_channel(gateway_server.operator_target) as channel:
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = list(reflect.ServerReflectionInfo(iter([request]), timeout=10))
            answers.append({s.name for s in replies[0].list_services_response.service})

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 6
    assert all({"agentaudit.v1.OperatorService", "grpc.health.v1.Health"} <= names for names in answers)


def test_traceparent_is_recorded_as_trace_and_span(gateway_server: RunningGateway) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        reply = gw.Decide(decide_request(traceparent=traceparent, labels={"env": "test"}), timeout=10)
    event = next(e for e in events(gateway_server.journal_path) if e["event_id"] == reply.event_id)
    assert (event["trace_id"], event["span_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert event["labels"] == {"env": "test"}


def test_events_cli_prints_json_lines_filtered_by_run(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        gw.Decide(decide_request(run_id="run_a"), timeout=10)
        gw.Decide(decide_request(run_id="run_b"), timeout=10)
    out = run_cli("events", str(gateway_server.journal_path), "--run-id", "run_a", check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["run_id"], e["kind"]) for e in lines] == [("run_a", "pre_exec")]
    assert isinstance(lines[0]["seq"], int)


def _decide_as(uid_gid: tuple[str, str], target: str) -> subprocess.CompletedProcess[str]:
    """A Decide from another process running as USER:GROUP (setpriv), over the unix socket."""
    code = (
        "import sys; from tests.gateway_helpers import decide_request, stub\n"
        f"channel, gw = stub({target!r})\n"
        "print(gw.Decide(decide_request(run_id='socket-mode'), timeout=5).decision)\n"
    )
    user, group = uid_gid
    return subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_unix_socket_mode_lets_a_group_member_connect() -> None:
    """server.unix_socket_mode 0660: a process of another uid in the socket's group connects; others cannot."""
    # Outside pytest's 0700 temporary root, so the other uid can reach the socket's directory.
    directory = Path(tempfile.mkdtemp(prefix="aa-sock-"))
    directory.chmod(0o755)
    gw = start_gateway(directory / "gw", extra_env={"AGENTAUDIT_SERVER_UNIX_SOCKET_MODE": "0660"})
    try:
        (directory / "gw").chmod(0o755)
        sock = Path(gw.unix_target[len("unix://") :])
        assert sock.stat().st_mode & 0o777 == 0o660
        group_member = _decide_as(("nobody", "0"), gw.unix_target)  # gid 0 is the socket's group (root's)
        assert group_member.returncode == 0, group_member.stderr
        outsider = _decide_as(("nobody", "nogroup"), gw.unix_target)
        assert outsider.returncode != 0 and "UNAVAILABLE" in outsider.stderr
    finally:
        gw.stop()
        shutil.rmtree(directory, ignore_errors=True)
