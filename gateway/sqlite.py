"""SQLite files that several processes may create at once: switching a new file to WAL without a spurious lock error.

Switching a database to WAL needs its exclusive lock. When two connections race for it on a file that is new (a
collector's replicas starting together on one SQLite file, two MCP proxies sharing a state file), SQLite answers
one of them ``SQLITE_BUSY`` at once rather than calling the busy handler, which could deadlock; so a
``busy_timeout`` does not help and the start fails with "database is locked". Measured: four threads opening
one new file and switching it to WAL failed in 1 to 4 of 200 tries. :func:`enable_wal` retries for a bounded time.
"""

from __future__ import annotations

import sqlite3
import time

_RETRIED = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})
_FIRST_WAIT_S = 0.005
_LONGEST_WAIT_S = 0.1


def enable_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """``PRAGMA journal_mode=WAL`` on ``conn``, retried while another connection holds the lock, for at most
    ``timeout_s``; outside a transaction (SQLite cannot change the mode inside one).

    Raises:
        sqlite3.OperationalError: the lock stayed taken for ``timeout_s``, or any other error (not retried).
    """
    deadline = time.monotonic() + timeout_s
    wait = _FIRST_WAIT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") not in _RETRIED or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)
        wait = min(wait * 2, _LONGEST_WAIT_S)
