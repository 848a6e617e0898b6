"""Read-only scans of the journal's pre-events, for rebuilding limit state on start (ADR 0011).

Everything that decides what is replayed (kind, time, decision, run, amounts) is read from the stored entry bytes,
the ones the signature covers, never from the parsed columns: those are only a convenience index (see
``schema``), and an edit of them must change nothing enforced. The ``unix_nanos`` and ``run_id`` indexes are used
only to find where to start reading:

1. Find the first seq whose indexed time is at or after ``since`` (the search table's time index).
2. Walk back from it by seq while the *envelope* time is still at or after ``since``, so an edited time column
   cannot hide the entries at the start of the span.
3. Read every entry from there on in seq order, and yield each whose envelope kind is ``pre_exec`` and whose
   envelope time is at or after ``since``. A column edit in the middle of the span therefore hides nothing.

Signatures are not checked here (about 80 µs per entry: 8 s for 100,000); an edit of the signed bytes themselves
is what ``agentaudit verify`` and the collector's witness detect.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import MalformedEntryError
from gateway.journal import search_table
from gateway.journal.entry import EventKind, decode_entry

_READ_BATCH = 1000


@dataclass(frozen=True)
class PreEvent:
    """A journaled pre-event: its seq, its envelope time and its parsed signed body."""

    seq: int
    unix_nanos: int
    body: Mapping[str, Any]


def first_seq_since(conn: sqlite3.Connection, since_nanos: int) -> int:
    """The seq from which every entry at or after ``since_nanos`` (envelope time) follows (steps 1 and 2)."""
    found = search_table.first_seq_since(conn, since_nanos)
    if found is not None:
        start = found
    else:
        last = conn.execute("SELECT max(seq) FROM journal").fetchone()[0]
        start = 0 if last is None else int(last) + 1
    for seq, entry in conn.execute("SELECT seq, entry FROM journal WHERE seq < ? ORDER BY seq DESC", (start,)):
        if _decode(seq, entry)[1] < since_nanos:
            break
        start = int(seq)
    return start


def iter_pre_events(conn: sqlite3.Connection, start_seq: int, since_nanos: int) -> Iterator[PreEvent]:
    """Every pre-event from ``start_seq`` on whose envelope time is at or after ``since_nanos`` (step 3).

    Raises:
        MalformedEntryError: an entry in the span does not decode (the replay cannot know what it held).
    """
    cursor = conn.execute("SELECT seq, entry FROM journal WHERE seq >= ? ORDER BY seq", (start_seq,))
    while rows := cursor.fetchmany(_READ_BATCH):
        for seq, entry in rows:
            kind, nanos, body = _decode(seq, entry)
            if kind == EventKind.PRE_EXEC and nanos >= since_nanos:
                yield PreEvent(int(seq), nanos, _body(seq, body))


def count_pre_events_before(conn: sqlite3.Connection, run_ids: Iterable[str], before_seq: int) -> dict[str, int]:
    """Pre-events of each run below ``before_seq``, located through the run index and confirmed in the body."""
    counts: dict[str, int] = {}
    sql = "SELECT seq, entry FROM journal WHERE run_id = ? AND seq < ?"
    for run_id in run_ids:
        count = 0
        for seq, entry in conn.execute(sql, (run_id, before_seq)):
            kind, _, body = _decode(seq, entry)
            if kind == EventKind.PRE_EXEC and _body(seq, body).get("run_id") == run_id:
                count += 1
        counts[run_id] = count
    return counts


def _decode(seq: int, entry: bytes) -> tuple[int, int, bytes]:
    try:
        decoded = decode_entry(bytes(entry))
    except MalformedEntryError as exc:
        raise MalformedEntryError(f"journal entry {seq}: {exc}") from exc
    return decoded.kind, decoded.unix_nanos, decoded.body


def _body(seq: int, body: bytes) -> Mapping[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise MalformedEntryError(f"journal entry {seq}: body is not JSON") from exc
    if not isinstance(parsed, dict):
        raise MalformedEntryError(f"journal entry {seq}: body is not a JSON object")
    return parsed
