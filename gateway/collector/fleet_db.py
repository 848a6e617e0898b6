"""The fleet tables' database seam: one transaction interface over SQLite and PostgreSQL.

:class:`~gateway.collector.fleet.FleetControl` writes its SQL once, with ``?`` placeholders, against
:class:`FleetDb`; the two adapters (:mod:`gateway.collector.fleet_sqlite`, :mod:`gateway.collector.fleet_postgres`)
run it. Every write transaction is serialised fleet-wide before its first statement (SQLite ``BEGIN IMMEDIATE``;
PostgreSQL a transaction-scoped advisory lock), so ``control_log`` ids commit in the order they are assigned: a
control stream that has sent act ``n`` can never later find an act below ``n`` committed behind it (the sidecar
would refuse it as replayed). Operator acts are rare, so serialising them costs nothing that matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Row = Mapping[str, Any]


class Tx(Protocol):
    """One open transaction."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Rows of a query (``?`` placeholders)."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Runs a statement; returns the rows it changed."""

    async def next_act_id(self) -> int:
        """The id the next ``control_log`` row gets (inside a write transaction only)."""

    async def notify(self, act_id: int) -> None:
        """Wakes other replicas' waiters once this transaction commits (PostgreSQL NOTIFY; SQLite: nothing)."""


class FleetDb(Protocol):
    """Transactions on the collector database's fleet tables."""

    for_update: str
    """`` FOR UPDATE`` where the dialect locks selected rows, else ``""``."""

    async def start(self) -> None:
        """Opens the connections (the store has applied the migrations)."""

    async def aclose(self) -> None:
        """Closes them."""

    def write(self) -> AbstractAsyncContextManager[Tx]:
        """A serialised write transaction: committed on exit, rolled back on an exception."""

    def read(self) -> AbstractAsyncContextManager[Tx]:
        """A read-only transaction that sees one consistent snapshot of the fleet tables."""

    async def listen(self, wake: Any) -> None:
        """Calls ``wake()`` when another replica appends an act (best effort; a poll covers losses)."""


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (the fleet SQL holds no ``?`` in literals)."""
    parts = sql.split("?")
    return "".join(f"{part}${i}" if i < len(parts) else part for i, part in enumerate(parts, 1))
