"""Operating the sidecar: Prometheus metrics per decision path and fault, promtool, trace linkage and OTLP spans,
structured logs that never hold argument values, and health that tells starting from broken.

Every test runs a real sidecar (subprocess) and reads what an operator would: /metrics over HTTP, the gRPC health
service, the OTLP stream on a local receiver, the stderr log.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import re
import shutil
import sqlite3
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from agentaudit.v1 import collector_pb2, collector_pb2_grpc, gateway_pb2, operator_pb2, types_pb2
from gateway import devenv
from gateway.collector.app import Collector
from gateway.config import CollectorConfig
from gateway.journal.store import iter_bodies
from gateway.rpc.health import JOURNAL, POLICY, Health
from gateway.signing import Ed25519Signer, write_secret_file
from tests.conftest import (
    AGENTAUDIT,
    POSTGRES_DSN,
    ROOT,
    RunningGateway,
    free_port,
    run_cli,
    start_gateway,
    wait_serving,
)
from tests.gateway_helpers import decide_request, journal_count, stub
from tests.helpers import eventually
from tests.operator_helpers import auth, operator_stub

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
TRACE_ID_2 = "5cf92f3577b34da6a3ce929d0e0e4737"
TRACEPARENT_2 = f"00-{TRACE_ID_2}-{PARENT_SPAN}-01"


# --- helpers ---------------------------------------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.UNKNOWN


@pytest.fixture
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, int, str]]:
    """A dev sidecar with /metrics and a health-only listener on loopback ports."""
    metrics_port, health_port = free_port(), free_port()
    gw = start_gateway(
        Path(tmp_path_factory.mktemp("obs")),
        extra_env={
            "AGENTAUDIT_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "AGENTAUDIT_HEALTH_LISTEN": f"127.0.0.1:{health_port}",
            "AGENTAUDIT_JOURNAL_BUSY_TIMEOUT_MS": "100",
        },
    )
    try:
        yield gw, metrics_port, f"127.0.0.1:{health_port}"
    finally:
        gw.stop()


# --- metrics -----------------------------------------------------------------------------------------------------


def test_metrics_move_for_each_decision_path(observed: tuple[RunningGateway, int, str]) -> None:
    gw, port, _ = observed
    before = scrape(port)
    channel, gateway = stub(gw.unix_target)
    with channel:
        allowed = gateway.Decide(decide_request(run_id="m1", action="crm.lookup"), timeout=10)
        approval = gateway.Decide(
            decide_request(run_id="m1", step_id=2, action="refund.create", args={"amount": 250}), timeout=10
        )
        denied = gateway.Decide(decide_request(run_id="m1", step_id=3, action="admin.wipe"), timeout=10)
        gateway.ReportResult(
            gateway_pb2.ReportResultRequest(event_id=allowed.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as violation:
            gateway.ReportResult(
                gateway_pb2.ReportResultRequest(event_id=denied.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED),
                timeout=10,
            )
        with pytest.raises(grpc.RpcError) as invalid:
            gateway.Decide(decide_request(run_id=""), timeout=10)
    assert allowed.decision == types_pb2.DECISION_ALLOW
    assert approval.decision == types_pb2.DECISION_APPROVAL_REQUIRED
    assert denied.decision == types_pb2.DECISION_STOP
    assert violation.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        delta("agentaudit_decisions_total", decision="allow", reason="ok", layer="default") == 1
        or delta("agentaudit_decisions_total", decision="allow") == 1
    )
    assert delta("agentaudit_decisions_total", decision="approval_required", layer="approval") == 1
    assert delta("agentaudit_decisions_total", decision="stop", reason=denied.reason, layer=denied.policy_layer) == 1
    assert delta("agentaudit_request_duration_seconds_count", method="Decide") == 4  # the invalid one too
    assert delta("agentaudit_request_duration_seconds_count", method="ReportResult") == 2
    assert delta("agentaudit_invalid_requests_total", method="Decide") == 1
    assert delta("agentaudit_violations_total") == 1
    # Three pre-events, one post-event and one violation event were committed.
    assert delta("agentaudit_journal_entries_total") == 5
    assert delta("agentaudit_journal_batch_entries_sum") == 5
    assert delta("agentaudit_journal_commit_duration_seconds_count") >= 1
    assert delta("agentaudit_journal_appended_bytes_total") > 5 * 64  # each entry carries a 64-byte signature
    assert value(after, "agentaudit_approvals_pending") == 1
    assert value(after, "agentaudit_policy_info", version=allowed.policy_version) == 1
    assert value(after, "agentaudit_health_state", agentaudit_health_state="serving") == 1
    assert value(after, "agentaudit_fail_closed_total") == 0


def test_journal_fault_fails_closed_and_turns_health_not_serving(observed: tuple[RunningGateway, int, str]) -> None:
    gw, port, health_target = observed
    assert health(health_target) == SERVING and health(health_target, "liveness") == SERVING
    before = scrape(port)
    blocker = sqlite3.connect(gw.journal_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: nothing can be recorded
    channel, gateway = stub(gw.unix_target)
    try:
        with channel:
            reply = gateway.Decide(decide_request(run_id="fault"), timeout=10)
            assert reply.reason == "audit_unavailable"
            eventually(lambda: health(health_target) == NOT_SERVING, message="readiness NOT_SERVING")
            assert health(health_target, "agentaudit.v1.GatewayService") == NOT_SERVING
            assert health(health_target, "liveness") == NOT_SERVING
            during = scrape(port)
            assert value(during, "agentaudit_fail_closed_total") - value(before, "agentaudit_fail_closed_total") == 1
            assert value(during, "agentaudit_journal_commit_failures_total") >= 1
            assert value(during, "agentaudit_health_state", agentaudit_health_state="broken") == 1
            assert (
                value(during, "agentaudit_decisions_total", decision="stop", reason="audit_unavailable", layer="audit")
                == 1
            )
            blocker.execute("ROLLBACK")
            recovered = gateway.Decide(decide_request(run_id="fault", step_id=2), timeout=10)
        assert recovered.decision == types_pb2.DECISION_ALLOW
        eventually(lambda: health(health_target) == SERVING, message="readiness back to SERVING")
        assert health(health_target, "liveness") == SERVING
    finally:
        blocker.close()


def test_exposition_passes_promtool(observed: tuple[RunningGateway, int, str]) -> None:
    gw, port, _ = observed
    channel, gateway = stub(gw.unix_target)
    with channel:
        gateway.Decide(decide_request(run_id="p1"), timeout=10)
        gateway.Decide(decide_request(run_id="p1", step_id=2, action="refund.create", args={"amount": 250}), timeout=10)
    text = scrape(port)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus; .ci/run installs it)"
    result = subprocess.run(
        [promtool, "check", "metrics"], check=False, input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = set(re.findall(r"^# TYPE (agentaudit_\w+) ", text, re.MULTILINE))
    assert {
        "agentaudit_decisions_total",
        "agentaudit_request_duration_seconds",
        "agentaudit_journal_commit_duration_seconds",
        "agentaudit_journal_batch_entries",
        "agentaudit_fail_closed_total",
        "agentaudit_forwarder_backlog_entries",
        "agentaudit_forwarder_backlog_age_seconds",
        "agentaudit_forwarder_upload_failures_total",
        "agentaudit_collector_ingested_entries_total",
        "agentaudit_collector_rejections_total",
        "agentaudit_alert_deliveries_total",
        "agentaudit_alerts_dropped_total",
        "agentaudit_approvals_pending",
        "agentaudit_policy_info",
        "agentaudit_health_state",
        "agentaudit_build_info",
    } <= names


def test_forwarder_and_collector_metrics(tmp_path: Path) -> None:
    """Backlog and failures while the collector is down; ingest and rejections on the collector's own /metrics."""
    collector_port, collector_metrics, sidecar_metrics = free_port(), free_port(), free_port()
    gw = start_gateway(
        tmp_path / "gw",
        extra_env={
            "AGENTAUDIT_METRICS_LISTEN": f"127.0.0.1:{sidecar_metrics}",
            "AGENTAUDIT_FORWARD_TARGET": f"127.0.0.1:{collector_port}",
            "AGENTAUDIT_FORWARD_BATCH_MAX_AGE_S": "0.1",
            "AGENTAUDIT_FORWARD_BACKOFF_INITIAL_S": "0.1",
            "AGENTAUDIT_FORWARD_BACKOFF_MAX_S": "0.3",
        },
        forward=True,
    )
    collector: subprocess.Popen[bytes] | None = None
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            gateway.Decide(decide_request(run_id="f1"), timeout=10)
        eventually(
            lambda: (
                value(scrape(sidecar_metrics), "agentaudit_forwarder_upload_failures_total", reason="unavailable") >= 2
            ),
            message="upload failures while the collector is down",
        )
        text = scrape(sidecar_metrics)
        assert value(text, "agentaudit_forwarder_backlog_entries") >= 2  # journal_started and the decision
        eventually(lambda: value(scrape(sidecar_metrics), "agentaudit_forwarder_backlog_age_seconds") > 0.2)

        # A collector that registered another key for this origin refuses the batches (a rejection); once it
        # knows the sidecar's key, it accepts them.
        cdir = tmp_path / "collector"
        cdir.mkdir()
        write_secret_file(cdir / "witness.key", Ed25519Signer.generate("witness.test").encode_private() + "\n")
        origin = gw.public_key_path.read_text().split("+")[0]
        (cdir / "impostor.pub").write_text(Ed25519Signer.generate(origin).verifier.encode() + "\n")
        config = {
            "collector": {
                "listen": [f"127.0.0.1:{collector_port}"],
                "store": f"sqlite:///{cdir / 'collector.db'}",
                "witness_key": str(cdir / "witness.key"),
                "metrics_listen": f"127.0.0.1:{collector_metrics}",
                "origins": [{"origin": origin, "keys": [str(cdir / "impostor.pub")]}],
            }
        }
        (cdir / "collector.yaml").write_text(yaml.safe_dump(config))
        collector = start_collector(cdir, collector_port)
        eventually(
            lambda: value(scrape(collector_metrics), "agentaudit_collector_rejections_total") >= 1,
            message="a rejection of an unknown origin",
        )
        collector.terminate()
        collector.wait(15)
        config["collector"]["origins"] = [{"origin": origin, "keys": [str(gw.public_key_path)]}]
        (cdir / "collector.yaml").write_text(yaml.safe_dump(config))
        collector = start_collector(cdir, collector_port)
        eventually(
            lambda: value(scrape(collector_metrics), "agentaudit_collector_ingested_entries_total") >= 2,
            message="entries ingested",
        )
        eventually(lambda: value(scrape(sidecar_metrics), "agentaudit_forwarder_backlog_age_seconds") == 0)
        text = scrape(sidecar_metrics)
        assert value(text, "agentaudit_forwarder_uploaded_entries_total") >= 2
        assert value(scrape(collector_metrics), "agentaudit_collector_batches_total") >= 1
    finally:
        if collector is not None and collector.poll() is None:
            collector.terminate()
            collector.wait(15)
        gw.stop()


def start_collector(directory: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(directory / "collector.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [*AGENTAUDIT, "collector", "--config", str(directory / "collector.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError((directory / "collector.log").read_text()) from exc
    return proc


# --- trace linkage -----------------------------------------------------------------------------------------------


def _event(gw: RunningGateway, event_id: str) -> dict[str, object]:
    return next(b for _, b in iter_bodies(gw.journal_path) if b.get("event_id") == event_id)


def test_traceparent_from_field_or_metadata_is_stored(gateway_server: RunningGateway) -> None:
    other = f"00-{'a' * 32}-{'b' * 16}-00"
    channel, gateway = stub(gateway_server.unix_target)
    with channel:
        by_field = gateway.Decide(decide_request(run_id="t1", traceparent=TRACEPARENT), timeout=10)
        by_header = gateway.Decide(
            decide_request(run_id="t1", step_id=2), metadata=[("traceparent", TRACEPARENT)], timeout=10
        )
        # The field wins over the header; an invalid header is ignored (W3C), not an error.
        both = gateway.Decide(
            decide_request(run_id="t1", step_id=3, traceparent=other), metadata=[("traceparent", TRACEPARENT)]
        )
        bad_header = gateway.Decide(decide_request(run_id="t1", step_id=4), metadata=[("traceparent", "00-zz")])
    for reply in (by_field, by_header):
        event = _event(gateway_server, reply.event_id)
        assert (event["trace_id"], event["span_id"]) == (TRACE_ID, PARENT_SPAN)
    assert _event(gateway_server, both.event_id)["trace_id"] == "a" * 32
    assert _event(gateway_server, bad_header.event_id)["trace_id"] == ""

    # From a trace to its events: the operator API and the CLI filter by trace id.
    channel, operator = operator_stub(gateway_server.operator_target)
    with channel:
        found = operator.SearchEvents(
            operator_pb2.SearchEventsRequest(filter=operator_pb2.EventFilter(trace_id=TRACE_ID)),
            metadata=auth(gateway_server.operator_token),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as bad:
            operator.SearchEvents(
                operator_pb2.SearchEventsRequest(filter=operator_pb2.EventFilter(trace_id="XYZ")),
                metadata=auth(gateway_server.operator_token),
                timeout=10,
            )
    assert [e.body["event_id"] for e in found.events] == [by_field.event_id, by_header.event_id]
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    exported = run_cli("export", str(gateway_server.journal_path), "--trace-id", TRACE_ID, check=True)
    assert [json.loads(line)["event_id"] for line in exported.stdout.splitlines()] == [
        by_field.event_id,
        by_header.event_id,
    ]


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A local OTLP/gRPC trace receiver: keeps every exported span."""

    def __init__(self) -> None:
        self.spans: list[object] = []
        self.resources: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def Export(self, request: object, context: object) -> object:
        with self._lock:
            for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(span)
                        self.resources.append(attrs)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_a_local_otlp_receiver(tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    gw = start_gateway(
        tmp_path / "gw",
        extra_env={
            "AGENTAUDIT_TELEMETRY_OTLP_ENDPOINT": f"127.0.0.1:{otlp_port}",
            "AGENTAUDIT_TELEMETRY_SERVICE_NAME": "agentaudit-test",
        },
    )
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            reply = gateway.Decide(decide_request(run_id="otel-1"), metadata=[("traceparent", TRACEPARENT)], timeout=10)
            gateway.ReportResult(
                gateway_pb2.ReportResultRequest(event_id=reply.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED),
                metadata=[("traceparent", TRACEPARENT)],
                timeout=10,
            )

        def decide_span() -> object | None:
            with receiver._lock:
                return next((s for s in receiver.spans if s.name.endswith("/Decide")), None)  # type: ignore[attr-defined]

        eventually(lambda: decide_span() is not None, message="the Decide span at the receiver")
        span = decide_span()
        attrs = {a.key: a.value for a in span.attributes}  # type: ignore[attr-defined]
        assert span.trace_id.hex() == TRACE_ID  # type: ignore[attr-defined]
        assert span.parent_span_id.hex() == PARENT_SPAN  # type: ignore[attr-defined]
        assert attrs["agentaudit.event_id"].string_value == reply.event_id
        assert attrs["agentaudit.decision"].string_value == "allow"
        assert attrs["agentaudit.run_id"].string_value == "otel-1"
        assert receiver.resources[0]["service.name"] == "agentaudit-test"
        # The event points back at the trace: find one from the other.
        assert _event(gw, reply.event_id)["trace_id"] == span.trace_id.hex()  # type: ignore[attr-defined]
        eventually(
            lambda: any(s.name.endswith("/ReportResult") for s in list(receiver.spans)), message="ReportResult span"
        )
        # The Session stream: its traceparent header is every message's parent, for the span and the event alike.
        channel, gateway = stub(gw.unix_target)
        with channel:
            message = gateway_pb2.SessionMessage(id=1, decide=decide_request(run_id="otel-stream"))
            request = gateway_pb2.SessionRequest(messages=[message])
            answers = list(gateway.Session(iter([request]), metadata=[("traceparent", TRACEPARENT_2)], timeout=10))
        streamed = answers[0].answers[0].decide

        def stream_span() -> Any:
            with receiver._lock:
                return next((s for s in receiver.spans if _attr(s, "agentaudit.run_id") == "otel-stream"), None)

        eventually(lambda: stream_span() is not None, message="the Session Decide span at the receiver")
        span = stream_span()
        assert span.name.endswith("/Decide") and _attr(span, "agentaudit.event_id") == streamed.event_id
        assert span.trace_id.hex() == TRACE_ID_2 and span.parent_span_id.hex() == PARENT_SPAN
        assert _event(gw, streamed.event_id)["trace_id"] == TRACE_ID_2
    finally:
        gw.stop()
        server.stop(None)


def _attr(span: Any, key: str) -> str:
    return next((a.value.string_value for a in span.attributes if a.key == key), "")


# --- logs --------------------------------------------------------------------------------------------------------

_secret = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=24)


@pytest.fixture(scope="module")
def debug_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = start_gateway(
        Path(tmp_path_factory.mktemp("logs")),
        extra_env={"AGENTAUDIT_LOG_LEVEL": "debug", "AGENTAUDIT_LOG_FORMAT": "json"},
    )
    try:
        yield gw
    finally:
        gw.stop()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(email=_secret, phone=_secret, card=_secret, note=_secret, output=_secret)
def test_no_log_line_holds_an_argument_value(
    debug_sidecar: RunningGateway, email: str, phone: str, card: str, note: str, output: str
) -> None:
    """Every path that logs (allow, stop, approval, policy error, invalid, violation) with values that must not leak."""
    gw = debug_sidecar
    args = {"email": f"{email}@example.com", "phone": phone, "card_number": card, "note": note}
    run = f"logs-{note[:8]}"
    channel, gateway = stub(gw.unix_target)
    with channel:
        allowed = gateway.Decide(decide_request(run_id=run, args=args), timeout=10)
        gateway.ReportResult(
            gateway_pb2.ReportResultRequest(
                event_id=allowed.event_id,
                status=types_pb2.RESULT_STATUS_FAILED,
                error="lookup failed",
                output={"token": output, "phone": phone},
            ),
            timeout=10,
        )
        gateway.Decide(decide_request(run_id=run, step_id=2, action="refund.create", args={**args, "amount": 250}))
        # amount is not a number: the sum budget cannot add it and the policy fails closed (limits layer).
        gateway.Decide(decide_request(run_id=run, step_id=3, action="refund.create", args={**args, "amount": note}))
        # A CEL rule over the args: one stop (eleven recipients), one evaluation error (size of a number).
        bulk = gateway.Decide(
            decide_request(run_id=run, step_id=6, action="email.send", args={**args, "to": [email] * 11}), timeout=10
        )
        cel_error = gateway.Decide(
            decide_request(run_id=run, step_id=7, action="email.send", args={**args, "to": 3.5}), timeout=10
        )
        stopped = gateway.Decide(decide_request(run_id=run, step_id=4, action="admin.wipe", args=args), timeout=10)
        with pytest.raises(grpc.RpcError):
            gateway.ReportResult(
                gateway_pb2.ReportResultRequest(
                    event_id=stopped.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED, output={"x": output}
                ),
                timeout=10,
            )
        with pytest.raises(grpc.RpcError):
            gateway.Decide(decide_request(run_id="", step_id=5, args=args), timeout=10)
    assert (bulk.reason, cel_error.reason) == ("bulk_email_blocked", "policy_error")
    log = gw.log()
    for secret in (email, phone, card, note, output):
        assert secret not in log
    lines = [line for line in log.splitlines() if line.startswith("{")]
    decided = [json.loads(line) for line in lines if '"decided ' in line]
    assert any(d["event_id"] == allowed.event_id and d["run_id"] == run for d in decided)
    for line in lines:
        record = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(record)


def test_no_log_line_holds_an_operator_token(debug_sidecar: RunningGateway) -> None:
    gw = debug_sidecar
    wrong = "wrong-token-" + "x" * 24
    channel, operator = operator_stub(gw.operator_target)
    with channel:
        operator.ListApprovals(operator_pb2.ListApprovalsRequest(), metadata=auth(gw.operator_token), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            operator.ListApprovals(operator_pb2.ListApprovalsRequest(), metadata=auth(wrong), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    log = gw.log()
    assert gw.operator_token not in log and wrong not in log


def test_log_format_text_for_dev_and_json_for_serve(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "dev")
    gw.stop()
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO gateway\.app: serving", gw.log(), re.MULTILINE)
    devenv.prepare(tmp_path / "srv", None, {})
    sock = tmp_path / "srv" / "s.sock"
    proc = subprocess.Popen(
        [*AGENTAUDIT, "serve", "--config", str(tmp_path / "srv" / devenv.CONFIG_FILE), "--listen", f"unix://{sock}"],
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "AGENTAUDIT_FORWARD_TARGET": ""},
    )
    wait_serving(f"unix://{sock}", proc=proc)
    proc.terminate()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.decode().splitlines()]
    assert any(r["msg"].startswith("serving agentaudit.v1.GatewayService") for r in records)
    assert all(r["level"] in ("debug", "info", "warning", "error") for r in records)


# --- health ------------------------------------------------------------------------------------------------------


def serve_retrying(directory: Path, stderr: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`agentaudit serve` on DIR/s.sock with a health listener and start retries; returns it, health target, socket."""
    target = f"127.0.0.1:{free_port()}"
    sock = directory / "s.sock"
    proc = subprocess.Popen(
        [*AGENTAUDIT, "serve", "--config", str(directory / devenv.CONFIG_FILE), "--listen", f"unix://{sock}"],
        stderr=stderr,
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "AGENTAUDIT_FORWARD_TARGET": "",
            "AGENTAUDIT_HEALTH_LISTEN": target,
            "AGENTAUDIT_HEALTH_RETRY_START_S": "0.2",
        },
    )
    return proc, target, sock


def test_bad_initial_policy_is_broken_not_starting_and_recovers(tmp_path: Path) -> None:
    """With health.retry_start_s, a policy that fails to load keeps the process up and NOT_SERVING until fixed."""
    directory = tmp_path / "srv"
    devenv.prepare(directory, None, {})
    good = (directory / "policy.yaml").read_text()
    (directory / "policy.yaml").write_text(good.replace("rules:", "rules:\n  - name: broken\n    when: 'args.(('\n", 1))
    proc, target, sock = serve_retrying(directory, stderr=subprocess.PIPE)
    try:
        eventually(lambda: _status(target) == NOT_SERVING, message="readiness NOT_SERVING for a bad policy")
        assert health(target, "liveness") == SERVING  # a restart would not fix a policy
        assert health(target, "agentaudit.v1.GatewayService") == NOT_SERVING
        assert not sock.exists()  # the agent API is not served: agents get UNAVAILABLE and fail closed
        (directory / "policy.yaml").write_text(good)
        eventually(lambda: _status(target) == SERVING, message="SERVING once the policy is fixed")
        channel, gateway = stub(f"unix://{sock}")
        with channel:
            assert gateway.Decide(decide_request(), timeout=10).decision == types_pb2.DECISION_ALLOW
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    text = err.decode()
    assert "start failed on the policy" in text and "health: policy is broken" in text


def test_a_locked_journal_at_start_fails_liveness_until_released(tmp_path: Path) -> None:
    """Another process holds the journal: readiness and liveness NOT_SERVING (a restart may cure it), then ready."""
    directory = tmp_path / "srv"
    devenv.prepare(directory, None, {})
    lock = open(directory / "journal.db.lock", "ab")  # noqa: SIM115 - closed below
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    proc, target, _ = serve_retrying(directory, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: _status(target) == NOT_SERVING, message="readiness NOT_SERVING for a locked journal")
        assert health(target, "liveness") == NOT_SERVING
        lock.close()  # releases the lock
        eventually(lambda: _status(target) == SERVING, message="SERVING once the journal is free")
        assert health(target, "liveness") == SERVING
    finally:
        lock.close()
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0


def test_without_retry_a_bad_policy_exits_with_usage_error(tmp_path: Path) -> None:
    directory = tmp_path / "srv"
    devenv.prepare(directory, None, {})
    (directory / "policy.yaml").write_text("version: [\n")
    result = subprocess.run(
        [*AGENTAUDIT, "serve", "--config", str(directory / devenv.CONFIG_FILE)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "AGENTAUDIT_FORWARD_TARGET": "", "AGENTAUDIT_HEALTH_LISTEN": "127.0.0.1:0"},
    )
    assert result.returncode == 2
    assert "policy" in result.stderr


def _status(target: str) -> int | None:
    try:
        return health(target)
    except grpc.RpcError:
        return None


def test_readiness_is_unknown_while_starting() -> None:
    asyncio.run(_readiness_states())


async def _readiness_states() -> None:
    """UNKNOWN (starting) is distinct from NOT_SERVING (broken); liveness stays SERVING until the journal breaks."""
    state = Health(["agentaudit.v1.GatewayService"])
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(state.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check

            async def status(service: str = "") -> int:
                return int((await check(health_pb2.HealthCheckRequest(service=service))).status)

            await state.publish()
            assert (await status(), await status("liveness")) == (UNKNOWN, SERVING)
            state.report(POLICY, "cannot compile rule x")
            await state.publish()
            assert (await status(), await status("liveness")) == (NOT_SERVING, SERVING)
            state.report(POLICY, "")
            await state.started()
            assert (await status("agentaudit.v1.GatewayService"), await status("liveness")) == (SERVING, SERVING)
            state.report(JOURNAL, "disk I/O error")
            await state.publish()
            assert (await status(), await status("liveness")) == (NOT_SERVING, NOT_SERVING)
            assert state.state == "broken" and state.problems == {JOURNAL: "disk I/O error"}
            await state.stopping()
            assert await status("liveness") == NOT_SERVING
    finally:
        await server.stop(None)


# --- alerting rules ----------------------------------------------------------------------------------------------

RULES = ROOT / "deploy" / "prometheus"


def test_alerting_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus; scripts/system_deps.sh installs it)"
    for args in (["check", "rules", "agentaudit-rules.yaml"], ["test", "rules", "agentaudit-rules.test.yaml"]):
        result = subprocess.run([promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alerting_rules_name_only_metrics_the_sidecar_exports(observed: tuple[RunningGateway, int, str]) -> None:
    _, port, _ = observed
    exported = set(re.findall(r"^# TYPE (agentaudit_\w+) ", scrape(port), re.MULTILINE))
    rules = yaml.safe_load((RULES / "agentaudit-rules.yaml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\bagentaudit_\w+", rule["expr"])
    }
    assert used, "the rules reference agentaudit metrics"
    assert used <= exported, f"rules use metrics that are not exported: {sorted(used - exported)}"


def test_collector_readiness_follows_its_database(tmp_path: Path, postgres_database: str) -> None:
    """The collector's database goes away: NOT_SERVING (liveness unaffected) until the store answers again."""
    write_secret_file(tmp_path / "witness.key", Ed25519Signer.generate("witness.test").encode_private() + "\n")
    config = CollectorConfig(listen=("127.0.0.1:0",), store=postgres_database, witness_key=tmp_path / "witness.key")

    async def scenario() -> None:
        collector = Collector(config)
        await collector.start()
        try:
            target = collector.bound[0]
            async with grpc.aio.insecure_channel(target) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                ingest = collector_pb2_grpc.CollectorServiceStub(channel).Ingest

                async def readiness() -> int:
                    return int((await check(health_pb2.HealthCheckRequest())).status)

                async def settles_at(status: int) -> int:
                    # The servicer schedules the health update rather than awaiting it: allow it a moment.
                    for _ in range(100):
                        if await readiness() == status:
                            break
                        await asyncio.sleep(0.02)
                    return await readiness()

                async def send() -> grpc.StatusCode:
                    request = collector_pb2.IngestRequest(
                        origin="nobody.example/x",
                        entries=[collector_pb2.JournalEntry(seq=0, entry=b"x", signature=b"y")],
                        checkpoint="nobody.example/x\n1\nAAAA\n",
                    )
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await ingest(request, timeout=10)
                    return refused.value.code()

                assert await readiness() == SERVING
                await _database_outage(postgres_database, down=True)
                assert await send() == grpc.StatusCode.UNAVAILABLE
                assert await settles_at(NOT_SERVING) == NOT_SERVING
                assert int((await check(health_pb2.HealthCheckRequest(service="liveness"))).status) == SERVING
                # The database is back and the pool reconnects: the store answers (this batch is refused for its
                # unknown origin, which is an answer).
                await _database_outage(postgres_database, down=False)
                assert await send() == grpc.StatusCode.FAILED_PRECONDITION
                assert await settles_at(SERVING) == SERVING
        finally:
            await collector.aclose()

    asyncio.run(scenario())


async def _database_outage(dsn: str, *, down: bool) -> None:
    """Refuses (down) or allows new connections to the database, ending the collector's sessions when down."""
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {'false' if down else 'true'}")
        if down:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await conn.close()


def test_policy_reload_metrics(observed: tuple[RunningGateway, int, str]) -> None:
    """A bad edit counts as rejected and keeps the version; a good one is applied and moves the info series."""
    gw, port, _ = observed
    policy = gw.dir / "policy.yaml"
    original = policy.read_text()
    before = scrape(port)
    (old_version,) = re.findall(r'agentaudit_policy_info\{version="([^"]+)"\} 1', before)
    policy.write_text(original + "\nnot: [valid\n")
    eventually(
        lambda: (
            value(scrape(port), "agentaudit_policy_reloads_total", result="rejected")
            > value(before, "agentaudit_policy_reloads_total", result="rejected")
        ),
        message="a rejected reload",
    )
    assert value(scrape(port), "agentaudit_policy_info", version=old_version) == 1
    policy.write_text(original.replace("expires_in: 1h", "expires_in: 2h", 1))
    eventually(
        lambda: (
            value(scrape(port), "agentaudit_policy_reloads_total", result="applied")
            > value(before, "agentaudit_policy_reloads_total", result="applied")
        ),
        message="an applied reload",
    )
    versions = re.findall(r'agentaudit_policy_info\{version="([^"]+)"\} 1', scrape(port))
    assert len(versions) == 1 and versions[0] != old_version


def test_an_idle_sidecar_notices_a_journal_it_cannot_write(tmp_path: Path) -> None:
    """No request arrives: the write probe finds the journal locked by another process, and later free again."""
    health_port = free_port()
    target = f"127.0.0.1:{health_port}"
    gw = start_gateway(
        tmp_path / "gw",
        extra_env={
            "AGENTAUDIT_HEALTH_LISTEN": target,
            "AGENTAUDIT_JOURNAL_PROBE_INTERVAL_S": "0.2",
            "AGENTAUDIT_JOURNAL_BUSY_TIMEOUT_MS": "100",
        },
    )
    blocker = sqlite3.connect(gw.journal_path, isolation_level=None)
    try:
        before = journal_count(gw.journal_path)
        blocker.execute("BEGIN IMMEDIATE")
        eventually(lambda: health(target) == NOT_SERVING, message="readiness NOT_SERVING without any request")
        assert health(target, "liveness") == NOT_SERVING
        blocker.execute("ROLLBACK")
        eventually(lambda: health(target) == SERVING, message="SERVING once the lock is released")
        assert journal_count(gw.journal_path) == before, "the probe writes nothing to the journal"
    finally:
        blocker.close()
        gw.stop()
    assert "write probe failed" in gw.log()
