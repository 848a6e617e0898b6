"""Crash safety: SIGKILL under concurrent load never loses an acknowledged decision or breaks the chain."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import run_cli, start_gateway
from tests.gateway_helpers import decide_request, journal_event_ids, stub

KILLS = 5


def hammer(target: str, stop: threading.Event, acknowledged: list[str], lock: threading.Lock, worker: int) -> None:
    """Sends Decide in a closed loop until told to stop or the server goes away; records acknowledged ids."""
    channel, gw = stub(target)
    step = 0
    with channel:
        while not stop.is_set():
            step += 1
            try:
                reply = gw.Decide(decide_request(run_id=f"run_w{worker}", step_id=step, args={"n": step}), timeout=5)
            except grpc.RpcError:
                return  # killed mid-call: no answer, so no promise was made
            if reply.event_id:
                with lock:
                    acknowledged.append(reply.event_id)


def check_contiguous(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        count, low, high = conn.execute("SELECT count(*), min(seq), max(seq) FROM journal").fetchone()
    assert (low, high) == (0, count - 1), f"seq has gaps: {count} rows from {low} to {high}"
    return int(count)


# Eight callers: entries group-commit on the writer thread. One caller: lone entries, committed on the loop thread
# itself (JournalWriter._committed_here): both paths must keep every acknowledged entry.
@pytest.mark.parametrize("workers", [8, 1])
def test_sigkill_under_load_loses_no_acknowledged_decision(tmp_path: Path, workers: int) -> None:
    rng = random.Random(20261127)
    directory = tmp_path / "gw"
    acknowledged: list[str] = []
    lock = threading.Lock()
    sizes = []
    for round_ in range(KILLS):
        gw = start_gateway(directory)
        stop = threading.Event()
        threads = [
            threading.Thread(target=hammer, args=(gw.unix_target, stop, acknowledged, lock, round_ * 100 + w))
            for w in range(workers)
        ]
        for t in threads:
            t.start()
        # Kill at a random moment once load is flowing.
        deadline = time.monotonic() + 10
        target = len(acknowledged) + rng.randint(20, 200)
        while len(acknowledged) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        gw.stop(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        stored = journal_event_ids(gw.journal_path)
        with lock:
            missing = [e for e in acknowledged if e not in stored]
        assert not missing, f"round {round_}: {len(missing)} acknowledged decisions are not in the journal"
        sizes.append(check_contiguous(gw.journal_path))
    assert len(acknowledged) > KILLS * 20
    assert sizes == sorted(sizes)
    # The journal written across five crashes verifies offline, end to end.
    result = run_cli("verify", str(directory / "journal.db"), "--public-key", str(directory / "signing.pub"))
    assert result.returncode == 0, result.stdout + result.stderr
