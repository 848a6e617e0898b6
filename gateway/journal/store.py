"""Read access to the journal database (lookups by id; listing for the ``events`` CLI)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import JournalUnavailableError
from gateway.journal.entry import HEADER_SIZE
from gateway.journal.schema import OPERATOR_CONTEXT_WHERE

T = TypeVar("T")


@dataclass(frozen=True)
class StoredEvent:
    """The indexed facts of one stored entry (from the columns; ``verify`` checks they match the body)."""

    seq: int
    leaf_hash: bytes
    kind: str
    event_id: str
    run_id: str | None
    step_id: int | None
    tenant_id: str | None
    agent_id: str | None
    action: str | None
    decision: str | None
    reason: str | None
    action_key: str | None
    link_event_id: str | None


_EVENT_COLUMNS = (
    "seq, leaf_hash, kind, event_id, run_id, step_id, tenant_id, agent_id, action, decision, reason, "
    "action_key, link_event_id"
)


def _event(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(row[0], bytes(row[1]), *row[2:])


def connect_readonly(path: Path) -> sqlite3.Connection:
    """Opens the journal read-only (it may be concurrently written by a running sidecar)."""
    if not path.exists():
        raise JournalUnavailableError(f"no journal at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("SELECT 1 FROM journal LIMIT 1")
    except sqlite3.Error as exc:
        raise JournalUnavailableError(f"{path} is not an agentaudit journal: {exc}") from exc
    return conn


class JournalReader:
    """Asynchronous point lookups on a dedicated thread, so the event loop never blocks on SQLite."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-reader")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_readonly(self._path)
        return self._conn

    def _query_one(self, sql: str, params: tuple[Any, ...]) -> StoredEvent | None:
        try:
            row = self._connection().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise JournalUnavailableError(f"journal read failed: {exc}") from exc
        return None if row is None else _event(row)

    async def find_event(self, event_id: str) -> StoredEvent | None:
        """The event with this id, if any."""
        sql = f"SELECT {_EVENT_COLUMNS} FROM journal WHERE event_id = ?"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._query_one, sql, (event_id,))

    async def find_result(self, pre_event_id: str) -> StoredEvent | None:
        """The post-event or violation recorded for a pre-event, if any."""
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM journal WHERE link_event_id = ? "
            "AND kind IN ('post_exec', 'violation') ORDER BY seq LIMIT 1"
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._query_one, sql, (pre_event_id,))

    def _query_rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        try:
            cursor = self._connection().execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise JournalUnavailableError(f"state read failed: {exc}") from exc

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of a query on the operational state tables (approvals, kill switches), as dicts."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._query_rows, sql, params)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``work`` with the read-only connection on the reader thread (never on the event loop)."""

        def guarded() -> T:
            try:
                return work(self._connection())
            except sqlite3.Error as exc:
                raise JournalUnavailableError(f"journal read failed: {exc}") from exc

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, guarded)

    async def aclose(self) -> None:
        """Closes the connection and the thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def iter_operator_context(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Kill switch and policy change events in seq order, through their partial index (not a scan)."""
    conn = connect_readonly(path)
    try:
        sql = f"SELECT seq, entry FROM journal WHERE {OPERATOR_CONTEXT_WHERE} ORDER BY seq"
        for seq, entry in conn.execute(sql):
            yield seq, json.loads(bytes(entry)[HEADER_SIZE:])
    finally:
        conn.close()


def iter_bodies(
    path: Path, *, run_id: str | None = None, kind: str | None = None, after_seq: int = -1
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (seq, parsed signed body) in seq order, streaming (constant memory)."""
    conn = connect_readonly(path)
    try:
        where = ["seq > ?"]
        params: list[Any] = [after_seq]
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        sql = f"SELECT seq, entry FROM journal WHERE {' AND '.join(where)} ORDER BY seq"
        for seq, entry in conn.execute(sql, params):
            yield seq, json.loads(bytes(entry)[HEADER_SIZE:])
    finally:
        conn.close()
