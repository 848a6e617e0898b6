"""One real sidecar run that records a payload everywhere it can end up, and every byte it then wrote.

A dev sidecar with the embedded collector (forwarding on) records a Decide (args and labels), its result (output
and error text), an approval granted with a comment and a kill switch engaged and released with reasons; the test
then reads the journal files (main, ``-wal``, ``-shm``) while running and after shutdown, the collector's database
files, ``agentaudit export`` in both formats and the sidecar's log.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agentaudit.v1 import gateway_pb2, operator_pb2, types_pb2
from gateway import devenv
from gateway.journal.store import iter_bodies
from tests.conftest import run_cli, start_gateway
from tests.gateway_helpers import decide_request, journal_count, stub
from tests.operator_helpers import TOKENS, auth, operator_stub, prepare_dir

DEADLINE_S = 30.0


@dataclass(frozen=True)
class Written:
    """Everything the system wrote for one recorded payload."""

    journal: bytes
    collector: bytes
    exports: str
    log: str
    bodies: list[dict[str, Any]]

    def sources(self) -> dict[str, bytes]:
        """Each place, by name, as bytes."""
        return {
            "journal files": self.journal,
            "collector database": self.collector,
            "export": self.exports.encode(),
            "log": self.log.encode(),
        }


def _files(directory: Path, stem: str) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob(f"{stem}*")) if p.is_file())


def _collector_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet


def record_everywhere(
    directory: Path,
    *,
    args: dict[str, Any],
    labels: dict[str, str],
    output: dict[str, Any],
    error: str,
    free_text: str,
    audit: dict[str, Any] | None = None,
) -> Written:
    """Runs the sidecar once over the payload (see the module docstring) and returns what it wrote."""
    prepare_dir(directory)
    config_path = directory / devenv.CONFIG_FILE
    config = yaml.safe_load(config_path.read_text())
    config["audit"].update(audit or {})
    config_path.write_text(yaml.safe_dump(config))
    gw = start_gateway(directory, forward=True)
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            pre = gateway.Decide(decide_request(args=args, labels=labels), timeout=10)
            assert pre.event_id, "the decision was recorded"
            report = gateway_pb2.ReportResultRequest(
                event_id=pre.event_id, status=types_pb2.RESULT_STATUS_FAILED, error=error
            )
            report.output.update(output)
            gateway.ReportResult(report, timeout=10)
            refund = gateway.Decide(
                decide_request(action="refund.create", args={"order_id": "o_1", "amount": 250}, run_id="run_2"),
                timeout=10,
            )
            assert refund.decision == types_pb2.DECISION_APPROVAL_REQUIRED
        channel, op = operator_stub(gw.operator_target)
        with channel:
            op.GrantApproval(
                operator_pb2.GrantApprovalRequest(approval_id=refund.approval_id, comment=free_text),
                metadata=auth(TOKENS["alice"][0]),
                timeout=10,
            )
            root = auth(TOKENS["root"][0])
            switch = {"scope": operator_pb2.KILL_SWITCH_SCOPE_TENANT, "target": "t_other"}
            op.EngageKillSwitch(operator_pb2.EngageKillSwitchRequest(**switch, reason=free_text), metadata=root)
            op.ReleaseKillSwitch(operator_pb2.ReleaseKillSwitchRequest(**switch, reason=free_text), metadata=root)
        recorded = journal_count(gw.journal_path)
        deadline = time.monotonic() + DEADLINE_S
        while _collector_count(directory / "collector.db") < recorded:
            assert time.monotonic() < deadline, "the collector did not receive every event in time"
            time.sleep(0.05)
        running = _files(directory, "journal.db")
    finally:
        gw.stop()
    exports = "".join(
        run_cli("export", str(gw.journal_path), "--format", fmt, check=True).stdout for fmt in ("jsonl", "cloudevents")
    )
    return Written(
        journal=running + _files(directory, "journal.db"),
        collector=_files(directory, "collector.db"),
        exports=exports,
        log=gw.log(),
        bodies=[b for _, b in iter_bodies(gw.journal_path)],
    )


def leaks(written: Written, secrets: list[str]) -> list[str]:
    """Which secrets appear (UTF-8 or UTF-16) in which place: an empty list is the pass."""
    found = []
    for where, data in written.sources().items():
        for secret in secrets:
            if secret.encode() in data or secret.encode("utf-16-le") in data:
                found.append(f"{secret!r} in the {where}")
    return found
