"""What a developer sees: the dev terminal's decision lines (and ``--quiet``), and ``forwarder status`` explaining
the unsent last receipt, each against a real ``agentaudit dev`` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import AGENTAUDIT, ROOT, RunningGateway, run_cli, start_gateway, wait_serving
from tests.gateway_helpers import decide_request, stub

DECISION_LINE = "allow             allowed"  # decision and reason columns of a decision line


def decide(target: str, run_id: str, steps: int) -> None:
    channel, gateway = stub(target)
    with channel:
        for step in range(1, steps + 1):
            gateway.Decide(decide_request(run_id=run_id, step_id=step), timeout=10)


def poll(what: str, check: Callable[[], bool], deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} after {deadline_s}s")
        time.sleep(0.05)


def decision_lines(log: str, run_id: str) -> list[str]:
    return [line for line in log.splitlines() if f"{run_id}/" in line and DECISION_LINE in line]


def test_dev_prints_one_line_per_decision(gateway_server: RunningGateway) -> None:
    decide(gateway_server.unix_target, "run_lines", 3)
    poll("3 decision lines", lambda: len(decision_lines(gateway_server.log(), "run_lines")) == 3)
    lines = decision_lines(gateway_server.log(), "run_lines")
    assert [line.split()[4] for line in lines] == ["run_lines/1", "run_lines/2", "run_lines/3"]
    assert all("crm.lookup" in line and "t_42" in line for line in lines)


def test_dev_quiet_prints_no_decision_line(tmp_path: Path) -> None:
    sock = tmp_path / "gateway.sock"
    log_path = tmp_path / "sidecar.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*AGENTAUDIT, "dev", "--quiet", "--dir", str(tmp_path), "--listen", f"unix://{sock}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "AGENTAUDIT_FORWARD_TARGET": ""},
        )
    try:
        wait_serving(f"unix://{sock}", proc=proc)
        decide(f"unix://{sock}", "run_quiet", 3)
        # Decided and journaled (Decide returns after the commit); the terminal's printer, which would also print
        # its "decisions (one line each ...)" header at start, never runs with --quiet.
        events = run_cli("events", str(tmp_path / "journal.db"), "--run-id", "run_quiet", check=True).stdout
        assert len(events.splitlines()) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    output = log_path.read_text()
    assert "shutting down" in output
    assert "decisions (one line each" not in output
    assert decision_lines(output, "run_quiet") == []


def test_forwarder_status_explains_the_unsent_last_receipt(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, forward=True)
    try:
        decide(gw.unix_target, "run_fwd", 2)

        def status() -> dict[str, int]:
            return json.loads(run_cli("forwarder", "status", str(gw.journal_path), "--json", check=True).stdout)

        # The batch with the decisions is acknowledged; its cosignature receipt is then the only unsent entry.
        seen: list[dict[str, int]] = []

        def only_the_receipt_unsent() -> bool:
            seen.append(status())
            return seen[-1]["acked_size"] > 2 and seen[-1]["backlog"] == 1

        poll("acknowledged", only_the_receipt_unsent)
        report = seen[-1]
        assert report["unsent_receipts"] == report["backlog"] == 1
        text = run_cli("forwarder", "status", str(gw.journal_path), check=True).stdout
    finally:
        gw.stop()
    assert f"forwarded {report['acked_size']} of {report['journal_size']} entries; backlog 1" in text
    assert "the unsent entry is the collector's cosignature receipt of what it acknowledged" in text
    assert "forwarded with the next batch" in text
