"""The Python and the Node client, against one real sidecar, get the same answers and leave the same journal.

Both play the three seed scenarios of ``examples/support_agent.py`` (its Node twin is
``clients/node/examples/support_agent.ts``, run compiled with ``--json``): a flood stopped by the tenant's rate
limit, a refund that needs an approval, an allowed lookup whose result is reported. Everything but ids, times
and timing-dependent values must be identical: the decisions (decision, reason, layer, rule, policy version,
action key, whether an approval or a retry is named) and the journaled events, down to the HMAC digests of the
arguments and outputs, which prove both clients sent the same ``google.protobuf.Struct``.

Needs ``node`` and the built Node client (``cd clients/node && npm ci && npm run build``); it fails, never
skips, when they are missing.
"""

from __future__ import annotations

import datetime
import json
import math
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentaudit_client import ActionStopped, ApprovalRequired, DecideResult, GatewayClient
from tests.conftest import ROOT, RunningGateway, run_cli

NODE_CLIENT = ROOT / "clients" / "node"
NODE_EXAMPLE = NODE_CLIENT / "dist" / "examples" / "support_agent.js"
AGENT = "support-agent"
ACTOR = ("user", "u_1")
MAX_FLOOD = 100
BURST = 20  # crm_per_tenant in the example policy: 10/s, burst 20
RATE_PER_S = 10
REFILL_S = 2.5  # time for the emptied bucket to refill completely (20 tokens at 10/s), with a margin

# Differ between any two runs: identities, times, chain positions, measured durations.
VOLATILE = {
    "event_id",
    "run_id",
    "flood_run_id",
    "timestamp",
    "seq",
    "pre_event_id",
    "pre_event_seq",
    "pre_leaf_hash",
    "duration_ns",
}
# Present or not is stable; the value is an id or depends on timing.
PRESENCE_ONLY = {"approval_id", "retry_after", "retry_after_ms"}


def decision_json(result: DecideResult) -> dict[str, Any]:
    """A decision as JSON with the proto field names, as the Node example prints it."""
    return {
        "decision": result.decision,
        "reason": result.reason,
        "policy_layer": result.policy_layer,
        "policy_rule": result.policy_rule,
        "policy_version": result.policy_version,
        "event_id": result.event_id,
        "action_key": result.action_key,
        "approval_id": result.approval_id,
        "retry_after": result.retry_after,
    }


def play_python(target: str) -> dict[str, Any]:
    """The seed scenarios of examples/support_agent.py with the Python client, results as the Node example's JSON."""
    run_id, flood_run_id = f"run_{uuid.uuid4().hex[:12]}", f"run_{uuid.uuid4().hex[:12]}"
    with GatewayClient(target) as client:
        flood = client.run(flood_run_id, tenant_id="t_flood", agent_id=AGENT, actor=ACTOR)
        allowed = 0
        stopped: DecideResult | None = None
        for _ in range(MAX_FLOOD):
            try:
                with flood.guard("crm.search", {"query": "ann"}) as search:
                    search.output = {"query": "ann", "hits": 1}
            except ActionStopped as denied:
                stopped = denied.result
                break
            allowed += 1
            stopped = search.decision
        assert stopped is not None

        run = client.run(run_id, tenant_id="t_42", agent_id=AGENT, actor=ACTOR)
        refund_ran = False

        @run.guarded("refund.create")
        def create_refund(order_id: str, amount: int, customer: dict[str, str]) -> dict[str, Any]:
            nonlocal refund_ran
            refund_ran = True
            raise AssertionError("a refund ran without approval")

        with pytest.raises(ApprovalRequired) as pending:
            create_refund(order_id="o_1", amount=250, customer={"email": "ann@example.com"})

        args = {"customer_id": "c_7", "phone": "+15551234567"}
        with run.guard("crm.lookup", args) as step:
            step.output = {"customer_id": "c_7", "name": "Ann", "phone": args["phone"], "open_orders": 1}
        assert step.report is not None

    return {
        "run_id": run_id,
        "flood_run_id": flood_run_id,
        "flood": {"allowed": allowed, **decision_json(stopped)},
        "refund": {"ran": refund_ran, **decision_json(pending.value.result)},
        "lookup": {
            **decision_json(step.decision),
            "output": step.output,
            "report": {"event_id": step.report.event_id, "duplicate": step.report.duplicate},
        },
    }


def play_node(target: str) -> dict[str, Any]:
    """The same scenarios with the Node client: its compiled example, run with --json."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the cross-client test needs Node 20+")
    if not NODE_EXAMPLE.exists():
        pytest.fail(f"{NODE_EXAMPLE} is missing: run `npm ci && npm run build` in {NODE_CLIENT}")
    completed = subprocess.run(
        [node, str(NODE_EXAMPLE), "--target", target, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, f"node example failed ({completed.returncode}):\n{completed.stderr}"
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def comparable(value: Any) -> Any:
    """``value`` with volatile fields dropped and id-like ones reduced to whether they are set."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in VOLATILE:
                continue
            out[key] = (item is not None and item != "") if key in PRESENCE_ONLY else comparable(item)
        return out
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


def _nanos(timestamp: str) -> int:
    """Unix nanoseconds of a journal timestamp (RFC 3339, UTC, nanoseconds: ``2026-12-03T07:24:54.123456789Z``)."""
    whole, _, fraction = timestamp.rstrip("Z").partition(".")
    seconds = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9] or 0)


def journal(server: RunningGateway, run_id: str) -> list[dict[str, Any]]:
    """The run's journal events in order, read with ``agentaudit events`` (JSON lines)."""
    completed = run_cli("events", str(server.journal_path), "--run-id", run_id, check=True)
    return [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]


def test_python_and_node_clients_get_the_same_answers_and_journal(gateway_server: RunningGateway) -> None:
    python = play_python(gateway_server.unix_target)
    time.sleep(REFILL_S)  # the flood emptied t_flood's bucket; let the second client start from a full one
    node = play_node(gateway_server.unix_target)

    # The scenarios went as the example policy says, for both.
    for name, played in (("python", python), ("node", node)):
        flood, refund, lookup = played["flood"], played["refund"], played["lookup"]
        assert (flood["decision"], flood["reason"], flood["policy_rule"]) == (
            "stop",
            "rate_limited_tenant",
            "crm_per_tenant",
        ), name
        assert flood["retry_after"] is not None and 0 < flood["retry_after"] <= 1, name
        # The burst, plus the tokens refilled (10/s) while flooding: never more than the flood's own duration,
        # from its first pre-event to the stop in the journal, refilled (exact counts depend on timing).
        events = journal(gateway_server, played["flood_run_id"])
        elapsed = (_nanos(events[-1]["timestamp"]) - _nanos(events[0]["timestamp"])) / 1e9
        assert BURST <= flood["allowed"] <= BURST + math.ceil(RATE_PER_S * elapsed) + 1, (name, flood, elapsed)
        assert (refund["decision"], refund["policy_rule"], refund["ran"]) == (
            "approval_required",
            "refunds_need_approval",
            False,
        ), name
        assert refund["approval_id"].startswith("apr_"), name
        assert (lookup["decision"], lookup["reason"]) == ("allow", "allowed"), name
        assert lookup["report"]["event_id"] and lookup["report"]["duplicate"] is False, name

    # The answers are identical but for ids and timing.
    for scenario in ("flood", "refund", "lookup"):
        expected, got = dict(python[scenario]), dict(node[scenario])
        expected.pop("allowed", None)
        got.pop("allowed", None)
        assert comparable(got) == comparable(expected), scenario

    # So is what the sidecar journaled: same args and output digests, redactions, steps, decisions, results.
    python_events, node_events = journal(gateway_server, python["run_id"]), journal(gateway_server, node["run_id"])
    assert [e["kind"] for e in python_events] == ["pre_exec", "pre_exec", "post_exec"]
    assert comparable(node_events) == comparable(python_events)
    assert node_events[0]["args_digest"] == python_events[0]["args_digest"]
    assert node_events[2]["output_digest"] == python_events[2]["output_digest"]

    # The flood runs: every allowed step journaled alike, and the same stop at the end. Both examples run each
    # allowed search through guard, so each allowed step is a pre-event followed by its post-event (its reported
    # result; without it `agentaudit trace` flags missing_result), and the stop is one pre-event: 2 * allowed + 1.
    python_flood, node_flood = (
        journal(gateway_server, python["flood_run_id"]),
        journal(gateway_server, node["flood_run_id"]),
    )
    assert len(python_flood) == 2 * python["flood"]["allowed"] + 1
    assert len(node_flood) == 2 * node["flood"]["allowed"] + 1
    for events in (python_flood, node_flood):
        allowed_steps = (len(events) - 1) // 2
        assert [e["kind"] for e in events] == ["pre_exec", "post_exec"] * allowed_steps + ["pre_exec"]
        # A post-event carries its pre-event's step id.
        expected_steps = [step for step in range(1, allowed_steps + 1) for _ in (0, 1)] + [allowed_steps + 1]
        assert [e["step_id"] for e in events] == expected_steps
    for index in (0, 1):  # the first allowed step's pre-event, then its post-event
        without_step = [
            {k: v for k, v in e.items() if k != "step_id"} for e in (python_flood[index], node_flood[index])
        ]
        assert comparable(without_step[1]) == comparable(without_step[0]), index
    assert node_flood[1]["output_digest"] == python_flood[1]["output_digest"]
    assert comparable({**node_flood[-1], "step_id": 0}) == comparable({**python_flood[-1], "step_id": 0})


def test_node_example_reports_an_unreachable_sidecar(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node is not on PATH"
    assert NODE_EXAMPLE.exists(), f"run `npm ci && npm run build` in {NODE_CLIENT}"
    completed = subprocess.run(
        [node, str(NODE_EXAMPLE), "--target", f"unix://{tmp_path / 'none.sock'}", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert "cannot reach the sidecar" in completed.stderr
