"""The examples show the right way: against a real sidecar, the runs they leave trace without an anomaly."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.conftest import ROOT, RunningGateway, run_cli

SUPPORT_AGENT = ROOT / "examples" / "support_agent.py"
BANNER = re.compile(r"^run (run_[0-9a-f]+) \(tenant t_42\), run (run_[0-9a-f]+) \(tenant t_flood\)")


def test_support_agent_flood_run_traces_without_an_anomaly(gateway_server: RunningGateway) -> None:
    completed = subprocess.run(
        [sys.executable, str(SUPPORT_AGENT), "--target", gateway_server.unix_target, "--no-events"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    banner = BANNER.match(completed.stdout)
    assert banner is not None, completed.stdout
    flood_run_id = banner.group(2)
    assert re.search(r"crm\.search #\d+ \(t_flood\) +→ stop", completed.stdout), completed.stdout

    traced = run_cli("trace", flood_run_id, "--journal", str(gateway_server.journal_path), "--json")

    assert traced.returncode == 0, traced.stdout + traced.stderr
    report = json.loads(traced.stdout)
    assert report["anomalies"] == []
    assert report["ok"] is True
    # Every allowed step was reported: a result per allowed step, and the stop at the end.
    events = [
        json.loads(line)
        for line in run_cli(
            "events", str(gateway_server.journal_path), "--run-id", flood_run_id, check=True
        ).stdout.splitlines()
    ]
    kinds = [e["kind"] for e in events]
    assert kinds.count("post_exec") == kinds.count("pre_exec") - 1 >= 20
