"""The journal's search table: each entry's searchable columns, indexed in batches rather than at every commit.

A search by tenant, agent, action, decision, reason, kind or time is an operator's question after the fact; no
Decide asks it. Indexing those seven columns on the journal itself cost every commit seven more B-tree inserts
and about fourteen more KiB of WAL (docs/adr/0030-search-table-filled-in-batches.md). Instead the writer copies
the columns of the entries committed since the last copy into ``journal_search`` (schema.py) once
``SEARCH_BATCH`` of them have gathered, inside the commit that reaches that count, so the copy costs no extra
fsync and is durable exactly when its rows are. In a batch the inserts land on a few pages per index instead of
one page per index per commit. The sidecar's own lookups by kind read a partial index of the rare kinds on the
journal (``schema.RARE_KINDS_WHERE``), and by time this table (:func:`first_seq_since`).

The table's invariant: it holds one row for every journal entry from the oldest kept up to its largest seq (its
*high-water seq*), with the same column values. A search (journal/query.py) reads the entries up to that seq
through the table's indexes and the few after it from the journal's own columns, so it sees every entry whether
or not it was copied yet; the table only ever changes how fast a search is. ``verify`` checks the invariant
(:func:`mismatches`): like the columns it copies, the table is derived and unsigned.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from typing import Any

from gateway.journal.filter import EventFilter

log = logging.getLogger(__name__)

SEARCH_TABLE = "journal_search"
# The columns a search finds only here (field of EventFilter = column), and every column of a row (kind and time
# are filtered by EventFilter.kind, .since_ns and .until_ns).
SEARCH_FIELDS: tuple[str, ...] = ("tenant_id", "agent_id", "action", "decision", "reason")
_ROW_COLUMNS: tuple[str, ...] = ("seq", "kind", "unix_nanos", *SEARCH_FIELDS)
# The journal's own indexes on those columns before this table existed (name: definition, as they were created),
# dropped when a writer opens the journal.
LEGACY_INDEXES: dict[str, str] = {
    "journal_tenant": "ON journal (tenant_id, seq) WHERE tenant_id IS NOT NULL",
    "journal_agent": "ON journal (agent_id, seq) WHERE agent_id IS NOT NULL",
    "journal_action": "ON journal (action, seq) WHERE action IS NOT NULL",
    "journal_decision": "ON journal (decision, seq) WHERE decision IS NOT NULL",
    "journal_reason": "ON journal (reason, seq) WHERE reason IS NOT NULL",
    "journal_kind": "ON journal (kind, seq)",
    "journal_time": "ON journal (unix_nanos)",
}

# What turns a journal created now into one created before this table (for the tests and the benchmark of the
# migration): no table, no partial indexes that came with it, the legacy indexes back.
LEGACY_LAYOUT_SQL = ";\n".join(
    [
        f"DROP TABLE {SEARCH_TABLE}",
        "DROP INDEX journal_rare_kinds",
        "DROP INDEX journal_approval_requests",
        *(f"CREATE INDEX {name} {definition}" for name, definition in LEGACY_INDEXES.items()),
    ]
)

# Entries gathered before the writer copies them (and the most a search reads from the journal's columns beyond
# the table, plus one batch). 128 at 1 KiB pages: a copy of ~0.5-1 ms in one of every 128 commits at low load.
SEARCH_BATCH = 128

_COLUMN_LIST = ", ".join(_ROW_COLUMNS)
# Constants only; the one value is a parameter.
COPY_SQL = f"INSERT INTO {SEARCH_TABLE} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM journal WHERE seq >= ?"  # noqa: S608
PRUNE_SQL = f"DELETE FROM {SEARCH_TABLE} WHERE seq < ?"  # noqa: S608


def has_search_table(conn: sqlite3.Connection) -> bool:
    """Whether this journal has the table (one created before it did not, until a writer opens it)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SEARCH_TABLE,)).fetchone()
    return row is not None


def high_water_seq(conn: sqlite3.Connection) -> int:
    """The largest seq in the table, -1 when it is empty: every kept entry up to it has its row."""
    (top,) = conn.execute(f"SELECT max(seq) FROM {SEARCH_TABLE}").fetchone()  # noqa: S608
    return -1 if top is None else int(top)


def open_for_writing(conn: sqlite3.Connection) -> int:
    """On the writer's connection at open: drops the legacy indexes, copies whatever is not copied yet.

    A journal written before the table existed is copied whole here, once (logged; 1.6 s for 200,000 entries here);
    afterwards a copy never holds more than one batch and the commit that completes it. Rows for no kept entry
    (beyond the journal's tail, or below its oldest entry) are deleted first, with a warning: no writer leaves
    them, and one beyond the tail would raise the high-water seq, so that the entries below it were never copied.
    Returns the next seq to copy. Runs in its own transaction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        for index in LEGACY_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {index}")
        (oldest, newest) = conn.execute("SELECT min(seq), max(seq) FROM journal").fetchone()
        stray = conn.execute(
            f"DELETE FROM {SEARCH_TABLE} WHERE seq < ? OR seq > ?",  # noqa: S608
            (-1 if oldest is None else oldest, -1 if newest is None else newest),
        ).rowcount
        if stray:
            log.warning("journal search table: deleted %d rows for no kept entry (edited by hand?)", stray)
        # After the high-water seq, or from the oldest kept entry (the strays above are gone, so both are kept).
        high_water = high_water_seq(conn)
        start = high_water + 1 if high_water >= 0 else (0 if oldest is None else int(oldest))
        behind = 0 if newest is None else int(newest) + 1 - start
        if behind > SEARCH_BATCH:
            log.info("journal search table: copying %d entries not copied yet", behind)
        if behind > 0:
            conn.execute(COPY_SQL, (start,))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # the error that got here is the one to report
            conn.execute("ROLLBACK")
        raise
    return start + behind


def copy_due(next_copy: int, next_seq_after_commit: int) -> bool:
    """Whether the commit that ends before ``next_seq_after_commit`` should also copy (a full batch gathered)."""
    return next_seq_after_commit - next_copy >= SEARCH_BATCH


def uses_search_table(flt: EventFilter) -> bool:
    """Whether a search for ``flt`` reads the table: it filters on a column indexed there and names no run.

    A run's entries are found through the journal's run index, which is narrower than any search column's.
    """
    if flt.run_id is not None:
        return False
    return any(getattr(flt, field) is not None for field in (*SEARCH_FIELDS, "kind", "since_ns", "until_ns"))


def first_seq_since(conn: sqlite3.Connection, unix_nanos: int) -> int | None:
    """The smallest seq of a kept entry whose time is at or after ``unix_nanos``, if any (times need not rise).

    Up to the high-water seq through the table's time index, beyond it from the journal's own column; on a journal
    without the table, from the journal (whose time index such a journal still has).
    """
    if not has_search_table(conn):
        (found,) = conn.execute("SELECT min(seq) FROM journal WHERE unix_nanos >= ?", (unix_nanos,)).fetchone()
        return None if found is None else int(found)
    high_water = high_water_seq(conn)
    # Through the time index: the entries at or after the time, not (SQLite's own choice for min) every entry
    # before it in seq order, which is nearly the whole table for a recent time.
    (found,) = conn.execute(
        f"SELECT min(seq) FROM {SEARCH_TABLE} INDEXED BY journal_search_time WHERE unix_nanos >= ?",  # noqa: S608
        (unix_nanos,),
    ).fetchone()
    if found is None:
        (found,) = conn.execute(
            "SELECT min(seq) FROM journal WHERE seq > ? AND unix_nanos >= ?", (high_water, unix_nanos)
        ).fetchone()
    return None if found is None else int(found)


def mismatches(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """Where the table breaks its invariant against the journal's columns: (seq, what), in seq order.

    A row for no entry, an entry up to the high-water seq without its row, or a row whose values differ. The
    journal's columns are checked against the signed bodies elsewhere (``column_mismatch``), so agreement with
    them is agreement with what was signed.
    """
    differs = " OR ".join(f"s.{c} IS NOT j.{c}" for c in _ROW_COLUMNS[1:])
    found: list[tuple[int, str]] = []
    rows: Any = conn.execute(
        f"SELECT s.seq, j.seq IS NULL, {', '.join(f's.{c}, j.{c}' for c in _ROW_COLUMNS[1:])} "  # noqa: S608
        f"FROM {SEARCH_TABLE} s LEFT JOIN journal j ON j.seq = s.seq WHERE j.seq IS NULL OR {differs} ORDER BY s.seq"
    )
    for seq, orphan, *pairs in rows:
        if orphan:
            found.append((int(seq), f"{SEARCH_TABLE} has a row for seq {seq}, which the journal does not hold"))
            continue
        for column, stored, source in zip(_ROW_COLUMNS[1:], pairs[0::2], pairs[1::2], strict=True):
            if stored != source:
                found.append(
                    (int(seq), f"{SEARCH_TABLE}.{column} is {stored!r} where the journal's column is {source!r}")
                )
    top = high_water_seq(conn)
    missing = conn.execute(
        f"SELECT j.seq FROM journal j WHERE j.seq <= ? AND NOT EXISTS "  # noqa: S608
        f"(SELECT 1 FROM {SEARCH_TABLE} s WHERE s.seq = j.seq) ORDER BY j.seq",
        (top,),
    )
    found.extend(
        (int(seq), f"seq {seq} is missing from {SEARCH_TABLE} (searches would not find it)") for (seq,) in missing
    )
    return sorted(found)
