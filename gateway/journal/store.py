"""Read access to the journal database: typed lookups, by id and by seq, and the state tables' reads.

``JournalReader`` is the sidecar's way in: every read is a named, typed method run on one dedicated thread. The
SQL of the state tables lives in :mod:`gateway.journal.state` and that of event search in
:mod:`gateway.journal.query`; this module only runs them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from gateway.errors import JournalUnavailableError
from gateway.journal import query, replay, search_table, state
from gateway.journal.entry import HEADER_SIZE
from gateway.journal.fileguard import abandon, why_unwritable
from gateway.journal.schema import OPERATOR_CONTEXT_WHERE
from gateway.journal.seal import has_seals_table

T = TypeVar("T")
P = ParamSpec("P")


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


@dataclass(frozen=True)
class SignedEntry:
    """One stored entry exactly as signed, with its leaf hash (what the forwarder sends)."""

    seq: int
    entry: bytes
    signature: bytes
    leaf_hash: bytes


SignedEvent = tuple[int, bytes, bytes, dict[str, Any]]  # (seq, entry, signature, parsed body): query.select_signed


def first_seq_since(conn: sqlite3.Connection, unix_nanos: int) -> int | None:
    """The seq of the oldest entry written at or after ``unix_nanos``, if any."""
    return search_table.first_seq_since(conn, unix_nanos)


def leaf_hashes(conn: sqlite3.Connection, start: int, end: int) -> list[bytes]:
    """The stored leaf hashes of seq ``start`` up to ``end`` (exclusive), in seq order."""
    sql = "SELECT leaf_hash FROM journal WHERE seq >= ? AND seq < ? ORDER BY seq"
    return [bytes(leaf) for (leaf,) in conn.execute(sql, (start, end))]


def signed_entries(conn: sqlite3.Connection, start: int, end: int) -> list[SignedEntry]:
    """The stored entries of seq ``start`` up to ``end`` (exclusive), in seq order."""
    sql = "SELECT seq, entry, signature, leaf_hash FROM journal WHERE seq >= ? AND seq < ? ORDER BY seq"
    return [
        SignedEntry(int(seq), bytes(entry), bytes(signature), bytes(leaf))
        for seq, entry, signature, leaf in conn.execute(sql, (start, end))
    ]


def pre_events_per_step(conn: sqlite3.Connection, run_id: str) -> dict[int, int]:
    """How many pre-events each step of a run has in the journal (through the ``journal_run`` index)."""
    sql = "SELECT step_id, count(*) FROM journal WHERE run_id = ? AND kind = 'pre_exec' GROUP BY step_id"
    return {int(step): int(n) for step, n in conn.execute(sql, (run_id,)) if step is not None}


def _search_page(
    conn: sqlite3.Connection, flt: query.EventFilter, after_seq: int | None, limit: int
) -> list[SignedEvent]:
    return list(query.select_signed(conn, flt, after_seq=after_seq, limit=limit))


def _watch_page(
    conn: sqlite3.Connection, flt: query.EventFilter, after_seq: int, limit: int
) -> tuple[int, list[SignedEvent]]:
    # The tail is read first, so entries appended meanwhile wait for the next page instead of being skipped.
    tail = query.last_seq(conn)
    return tail, list(query.select_signed(conn, flt, after_seq=after_seq, limit=limit, through_seq=tail))


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
        self._shm = path.with_name(path.name + "-shm")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-reader")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        """The connection, for one read transaction: checked first, because starting one stores in the ``-shm``.

        A reader takes a read mark in the mapped WAL index; into an immutable or read-only ``-shm`` that store is
        SIGBUS for the whole process (:mod:`gateway.journal.fileguard`), so the read fails closed instead.
        """
        why = why_unwritable(self._shm)
        if why:
            raise JournalUnavailableError(f"journal read refused: {self._shm} is {why}")
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

    async def _call(
        self, read: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Runs one typed read with the read-only connection on the reader thread (never on the event loop)."""

        def guarded() -> T:
            try:
                return read(self._connection(), *args, **kwargs)
            except sqlite3.Error as exc:
                raise JournalUnavailableError(f"journal read failed: {exc}") from exc

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, guarded)

    # --- the journal, by seq -----------------------------------------------------------------------------------

    async def last_seq(self) -> int:
        """The seq of the newest entry, or -1 for an empty journal."""
        return await self._call(query.last_seq)

    async def first_seq_since(self, unix_nanos: int) -> int | None:
        """The seq of the oldest entry written at or after ``unix_nanos``, if any."""
        return await self._call(first_seq_since, unix_nanos)

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """The stored leaf hashes of seq ``start`` up to ``end`` (exclusive); fewer if some are missing."""
        return await self._call(leaf_hashes, start, end)

    async def signed_entries(self, start: int, end: int) -> list[SignedEntry]:
        """The stored entries of seq ``start`` up to ``end`` (exclusive), as signed; fewer if some are missing."""
        return await self._call(signed_entries, start, end)

    async def seals(self, above: int, upto: int) -> list[tuple[int, str]]:
        """Format v2: the stored commit seals (size, note) with ``above < size <= upto``, by size (none in v1)."""
        return await self._call(_seals, above, upto)

    async def search(self, flt: query.EventFilter, *, after_seq: int | None, limit: int) -> list[SignedEvent]:
        """One page of events matching ``flt`` after the keyset cursor ``after_seq`` (``query.select_signed``)."""
        return await self._call(_search_page, flt, after_seq, limit)

    async def watch_page(self, flt: query.EventFilter, *, after_seq: int, limit: int) -> tuple[int, list[SignedEvent]]:
        """The newest seq now, and up to ``limit`` events matching ``flt`` after ``after_seq`` and up to it."""
        return await self._call(_watch_page, flt, after_seq, limit)

    async def scan_pre_events(
        self, since_nanos: int, consume: Callable[[Iterator[replay.PreEvent]], T]
    ) -> tuple[int, T]:
        """Streams the pre-events written since ``since_nanos`` into ``consume`` on the reader thread (ADR 0011).

        Returns the seq the scan started at and what ``consume`` returned; nothing is held in memory at once.
        """
        return await self._call(_scan_pre_events, since_nanos, consume)

    async def count_pre_events_before(self, run_ids: list[str], before_seq: int) -> dict[str, int]:
        """Per run, how many pre-events it has before ``before_seq`` (its earlier steps)."""
        return await self._call(replay.count_pre_events_before, run_ids, before_seq)

    async def pre_events_per_step(self, run_id: str) -> dict[int, int]:
        """Per step of ``run_id``, how many pre-events the journal holds (the attempts already made)."""
        return await self._call(pre_events_per_step, run_id)

    # --- the state tables (gateway.journal.state) --------------------------------------------------------------

    async def open_approvals(self) -> list[state.Approval]:
        """Approvals still open: pending, or granted and not yet used."""
        return await self._call(state.open_approvals)

    async def approval(self, approval_id: str) -> state.Approval | None:
        """The approval with this id, in any state, if any."""
        return await self._call(state.approval, approval_id)

    async def list_approvals(self, approval_state: str, tenant_id: str, limit: int) -> list[state.Approval]:
        """Up to ``limit`` approvals in a state, newest first, of one tenant when ``tenant_id`` is set."""
        return await self._call(state.list_approvals, approval_state, tenant_id, limit)

    async def trusted_state(
        self, origin: str, signature_ok: Callable[[bytes, bytes], bool], key_ids: Collection[bytes] | None = None
    ) -> state.TrustedState:
        """State derived from the signed events, with the rows that disagree (see ``state.trusted_state``)."""
        return await self._call(state.trusted_state, origin, signature_ok, key_ids)

    async def engaged_switches(self) -> list[state.EngagedSwitch]:
        """Every engaged operator kill switch, oldest first."""
        return await self._call(state.engaged_switches)

    async def forwarder_acked_size(self, origin: str) -> int:
        """How many entries of ``origin`` the collector has acknowledged."""
        return await self._call(state.forwarder_acked_size, origin)

    async def prune_state(self) -> state.PruneState | None:
        """Where retention last pruned, if it ever did."""
        return await self._call(state.prune_state)

    async def aclose(self) -> None:
        """Closes the connection and the thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            if why_unwritable(self._shm):
                abandon(self._conn)  # closing would store into the mapped -shm: SIGBUS
            else:
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
    """Yields (seq, parsed signed body) in seq order, streaming (constant memory).

    Through :func:`query.select`, so a kind alone is found through the search table's index, not a walk of the
    journal.
    """
    conn = connect_readonly(path)
    try:
        yield from query.select(conn, query.EventFilter(run_id=run_id, kind=kind), after_seq=after_seq)
    finally:
        conn.close()


def _scan_pre_events(
    conn: sqlite3.Connection, since_nanos: int, consume: Callable[[Iterator[replay.PreEvent]], T]
) -> tuple[int, T]:
    start = replay.first_seq_since(conn, since_nanos)
    return start, consume(replay.iter_pre_events(conn, start, since_nanos))


def _seals(conn: sqlite3.Connection, above: int, upto: int) -> list[tuple[int, str]]:
    if not has_seals_table(conn):
        return []
    query = "SELECT size, note FROM journal_seals WHERE size > ? AND size <= ? ORDER BY size"
    return [(int(size), str(note)) for size, note in conn.execute(query, (above, upto))]
