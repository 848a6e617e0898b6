"""`agentaudit trace`: runs driven through a real sidecar and traced by the CLI; `build_trace` on hand-made events.

The end-to-end traces are compared, after normalising what varies between runs (ids, times, policy hashes, retry
delays), with reviewed files in tests/trace_expected/. After an intended format change, regenerate them with
``AGENTAUDIT_UPDATE_TRACE_EXPECTED=1 pytest tests/test_trace.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc, operator_pb2, operator_pb2_grpc, types_pb2
from gateway.cli.render import format_trace
from gateway.journal.trace import AnomalyCode, Role, TraceStep, build_trace
from gateway.policy import EXAMPLE_POLICY
from tests.conftest import run_cli, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.operator_helpers import TOKENS, auth, operator_stub, prepare_dir

EXPECTED = Path(__file__).parent / "trace_expected"
UPDATE = os.environ.get("AGENTAUDIT_UPDATE_TRACE_EXPECTED") == "1"
# The flood scenario needs a limit that no refill can loosen while the test runs: 3 calls, then one per hour.
FLOOD_POLICY = EXAMPLE_POLICY.replace("rate: 10/s\n    burst: 20", "rate: 1/h\n    burst: 3")
ALICE, ROOT, BOB = (auth(TOKENS[name][0]) for name in ("alice", "root", "bob"))


# ---------------------------------------------------------------------------------------------------------------
# End to end: the scenarios, played once against a real sidecar in a fixed order (so seqs are reproducible).


@dataclass
class Journal:
    path: Path
    public_key: Path


class Agent:
    """One run of the example policy's support-agent, through raw stubs."""

    def __init__(self, gateway: gateway_pb2_grpc.GatewayServiceStub, run_id: str, tenant_id: str) -> None:
        self.gateway, self.run_id, self.tenant_id = gateway, run_id, tenant_id

    def decide(self, step: int, action: str, args: dict[str, Any] | None = None, **fields: Any) -> Any:
        request = decide_request(run_id=self.run_id, tenant_id=self.tenant_id, action=action, args=args, step_id=step)
        for name, value in fields.items():
            setattr(request, name, value)
        return self.gateway.Decide(request, timeout=10)

    def report(self, event_id: str, ms: int, status: int = types_pb2.RESULT_STATUS_SUCCEEDED) -> Any:
        duration = duration_pb2.Duration(seconds=ms // 1000, nanos=ms % 1000 * 1_000_000)
        request = gateway_pb2.ReportResultRequest(event_id=event_id, status=status, duration=duration)
        return self.gateway.ReportResult(request, timeout=10)

    def step(self, step: int, action: str, ms: int) -> None:
        """Decides, expects allow, and reports success."""
        decided = self.decide(step, action)
        assert decided.decision == types_pb2.DECISION_ALLOW, decided
        self.report(decided.event_id, ms)


def play_scenarios(gateway: gateway_pb2_grpc.GatewayServiceStub, op: operator_pb2_grpc.OperatorServiceStub) -> None:
    # Seed 1: a burst of crm.search in t_flood; the fourth is stopped by the tenant's rate limit.
    flood = Agent(gateway, "run_flood", "t_flood")
    for step in (1, 2, 3):
        flood.step(step, "crm.search", 12)
    assert flood.decide(4, "crm.search").reason == "rate_limited_tenant"

    # Seed 2: a refund over 100 needs approval; alice grants it; the agent resumes and reports.
    refund = Agent(gateway, "run_981", "t_42")
    args = {"order_id": "o_1", "amount": 250}
    pending = refund.decide(1, "refund.create", args)
    assert pending.decision == types_pb2.DECISION_APPROVAL_REQUIRED
    op.GrantApproval(
        operator_pb2.GrantApprovalRequest(approval_id=pending.approval_id, comment="ok"), metadata=ALICE, timeout=10
    )
    resumed = refund.decide(1, "refund.create", args, approval_id=pending.approval_id)
    assert resumed.decision == types_pb2.DECISION_ALLOW
    refund.report(resumed.event_id, 240)

    # Seed 3: a crm.lookup allowed and reported.
    Agent(gateway, "run_lookup", "t_42").step(1, "crm.lookup", 35)

    # Operator actions during a run: a tenant kill switch stops step 2; the policy changes; release; step 3.
    ops = Agent(gateway, "run_ops", "t_ops")
    ops.step(1, "kb.search", 8)
    switch = {"scope": operator_pb2.KILL_SWITCH_SCOPE_TENANT, "target": "t_ops"}
    op.EngageKillSwitch(operator_pb2.EngageKillSwitchRequest(**switch, reason="incident 42"), metadata=ROOT, timeout=10)
    assert ops.decide(2, "kb.search").reason == "kill_switch_engaged"
    current = op.GetPolicy(operator_pb2.GetPolicyRequest(), metadata=BOB, timeout=10)
    changed = op.ReloadPolicy(
        operator_pb2.ReloadPolicyRequest(document=current.document.replace("expires_in: 30m", "expires_in: 45m")),
        metadata=ROOT,
        timeout=10,
    )
    assert changed.changed
    op.ReleaseKillSwitch(operator_pb2.ReleaseKillSwitchRequest(**switch, reason="resolved"), metadata=ROOT, timeout=10)
    ops.step(3, "kb.search", 9)

    # Anomaly: an allowed step never reported.
    lost = Agent(gateway, "run_lost", "t_42")
    lost.step(1, "kb.search", 5)
    assert lost.decide(2, "ticket.create").decision == types_pb2.DECISION_ALLOW

    # Anomaly: a result reported for a stopped step (the sidecar journals a violation).
    rogue = Agent(gateway, "run_rogue", "t_42")
    stopped = rogue.decide(1, "payments.wire")
    assert stopped.reason == "access_denied"
    with pytest.raises(grpc.RpcError) as info:
        rogue.report(stopped.event_id, 50)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Anomaly: step numbers 1, 2, 5.
    gaps = Agent(gateway, "run_gaps", "t_42")
    for step in (1, 2, 5):
        gaps.step(step, "kb.search", 4)

    # Anomaly: an approval nobody resolves.
    waiting = Agent(gateway, "run_waiting", "t_42")
    assert waiting.decide(1, "refund.create", {"order_id": "o_2", "amount": 500}).approval_id

    # Not a run yet: only a run-scoped kill switch names it.
    op.EngageKillSwitch(
        operator_pb2.EngageKillSwitchRequest(scope=operator_pb2.KILL_SWITCH_SCOPE_RUN, target="run_future", reason="x"),
        metadata=ROOT,
        timeout=10,
    )


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journal]:
    """A journal holding every scenario, written by a real sidecar that is stopped before the tests read it."""
    directory = Path(tmp_path_factory.mktemp("trace"))
    prepare_dir(directory, policy=FLOOD_POLICY)
    gw = start_gateway(directory)
    try:
        channel, gateway = stub(gw.unix_target)
        op_channel, op = operator_stub(gw.operator_target)
        with channel, op_channel:
            play_scenarios(gateway, op)
    finally:
        code = gw.stop()
    assert code == 0, gw.log()
    yield Journal(gw.journal_path, gw.public_key_path)


class _Numbered:
    """Replaces each distinct match with a numbered placeholder of the same width (alignment is kept)."""

    def __init__(self, prefix: str, width: int) -> None:
        self.prefix, self.width, self.seen = prefix, width, dict[str, str]()

    def __call__(self, match: re.Match[str]) -> str:
        number = self.seen.setdefault(match.group(0), str(len(self.seen) + 1))
        return self.prefix + number.rjust(self.width, "0")


def normalise(text: str) -> str:
    """Replaces what differs between runs by placeholders of the same width."""
    text = re.sub(r"evt_[0-9A-Z]{26}", _Numbered("evt_", 26), text)
    text = re.sub(r"apr_[0-9A-Z]{26}", _Numbered("apr_", 26), text)
    text = re.sub(r"sha256:[0-9a-f]{12}\b", _Numbered("sha256:", 12), text)
    text = re.sub(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", "YYYY-MM-DDThh:mm:ssZ", text)
    text = text.replace("→ YYYY-MM-DDThh:mm:ssZ", "→ hh:mm:ssZ")  # a run that crossed midnight UTC
    text = re.sub(r"\b\d{2}:\d{2}:\d{2}Z", "hh:mm:ssZ", text)
    text = re.sub(r"^\d{2}:\d{2}:\d{2}\.\d{3}", "hh:mm:ss.mmm", text, flags=re.MULTILINE)
    text = re.sub(r"^-- \d{4}-\d{2}-\d{2} --\n", "", text, flags=re.MULTILINE)
    return re.sub(r"retry after (\d+) ms", lambda m: f"retry after {'#' * len(m.group(1))} ms", text)


def trace_cli(journal: Journal, run_id: str, *extra: str) -> tuple[int, str, str]:
    done = run_cli("trace", run_id, "--journal", str(journal.path), "--public-key", str(journal.public_key), *extra)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("run_id", "exit_code"),
    [
        pytest.param("run_flood", 0, id="seed-rate-limited-burst"),
        pytest.param("run_981", 0, id="seed-approval-chain"),
        pytest.param("run_lookup", 0, id="seed-lookup"),
        pytest.param("run_ops", 0, id="kill-switch-and-policy-change"),
        pytest.param("run_lost", 1, id="missing-result"),
        pytest.param("run_rogue", 1, id="violation-result-without-allow"),
        pytest.param("run_gaps", 1, id="missing-steps"),
        pytest.param("run_waiting", 1, id="unresolved-approval"),
    ],
)
def test_trace_of_a_real_run_matches_the_reviewed_text(journal: Journal, run_id: str, exit_code: int) -> None:
    code, out, err = trace_cli(journal, run_id)
    assert code == exit_code, err
    expected_path = EXPECTED / f"{run_id}.txt"
    if UPDATE:
        expected_path.write_text(normalise(out), encoding="utf-8")
    assert normalise(out) == expected_path.read_text(encoding="utf-8")


def test_trace_json_has_steps_operator_actions_and_anomalies(journal: Journal) -> None:
    code, out, _ = trace_cli(journal, "run_rogue", "--json")
    assert code == 1
    trace = json.loads(out)
    assert (trace["run_id"], trace["ok"]) == ("run_rogue", False)
    [step] = trace["steps"]
    assert [(e["kind"], e["role"], e["verification"]) for e in step["events"]] == [
        ("pre_exec", "decision", "✓"),
        ("violation", "result", "✓"),
    ]
    assert step["events"][1]["event"]["reason"] == "executed_after_stop"
    assert [(a["code"], a["step_id"]) for a in trace["anomalies"]] == [("violation", 1), ("result_without_allow", 1)]

    _, out, _ = trace_cli(journal, "run_ops", "--json")
    actions = json.loads(out)["operator_actions"]
    assert [(a["kind"], a["event"].get("operation")) for a in actions] == [
        ("kill_switch", "engage"),
        ("policy_changed", None),
        ("kill_switch", "release"),
    ]


def test_without_a_public_key_every_event_is_marked_not_checked(journal: Journal) -> None:
    done = run_cli("trace", "run_lookup", "--journal", str(journal.path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.rsplit(" ", 1)[-1] for line in lines if " seq " in line] == ["?", "?"]
    assert "verification: not checked (no --public-key given)" in lines


def test_a_tampered_event_is_marked_and_fails_the_trace(journal: Journal, tmp_path: Path) -> None:
    copy = tmp_path / "journal.db"
    with sqlite3.connect(f"file:{journal.path}?mode=ro", uri=True) as source, sqlite3.connect(copy) as target:
        source.backup(target)  # the journal's WAL included
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER journal_no_update")
        (seq,) = conn.execute("SELECT seq FROM journal WHERE run_id = 'run_lookup' AND kind = 'post_exec'").fetchone()
        conn.execute("UPDATE journal SET signature = zeroblob(64) WHERE seq = ?", (seq,))
    finally:
        conn.close()
    done = run_cli("trace", "run_lookup", "--journal", str(copy), "--public-key", str(journal.public_key))
    assert done.returncode == 1, done.stderr
    # Format v2 (the sidecar's default) adds the seal's findings after these (seal_mismatch, unsealed).
    [line] = [line for line in done.stdout.splitlines() if f"seq {seq} ✗ bad_signature,edited_entry" in line]
    assert "result: succeeded in 35 ms" in line
    assert f"verification_failed (step 1, seq {seq}): post_exec: ✗ bad_signature,edited_entry" in done.stdout
    assert "TAMPER EVIDENCE" in done.stdout


def test_an_unknown_run_or_unreadable_journal_exits_2(journal: Journal, tmp_path: Path) -> None:
    for run_id in ("run_nobody", "run_future"):
        unknown = run_cli("trace", run_id, "--journal", str(journal.path))
        assert (unknown.returncode, unknown.stdout) == (2, "")
        assert f"no events for run {run_id!r}" in unknown.stderr
    missing = run_cli("trace", "run_981", "--journal", str(tmp_path / "absent.db"))
    assert missing.returncode == 2 and "no journal at" in missing.stderr
    (tmp_path / "garbage.db").write_bytes(b"not a database at all" * 100)
    garbage = run_cli("trace", "run_981", "--journal", str(tmp_path / "garbage.db"))
    assert garbage.returncode == 2 and "cannot read" in garbage.stderr


# ---------------------------------------------------------------------------------------------------------------
# build_trace on hand-made events.

RUN = "run_x"
TS = "2026-11-27T09:51:{:02d}.{:03d}000000Z"


class Events:
    """Builds a run's events with consecutive seqs and timestamps."""

    def __init__(self, first_seq: int = 10) -> None:
        self.seq = first_seq
        self.events: list[dict[str, Any]] = []

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        seq = self.seq
        self.seq += 1
        event = {
            "seq": seq,
            "kind": kind,
            "event_id": f"evt_{seq}",
            "timestamp": TS.format(10 + seq // 1000, seq % 1000),
            "run_id": RUN,
            "tenant_id": "t_42",
            "agent_id": "support-agent",
            **fields,
        }
        self.events.append(event)
        return event

    def pre(self, step: int, decision: str = "allow", reason: str = "allowed", **fields: Any) -> dict[str, Any]:
        layer = {"allow": ("access", "support_agent"), "stop": ("access", "default_deny")}.get(
            decision, ("approval", "refunds_need_approval")
        )
        defaults = {
            "action": "crm.lookup",
            "actor": {"type": "user", "id": "u_1"},
            "policy_layer": layer[0],
            "policy_rule": layer[1],
            "policy_version": "sha256:" + "a" * 64,
            "approval_id": "",
            "resumed_approval_id": "",
            "shadow_decision": "",
            "retry_after_ms": None,
        }
        return self.add("pre_exec", step_id=step, decision=decision, reason=reason, **{**defaults, **fields})

    def result(self, pre: dict[str, Any], status: str = "succeeded", ms: float = 240, **fields: Any) -> dict[str, Any]:
        kind = "violation" if pre["decision"] != "allow" else "post_exec"
        defaults = {
            "step_id": pre["step_id"],
            "action": pre["action"],
            "pre_event_id": pre["event_id"],
            "pre_event_seq": pre["seq"],
            "decision": pre["decision"],
            "reason": "executed_after_stop" if kind == "violation" else pre["reason"],
            "pre_reason": pre["reason"],
            "error": "",
            "duration_ns": int(ms * 1_000_000),
        }
        return self.add(kind, status=status, **{**defaults, **fields})

    def approval(self, pre: dict[str, Any], kind: str = "approval_granted", who: str = "alice") -> dict[str, Any]:
        actor = (
            {"type": "system", "id": "agentaudit"}
            if kind in ("approval_expired", "approval_abandoned")
            else {"type": "operator", "id": who}
        )
        return self.add(
            kind,
            step_id=pre["step_id"],
            action=pre["action"],
            approval_id=pre["approval_id"],
            pre_event_id=pre["event_id"],
            actor=actor,
            comment="ok" if kind == "approval_granted" else "",
        )


def codes(events: list[dict[str, Any]], **kwargs: Any) -> list[tuple[str, int | None]]:
    trace = build_trace(events, run_id=RUN, **kwargs)
    return [(str(a.code), a.seq) for a in trace.anomalies]


def approval_chain(resume_step: int = 1) -> Events:
    e = Events()
    asked = e.pre(1, "approval_required", "approval_required", action="refund.create", approval_id="apr_1")
    e.approval(asked)
    resumed = e.pre(resume_step, action="refund.create", resumed_approval_id="apr_1")
    e.result(resumed)
    return e


def test_the_approval_chain_reads_as_one_step() -> None:
    e = approval_chain()
    e.pre(2)
    e.result(e.events[-1], ms=12.5)
    text = format_trace(build_trace(e.events, run_id=RUN, verified=lambda seq: "✓"))
    assert text + "\n" == (EXPECTED / "hand_made_approval_chain.txt").read_text(encoding="utf-8")


def test_a_resume_under_a_new_step_id_stays_in_the_asking_step() -> None:
    trace = build_trace(approval_chain(resume_step=2).events, run_id=RUN)
    [step] = trace.steps
    assert [e.role for e in step.events] == [Role.DECISION, Role.APPROVAL, Role.RESUMED, Role.RESULT]
    assert "resumed as step 2: allow  allowed" in format_trace(trace)
    assert trace.anomalies == ()


def with_missing_result() -> Events:
    e = Events()
    e.pre(1)
    return e


def with_post_exec_after_stop() -> Events:
    e = Events()
    stopped = e.pre(1, "stop", "access_denied")
    e.add("post_exec", step_id=1, action="crm.lookup", pre_event_id=stopped["event_id"], pre_event_seq=10)
    return e


def with_violation() -> Events:
    e = Events()
    e.result(e.pre(1, "stop", "access_denied"))
    return e


def with_result_of_another_run() -> Events:
    e = Events()
    e.add("post_exec", step_id=1, action="crm.lookup", pre_event_id="evt_elsewhere", pre_event_seq=3)
    return e


def with_step_gap() -> Events:
    e = Events()
    for step in (1, 2, 5):
        e.result(e.pre(step))
    return e


def with_unresolved_approval() -> Events:
    e = Events()
    asked = e.pre(1, "approval_required", "approval_required", action="refund.create", approval_id="apr_1")
    # Resuming too early is answered approval_pending with the same id: still the one approval.
    e.pre(
        2,
        "approval_required",
        "approval_pending",
        action="refund.create",
        approval_id="apr_1",
        resumed_approval_id="apr_1",
    )
    assert asked["approval_id"] == "apr_1"
    return e


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(with_missing_result, [("missing_result", 10)], id="missing-result"),
        pytest.param(with_post_exec_after_stop, [("result_without_allow", 11)], id="post-exec-after-stop"),
        pytest.param(with_violation, [("violation", 11), ("result_without_allow", 11)], id="violation"),
        pytest.param(with_result_of_another_run, [("result_without_allow", 10)], id="pre-event-not-in-run"),
        pytest.param(with_step_gap, [("missing_steps", None)], id="missing-steps"),
        pytest.param(with_unresolved_approval, [("unresolved_approval", 10)], id="unresolved-approval"),
    ],
)
def test_each_anomaly_is_found(events: Any, expected: list[tuple[str, int | None]]) -> None:
    assert codes(events().events) == expected


def test_anomalies_are_marked_inline_and_listed_with_their_place() -> None:
    e = with_step_gap()
    e.pre(6)
    text = format_trace(build_trace(e.events, run_id=RUN))
    assert "             steps 3–4: no events  ! missing_steps\n09:51:10.014  step 5" in text  # noqa: RUF001
    assert "step 6  crm.lookup  allow  allowed  [access/support_agent]  ! missing_result  seq 16 ?" in text
    assert text.endswith(
        "anomalies: 2\n"
        "  missing_steps: no events for steps 3–4 (the run has steps up to 6)\n"  # noqa: RUF001
        "  missing_result (step 6, seq 16): crm.lookup was allowed but no result was reported\n"
        "verification: as marked per event (✓ verified, ✗ finding, ? not checked)"
    )


def test_a_run_starting_after_step_1_is_missing_its_first_steps() -> None:
    e = Events()
    e.result(e.pre(3))
    trace = build_trace(e.events, run_id=RUN)
    assert [a.message for a in trace.anomalies] == ["no events for steps 1–2 (the run has steps up to 3)"]  # noqa: RUF001


@pytest.mark.parametrize(
    "kind", ["approval_granted", "approval_denied", "approval_expired"], ids=["granted", "denied", "expired"]
)
def test_any_resolution_settles_an_approval(kind: str) -> None:
    e = Events()
    asked = e.pre(1, "approval_required", "approval_required", action="refund.create", approval_id="apr_1")
    e.approval(asked, kind)
    trace = build_trace(e.events, run_id=RUN)
    assert trace.anomalies == ()
    line = format_trace(trace).splitlines()[4]
    assert (
        line.split("  seq")[0]
        .rstrip()
        .endswith(
            {
                "approval_granted": 'approval apr_1 granted by alice ("ok")',
                "approval_denied": "approval apr_1 denied by alice",
                "approval_expired": "approval apr_1 expired",
            }[kind]
        )
    )


def test_an_abandoned_grant_is_shown_apart_from_an_expiry() -> None:
    e = Events()
    asked = e.pre(1, "approval_required", "approval_required", action="refund.create", approval_id="apr_1")
    e.approval(asked, "approval_granted")
    e.approval(asked, "approval_abandoned")
    trace = build_trace(e.events, run_id=RUN)
    assert trace.anomalies == ()
    line = format_trace(trace).splitlines()[5]
    assert line.split("  seq")[0].rstrip().endswith("approval apr_1 abandoned (granted, not used in time)")


def test_shadow_decisions_and_retry_delays_are_shown_on_the_decision() -> None:
    e = Events()
    e.result(
        e.pre(1, shadow_decision="stop", shadow_reason="outside_business_hours", shadow_layer="rules", shadow_rule="r")
    )
    e.pre(2, "stop", "rate_limited_tenant", policy_layer="limits", policy_rule="crm", retry_after_ms=72)
    e.pre(2, "stop", "rate_limited_tenant", policy_layer="limits", policy_rule="crm", retry_after_ms=9)
    lines = [line.split("  seq")[0].rstrip() for line in format_trace(build_trace(e.events, run_id=RUN)).splitlines()]
    assert lines[3].endswith("allow  allowed  [access/support_agent]  shadow: stop outside_business_hours [rules/r]")
    assert lines[5].endswith("step 2  crm.lookup  stop  rate_limited_tenant  [limits/crm]  retry after 72 ms")
    assert lines[6].endswith("        retry: stop  rate_limited_tenant  [limits/crm]  retry after 9 ms")


def test_verification_status_is_shown_per_event_and_a_finding_is_an_anomaly() -> None:
    e = Events()
    e.result(e.pre(1))
    trace = build_trace(e.events, run_id=RUN, verified=lambda seq: "✗ bad_signature" if seq == 11 else "✓")
    lines = format_trace(trace).splitlines()
    assert lines[3].endswith("seq 10 ✓") and lines[4].endswith("seq 11 ✗ bad_signature")
    assert [(str(a.code), a.seq, a.step_id) for a in trace.anomalies] == [("verification_failed", 11, 1)]
    assert all(line.endswith("?") for line in format_trace(build_trace(e.events, run_id=RUN)).splitlines()[3:5])


def kill_switch(seq: int, operation: str, scope: str, target: str = "") -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": "kill_switch",
        "event_id": f"evt_{seq}",
        "timestamp": TS.format(10, seq % 1000),
        "operation": operation,
        "scope": scope,
        "target": target,
        "tenant_id": target if scope == "tenant" else "",
        "agent_id": target if scope == "agent" else "",
        "run_id": target if scope == "run" else "",
        "comment": "drill",
        "actor": {"type": "operator", "id": "root"},
    }


def policy_changed(seq: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": "policy_changed",
        "event_id": f"evt_{seq}",
        "timestamp": TS.format(10, seq % 1000),
        "old_version": "sha256:" + "a" * 64,
        "new_version": "sha256:" + "b" * 64,
        "actor": {"type": "process_user", "id": "deploy"},
        "trigger": "sighup",
    }


def test_only_operator_actions_that_affected_the_run_are_shown() -> None:
    e = Events(first_seq=100)
    e.result(e.pre(1))
    e.seq += 1  # 102: the run's kill switch
    e.pre(2, "stop", "kill_switch_engaged")
    e.seq += 1  # 104: the policy change
    e.result(e.pre(3, policy_version="sha256:" + "b" * 64))
    context = [
        kill_switch(1, "engage", "tenant", "t_other"),  # another tenant: never
        kill_switch(2, "engage", "run", "run_old"),  # another run
        kill_switch(3, "engage", "agent", "support-agent"),
        kill_switch(4, "release", "agent", "support-agent"),  # released before the run: irrelevant
        kill_switch(5, "engage", "global"),  # still engaged when the run started: shown
        policy_changed(6),  # before the run
        kill_switch(102, "engage", "run", RUN),
        policy_changed(104),
        kill_switch(200, "release", "global"),  # after the run
        policy_changed(201),
    ]
    trace = build_trace(e.events, run_id=RUN, context_events=context)
    assert [(a.seq, a.body.get("operation")) for a in trace.operator_actions] == [
        (5, "engage"),
        (102, "engage"),
        (104, None),
    ]
    text = format_trace(trace)
    assert 'operator: kill switch engaged globally by root ("drill")' in text
    assert 'operator: kill switch engaged for run run_x by root ("drill")' in text
    assert "operator: policy sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb by process_user:deploy (sighup)" in text
    assert "step 3  crm.lookup  allow  allowed  [access/support_agent]  policy sha256:bbbbbbbbbbbb" in text
    # Interleaved by seq: the global switch first, then step 1, the run's switch, step 2, the policy change, step 3.
    order = [item.first_seq if isinstance(item, TraceStep) else item.seq for item in trace.timeline]  # type: ignore[union-attr]
    assert order == [5, 100, 102, 103, 104, 105]


def test_journal_text_cannot_forge_lines() -> None:
    e = Events()
    pre = e.pre(1, action="crm.lookup\n09:51:10.999  step 9  fake  allow\u202e")
    e.result(pre, error="line one\nline two")
    text = format_trace(build_trace(e.events, run_id=RUN))
    assert "\\u000a09:51:10.999  step 9" in text and "\\u202e" in text
    assert len(text.splitlines()) == 8


def test_other_runs_events_are_ignored_and_an_empty_run_is_an_error() -> None:
    e = with_step_gap()
    e.events.append({**e.events[0], "seq": 99, "run_id": "run_other", "step_id": 9})
    assert [s.step_id for s in build_trace(e.events, run_id=RUN).steps] == [1, 2, 5]
    with pytest.raises(ValueError, match="no events for run"):
        build_trace(e.events, run_id="run_none")


def test_to_json_keeps_the_signed_bodies() -> None:
    e = with_violation()
    out = build_trace(e.events, run_id=RUN, journal_status="journal verified").to_json()
    assert out["ok"] is False and out["verification"] == "journal verified"
    assert out["steps"][0]["events"][1]["event"] == {k: v for k, v in e.events[1].items() if k != "seq"}
    assert [a["code"] for a in out["anomalies"]] == [AnomalyCode.VIOLATION, AnomalyCode.RESULT_WITHOUT_ALLOW]
    json.dumps(out)
