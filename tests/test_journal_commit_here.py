"""A lone entry commits on the loop thread (JournalWriter._committed_here), and only when that is safe.

Safe means: the writer thread holds no job (the connection is never used by two threads at once), SQLite's lock is
free (the loop never waits for a lock someone else holds: it hands the batch to the thread), and the load is low.
Each test records which thread ran each commit attempt, then checks the journal itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.canonical import canonical_json
from gateway.journal import writer as writer_module
from gateway.journal.entry import EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.verify import verify_journal
from gateway.journal.writer import JournalWriter, Receipt
from tests.journal_helpers import append_bodies, body, fixed_signer

LOOP, THREAD = "loop", "thread"


@pytest.fixture(autouse=True)
def any_commit_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slow-disk guard off (a loaded machine's fsync can average over 1 ms); its own test turns it back on."""
    monkeypatch.setattr(writer_module, "_COMMIT_HERE_MAX_S", 3600.0)


class Attempts:
    """Wraps the writer's commit so every attempt records (thread, rows, outcome)."""

    def __init__(self, writer: JournalWriter) -> None:
        self.seen: list[tuple[str, int, str]] = []
        insert: Callable[..., None] = writer._insert

        def recorded(rows: Any, state: Any, seal: Any = None) -> None:
            where = LOOP if threading.current_thread() is threading.main_thread() else THREAD
            try:
                insert(rows, state, seal)
            except Exception as exc:
                self.seen.append((where, len(rows), type(exc).__name__))
                raise
            self.seen.append((where, len(rows), "ok"))

        writer._insert = recorded  # type: ignore[method-assign]

    def committed(self) -> list[tuple[str, int]]:
        return [(where, n) for where, n, outcome in self.seen if outcome == "ok"]


async def append_one(writer: JournalWriter, i: int) -> Receipt:
    b = body(i)
    return await writer.append(EventKind.PRE_EXEC, canonical_json(b), indexed_values(b), 1_700_000_000_000_000_000 + i)


async def started(path: Path, **options: Any) -> tuple[JournalWriter, Attempts]:
    writer = JournalWriter(path, fixed_signer(), head_interval_s=options.pop("head_interval_s", 3600.0), **options)
    await writer.start()
    return writer, Attempts(writer)


def appended_in_turn(path: Path, n: int, **options: Any) -> Attempts:
    """n entries appended one after the other (each a lone batch) by a writer built with ``options``."""

    async def run() -> Attempts:
        writer, attempts = await started(path, **options)
        try:
            for i in range(n):
                await append_one(writer, i)
        finally:
            await writer.aclose()
        return attempts

    return asyncio.run(run())


def check_journal(path: Path, size: int) -> None:
    report = verify_journal(path, [fixed_signer().verifier])
    assert report.ok, report.findings
    assert report.entries == size


def test_lone_entries_commit_on_the_loop_and_batches_on_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def run() -> Attempts:
        writer, attempts = await started(path)
        try:
            for i in range(40):
                await append_one(writer, i)
            await append_bodies(writer, [body(i) for i in range(40, 440)])
        finally:
            await writer.aclose()
        return attempts

    attempts = asyncio.run(run())
    committed = attempts.committed()
    lone = committed[:40]
    assert all(n == 1 for _, n in lone)
    # The first lone entry follows no lone batch (load unknown): the thread. After it, the loop.
    assert lone[0] == (THREAD, 1)
    assert lone[1:] == [(LOOP, 1)] * 39
    batches = committed[40:]
    assert sum(n for _, n in batches) == 400
    assert all(where == THREAD for where, n in batches if n > 1), batches
    check_journal(path, 440)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"commit_here": False}, id="turned-off"),
        pytest.param({"head_interval_s": 0.0}, id="every-commit-moves-the-head-mark"),
    ],
)
def test_lone_entries_go_to_the_thread_when_told_or_the_head_mark_is_due(tmp_path: Path, options: Any) -> None:
    path = tmp_path / "j.db"
    assert appended_in_turn(path, 20, **options).committed() == [(THREAD, 1)] * 20
    check_journal(path, 20)


def test_slow_commits_send_lone_entries_to_the_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk whose commits average more than the bound would stall the loop: every real commit is slower than 0 s."""
    monkeypatch.setattr(writer_module, "_COMMIT_HERE_MAX_S", 0.0)
    assert appended_in_turn(tmp_path / "j.db", 20).committed() == [(THREAD, 1)] * 20


def test_a_lock_held_by_another_process_never_stalls_the_loop(tmp_path: Path) -> None:
    """Another connection holds SQLite's write lock (as a backup tool or a second writer would): the lone entry's
    attempt on the loop returns at once, the thread waits for the lock, the loop keeps serving, and the entry
    commits once the lock is released, exactly once."""
    path = tmp_path / "j.db"
    hold_s = 1.0

    async def run() -> tuple[Attempts, float, Receipt, bool]:
        writer, attempts = await started(path)
        try:
            for i in range(5):
                await append_one(writer, i)
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            append = asyncio.ensure_future(append_one(writer, 5))
            longest, last = 0.0, time.monotonic()
            until = last + hold_s
            while time.monotonic() < until:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                longest, last = max(longest, now - last), now
            waited = not append.done()
            other.execute("ROLLBACK")
            other.close()
            receipt = await asyncio.wait_for(append, 10)
        finally:
            await writer.aclose()
        return attempts, longest, receipt, waited

    attempts, longest, receipt, waited = asyncio.run(run())
    assert waited, "the entry cannot have committed while another connection held the write lock"
    assert longest < hold_s / 3, f"the loop stalled {longest:.3f} s while the lock was held"
    assert receipt.seq == 5
    assert attempts.seen[-2:] == [(LOOP, 1, "JournalUnavailableError"), (THREAD, 1, "ok")]
    check_journal(path, 6)


def test_a_lone_entry_waits_for_a_job_on_the_thread(tmp_path: Path) -> None:
    """While the thread runs a job (a probe, a salvage, a tail re-read), the loop must not touch the connection."""
    path = tmp_path / "j.db"

    async def run() -> tuple[Attempts, bool]:
        writer, attempts = await started(path)
        gate = threading.Event()
        try:
            for i in range(5):
                await append_one(writer, i)
            job = asyncio.ensure_future(writer._on_thread(gate.wait, 10))
            await asyncio.sleep(0.05)
            append = asyncio.ensure_future(append_one(writer, 5))
            await asyncio.sleep(0.2)
            queued = not append.done()
            gate.set()
            await job
            await asyncio.wait_for(append, 10)
        finally:
            gate.set()
            await writer.aclose()
        return attempts, queued

    attempts, queued = asyncio.run(run())
    assert queued, "the entry must wait behind the thread's job"
    assert attempts.committed()[-1] == (THREAD, 1)
    check_journal(path, 6)
