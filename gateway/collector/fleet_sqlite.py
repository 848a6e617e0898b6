"""The fleet tables on SQLite: a second connection to the collector's file, on its own thread.

The store's connection is busy with ingest batches; the fleet has its own, so a vote never waits behind a 10,000
entry batch on one thread (it waits for SQLite's file lock instead, bounded by ``busy_timeout``). A write
transaction is ``BEGIN IMMEDIATE`` (the file's write lock, across processes too), held across the statements of
one fleet operation; an asyncio lock keeps other fleet coroutines of this process out of it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.collector.fleet_db import Row
from gateway.collector.store import CollectorUnavailableError

_T = TypeVar("_T")


class _SqliteTx:
    def __init__(self, db: SqliteFleetDb) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        def query(conn: sqlite3.Connection) -> list[Row]:
            return [dict(row) for row in conn.execute(sql, args).fetchall()]

        return await self._db.run(query)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._db.run(lambda conn: int(conn.execute(sql, args).rowcount))

    async def next_act_id(self) -> int:
        # AUTOINCREMENT keeps the highest id ever used in sqlite_sequence; under BEGIN IMMEDIATE nobody else adds one.
        rows = await self.fetch("SELECT seq FROM sqlite_sequence WHERE name = 'control_log'")
        return (int(rows[0]["seq"]) if rows else 0) + 1

    async def notify(self, act_id: int) -> None:
        return None


class SqliteFleetDb:
    """:class:`~gateway.collector.fleet_db.FleetDb` on the collector's SQLite file."""

    for_update = ""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-fleet")
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        def connect() -> None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA synchronous=FULL")
            self._conn = conn

        await self._call(connect)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._call(conn.close)
        self._executor.shutdown(wait=True)

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None:
            raise CollectorUnavailableError(f"collector database {self.path} is not open (fleet)")
        return await self._call(lambda: work(conn))

    async def _call(self, work: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()

        def guarded() -> _T:
            try:
                return work()
            except sqlite3.Error as exc:
                raise CollectorUnavailableError(f"collector database {self.path}: {exc}") from exc

        return await loop.run_in_executor(self._executor, guarded)

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str) -> AsyncIterator[_SqliteTx]:
        async with self._lock:
            try:
                # Inside the try: a caller cancelled while BEGIN is on the thread still gets it rolled back (the
                # one-thread executor runs the rollback after it), so the connection is never left in a transaction.
                await self.run(lambda conn: conn.execute(begin))
                yield _SqliteTx(self)
            except BaseException:
                await asyncio.shield(self.run(_rollback))
                raise
            await self.run(lambda conn: conn.execute("COMMIT"))

    def write(self) -> contextlib.AbstractAsyncContextManager[_SqliteTx]:
        return self._transaction("BEGIN IMMEDIATE")

    def read(self) -> contextlib.AbstractAsyncContextManager[_SqliteTx]:
        return self._transaction("BEGIN")

    async def listen(self, wake: Any) -> None:
        # One process: FleetControl wakes its own waiters when it appends; other processes are seen by the poll.
        return None


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
