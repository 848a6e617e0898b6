"""The fleet tables on PostgreSQL: a small pool of its own, and a LISTEN connection that wakes the streams.

Write transactions take one transaction-scoped advisory lock first (per schema), so fleet acts serialise across
every replica and ``control_log`` ids commit in order (:mod:`gateway.collector.fleet_db`). An act's transaction
sends ``NOTIFY agentaudit_control``, delivered by PostgreSQL only once it commits; each replica LISTENs on a
dedicated connection. A lost notification (the connection dropped) only delays a wake until the 1 s poll.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gateway.collector.fleet_db import Row, numbered
from gateway.collector.store import CollectorUnavailableError

log = logging.getLogger(__name__)

CHANNEL = "agentaudit_control"
_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


class _PostgresTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(row) for row in await self._conn.fetch(numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._conn.execute(numbered(sql), *args)
        tail = str(status).rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def next_act_id(self) -> int:
        return int(await self._conn.fetchval("SELECT nextval(pg_get_serial_sequence('control_log', 'id'))"))

    async def notify(self, act_id: int) -> None:
        await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(act_id))


class PostgresFleetDb:
    """:class:`~gateway.collector.fleet_db.FleetDb` on the collector's PostgreSQL schema."""

    for_update = " FOR UPDATE"

    def __init__(self, dsn: str, schema: str, *, max_connections: int = 4) -> None:
        self._dsn = dsn
        self._schema = schema
        self._max = max_connections
        self._pool: Any = None
        self._listener: Any = None
        self._wake: Callable[[], None] | None = None

    def _settings(self) -> dict[str, str]:
        return {"search_path": self._schema, "application_name": "agentaudit-collector-fleet"}

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._max, server_settings=self._settings()
            )
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL fleet store: {exc}") from exc

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(*_DATABASE_ERRORS):
                await listener.close(timeout=5)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except _DATABASE_ERRORS:
                pool.terminate()

    @contextlib.asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[_PostgresTx]:
        if self._pool is None:
            raise CollectorUnavailableError("PostgreSQL fleet store is not started")
        try:
            # A writer is READ COMMITTED: each statement after the lock sees every act committed before it got the
            # lock (a REPEATABLE READ snapshot would be taken by the lock statement itself, before the wait). A
            # reader is REPEATABLE READ: the switch set and the head of control_log are of one moment, which is
            # consistent because acts commit in id order.
            isolation = "read_committed" if write else "repeatable_read"
            async with self._pool.acquire() as conn, conn.transaction(isolation=isolation, readonly=not write):
                if write:
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1))", f"agentaudit-control:{self._schema}"
                    )
                yield _PostgresTx(conn)
        except _DATABASE_ERRORS as exc:
            raise CollectorUnavailableError(f"PostgreSQL fleet store: {exc}") from exc

    def write(self) -> contextlib.AbstractAsyncContextManager[_PostgresTx]:
        return self._transaction(write=True)

    def read(self) -> contextlib.AbstractAsyncContextManager[_PostgresTx]:
        return self._transaction(write=False)

    async def listen(self, wake: Any) -> None:
        """(Re)opens the LISTEN connection if it is not open; failures are logged and retried at the next poll."""
        self._wake = wake
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            conn = await asyncpg.connect(self._dsn, server_settings=self._settings(), timeout=5)
            await conn.add_listener(CHANNEL, self._notified)
        except _DATABASE_ERRORS as exc:
            log.warning("fleet: cannot LISTEN %s (polling every second instead): %s", CHANNEL, exc)
            return
        self._listener = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._wake is not None:
            self._wake()
