"""The collector's storage seam and what its two implementations share.

``CollectorStore`` is implemented by :class:`~gateway.collector.sqlite_store.SqliteCollectorStore` (embedded
default of ``agentaudit dev``) and :class:`~gateway.collector.postgres_store.PostgresCollectorStore`
(production). Both run the same ingest procedure, so they behave identically and one test suite covers both:

1. In one transaction, lock the origin's state row (``SELECT ... FOR UPDATE`` in PostgreSQL, ``BEGIN
   IMMEDIATE`` in SQLite), so concurrent requests and replicas serialize per origin.
2. Read the held leaf hashes the batch overlaps and run :func:`~gateway.collector.ingest.verify_batch`.
3. On success, cosign the checkpoint, insert the new entries and update the state row with the cosigned note,
   and commit: entries and cosignature become visible together or not at all.
4. On ``rollback`` or ``fork``, commit only an evidence row (the offending note next to the cosigned one), log
   an alert, and raise. Every other refusal writes nothing.

The collector holds no state outside its database, so several replicas can serve one address.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple, Protocol

from gateway.collector.ingest import BatchEntry, IngestRejected, NewEntry, RejectCode, is_storable_text
from gateway.errors import ConfigError, ServiceUnavailableError, SigningKeyError
from gateway.journal.entry import HEADER_SIZE
from gateway.journal.filter import EQUALITY_COLUMNS, SQLITE, EventFilter, SqlDialect, body_predicate, sql_conditions
from gateway.journal.schema import INDEXED_FIELDS
from gateway.signing import Ed25519Signer, Verifier, parse_verifier

log = logging.getLogger(__name__)

EVENT_COLUMNS: tuple[str, ...] = (
    "origin",
    "seq",
    "entry",
    "signature",
    "leaf_hash",
    "unix_nanos",
    *(column for _, column in INDEXED_FIELDS),
)
"""Columns of the ``events`` table, in the order of :func:`event_row`."""

EVIDENCE_COLUMNS: tuple[str, ...] = ("origin", "note_hash", "received_at", "code", "note", "cosigned_note")
"""Columns of the ``evidence`` table, in the order of :func:`evidence_row`."""

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class CollectorUnavailableError(ServiceUnavailableError):
    """The collector's database cannot be reached, read or written; the sidecar should retry later."""


@dataclass(frozen=True)
class IngestOutcome:
    """An accepted batch: entries now held for the origin, how many were new, and the cosigned checkpoint."""

    size: int
    accepted: int
    cosigned_note: str


@dataclass(frozen=True)
class CollectorEventFilter(EventFilter):
    """:class:`~gateway.journal.filter.EventFilter` plus the journal's ``origin`` (exact), for the collector."""

    origin: str | None = None


class SearchHit(NamedTuple):
    """One event found by :meth:`CollectorStore.search`."""

    origin: str
    seq: int
    entry: bytes
    signature: bytes
    body: dict[str, Any]
    unix_nanos: int


PRUNE_BATCH_ROWS = 10_000
"""Events deleted per statement (and transaction) by :meth:`CollectorStore.prune`, so no lock is held long."""

SearchCursor = tuple[int, str, int]
"""A keyset position: ``(unix_nanos, origin, seq)`` of the last event a previous page returned."""


class CollectorStore(Protocol):
    """Durable, verified storage of every origin's journal, and the witness state that guards it."""

    async def start(self) -> None:
        """Connects and applies pending schema migrations (safe when several replicas start together)."""

    async def aclose(self) -> None:
        """Closes the database connections."""

    async def register_origin(self, origin: str, verifiers: Sequence[Verifier]) -> None:
        """Sets the public keys accepted for ``origin`` (from the collector's config), creating it if new.

        Raises:
            ConfigError: no keys, or a key is named for another origin.
        """

    async def origin_names(self) -> list[str]:
        """Every registered origin's name, in order."""

    async def latest(self, origin: str) -> tuple[int, str]:
        """The size held and the last cosigned note for ``origin``; ``(0, "")`` if nothing is held."""

    async def ingest(
        self,
        origin: str,
        entries: Sequence[BatchEntry],
        checkpoint_note: str,
        witness: Ed25519Signer,
        now_s: int,
    ) -> IngestOutcome:
        """Verifies and stores a batch, and cosigns its checkpoint with ``witness`` at ``now_s`` (unix seconds).

        A resent batch is accepted again (``accepted`` counts only new entries) and answered with the note
        cosigned the first time.

        Raises:
            IngestRejected: the batch was refused; for ``rollback`` and ``fork`` the note is kept as evidence.
            CollectorUnavailableError: the database failed; nothing was stored.
        """

    async def evidence(self, origin: str) -> list[dict[str, Any]]:
        """Checkpoints kept as evidence of rollback or fork, oldest first: dicts with ``origin``, ``received_at``
        (unix seconds), ``code``, ``note`` (as received) and ``cosigned_note`` (the one it contradicts)."""

    async def entries(self, origin: str, start: int = 0, end: int | None = None) -> list[BatchEntry]:
        """Held entries with ``start <= seq < end`` (to the end if None), in seq order: (seq, entry, signature)."""

    async def prune(self, before_ns: int, *, batch_rows: int = PRUNE_BATCH_ROWS) -> int:
        """Deletes the events with ``unix_nanos < before_ns`` (retention) and returns how many were deleted.

        Deletes ``batch_rows`` rows per transaction, each authorising its own DELETE to the append-only trigger
        (see the ``0002_retention`` migrations). Never touches ``evidence`` or ``origins``: each origin's tree
        state, last leaf hash and cosigned checkpoint stay, so later batches still verify and extend the tree.

        Raises:
            CollectorUnavailableError: the database failed (batches already committed stay deleted).
        """

    async def search(
        self, flt: EventFilter, *, newest_first: bool, after: SearchCursor | None, limit: int
    ) -> list[SearchHit]:
        """At most ``limit`` events of every origin matching ``flt`` (a :class:`CollectorEventFilter` to select an
        origin too), ordered by ``(unix_nanos, origin, seq)`` (descending if ``newest_first``), after the keyset
        position ``after``. Indexed filters are SQL (parameters only); policy layer, rule and actor are checked
        on the parsed body, reading further pages until ``limit`` matches or the rows run out.

        Raises:
            CollectorUnavailableError: the database failed.
        """


# The journal's equality columns plus the journal's origin, which only the collector holds in one table.
_EQUALITY_COLUMNS = (*EQUALITY_COLUMNS, ("origin", "origin"))
SEARCH_SCAN_ROWS = 500
"""Rows read per statement while body-side filters discard candidates."""


@dataclass(frozen=True)
class SearchPlan:
    """One search as SQL: conditions with the dialect's placeholders, and their values.

    ``keyset`` is the cursor condition for ``(unix_nanos, origin, seq)``, to be given the cursor as its three
    parameters after ``params``; ``order`` the ORDER BY list; ``check`` the body-side test (None: none).
    """

    where: list[str]
    params: list[Any]
    keyset: str
    order: str
    check: Callable[[dict[str, Any]], bool] | None


def search_plan(flt: EventFilter, *, newest_first: bool, dialect: SqlDialect) -> SearchPlan:
    """Translates ``flt`` for ``dialect`` (:func:`gateway.journal.filter.sql_conditions`, with ``origin``) and adds
    the keyset and order; only constants enter the SQL text.

    In PostgreSQL origins sort bytewise (``COLLATE "C"``), like SQLite, so both stores return the same order.
    """
    where, params = sql_conditions(flt, dialect, columns=_EQUALITY_COLUMNS)
    origin = "origin" if dialect.name == SQLITE.name else 'origin COLLATE "C"'
    compare, direction = ("<", "DESC") if newest_first else (">", "ASC")
    n = len(params)
    placeholder = dialect.placeholder
    keyset = f"(unix_nanos, {origin}, seq) {compare} ({placeholder(n + 1)}, {placeholder(n + 2)}, {placeholder(n + 3)})"
    order = f"unix_nanos {direction}, {origin} {direction}, seq {direction}"
    return SearchPlan(where, params, keyset, order, body_predicate(flt))


def search_hit(origin: str, seq: int, entry: bytes, signature: bytes, unix_nanos: int) -> SearchHit:
    """A stored row with its body parsed (the collector verified it was a JSON object when ingesting it)."""
    body = json.loads(entry[HEADER_SIZE:])
    if not isinstance(body, dict):
        raise CollectorUnavailableError(f"stored entry {origin!r}/{seq} has no JSON object body")
    return SearchHit(origin, seq, entry, signature, body, unix_nanos)


def encode_keys(origin: str, verifiers: Sequence[Verifier]) -> str:
    """The ``keys`` column: C2SP verifier key texts, one per line.

    Raises:
        ConfigError: no keys, or a key's name is not ``origin`` (C2SP checkpoints are signed under the origin).
    """
    if not origin or not is_storable_text(origin):
        raise ConfigError(f"origin {origin!r} is not a valid origin name")
    if not verifiers:
        raise ConfigError(f"origin {origin!r}: at least one public key is required")
    for verifier in verifiers:
        if verifier.name != origin:
            raise ConfigError(f"origin {origin!r}: key {verifier.encode()} is named for origin {verifier.name!r}")
    return "\n".join(sorted({v.encode() for v in verifiers}))


def decode_keys(text: str) -> list[Verifier]:
    """The verifiers of a ``keys`` column.

    Raises:
        ValueError: a stored key does not parse (the database was altered).
    """
    try:
        return [parse_verifier(line) for line in text.splitlines() if line]
    except SigningKeyError as exc:
        raise ValueError(f"stored key does not parse: {exc}") from exc


def unknown_origin(origin: str) -> IngestRejected:
    """The refusal for an origin with no registered keys."""
    return IngestRejected(RejectCode.UNKNOWN_ORIGIN, f"origin {origin[:80]!r} is not registered with this collector")


def event_row(origin: str, entry: NewEntry) -> tuple[Any, ...]:
    """One ``events`` row, in :data:`EVENT_COLUMNS` order."""
    return (origin, entry.seq, entry.entry, entry.signature, entry.leaf_hash, entry.unix_nanos, *entry.indexed)


def evidence_row(origin: str, note: str, cosigned_note: str, code: str, now_s: int) -> tuple[Any, ...]:
    """One ``evidence`` row, in :data:`EVIDENCE_COLUMNS` order. ``note_hash`` dedupes a note sent again."""
    return (origin, hashlib.sha256(note.encode()).digest(), now_s, code, note, cosigned_note)


def evidence_dict(row: Sequence[Any]) -> dict[str, Any]:
    """An evidence row (``origin, received_at, code, note, cosigned_note``) as :meth:`CollectorStore.evidence`
    returns it."""
    origin, received_at, code, note, cosigned_note = row
    return {
        "origin": origin,
        "received_at": int(received_at),
        "code": code,
        "note": note,
        "cosigned_note": cosigned_note,
    }


def alert_evidence(origin: str, exc: IngestRejected) -> None:
    """Logs the alert for a refusal kept as evidence (the alerting layer reacts to ``IngestRejected`` too)."""
    log.error("collector: origin %r sent a checkpoint that contradicts its cosigned one: %s", origin, exc)


@dataclass(frozen=True)
class Migration:
    """One versioned schema migration file."""

    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """The migrations for ``dialect`` (``postgres`` or ``sqlite``), in version order, numbered 1, 2, 3, ...

    Raises:
        ConfigError: a file is misnamed or versions are not contiguous (a packaging mistake).
    """
    folder = resources.files("gateway.collector").joinpath("migrations", dialect)
    found = []
    for item in folder.iterdir():
        if not item.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(item.name)
        if match is None:
            raise ConfigError(f"migration file {dialect}/{item.name} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), item.name, item.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ConfigError(f"{dialect} migrations are not numbered 1..n: {[m.name for m in found]}")
    return found
