"""Offline verification of a journal file with nothing but the file and public keys (docs/verify.md).

Verification trusts only the stored entry bytes and their signatures (DESIGN §2.3). Everything else in a
row (the stored ``leaf_hash``, the indexed columns, the ``seq`` column) is derived data that a tamperer can
rewrite, so it is recomputed from the signed bytes and every disagreement is reported as a :class:`Finding`.
The verifier keeps going after a finding: an auditor wants every piece of evidence, not the first.

Local checks cannot detect that the tail was cut off or that the whole file was replaced by another validly
signed journal; witnessed checkpoints do (DESIGN §4). The journal holds the checkpoints its collector cosigned
(``cosignature`` entries, "receipts"): each is checked against the origin key, the given witness keys and the
Merkle root recomputed at its size, and the largest size a trusted witness cosigned is reported as
``witnessed_size``. A receipt cannot prove that entries after it, or the receipt itself, were not removed; an
*anchor* (a cosigned checkpoint kept outside the journal, e.g. as returned by the collector) can: a journal
shorter than an anchor, or with another root at its size, is tamper evidence.

This module imports no server code (never ``writer``), so the CLI, the collector and the tests share it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, JournalUnreadableError, MalformedEntryError
from gateway.journal import state as state_tables
from gateway.journal.entry import (
    ENTRY_DOMAIN,
    EventKind,
    decode_entry,
)
from gateway.journal.report import Finding, FindingCode, VerifyReport, quote, stored_bytes, witness_grace_end
from gateway.journal.scan import Scan
from gateway.journal.schema import COLUMNS, RARE_KINDS_WHERE, SCHEMA_VERSION
from gateway.journal.seal import FORMAT_META_KEY, has_seals_table
from gateway.journal.search_table import has_search_table
from gateway.journal.search_table import mismatches as search_mismatches
from gateway.journal.witness import NoteChecker, read_anchor
from gateway.signing import Verifier

# Rows are read in the order of the ``seq`` column; the row's own seq is then checked against the signed one.
# COLUMNS is a constant of schema.py, not input, so building the statement from it is safe.
# The report types live in report.py; they are part of this module's API, as before the split.
__all__ = ["Finding", "FindingCode", "VerifyReport", "verify_journal", "witness_grace_end"]

_SELECT_ROWS = f"SELECT {', '.join(COLUMNS)} FROM journal ORDER BY seq"  # noqa: S608


# The pre-pass: rows whose entry bytes carry the cosignature kind byte in their header. It selects on the signed
# header, not on the (untrusted) kind column, so every row the main pass can credit as a receipt is among them.
_SELECT_RECEIPT_CANDIDATES = "SELECT entry FROM journal WHERE substr(entry, ?, 1) = ?"


_RECEIPT_KIND_FILTER = (len(ENTRY_DOMAIN) + 1, bytes([EventKind.COSIGNATURE]))


def verify_journal(
    path: Path,
    verifiers: Sequence[Verifier],
    *,
    origin: str | None = None,
    witnesses: Sequence[Verifier] = (),
    anchors: Sequence[str] = (),
    require_witnessed: int | None = None,
    min_size: int | None = None,
) -> VerifyReport:
    """Verifies a journal file offline against trusted public keys, reporting every finding by seq.

    Args:
        path: the journal's SQLite database; opened read-only and never modified.
        verifiers: trusted public keys; several are allowed (key rotation) and each entry is checked
            under the one its key id names.
        origin: the journal origin signatures are bound to; defaults to the keys' name (the key name is
            the origin), which must then be the same for all of them.
        witnesses: trusted witness (collector) public keys; a checkpoint counts as witnessed only when one of
            them validly cosigned it (C2SP cosignature/v1). With none, nothing counts as witnessed.
        anchors: cosigned checkpoint notes (the text, e.g. as the collector returned it) kept outside the
            journal; the journal must contain each one's entries with the same root.
        require_witnessed: when given (N >= 0), an ``unwitnessed`` finding if more than N entries lie beyond
            the grace of the last witnessed checkpoint (:func:`witness_grace_end`). Needs ``witnesses``.
        min_size: when given, a ``below_min_size`` finding if the journal's tree holds fewer entries (the pruned
            prefix a verified prune marker vouches for counts).

    Returns:
        The report; ``report.ok`` is False when any tamper evidence was found.

    Raises:
        ConfigError: no public key was given, the keys name different origins and ``origin`` is None, an
            anchor is not a checkpoint of this origin validly signed by its key and (when witness keys are
            given) cosigned by one of them, ``require_witnessed`` was given without witness keys, or a bound
            is negative.
        JournalUnreadableError: the file is missing, not a SQLite database, lacks the journal table, has
            a schema this verifier does not know, or could not be read to the end.
    """
    # Step 1: fix the trust anchors before reading anything the file says. The origin is what signatures
    # are bound to, so it comes from the caller's keys, never from the (untrusted) journal_meta table.
    origin = _resolve_origin(verifiers, origin)
    _check_requirements(witnesses, require_witnessed, min_size)
    keys: dict[bytes, list[Verifier]] = {}
    for verifier in verifiers:
        keys.setdefault(verifier.key_id, []).append(verifier)
    notes = NoteChecker(origin, verifiers, witnesses)
    # Anchors are the caller's evidence, not the journal's: one that does not verify is a usage error.
    anchor_points = [read_anchor(number, text, notes) for number, text in enumerate(anchors, 1)]

    conn = _open_read_only(path)
    scan = Scan(origin, keys, notes)
    try:
        # Step 2: read everything inside one read transaction, so a journal that a live sidecar is
        # appending to is verified as one consistent snapshot (meta and rows from the same instant).
        conn.execute("BEGIN")
        _check_shape(conn, path)
        # Step 3: cross-check the recorded origin against the trusted one.
        meta = _read_meta(conn, path)
        scan.check_meta(meta)
        # Step 4: learn the tree sizes that checkpoints claim (anchors, and receipt bodies read in a cheap
        # pre-pass without verifying anything), so the streaming pass can keep the Merkle root at each of them.
        # Sizes from forged rows only cost a remembered root: the main pass credits verified receipts only.
        marker = _latest_prune_marker(conn)
        if marker is not None:
            scan.start_after_prune(*marker)
        # Format v2: the commit seals, checked when the scan reaches each one's size (gateway/journal/seal.py).
        journal_format = 2 if meta is not None and str(meta.get(FORMAT_META_KEY)) == "2" else 1
        seals = conn.execute("SELECT size, note FROM journal_seals").fetchall() if has_seals_table(conn) else []
        scan.set_seals(journal_format, ((int(size), str(note)) for size, note in seals))
        scan.want_roots(a.note.checkpoint.size for a in anchor_points)
        scan.want_roots(_claimed_sizes(conn))
        # Step 5: stream the rows in seq order (constant memory: the cursor is iterated, never fetched
        # whole) and check each against its signed bytes; see Scan.check_row for the per-row procedure,
        # which also checks every cosignature receipt in a verified entry (Scan._check_receipt).
        for row in conn.execute(_SELECT_ROWS):
            scan.check_row(row)
        # Step 5b: the state tables must say what the signed events say.
        _check_state_tables(conn, origin, verifiers, scan)
        # Step 5c: the search table must hold the journal's (just checked) columns, or a search would mislead.
        if has_search_table(conn):
            for seq, message in search_mismatches(conn):
                scan.add_finding(seq, FindingCode.COLUMN_MISMATCH, message)
    except sqlite3.Error as exc:
        # A file that stops being readable part-way (corrupt page, I/O error) proves nothing either way.
        raise JournalUnreadableError(f"{path}: reading failed after {scan.entries} rows: {exc}") from exc
    finally:
        conn.close()

    # Step 6: receipts whose root could not be compared in stream, then the anchors: a journal shorter than an
    # anchor lost entries; another root at an anchor's size means history was rewritten (or the file replaced).
    scan.finish_seals()
    scan.finish_receipts()
    scan.finish_prune()
    for anchor in anchor_points:
        scan.check_anchor(anchor)
    # Step 7: the assurance the caller demanded, judged on the witnessed size the steps above established.
    scan.require(require_witnessed, min_size)
    return scan.report()


def _check_requirements(witnesses: Sequence[Verifier], require_witnessed: int | None, min_size: int | None) -> None:
    if require_witnessed is not None and not witnesses:
        raise ConfigError(
            "--require-witnessed needs the collector's public key (--witness-key KEY): "
            "without a witness key nothing counts as witnessed"
        )
    for flag, value in (("--require-witnessed", require_witnessed), ("--min-size", min_size)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} must be 0 or more, not {value}")


def _check_state_tables(conn: sqlite3.Connection, origin: str, verifiers: Sequence[Verifier], scan: Scan) -> None:
    """Reports every state row that contradicts the signed events (``state.trusted_state``, as the sidecar does at
    start). Entries are re-verified there under the trusted keys; an entry that fails is not believed."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"approvals", "kill_switches", "forwarder_state"} <= tables:
        return  # a journal file without state tables (e.g. exported) has nothing to contradict

    def signature_ok(payload: bytes, signature: bytes) -> bool:
        return any(v.verify(payload, signature) for v in verifiers)

    key_ids = {v.key_id for v in verifiers}
    for mismatch in state_tables.trusted_state(conn, origin, signature_ok, key_ids).mismatches:
        scan.add_finding(
            None,
            FindingCode.STATE_MISMATCH,
            f"{mismatch.table} {quote(mismatch.key)}: {mismatch.detail}; the signed events are what is enforced",
        )


def _resolve_origin(verifiers: Sequence[Verifier], origin: str | None) -> str:
    if not verifiers:
        raise ConfigError("verify needs at least one public key")
    if origin is not None:
        return origin
    names = sorted({v.name for v in verifiers})
    if len(names) != 1:
        raise ConfigError(
            f"the public keys name different origins ({', '.join(names)}); pass the journal's origin explicitly"
        )
    return names[0]


def _open_read_only(path: Path) -> sqlite3.Connection:
    # mode=ro: verify must never change the evidence it examines. The path goes through as_uri() so that
    # '?', '#' or '%' in a file name cannot be read as URI syntax.
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        # Belt and braces: refuse writes at the SQL level too.
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise JournalUnreadableError(f"cannot open {path} as a SQLite database: {exc}") from exc
    return conn


def _check_shape(conn: sqlite3.Connection, path: Path) -> None:
    try:
        table_info = conn.execute("SELECT name, type, pk FROM pragma_table_info('journal')").fetchall()
    except sqlite3.DatabaseError as exc:
        # SQLite opens any file lazily; "file is not a database" surfaces at the first read.
        raise JournalUnreadableError(f"{path} is not an agentaudit journal: {exc}") from exc
    if not table_info:
        raise JournalUnreadableError(f"{path} is not an agentaudit journal: it has no journal table")
    present = {name: (str(kind).upper(), pk) for name, kind, pk in table_info}
    missing = [column for column in COLUMNS if column not in present]
    if missing:
        raise JournalUnreadableError(
            f"{path} is not an agentaudit journal: the journal table lacks {', '.join(missing)}"
        )
    # Only an INTEGER PRIMARY KEY seq is an integer that orders and identifies rows; anything else is a
    # different table, not a tampered journal.
    if present["seq"] != ("INTEGER", 1):
        raise JournalUnreadableError(f"{path} is not an agentaudit journal: seq is not an INTEGER PRIMARY KEY")


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, Any] | None:
    """Returns journal_meta as a dict, or None when the table is absent (reported, not fatal)."""
    try:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal_meta'").fetchone()
        if exists is None:
            return None
        meta = {str(key): value for key, value in conn.execute("SELECT key, value FROM journal_meta")}
    except sqlite3.Error as exc:
        raise JournalUnreadableError(f"{path}: cannot read journal_meta: {exc}") from exc
    version = meta.get("schema_version")
    if version is not None and version != SCHEMA_VERSION:
        # Checking a newer layout by these rules would produce bogus tamper evidence; refuse instead.
        raise JournalUnreadableError(
            f"{path} has journal schema version {version!r}; this verifier understands {SCHEMA_VERSION!r}"
        )
    return meta


def _latest_prune_marker(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]] | None:
    """The newest prune marker's seq and (not yet verified) claim, read by the kind byte in its entry."""
    latest = f"SELECT seq, entry FROM journal WHERE kind = 'prune' AND {RARE_KINDS_WHERE} ORDER BY seq DESC LIMIT 1"  # noqa: S608
    rows = conn.execute(latest).fetchall()
    for seq, raw in rows:
        try:
            entry = decode_entry(stored_bytes(raw))
            if entry.kind != EventKind.PRUNE:
                return None
            claim = json.loads(entry.body)
        except (MalformedEntryError, ValueError):
            return None
        # A prune-kind entry that claims no prefix vouches for nothing and changes nothing.
        return (int(seq), claim) if isinstance(claim, dict) and "pruned_before" in claim else None
    return None


def _claimed_sizes(conn: sqlite3.Connection) -> Iterator[int]:
    """Tree sizes that receipt bodies claim, read without verifying anything (the main pass does)."""
    for (raw,) in conn.execute(_SELECT_RECEIPT_CANDIDATES, _RECEIPT_KIND_FILTER):
        try:
            body = json.loads(decode_entry(raw).body.decode("utf-8"))
        except (MalformedEntryError, ValueError, RecursionError, TypeError):
            continue
        size = body.get("tree_size") if isinstance(body, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            yield size
