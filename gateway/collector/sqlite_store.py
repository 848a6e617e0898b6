"""The collector store on SQLite: the embedded default of ``agentaudit dev``.

One connection on one dedicated thread (a single-thread executor), so the event loop never blocks on SQLite
and nothing else touches the connection. WAL with ``synchronous=FULL``: a cosignature is returned only after
the entries it covers are durable. Each ingest is one ``BEGIN IMMEDIATE`` transaction, which takes SQLite's
write lock up front, so ingests serialize even across processes sharing the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.collector.checking import EntryCheckPool
from gateway.collector.ingest import BatchEntry, IngestRejected, OriginState, held_range, verify_batch
from gateway.collector.store import (
    EVENT_COLUMNS,
    EVIDENCE_COLUMNS,
    PRUNE_BATCH_ROWS,
    SEARCH_SCAN_ROWS,
    CollectorUnavailableError,
    IngestOutcome,
    SearchCursor,
    SearchHit,
    alert_evidence,
    decode_keys,
    encode_keys,
    event_row,
    evidence_dict,
    evidence_row,
    migrations,
    search_hit,
    search_plan,
    unknown_origin,
)
from gateway.journal.filter import SQLITE, EventFilter
from gateway.signing import Ed25519Signer, Verifier
from gateway.sqlite import enable_wal

_T = TypeVar("_T")

# Statements are built from module constants only; values always go through placeholders.
_INSERT_EVENT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"  # noqa: S608
_INSERT_EVIDENCE = (
    f"INSERT OR IGNORE INTO evidence ({', '.join(EVIDENCE_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(EVIDENCE_COLUMNS))})"
)
_SELECT_STATE = (
    "SELECT keys, size, last_leaf_hash, tree_state, cosigned_note, cosigned_root FROM origins WHERE origin = ?"
)
_UPDATE_STATE = (
    "UPDATE origins SET size = ?, last_leaf_hash = ?, tree_state = ?, cosigned_note = ?, cosigned_root = ? "
    "WHERE origin = ?"
)
_REGISTER = (
    "INSERT INTO origins (origin, keys, size, last_leaf_hash, tree_state, cosigned_note, cosigned_root) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET keys = excluded.keys"
)
_CLOSED_WINDOW = -(2**63)
"""``retention_window.before_ns`` when no prune is running: no event is older, so every DELETE is refused."""
_OPEN_WINDOW = "UPDATE retention_window SET before_ns = ? WHERE id = 1"
_PRUNE_BATCH = "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE unix_nanos < ? LIMIT ?)"
_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
    "applied_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))) STRICT"
)


class SqliteCollectorStore:
    """:class:`~gateway.collector.store.CollectorStore` on one SQLite file.

    Args:
        path: the database file.
        busy_timeout_ms: how long a write waits for another process's lock.
        check_workers: processes checking batches' entries beside the calling thread (default cores - 1; 0: none).
    """

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 10_000, check_workers: int | None = None) -> None:
        self.path = Path(path)
        self._checks = EntryCheckPool(check_workers)
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def start(self) -> None:
        """Opens (creating if needed) the database and applies pending migrations."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._guarded, self._open)

    async def aclose(self) -> None:
        """Closes the connection and its thread (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(CollectorUnavailableError):
            await self._run(self._close)
        self._executor.shutdown(wait=True)
        await asyncio.to_thread(self._checks.close)

    async def register_origin(self, origin: str, verifiers: Sequence[Verifier]) -> None:
        """Sets the keys accepted for ``origin``, creating the origin if new (its witness state is kept)."""
        keys = encode_keys(origin, verifiers)
        empty = OriginState.empty(origin)
        params = (origin, keys, 0, empty.last_leaf_hash, empty.tree, "", b"")
        await self._run(lambda conn: conn.execute(_REGISTER, params))

    async def origin_names(self) -> list[str]:
        """Every registered origin, in order."""
        return await self._run(lambda conn: [str(r[0]) for r in conn.execute("SELECT origin FROM origins ORDER BY 1")])

    async def latest(self, origin: str) -> tuple[int, str]:
        """The size held and last cosigned note for ``origin``; ``(0, "")`` if nothing is held."""

        def query(conn: sqlite3.Connection) -> tuple[int, str]:
            row = conn.execute("SELECT size, cosigned_note FROM origins WHERE origin = ?", (origin,)).fetchone()
            return (0, "") if row is None else (int(row[0]), str(row[1]))

        return await self._run(query)

    async def ingest(
        self,
        origin: str,
        entries: Sequence[BatchEntry],
        checkpoint_note: str,
        witness: Ed25519Signer,
        now_s: int,
    ) -> IngestOutcome:
        """Verifies, stores and cosigns a batch (see :mod:`gateway.collector.store` for the procedure)."""
        batch = [(int(seq), bytes(entry), bytes(signature)) for seq, entry, signature in entries]
        try:
            return await self._run(lambda conn: self._ingest(conn, origin, batch, checkpoint_note, witness, now_s))
        except IngestRejected as exc:
            if exc.is_evidence:
                alert_evidence(origin, exc)
            raise

    def _ingest(
        self,
        conn: sqlite3.Connection,
        origin: str,
        batch: list[BatchEntry],
        checkpoint_note: str,
        witness: Ed25519Signer,
        now_s: int,
    ) -> IngestOutcome:
        # 1. Take the write lock before reading the state: the state read and the writes form one transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(_SELECT_STATE, (origin,)).fetchone()
            if row is None:
                raise unknown_origin(origin)
            state, verifiers = _origin_state(origin, row)
            # 2. Verify against the held leaves the batch overlaps.
            span = held_range(state.size, batch)
            held: dict[int, bytes] = {}
            if span:
                rows = conn.execute(
                    "SELECT seq, leaf_hash FROM events WHERE origin = ? AND seq >= ? AND seq < ?",
                    (origin, span.start, span.stop),
                )
                held = {int(seq): bytes(leaf) for seq, leaf in rows}
            try:
                result = verify_batch(
                    state, verifiers, batch, checkpoint_note, held.get, check_entries=self._checks.check
                )
            except IngestRejected as exc:
                # 4. Evidence of rollback or fork is committed on its own: nothing else was written.
                if exc.is_evidence:
                    conn.execute(
                        _INSERT_EVIDENCE, evidence_row(origin, checkpoint_note, state.cosigned_note, exc.code, now_s)
                    )
                    conn.execute("COMMIT")
                raise
            if result.resend:
                conn.execute("ROLLBACK")
                return IngestOutcome(state.size, 0, state.cosigned_note)
            # 3. Cosign, then store the entries and the cosigned state together.
            new = result.cosigned_state(witness, now_s)
            conn.executemany(_INSERT_EVENT, [event_row(origin, e) for e in result.new_entries])
            conn.execute(
                _UPDATE_STATE,
                (new.size, new.last_leaf_hash, new.tree, new.cosigned_note, new.cosigned_root, origin),
            )
            conn.execute("COMMIT")
            return IngestOutcome(new.size, len(result.new_entries), new.cosigned_note)
        finally:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")

    async def evidence(self, origin: str) -> list[dict[str, Any]]:
        """Checkpoints kept as evidence of rollback or fork for ``origin``, oldest first."""

        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT origin, received_at, code, note, cosigned_note FROM evidence WHERE origin = ? "
                "ORDER BY received_at, rowid",
                (origin,),
            ).fetchall()
            return [evidence_dict(row) for row in rows]

        return await self._run(query)

    async def entries(self, origin: str, start: int = 0, end: int | None = None) -> list[BatchEntry]:
        """Held entries with ``start <= seq < end``, in seq order: (seq, entry, signature)."""

        def query(conn: sqlite3.Connection) -> list[BatchEntry]:
            rows = conn.execute(
                "SELECT seq, entry, signature FROM events WHERE origin = ? AND seq >= ? AND (? IS NULL OR seq < ?) "
                "ORDER BY seq",
                (origin, start, end, end),
            ).fetchall()
            return [(int(seq), bytes(entry), bytes(signature)) for seq, entry, signature in rows]

        return await self._run(query)

    async def prune(self, before_ns: int, *, batch_rows: int = PRUNE_BATCH_ROWS) -> int:
        """Deletes events with ``unix_nanos < before_ns``, ``batch_rows`` per transaction; returns the count."""
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")

        def batch(conn: sqlite3.Connection) -> int:
            # The window is opened, used and closed inside one write transaction: no other connection ever sees
            # it open, and a failure rolls it back closed.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_OPEN_WINDOW, (before_ns,))
                deleted = conn.execute(_PRUNE_BATCH, (before_ns, batch_rows)).rowcount
                conn.execute(_OPEN_WINDOW, (_CLOSED_WINDOW,))
                conn.execute("COMMIT")
                return int(deleted)
            finally:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")

        total = 0
        while True:
            # One transaction per call: ingests queued on the store's thread run between batches.
            deleted = await self._run(batch)
            total += deleted
            if deleted < batch_rows:
                return total

    async def search(
        self, flt: EventFilter, *, newest_first: bool, after: SearchCursor | None, limit: int
    ) -> list[SearchHit]:
        """Matching events of every origin in ``(unix_nanos, origin, seq)`` order after ``after``, at most ``limit``."""
        plan = search_plan(flt, newest_first=newest_first, dialect=SQLITE)
        scan = limit if plan.check is None else max(limit, SEARCH_SCAN_ROWS)

        def query(conn: sqlite3.Connection) -> list[SearchHit]:
            hits: list[SearchHit] = []
            cursor = after
            while len(hits) < limit:
                where = [*plan.where, plan.keyset] if cursor is not None else plan.where
                params = [*plan.params, *cursor] if cursor is not None else plan.params
                conditions = " AND ".join(where) or "1"
                # Only constants are interpolated; every value is a placeholder parameter.
                sql = (
                    f"SELECT origin, seq, entry, signature, unix_nanos FROM events WHERE {conditions} "  # noqa: S608
                    f"ORDER BY {plan.order} LIMIT ?"
                )
                rows = conn.execute(sql, (*params, scan)).fetchall()
                for origin, seq, entry, signature, unix_nanos in rows:
                    cursor = (int(unix_nanos), str(origin), int(seq))
                    hit = search_hit(str(origin), int(seq), bytes(entry), bytes(signature), int(unix_nanos))
                    if plan.check is None or plan.check(hit.body):
                        hits.append(hit)
                        if len(hits) == limit:
                            break
                if len(rows) < scan:
                    break
            return hits

        return [] if limit <= 0 else await self._run(query)

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs ``work`` on the store's thread with its connection; SQLite errors become unavailability."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, lambda: work(self._connection()))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CollectorUnavailableError(f"collector database {self.path} is not open")
        return self._conn

    def _guarded(self, work: Callable[[], _T]) -> _T:
        try:
            return work()
        except sqlite3.Error as exc:
            raise CollectorUnavailableError(f"collector database {self.path}: {exc}") from exc
        except OSError as exc:
            raise CollectorUnavailableError(f"collector database {self.path}: {exc.strerror}") from exc

    def _open(self) -> None:
        if self._conn is not None:
            return
        if not self.path.exists():
            # Private from the first byte: the journals it holds are redacted but still sensitive.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout_ms / 1000
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            enable_wal(conn, self._busy_timeout_ms / 1000)  # replicas may create the file together
            conn.execute("PRAGMA synchronous=FULL")
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self, conn: sqlite3.Connection) -> None:
        conn.close()
        self._conn = None


def _migrate(conn: sqlite3.Connection) -> None:
    """Applies pending migrations in one write transaction (another process starting too waits for it)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_MIGRATIONS_DDL)
        applied = {int(v) for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        for migration in migrations("sqlite"):
            if migration.version in applied:
                continue
            # executescript would COMMIT first, so run the file statement by statement inside this transaction.
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (migration.version, migration.name)
            )
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")


def _statements(script: str) -> list[str]:
    """Splits a SQL script into complete statements (``sqlite3.complete_statement`` knows trigger bodies)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if any(line.strip() and not line.strip().startswith("--") for line in pending.splitlines()):
        raise sqlite3.ProgrammingError(f"incomplete statement at the end of a migration: {pending.strip()[:80]}")
    return statements


def _origin_state(origin: str, row: Sequence[Any]) -> tuple[OriginState, list[Verifier]]:
    keys, size, last_leaf, tree, cosigned_note, cosigned_root = row
    state = OriginState(origin, int(size), bytes(last_leaf), bytes(tree), str(cosigned_note), bytes(cosigned_root))
    return state, decode_keys(keys)
