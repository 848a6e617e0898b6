"""The collector store on PostgreSQL (production), through an asyncpg connection pool.

All tables live in one schema (``agentaudit`` by default), selected with ``search_path`` on every pooled
connection, so the versioned migrations in ``migrations/postgres`` name no schema. Each ingest is one
transaction that first locks the origin's state row (``SELECT ... FOR UPDATE``): requests for one origin
serialize, across connections and across replicas, while different origins proceed in parallel. Verification
runs off the event loop: the batch's checkpoint and witness rules in a thread, then its new entries in chunks on
worker processes and a thread (:class:`~gateway.collector.checking.EntryCheckPool`), each chunk COPYed inside the
transaction as soon as it is checked, while later chunks are still being checked (ADR 0028), so PostgreSQL
stores while this process verifies; any refusal rolls the whole transaction back.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gateway.collector.checking import EntryCheckPool
from gateway.collector.ingest import (
    BatchEntry,
    BatchResult,
    IngestRejected,
    NewEntry,
    OriginState,
    PendingBatch,
    begin_batch,
    held_range,
    is_storable_text,
)
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
from gateway.errors import ConfigError
from gateway.journal.filter import POSTGRES, EventFilter
from gateway.signing import Ed25519Signer, Verifier

PIPELINE_CHUNK_ENTRIES = 100
"""New entries checked, then COPYed while the next ones are checked (see ``_copy_checked``)."""
PIPELINE_FIRST_CHUNK_ENTRIES = 25
"""The first chunk is smaller: PostgreSQL has nothing to do until it is checked."""


def _chunks(count: int) -> list[tuple[int, int]]:
    """(start, end) of each chunk of ``count`` new entries: a small first one, then full ones."""
    bounds = [0, min(count, PIPELINE_FIRST_CHUNK_ENTRIES)]
    while bounds[-1] < count:
        bounds.append(min(count, bounds[-1] + PIPELINE_CHUNK_ENTRIES))
    return list(itertools.pairwise(bounds))


_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# InternalClientError: asyncpg's protocol state on a connection the server ended mid-operation (seen when the
# database goes away under load); the connection is discarded and the store reported unavailable, like the rest.
_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)

_SELECT_STATE_FOR_UPDATE = (
    "SELECT keys, size, last_leaf_hash, tree_state, cosigned_note, cosigned_root FROM origins "
    "WHERE origin = $1 FOR UPDATE"
)
_UPDATE_STATE = (
    "UPDATE origins SET size = $2, last_leaf_hash = $3, tree_state = $4, cosigned_note = $5, cosigned_root = $6 "
    "WHERE origin = $1"
)
_REGISTER = (
    "INSERT INTO origins (origin, keys, size, last_leaf_hash, tree_state, cosigned_note, cosigned_root) "
    "VALUES ($1, $2, 0, $3, $4, '', ''::bytea) ON CONFLICT (origin) DO UPDATE SET keys = EXCLUDED.keys"
)
_INSERT_EVIDENCE = (
    f"INSERT INTO evidence ({', '.join(EVIDENCE_COLUMNS)}) "  # noqa: S608 (module constants only)
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(EVIDENCE_COLUMNS) + 1))}) "
    "ON CONFLICT (origin, note_hash) DO NOTHING"
)

# Authorises, for this transaction only, the DELETE of events older than $1 (the events_no_delete trigger).
_OPEN_WINDOW = "SELECT set_config('agentaudit.prune_before', $1, true)"
_PRUNE_BATCH = (
    "DELETE FROM events WHERE (origin, seq) IN "
    "(SELECT origin, seq FROM events WHERE unix_nanos < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
)


class PostgresCollectorStore:
    """:class:`~gateway.collector.store.CollectorStore` on PostgreSQL.

    Args:
        dsn: a libpq connection URI (``postgresql://user@host:5432/db``).
        schema: the schema holding the collector's tables (created if missing).
        max_connections: pool size; bounds concurrent ingests per replica.
        check_workers: processes checking batches' entries beside the calling thread (default cores - 1; 0: none).
    """

    def __init__(
        self, dsn: str, schema: str = "agentaudit", *, max_connections: int = 10, check_workers: int | None = None
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"PostgreSQL schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
        self._dsn = dsn
        self.schema = schema
        self._max_connections = max_connections
        self._pool: Any = None
        self._checks = EntryCheckPool(check_workers)

    @property
    def dsn(self) -> str:
        """The connection URI (the fleet tables open their own pool on it)."""
        return self._dsn

    async def start(self) -> None:
        """Opens the pool and applies pending migrations (replicas starting together take turns)."""
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._max_connections,
                server_settings={"search_path": self.schema, "application_name": "agentaudit-collector"},
            )
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
        except _DATABASE_ERRORS as exc:
            await self.aclose()
            raise CollectorUnavailableError(f"PostgreSQL collector store: {exc}") from exc

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            # A transaction-scoped advisory lock: a second replica starting at the same moment waits here, then
            # finds the migrations applied. Keyed by schema, so stores in different schemas do not contend.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"agentaudit-collector-migrations:{self.schema}"
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {int(row["version"]) for row in await conn.fetch("SELECT version FROM schema_migrations")}
            for migration in migrations("postgres"):
                if migration.version not in applied:
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )

    async def aclose(self) -> None:
        """Closes the pool (waiting for connections in use to be released) and stops the check workers."""
        await asyncio.to_thread(self._checks.close)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except _DATABASE_ERRORS:
                pool.terminate()

    def _require_pool(self) -> Any:
        if self._pool is None:
            raise CollectorUnavailableError("PostgreSQL collector store is not started")
        return self._pool

    async def register_origin(self, origin: str, verifiers: Sequence[Verifier]) -> None:
        """Sets the keys accepted for ``origin``, creating the origin if new (its witness state is kept)."""
        keys = encode_keys(origin, verifiers)
        empty = OriginState.empty(origin)
        try:
            await self._require_pool().execute(_REGISTER, origin, keys, empty.last_leaf_hash, empty.tree)
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL collector store: {exc}") from exc

    async def origin_names(self) -> list[str]:
        """Every registered origin, in order."""
        try:
            rows = await self._require_pool().fetch('SELECT origin FROM origins ORDER BY origin COLLATE "C"')
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL collector store: {exc}") from exc
        return [str(r["origin"]) for r in rows]

    async def latest(self, origin: str) -> tuple[int, str]:
        """The size held and last cosigned note for ``origin``; ``(0, "")`` if nothing is held."""
        if not is_storable_text(origin):
            return 0, ""
        try:
            row = await self._require_pool().fetchrow(
                "SELECT size, cosigned_note FROM origins WHERE origin = $1", origin
            )
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL collector store: {exc}") from exc
        return (0, "") if row is None else (int(row["size"]), str(row["cosigned_note"]))

    async def ingest(
        self,
        origin: str,
        entries: Sequence[BatchEntry],
        checkpoint_note: str,
        witness: Ed25519Signer,
        now_s: int,
    ) -> IngestOutcome:
        """Verifies, stores and cosigns a batch (see :mod:`gateway.collector.store` for the procedure)."""
        if not is_storable_text(origin):
            raise unknown_origin(origin)
        batch = [(int(seq), bytes(entry), bytes(signature)) for seq, entry, signature in entries]
        evidence: IngestRejected | None = None
        try:
            async with self._require_pool().acquire() as conn, conn.transaction():
                # 1. Lock the origin's state row for the whole transaction.
                row = await conn.fetchrow(_SELECT_STATE_FOR_UPDATE, origin)
                if row is None:
                    raise unknown_origin(origin)
                state, verifiers = _origin_state(origin, row)
                # 2. Verify against the held leaves the batch overlaps (CPU-bound: in a thread).
                span = held_range(state.size, batch)
                held: dict[int, bytes] = {}
                if span:
                    rows = await conn.fetch(
                        "SELECT seq, leaf_hash FROM events WHERE origin = $1 AND seq >= $2 AND seq < $3",
                        origin,
                        span.start,
                        span.stop,
                    )
                    held = {int(r["seq"]): bytes(r["leaf_hash"]) for r in rows}
                try:
                    begun = await asyncio.to_thread(begin_batch, state, verifiers, batch, checkpoint_note, held.get)
                    if isinstance(begun, PendingBatch):
                        # 3. Check the new entries chunk by chunk, each COPYed while the next is checked; a refusal
                        #    on any of them rolls the whole transaction back (nothing of the batch is kept).
                        result = await self._copy_checked(conn, begun)
                    else:
                        result = begun
                except IngestRejected as exc:
                    if not exc.is_evidence:
                        raise
                    # 4. Evidence of rollback or fork: this transaction commits only the evidence row.
                    await conn.execute(
                        _INSERT_EVIDENCE, *evidence_row(origin, checkpoint_note, state.cosigned_note, exc.code, now_s)
                    )
                    evidence = exc
                else:
                    if result.resend:
                        return IngestOutcome(state.size, 0, state.cosigned_note)
                    # 4. Cosign, then store the cosigned state with the entries.
                    new = result.cosigned_state(witness, now_s)
                    await conn.execute(
                        _UPDATE_STATE,
                        origin,
                        new.size,
                        new.last_leaf_hash,
                        new.tree,
                        new.cosigned_note,
                        new.cosigned_root,
                    )
                    outcome = IngestOutcome(new.size, len(result.new_entries), new.cosigned_note)
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL collector store: {exc}") from exc
        if evidence is not None:
            alert_evidence(origin, evidence)
            raise evidence
        return outcome

    async def _copy_checked(self, conn: Any, batch: PendingBatch) -> BatchResult:
        """Checks ``batch``'s new entries in chunks of :data:`PIPELINE_CHUNK_ENTRIES`, in seq order, and COPYs each
        chunk into ``events`` once it is checked, while the next chunk is checked: PostgreSQL stores one chunk
        while this process checks the next, instead of one waiting for the other. The root (step 10,
        :meth:`PendingBatch.finish`) is recomputed while the last chunk is being copied. Called inside the ingest's
        transaction, so a refused chunk or root leaves nothing: the refusal propagates and the transaction rolls
        back.

        Raises:
            IngestRejected: the first faulty entry, in seq order; or the root mismatch.
        """
        checked: list[NewEntry] = []
        copying: asyncio.Future[Any] | None = None
        columns = list(EVENT_COLUMNS)
        parts = self._checks.check_chunks(
            batch.origin, batch.keys, batch.new, batch.prev_leaf_hash, _chunks(len(batch.new))
        )
        try:
            async for part in parts:
                if copying is not None:
                    await copying  # one statement at a time on a connection
                records = [event_row(batch.origin, e) for e in part]
                copying = asyncio.ensure_future(
                    conn.copy_records_to_table("events", records=records, columns=columns, schema_name=self.schema)
                )
                checked.extend(part)
            result = batch.finish(checked)
            if copying is not None:
                await copying
        finally:
            await parts.aclose()
            # A refusal (or a cancelled ingest) while a chunk is being copied: let that statement end before the
            # transaction rolls back, as the connection runs one operation at a time. Its own error, if any, is
            # not the news (the refusal is): read it so that it is not reported as lost.
            if copying is not None and not copying.done():
                await asyncio.wait([copying])
                if not copying.cancelled():
                    copying.exception()
        return result

    async def evidence(self, origin: str) -> list[dict[str, Any]]:
        """Checkpoints kept as evidence of rollback or fork for ``origin``, oldest first."""
        if not is_storable_text(origin):
            return []
        try:
            rows = await self._require_pool().fetch(
                "SELECT origin, received_at, code, note, cosigned_note FROM evidence WHERE origin = $1 "
                "ORDER BY received_at, note_hash",
                origin,
            )
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL collector store: {exc}") from exc
        return [evidence_dict(tuple(row.values())) for row in rows]

    async def entries(self, origin: str, start: int = 0, end: int | None = None) -> list[BatchEntry]:
        """Held entries with ``start <= seq < end``, in seq order: (seq, entry, signature)."""
        if not is_storable_text(origin):
            return []
        try:
            rows = await self._require_pool().fetch(
                "SELECT seq, entry, signature FROM events WHERE origin = $1 AND seq >= $2 "
                "AND ($3::bigint IS NULL OR seq < $3) ORDER BY seq",
                origin,
                start,
                end,
            )
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL collector store: {exc}") from exc
        return [(int(r["seq"]), bytes(r["entry"]), bytes(r["signature"])) for r in rows]

    async def prune(self, before_ns: int, *, batch_rows: int = PRUNE_BATCH_ROWS) -> int:
        """Deletes events with ``unix_nanos < before_ns``, ``batch_rows`` per transaction; returns the count."""
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        total = 0
        try:
            async with self._require_pool().acquire() as conn:
                while True:
                    async with conn.transaction():
                        await conn.execute(_OPEN_WINDOW, str(before_ns))
                        status = await conn.execute(_PRUNE_BATCH, before_ns, batch_rows)
                    deleted = int(status.rsplit(" ", 1)[-1])
                    total += deleted
                    if deleted < batch_rows:
                        return total
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL collector store: {exc}") from exc

    async def search(
        self, flt: EventFilter, *, newest_first: bool, after: SearchCursor | None, limit: int
    ) -> list[SearchHit]:
        """Matching events of every origin in ``(unix_nanos, origin, seq)`` order after ``after``, at most ``limit``."""
        if limit <= 0 or not _storable_filter(flt, after):
            return []
        plan = search_plan(flt, newest_first=newest_first, dialect=POSTGRES)
        scan = limit if plan.check is None else max(limit, SEARCH_SCAN_ROWS)
        hits: list[SearchHit] = []
        cursor = after
        try:
            async with self._require_pool().acquire() as conn:
                while len(hits) < limit:
                    where = [*plan.where, plan.keyset] if cursor is not None else plan.where
                    params = [*plan.params, *cursor] if cursor is not None else plan.params
                    conditions = " AND ".join(where) or "true"
                    # Only constants are interpolated; every value is a placeholder parameter.
                    sql = (
                        f"SELECT origin, seq, entry, signature, unix_nanos FROM events WHERE {conditions} "  # noqa: S608
                        f"ORDER BY {plan.order} LIMIT ${len(params) + 1}"
                    )
                    rows = await conn.fetch(sql, *params, scan)
                    for row in rows:
                        origin, seq, nanos = str(row["origin"]), int(row["seq"]), int(row["unix_nanos"])
                        cursor = (nanos, origin, seq)
                        hit = search_hit(origin, seq, bytes(row["entry"]), bytes(row["signature"]), nanos)
                        if plan.check is None or plan.check(hit.body):
                            hits.append(hit)
                            if len(hits) == limit:
                                break
                    if len(rows) < scan:
                        break
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL collector store: {exc}") from exc
        return hits


def _storable_filter(flt: EventFilter, after: SearchCursor | None) -> bool:
    """False when a text filter or the cursor's origin holds what no text column can (so nothing matches)."""
    texts = [v for v in vars(flt).values() if isinstance(v, str)]
    if after is not None:
        texts.append(after[1])
    return all(is_storable_text(t) for t in texts)


def _origin_state(origin: str, row: Any) -> tuple[OriginState, list[Verifier]]:
    state = OriginState(
        origin,
        int(row["size"]),
        bytes(row["last_leaf_hash"]),
        bytes(row["tree_state"]),
        str(row["cosigned_note"]),
        bytes(row["cosigned_root"]),
    )
    return state, decode_keys(str(row["keys"]))
