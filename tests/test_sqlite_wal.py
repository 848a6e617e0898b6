"""Several connections switching one new SQLite file to WAL at once (gateway/sqlite.py).

SQLite answers one of two racing connections SQLITE_BUSY at once, whatever the busy timeout, when both want the
exclusive lock the switch needs: a collector's replicas starting together on one new file failed to start that
way now and then (seen as a flaky test_replicas_starting_together_apply_the_migrations_once). These tests race
many connections on many new files and must see no error, and check that a lock held for good is still reported.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.collector.sqlite_store import SqliteCollectorStore
from gateway.mcp.state import ProxyState
from gateway.sqlite import enable_wal

FILES = 150
RACERS = 4


def _race(path: Path, open_one: object) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(RACERS)

    def run() -> None:
        start.wait()
        try:
            open_one(path)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _open_wal(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    try:
        conn.execute("PRAGMA busy_timeout=10000")
        enable_wal(conn, 10)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_connections_racing_to_switch_new_files_to_wal_all_succeed(tmp_path: Path) -> None:
    failures = [e for i in range(FILES) for e in _race(tmp_path / f"{i}.db", _open_wal)]
    assert failures == []


def test_collector_replicas_starting_together_on_new_files_all_start(tmp_path: Path) -> None:
    async def start_together(path: Path) -> None:
        replicas = [SqliteCollectorStore(path, check_workers=0) for _ in range(RACERS)]
        try:
            await asyncio.gather(*(r.start() for r in replicas))
        finally:
            for r in replicas:
                await r.aclose()

    for i in range(30):
        asyncio.run(start_together(tmp_path / f"{i}.db"))


def test_proxies_sharing_a_new_state_directory_all_open_it(tmp_path: Path) -> None:
    def open_state(directory: Path) -> None:
        ProxyState(directory).close()

    failures = [e for i in range(40) for e in _race(tmp_path / str(i), open_state)]
    assert failures == []


def test_a_lock_that_stays_taken_is_reported_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: nobody may read or switch modes until it ends
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            enable_wal(other, 0.3)
        assert 0.2 <= time.monotonic() - started < 3
    finally:
        other.close()
        holder.execute("ROLLBACK")
        holder.close()


def test_an_error_that_is_not_a_lock_is_not_retried(tmp_path: Path) -> None:
    readonly = tmp_path / "ro.db"
    sqlite3.connect(readonly).close()
    conn = sqlite3.connect(f"file:{readonly}?mode=ro", uri=True, isolation_level=None)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError):
            enable_wal(conn, 5)
        assert time.monotonic() - started < 1
    finally:
        conn.close()
