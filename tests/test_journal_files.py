"""Journal files removed, replaced or made unwritable under a running sidecar: it notices, fails closed, loses nothing.

Each test drives Decide load from threads against a real sidecar process, damages the files underneath it, and
counts: every decision acknowledged with an event id is in a journal that verifies afterwards.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentaudit.v1 import types_pb2
from tests.conftest import AGENTAUDIT, ROOT, RunningGateway, run_cli, start_gateway
from tests.gateway_helpers import decide_request, journal_event_ids, stub

PROBE_INTERVAL_S = 0.2
NOTICE_DEADLINE_S = PROBE_INTERVAL_S + 5.0  # the probe interval and a margin for a loaded 2-core machine
WORKERS = 4
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Load:
    """Decide in a closed loop from a few threads, remembering every answer with the time it arrived."""

    target: str
    action: str = "crm.lookup"
    steps_per_run: int = 0  # start a new run after this many steps (0: one run per worker), to stay under budgets
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[tuple[float, str, int, str]] = field(default_factory=list)  # (time, event_id, decision, reason)
    threads: list[threading.Thread] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)  # cleared: workers hold their next call
    in_flight: int = 0
    workers: int = WORKERS

    def start(self) -> None:
        self.running.set()
        self.threads = [threading.Thread(target=self._worker, args=(w,)) for w in range(self.workers)]
        for thread in self.threads:
            thread.start()

    def _worker(self, worker: int) -> None:
        channel, gateway = stub(self.target)
        step = 0
        with channel:
            while not self.stop.is_set():
                if not self.running.wait(0.05):
                    continue
                with self.lock:
                    self.in_flight += 1
                step += 1
                run_id, step_id = f"w{worker}", step
                if self.steps_per_run:
                    run_id, step_id = f"w{worker}r{step // self.steps_per_run}", step % self.steps_per_run + 1
                request = decide_request(run_id=run_id, step_id=step_id, action=self.action)
                try:
                    reply = gateway.Decide(request, timeout=10)
                except grpc.RpcError:
                    continue  # no answer, so no promise was made
                finally:
                    with self.lock:
                        self.in_flight -= 1
                with self.lock:
                    self.answers.append((time.monotonic(), reply.event_id, reply.decision, reply.reason))

    def pause(self, deadline_s: float = 20.0) -> None:
        """Holds every worker's next call and waits until no call is in flight (the writer is then idle)."""
        self.running.clear()
        deadline = time.monotonic() + deadline_s
        while True:
            with self.lock:
                if self.in_flight == 0:
                    return
            assert time.monotonic() < deadline, "calls still in flight"
            time.sleep(0.005)

    def resume(self) -> None:
        self.running.set()

    def count(self) -> int:
        with self.lock:
            return len(self.answers)

    def wait_for(self, count: int, deadline_s: float = 20.0) -> None:
        deadline = time.monotonic() + deadline_s
        while self.count() < count:
            assert time.monotonic() < deadline, f"only {self.count()} answers in {deadline_s}s"
            time.sleep(0.01)

    def since(self, moment: float) -> list[tuple[float, str, int, str]]:
        with self.lock:
            return [a for a in self.answers if a[0] > moment]

    def acknowledged(self) -> set[str]:
        with self.lock:
            return {event_id for _, event_id, _, _ in self.answers if event_id}

    def allowed(self) -> set[str]:
        with self.lock:
            return {event_id for _, event_id, decision, _ in self.answers if decision == types_pb2.DECISION_ALLOW}

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=20)


def health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


def wait_failed_closed(load: Load, since: float, gw: RunningGateway | None = None) -> float:
    """Polls until a Decide answered after ``since`` is stop/audit_unavailable; returns when it arrived."""
    deadline = since + NOTICE_DEADLINE_S
    while time.monotonic() < deadline:
        if gw is not None and gw.proc.poll() is not None:
            raise AssertionError(
                f"the sidecar died ({gw.proc.returncode}; -7 is SIGBUS mid-commit, docs/adr/0014-shm-faults.md):\n"
                f"{gw.log()[-3000:]}"
            )
        for at, _, decision, reason in load.since(since):
            if decision == types_pb2.DECISION_STOP and reason == "audit_unavailable":
                return at
        time.sleep(0.01)
    raise AssertionError(f"no audit_unavailable answer within {NOTICE_DEADLINE_S}s")


def assert_stays_failed_closed(load: Load, gw: RunningGateway, after: float) -> None:
    """Every answer from well after the first refusal is stop/audit_unavailable; health is NOT_SERVING."""
    settled = after + 0.5  # answers already on their way back when the loss was found may still pass
    deadline = time.monotonic() + NOTICE_DEADLINE_S
    while len(load.since(settled)) < 50:
        assert time.monotonic() < deadline, "too few answers after the loss was noticed"
        time.sleep(0.02)
    later = load.since(settled)
    assert later, "no answers to check"
    assert all(d == types_pb2.DECISION_STOP and r == "audit_unavailable" and not e for _, e, d, r in later), [
        (d, r) for _, _, d, r in later if r != "audit_unavailable"
    ][:5]
    assert health(gw.unix_target) == NOT_SERVING
    assert health(gw.unix_target, "liveness") == NOT_SERVING


def verify(journal: Path, public_key: Path) -> None:
    result = run_cli("verify", str(journal), "--public-key", str(public_key))
    assert result.returncode == 0, result.stdout + result.stderr


def remove_all(journal: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        journal.with_name(journal.name + suffix).unlink()


def remove_wal(journal: Path) -> None:
    journal.with_name(journal.name + "-wal").unlink()


def replace_by_copy(journal: Path) -> None:
    copy = journal.with_name(journal.name + ".copy")
    shutil.copyfile(journal, copy)
    copy.replace(journal)


@pytest.mark.parametrize(
    ("damage", "restart_refused", "workers"),
    [
        pytest.param(remove_all, True, WORKERS, id="journal-wal-and-shm-removed"),
        # One caller: lone entries, committed on the loop thread itself (JournalWriter._committed_here).
        pytest.param(remove_all, True, 1, id="journal-wal-and-shm-removed-one-caller"),
        pytest.param(remove_wal, True, WORKERS, id="only-wal-removed"),
        # The copy plus the -wal, which is still the one the sidecar wrote, hold every entry: a restart is right.
        pytest.param(replace_by_copy, False, WORKERS, id="journal-replaced-by-a-copy"),
    ],
)
def test_journal_files_lost_under_load_fail_closed_and_lose_no_acknowledged_decision(
    tmp_path: Path, damage: object, restart_refused: bool, workers: int
) -> None:
    assert callable(damage)
    directory = tmp_path / "gw"
    gw = start_gateway(directory, extra_env={"AGENTAUDIT_JOURNAL_PROBE_INTERVAL_S": str(PROBE_INTERVAL_S)})
    load = Load(gw.unix_target, workers=workers)
    try:
        load.start()
        load.wait_for(100)
        damaged_at = time.monotonic()
        damage(gw.journal_path)
        refused_at = wait_failed_closed(load, damaged_at)
        assert_stays_failed_closed(load, gw, refused_at)
        assert gw.proc.poll() is None
    finally:
        load.close()
        gw.stop()
    log = gw.log()
    assert log.count("journal lost:") >= 1 and "(no entry is acknowledged from now on)" in log
    assert log.count("(no entry is acknowledged from now on)") == 1, "the loss is logged once"
    # What the sidecar held is saved beside the journal: every acknowledged decision is there, and it verifies.
    (salvaged,) = directory.glob("journal.db.salvaged-*")
    verify(salvaged, gw.public_key_path)
    missing = load.acknowledged() - journal_event_ids(salvaged)
    assert not missing, f"{len(missing)} acknowledged decisions are not in the salvaged journal"
    if not restart_refused:
        again = start_gateway(directory)
        again.stop()
        verify(gw.journal_path, gw.public_key_path)
        missing = load.acknowledged() - journal_event_ids(gw.journal_path)
        assert not missing, f"{len(missing)} acknowledged decisions are not in the restarted journal"
        return
    # A restart on the damaged directory is refused as a rollback, never taken for a fresh start.
    restart = subprocess.run(["timeout", "30", *_dev(directory)], check=False, capture_output=True, text=True, cwd=ROOT)
    assert restart.returncode == 2, restart.stderr
    assert "journal rollback" in restart.stderr
    assert "journal.db.head" in restart.stderr and "move" in restart.stderr


def _dev(directory: Path) -> list[str]:
    return [*AGENTAUDIT, "dev", "--dir", str(directory), "--listen", f"unix://{directory}/again.sock"]


def test_an_idle_sidecar_notices_its_journal_was_removed(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "gw", extra_env={"AGENTAUDIT_JOURNAL_PROBE_INTERVAL_S": str(PROBE_INTERVAL_S)})
    try:
        remove_all(gw.journal_path)
        deadline = time.monotonic() + NOTICE_DEADLINE_S
        while health(gw.unix_target) != NOT_SERVING:
            assert time.monotonic() < deadline, "readiness still SERVING after the journal was removed"
            time.sleep(0.02)
        assert health(gw.unix_target, "liveness") == NOT_SERVING
        channel, gateway = stub(gw.unix_target)
        with channel:
            reply = gateway.Decide(decide_request(), timeout=10)
        assert (reply.decision, reply.reason, reply.event_id) == (types_pb2.DECISION_STOP, "audit_unavailable", "")
    finally:
        gw.stop()
    assert "was removed while open" in gw.log()


def test_a_restart_on_a_journal_older_than_its_mark_is_refused(tmp_path: Path) -> None:
    """An old copy restored over the journal (stopped sidecar): shorter than the high-water mark, refused."""
    directory = tmp_path / "gw"
    gw = start_gateway(directory)
    gw.stop()
    old = tmp_path / "old.db"
    with sqlite3.connect(gw.journal_path) as source, sqlite3.connect(old) as backup:
        source.backup(backup)  # a consistent single-file backup, as an operator would take one
    gw = start_gateway(directory)
    channel, gateway = stub(gw.unix_target)
    with channel:
        for step in range(1, 4):
            gateway.Decide(decide_request(step_id=step), timeout=10)
    assert gw.stop() == 0
    remove_all(gw.journal_path)
    shutil.copyfile(old, gw.journal_path)
    restart = subprocess.run(["timeout", "30", *_dev(directory)], check=False, capture_output=True, text=True, cwd=ROOT)
    assert restart.returncode == 2, restart.stderr
    assert "journal rollback" in restart.stderr and "holds only" in restart.stderr
    # Moving the mark aside is the deliberate way to accept the reset.
    (directory / "journal.db.head").rename(tmp_path / "head.kept")
    start_gateway(directory).stop()


def _chattr_supported(path: Path) -> str:
    probe = path / "chattr-probe"
    probe.write_bytes(b"")
    try:
        result = subprocess.run(["chattr", "+i", str(probe)], check=False, capture_output=True, text=True)
    except FileNotFoundError:
        return "chattr is not installed"
    if result.returncode != 0:
        return f"chattr +i not supported here: {result.stderr.strip()}"
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    probe.unlink()
    return ""


def test_an_unwritable_shm_fails_closed_and_the_process_survives(tmp_path: Path) -> None:
    """``chattr +i`` on the mapped ``-shm`` between commits of a load: refused, not SIGBUS; writable again: resumed."""
    why = _chattr_supported(tmp_path)
    if why:
        pytest.skip(why)
    gw = start_gateway(tmp_path / "gw", extra_env={"AGENTAUDIT_JOURNAL_PROBE_INTERVAL_S": str(PROBE_INTERVAL_S)})
    shm = gw.journal_path.with_name("journal.db-shm")
    # kb.search is granted and not rate limited, and a run lasts 100 steps (the budget is 200): every answer
    # while the journal is writable is an allow, the promise that must never be lost.
    load = Load(gw.unix_target, action="kb.search", steps_per_run=100)
    try:
        load.start()
        load.wait_for(100)
        # The flag is set between commits, as the writer's checks can see it: one set *during* a commit still
        # reaches SQLite's mapping of the file as SIGBUS, the window ADR 0014 documents and no check can close.
        load.pause()
        damaged_at = time.monotonic()
        subprocess.run(["chattr", "+i", str(shm)], check=True)
        load.resume()
        try:
            refused_at = wait_failed_closed(load, damaged_at, gw)
            assert_stays_failed_closed(load, gw, refused_at)
            assert gw.proc.poll() is None, (
                f"the sidecar died ({gw.proc.returncode}; -7 is SIGBUS mid-commit, docs/adr/0014-shm-faults.md):\n"
                f"{gw.log()[-3000:]}"
            )
        finally:
            subprocess.run(["chattr", "-i", str(shm)], check=True)
        # Writable again: the next commits succeed and health is SERVING (transient, unlike a removed file).
        recovered_from = time.monotonic()
        deadline = recovered_from + NOTICE_DEADLINE_S
        while not any(d == types_pb2.DECISION_ALLOW and e for _, e, d, _ in load.since(recovered_from)):
            assert time.monotonic() < deadline, "no allow recorded after the -shm became writable again"
            time.sleep(0.02)
        while health(gw.unix_target) != SERVING:
            assert time.monotonic() < deadline, "health still NOT_SERVING after the -shm became writable again"
            time.sleep(0.02)
    finally:
        load.close()
        code = gw.stop()
    assert code == 0, gw.log()[-2000:]
    log = gw.log()
    said = [line for line in log.splitlines() if "ERROR gateway.journal.writer" in line]
    assert len(said) == 1, said[:5]  # once per change, not once per refused commit
    assert f"journal file {shm} is immutable (chattr +i)" in said[0] and "chattr -i" in said[0]
    assert "journal files are writable again" in log
    verify(gw.journal_path, gw.public_key_path)
    stored = journal_event_ids(gw.journal_path)
    allowed = load.allowed()
    assert len(allowed) >= 100, f"only {len(allowed)} allows: the load did not exercise the journal"
    missing = load.acknowledged() - stored
    assert not missing, f"{len(missing)} of {len(load.acknowledged())} acknowledged decisions are not in the journal"


def test_sigkill_leaves_a_mark_no_newer_than_the_journal(tmp_path: Path) -> None:
    """The mark is written after commits: a crash may leave it behind the journal, never ahead, so restart works."""
    directory = tmp_path / "gw"
    gw = start_gateway(directory)
    load = Load(gw.unix_target)
    try:
        load.start()
        load.wait_for(200)
    finally:
        gw.stop(signal.SIGKILL)
        load.close()
    start_gateway(directory).stop()
