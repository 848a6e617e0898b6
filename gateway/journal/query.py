"""Selecting journal events by filter, for ``agentaudit export`` and ``agentaudit tail`` (docs/investigate.md).

:func:`select` streams the matching events of a journal in seq order (or newest first) in constant memory:
filters that have an indexed column (``gateway/journal/schema.py``) become parameterised SQL; the others
(policy layer, policy rule, actor, trace id) are applied to the parsed body (both built by
``gateway/journal/filter.py``, which the collector's search shares). The journal is read in keyset pages
(``seq > ?`` / ``seq < ?``, never OFFSET), each its own short statement, so a long export never holds one read
transaction open against a running sidecar (which would stop WAL checkpoints) and a page boundary cannot shift
when entries are appended meanwhile.

Also here, the CloudEvents 1.0 shape events are exported in (the text and JSON-line forms are printed by
``gateway.cli.render``). Pure functions apart from :func:`select` and :func:`journal_origin`, which read a
connection opened by the caller (:func:`gateway.journal.store.connect_readonly`).
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from gateway.errors import JournalUnreadableError
from gateway.journal.entry import HEADER_SIZE, EventKind
from gateway.journal.filter import SQLITE, body_predicate, sql_conditions

# Re-exported (explicitly, for mypy): callers of select() build one, and the CLI's filter flags are its fields.
from gateway.journal.filter import EventFilter as EventFilter  # noqa: PLC0414
from gateway.journal.search_table import SEARCH_TABLE, has_search_table, high_water_seq, uses_search_table

PAGE_SIZE = 512
"""Entries read per keyset page (one short SQL statement each)."""

CLOUDEVENTS_SPECVERSION = "1.0"
CLOUDEVENTS_TYPE_PREFIX = "dev.agentaudit.event."
CLOUDEVENTS_DATA_CONTENT_TYPE = "application/json"

KINDS: tuple[str, ...] = tuple(k.label for k in EventKind)
"""Every event kind, as in the body's ``kind`` field."""
DECISIONS: tuple[str, ...] = ("allow", "stop", "approval_required")
"""The values of a body's ``decision`` field (a post-event carries its pre-event's)."""

_TRACE_ID_RE = re.compile(r"[0-9a-f]{32}")


def is_trace_id(value: str) -> bool:
    """A W3C trace id as events store it (``trace_id``): 32 lower-case hex digits."""
    return _TRACE_ID_RE.fullmatch(value) is not None


_DURATION_UNITS_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}
_DURATION_RE = re.compile(r"(\d+)([smhd])")
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SQLITE_MAX_INT = 2**63 - 1
_TIME_SYNTAX = "use RFC 3339 (2026-11-27T09:00:00Z, 2026-11-27T10:00:00.5+01:00) or a duration ago (30s, 15m, 2h, 7d)"


def select(
    conn: sqlite3.Connection,
    flt: EventFilter,
    *,
    after_seq: int | None = None,
    limit: int | None = None,
    through_seq: int | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(seq, body)`` for each matching event; :func:`select_signed` without the stored bytes."""
    for seq, _entry, _signature, body in select_signed(
        conn, flt, after_seq=after_seq, limit=limit, through_seq=through_seq, page_size=page_size
    ):
        yield seq, body


def select_signed(
    conn: sqlite3.Connection,
    flt: EventFilter,
    *,
    after_seq: int | None = None,
    limit: int | None = None,
    through_seq: int | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[tuple[int, bytes, bytes, dict[str, Any]]]:
    """Yields ``(seq, entry, signature, body)`` for each matching event, streaming, in seq order or newest first.

    The stored entry and signature come from the same row read as the body, so a caller that returns them
    (the operator search and watch) needs no second query per event.

    ``after_seq`` is the keyset cursor: the seq of the last event a previous call returned (results start after
    it in the chosen order: ``seq > after_seq`` oldest first, ``seq < after_seq`` newest first). ``limit`` caps the
    number of events yielded. ``through_seq`` ignores entries after it, e.g. :func:`last_seq` taken at the start
    for a snapshot; without it, oldest first also yields entries appended while the generator runs.

    Raises:
        JournalUnreadableError: the database could not be read, or a stored body is not JSON.
    """
    if limit is not None and limit <= 0:
        return
    check = body_predicate(flt)
    cursor_seq = (_SQLITE_MAX_INT if flt.newest_first else -1) if after_seq is None else after_seq
    remaining = limit
    for sql, params in _segments(conn, flt, through_seq):
        while True:
            rows = 0
            for seq, entry, signature in _page(conn, sql, (cursor_seq, *params, page_size)):
                rows += 1
                cursor_seq = seq
                body = _parse_body(seq, entry)
                if check is not None and not check(body):
                    continue
                yield seq, bytes(entry), bytes(signature), body
                if remaining is not None:
                    remaining -= 1
                    if remaining == 0:
                        return
            if rows < page_size:
                break


def _segments(conn: sqlite3.Connection, flt: EventFilter, through_seq: int | None) -> list[tuple[str, list[Any]]]:
    """The keyset-paged SELECTs for ``flt``, in the order they are read; each one's first parameter is the cursor
    seq, its last the page size.

    One SELECT on the journal, unless the filter is on a search-only column (search_table.py): then the entries
    up to the search table's high-water seq are selected through its indexes and the rest from the journal's own
    columns, each part in its own SELECT, oldest part first (newest first: the reverse). The high-water seq is read
    once, so an entry is in exactly one part even while the writer copies more.
    """
    where, params = sql_conditions(flt, SQLITE, first_param=2)
    order, compare = ("DESC", "<") if flt.newest_first else ("ASC", ">")
    if through_seq is not None:
        where.append("seq <= ?")
        params.append(through_seq)
    journal_only = [(_select("journal", compare, order, where), params)]
    if not uses_search_table(flt):
        return journal_only
    try:
        if not has_search_table(conn):  # a journal written before the table existed, not opened by a writer since
            return journal_only
        high_water = high_water_seq(conn)
    except sqlite3.Error as exc:
        raise JournalUnreadableError(f"journal read failed: {exc}") from exc
    # Only constants are interpolated; every value is a placeholder parameter.
    indexed = _select(SEARCH_TABLE, compare, order, [*where, f"seq <= {high_water}"])
    indexed = f"SELECT seq, entry, signature FROM journal WHERE seq IN ({indexed}) ORDER BY seq {order}"  # noqa: S608
    newer = _select("journal", compare, order, [*where, f"seq > {high_water}"])
    parts = [(indexed, params), (newer, params)]
    return parts[::-1] if flt.newest_first else parts


def _select(table: str, compare: str, order: str, where: list[str]) -> str:
    """One keyset page of ``table`` (the journal: its rows; the search table: the matching seqs)."""
    conditions = " AND ".join([f"seq {compare} ?", *where])
    columns = "seq" if table == SEARCH_TABLE else "seq, entry, signature"
    return f"SELECT {columns} FROM {table} WHERE {conditions} ORDER BY seq {order} LIMIT ?"  # noqa: S608


def _page(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> Iterator[tuple[int, bytes, bytes]]:
    """The rows of one page, read one at a time; any SQLite error is a JournalUnreadableError."""
    try:
        cursor = conn.execute(sql, params)
    except sqlite3.Error as exc:
        raise JournalUnreadableError(f"journal read failed: {exc}") from exc
    try:
        while True:
            try:
                row = cursor.fetchone()
            except sqlite3.Error as exc:
                raise JournalUnreadableError(f"journal read failed: {exc}") from exc
            if row is None:
                return
            yield row
    finally:
        # The caller may have closed the connection first (a generator abandoned on a broken pipe).
        with contextlib.suppress(sqlite3.ProgrammingError):
            cursor.close()


def _parse_body(seq: int, entry: bytes) -> dict[str, Any]:
    try:
        body = json.loads(bytes(entry)[HEADER_SIZE:])
    except (ValueError, UnicodeDecodeError) as exc:
        raise JournalUnreadableError(f"entry {seq}: body is not JSON ({exc}); run agentaudit verify") from exc
    if not isinstance(body, dict):
        raise JournalUnreadableError(f"entry {seq}: body is not a JSON object; run agentaudit verify")
    return body


def last_seq(conn: sqlite3.Connection) -> int:
    """The seq of the newest entry, or -1 for an empty journal."""
    try:
        (top,) = conn.execute("SELECT max(seq) FROM journal").fetchone()
    except sqlite3.Error as exc:
        raise JournalUnreadableError(f"journal read failed: {exc}") from exc
    return -1 if top is None else int(top)


def journal_origin(conn: sqlite3.Connection) -> str:
    """The origin recorded in ``journal_meta`` (unverified: only ``verify`` with a key proves it), or ``unknown``."""
    try:
        row = conn.execute("SELECT value FROM journal_meta WHERE key = 'origin'").fetchone()
    except sqlite3.Error:
        return "unknown"
    return str(row[0]) if row else "unknown"


def parse_time(text: str, *, now_ns: int | None = None) -> int:
    """Unix nanoseconds for an RFC 3339 date-time with an offset, or a duration ago (``30s``, ``15m``, ``2h``, ``7d``).

    Raises:
        ValueError: with what is wrong and the accepted syntax.
    """
    text = text.strip()
    duration = _DURATION_RE.fullmatch(text)
    if duration:
        now = time.time_ns() if now_ns is None else now_ns
        return now - int(duration[1]) * _DURATION_UNITS_NS[duration[2]]
    match = _RFC3339_RE.fullmatch(text)
    if not match:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?", text):
            raise ValueError(f"{text!r} has no time zone: add Z for UTC or an offset such as +01:00")
        raise ValueError(f"{text!r} is not a time: {_TIME_SYNTAX}")
    year, month, day, hour, minute, second = (int(match[k]) for k in range(1, 7))
    fraction, zulu, sign, offset_h, offset_m = match[7], match[8], match[9], match[10], match[11]
    try:
        if zulu:
            zone = UTC
        else:
            offset = timedelta(hours=int(offset_h), minutes=int(offset_m))
            zone = timezone(-offset if sign == "-" else offset)
        when = datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid time: {exc}") from None
    seconds = (when - _EPOCH) // timedelta(seconds=1)
    return seconds * 10**9 + int((fraction or "").ljust(9, "0"))


def cloudevent(seq: int, body: dict[str, Any], origin: str) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode event for a journal event (the shape ``gateway.alerts`` sends).

    ``id`` is the event id and ``source`` names the journal, so (source, id) is unique and a receiver can
    de-duplicate re-exports; ``subject`` is the run, left out for events outside a run.
    """
    event: dict[str, Any] = {
        "specversion": CLOUDEVENTS_SPECVERSION,
        "id": str(body.get("event_id", "")),
        "source": f"agentaudit://{quote(origin, safe='/:@-._~')}",
        "type": f"{CLOUDEVENTS_TYPE_PREFIX}{body.get('kind', 'unknown')}",
    }
    run_id = body.get("run_id")
    if isinstance(run_id, str) and run_id:
        event["subject"] = run_id
    if isinstance(body.get("timestamp"), str):
        event["time"] = body["timestamp"]
    event["datacontenttype"] = CLOUDEVENTS_DATA_CONTENT_TYPE
    event["data"] = {"seq": seq, **body}
    return event
