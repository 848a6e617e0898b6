"""Offline verification of a journal file with nothing but the file and public keys (docs/verify.md).

Verification trusts only the stored entry bytes and their signatures (DESIGN §2.3). Everything else in a
row (the stored ``leaf_hash``, the indexed columns, the ``seq`` column) is derived data that a tamperer can
rewrite, so it is recomputed from the signed bytes and every disagreement is reported as a :class:`Finding`.
The verifier keeps going after a finding: an auditor wants every piece of evidence, not the first.

Local checks cannot detect that the tail was cut off or that the whole file was replaced by another validly
signed journal; witnessed checkpoints do (DESIGN §4), and the report says how far the journal is witnessed.

This module imports no server code (never ``writer``), so the CLI, the collector and the tests share it.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.canonical import CanonicalizationError, canonical_json
from gateway.errors import ConfigError, JournalUnreadableError, MalformedEntryError
from gateway.journal.entry import ZERO_HASH, Entry, EventKind, decode_entry, leaf_hash, signature_payload
from gateway.journal.merkle import MerkleRoot
from gateway.journal.schema import COLUMNS, INDEXED_FIELDS, SCHEMA_VERSION, indexed_values
from gateway.signing import Verifier

# Rows are read in the order of the ``seq`` column; the row's own seq is then checked against the signed one.
# COLUMNS is a constant of schema.py, not input, so building the statement from it is safe.
_SELECT_ROWS = f"SELECT {', '.join(COLUMNS)} FROM journal ORDER BY seq"  # noqa: S608
# Attacker-controlled values are quoted in messages; cap them so one huge column cannot flood a report.
_MAX_QUOTED = 80


class FindingCode(enum.StrEnum):
    """Stable codes of verification findings; documented in docs/verify.md. Values never change."""

    MALFORMED_ENTRY = "malformed_entry"
    """The stored entry bytes do not decode as an envelope (domain tag, header, body length)."""
    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify under the key named by the entry's key id."""
    UNKNOWN_KEY = "unknown_key"
    """No given public key has the entry's key id."""
    EDITED_ENTRY = "edited_entry"
    """The stored leaf hash no longer matches the entry and signature bytes: they changed after writing."""
    GAP = "gap"
    """Seq numbers are missing from the table."""
    REORDER = "reorder"
    """The seq signed inside the entry differs from the row's seq (entries moved or renumbered)."""
    CHAIN_BREAK = "chain_break"
    """The entry's prev_leaf_hash is not the leaf hash of the entry before it (zeros at seq 0)."""
    COLUMN_MISMATCH = "column_mismatch"
    """An indexed column disagrees with the signed header or body."""
    KIND_MISMATCH = "kind_mismatch"
    """The body's ``kind`` string disagrees with the header's kind byte."""
    NONCANONICAL_BODY = "noncanonical_body"
    """The body is not a UTF-8 JSON object byte-identical to its RFC 8785 canonical form."""
    ORIGIN_MISMATCH = "origin_mismatch"
    """The journal's recorded origin differs from the origin its signatures are checked against."""


@dataclass(frozen=True)
class Finding:
    """One piece of tamper evidence: where (``seq``, None for the journal as a whole), what, and details."""

    seq: int | None
    code: FindingCode
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_journal`.

    Attributes:
        origin: the origin the signatures were checked against.
        entries: rows read from the journal table.
        findings: every piece of tamper evidence, in the order found (by seq).
        tree_size: leaves in the Merkle tree (one per row read).
        root_hash: RFC 6962 root over the leaf hashes recomputed from the stored bytes.
        last_leaf_hash: recomputed leaf hash of the last row, None for an empty journal.
        witnessed_size: how many leading entries a witness cosigned a checkpoint for (0 until checkpoints
            are verified; until then a cut-off tail cannot be detected).
    """

    origin: str
    entries: int
    findings: list[Finding]
    tree_size: int
    root_hash: bytes
    last_leaf_hash: bytes | None
    witnessed_size: int = 0

    @property
    def ok(self) -> bool:
        """True when no tamper evidence was found."""
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-compatible values, hashes in lower-case hex (``agentaudit verify --json``)."""
        return {
            "ok": self.ok,
            "origin": self.origin,
            "entries": self.entries,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "last_leaf_hash": None if self.last_leaf_hash is None else self.last_leaf_hash.hex(),
            "witnessed_size": self.witnessed_size,
            "findings": [{"seq": f.seq, "code": str(f.code), "message": f.message} for f in self.findings],
        }


def verify_journal(path: Path, verifiers: Sequence[Verifier], *, origin: str | None = None) -> VerifyReport:
    """Verifies a journal file offline against trusted public keys, reporting every finding by seq.

    Args:
        path: the journal's SQLite database; opened read-only and never modified.
        verifiers: trusted public keys; several are allowed (key rotation) and each entry is checked
            under the one its key id names.
        origin: the journal origin signatures are bound to; defaults to the keys' name (the key name is
            the origin), which must then be the same for all of them.

    Returns:
        The report; ``report.ok`` is False when any tamper evidence was found.

    Raises:
        ConfigError: no public key was given, or the keys name different origins and ``origin`` is None.
        JournalUnreadableError: the file is missing, not a SQLite database, lacks the journal table, has
            a schema this verifier does not know, or could not be read to the end.
    """
    # Step 1: fix the trust anchors before reading anything the file says. The origin is what signatures
    # are bound to, so it comes from the caller's keys, never from the (untrusted) journal_meta table.
    origin = _resolve_origin(verifiers, origin)
    keys: dict[bytes, list[Verifier]] = {}
    for verifier in verifiers:
        keys.setdefault(verifier.key_id, []).append(verifier)

    conn = _open_read_only(path)
    scan = _Scan(origin, keys)
    try:
        # Step 2: read everything inside one read transaction, so a journal that a live sidecar is
        # appending to is verified as one consistent snapshot (meta and rows from the same instant).
        conn.execute("BEGIN")
        _check_shape(conn, path)
        # Step 3: cross-check the recorded origin against the trusted one.
        scan.check_meta(_read_meta(conn, path))
        # Step 4: stream the rows in seq order (constant memory: the cursor is iterated, never fetched
        # whole) and check each against its signed bytes; see _Scan.check_row for the per-row procedure.
        for row in conn.execute(_SELECT_ROWS):
            scan.check_row(row)
    except sqlite3.Error as exc:
        # A file that stops being readable part-way (corrupt page, I/O error) proves nothing either way.
        raise JournalUnreadableError(f"{path}: reading failed after {scan.entries} rows: {exc}") from exc
    finally:
        conn.close()

    # Step 5 (checkpoints, a later issue): CHECKPOINT entries will be compared with the Merkle root at their
    # tree size (taken from the streaming tree while scanning, see the end of _Scan.check_row) and
    # COSIGNATURE entries checked against witness keys; the largest cosigned size becomes witnessed_size.
    # Until then nothing is witnessed, and a cut-off tail goes unnoticed.
    return scan.report(witnessed_size=_WITNESSED_SIZE_WITHOUT_CHECKPOINTS)


# See step 5 of verify_journal: with no checkpoint verification, no entry counts as witnessed.
_WITNESSED_SIZE_WITHOUT_CHECKPOINTS = 0


def format_report(report: VerifyReport) -> str:
    """Renders a report for people: one line per finding, then the witness status and a summary line."""
    lines = [f"{'journal' if f.seq is None else f'seq {f.seq}'}: {f.code}: {f.message}" for f in report.findings]
    lines.append(
        f"witnessed: {report.witnessed_size} of {_count(report.tree_size, 'entry', 'entries')}"
        + ("" if report.witnessed_size >= report.tree_size else " (a cut-off tail is not detectable locally)")
    )
    entries = _count(report.entries, "entry", "entries")
    if report.ok:
        lines.append(f"journal OK: {entries}, root {report.root_hash.hex()}")
    else:
        lines.append(f"TAMPER EVIDENCE: {_count(len(report.findings), 'finding', 'findings')} in {entries}")
    return "\n".join(lines)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


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


def _quote(value: object) -> str:
    """Quotes a stored value for a message. repr() escapes control characters, so a tampered column cannot
    inject terminal escape sequences into the report an auditor reads."""
    text = value.hex() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "..."


def _short(digest: object) -> str:
    """The first 8 bytes of a hash in hex, enough to tell hashes apart in a message."""
    return digest.hex()[:16] if isinstance(digest, bytes) else _quote(digest)


def _stored_bytes(value: object) -> bytes:
    """The bytes of a stored BLOB; any other SQLite value as its UTF-8 text (NULL as no bytes)."""
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


class _Scan:
    """State carried from row to row: expected seq, previous leaf hash, Merkle tree, findings."""

    def __init__(self, origin: str, keys: dict[bytes, list[Verifier]]) -> None:
        self._origin = origin
        self._keys = keys
        self._findings: list[Finding] = []
        self._tree = MerkleRoot()
        self.entries = 0
        # Rows read so far; the seq the next row should have; the recomputed leaf hash of the row before.
        self._next_seq = 0
        self._prev_leaf = ZERO_HASH
        self._last_leaf: bytes | None = None

    def _add(self, seq: int | None, code: FindingCode, message: str) -> None:
        self._findings.append(Finding(seq, code, message))

    def check_meta(self, meta: dict[str, Any] | None) -> None:
        """Reports a recorded origin that differs from the trusted one."""
        recorded = None if meta is None else meta.get("origin")
        if recorded is None:
            self._add(None, FindingCode.ORIGIN_MISMATCH, "the journal records no origin in journal_meta")
        elif recorded != self._origin:
            self._add(
                None,
                FindingCode.ORIGIN_MISMATCH,
                f"journal_meta says origin {_quote(recorded)}, signatures are checked for {self._origin!r}",
            )

    def check_row(self, row: tuple[Any, ...]) -> None:
        """Checks one row against its signed bytes, following the numbered steps below."""
        seq: int = row[0]
        stored_entry, stored_signature, stored_leaf, stored_nanos = row[1:5]
        stored_indexed = row[5:]
        self.entries += 1

        # 1. Continuity of the seq column. Rows come ordered by seq and seq is the primary key, so a jump
        #    means rows were deleted. The chain link across a gap cannot be checked (the previous entry is
        #    gone), so it is skipped rather than reported twice.
        expected_prev: bytes | None = None
        first_missing = max(self._next_seq, 0)
        if seq < 0:
            self._add(seq, FindingCode.REORDER, "row seq is negative; seq starts at 0")
        elif seq > first_missing:
            self._add(first_missing, FindingCode.GAP, _missing(first_missing, seq))
        else:
            expected_prev = ZERO_HASH if seq == 0 else self._prev_leaf
        self._next_seq = seq + 1

        # 2. Recompute the leaf hash from the stored bytes. It, not the stored column, feeds the chain and
        #    the Merkle tree: a tamperer who rewrites both an entry and its leaf_hash column must still be
        #    caught by the next entry's link and by any checkpoint.
        #    (A rebuilt, non-STRICT table could hold TEXT here; its bytes are hashed as stored.)
        entry_bytes, signature = _stored_bytes(stored_entry), _stored_bytes(stored_signature)
        leaf = leaf_hash(entry_bytes, signature)
        self._tree.append(leaf)
        self._prev_leaf = self._last_leaf = leaf

        # 3. Decode the envelope, then verify the signature over the domain-separated payload, bound to the
        #    trusted origin, under the key the entry names. Bytes that do not decode name no key.
        entry = self._decode(seq, stored_entry, stored_signature)
        if entry is not None:
            self._check_signature(seq, entry, signature)

        # 4. Compare with the leaf hash stored when the row was written: a difference means the entry or
        #    signature bytes changed afterwards.
        if stored_leaf != leaf:
            self._add(
                seq,
                FindingCode.EDITED_ENTRY,
                f"stored leaf_hash {_short(stored_leaf)}... differs from SHA-256(0x00|entry|signature) "
                f"{_short(leaf)}...: the entry or signature changed after it was written",
            )
        # Nothing below can be checked on bytes that do not decode.
        if entry is None:
            return

        # 5. The signed seq must be the row's seq: entries cannot be moved or renumbered.
        if entry.seq != seq:
            self._add(seq, FindingCode.REORDER, f"the entry is signed as seq {entry.seq}, stored as seq {seq}")

        # 6. The hash chain: the signed prev_leaf_hash must be the previous row's recomputed leaf hash.
        if expected_prev is not None and entry.prev_leaf_hash != expected_prev:
            what = "zeros" if seq == 0 else f"the leaf hash of seq {seq - 1} ({_short(expected_prev)}...)"
            self._add(
                seq,
                FindingCode.CHAIN_BREAK,
                f"prev_leaf_hash {_short(entry.prev_leaf_hash)}... is not {what}",
            )

        # 7. The body must be canonical JSON, so the signed bytes are the one encoding of the event.
        body = self._check_body(seq, entry.body)

        # 8. The body's kind string must name the header's kind byte.
        if body is not None:
            self._check_kind(seq, entry.kind, body)

        # 9. Indexed columns are what search and the forwarder read: each must equal the signed value.
        self._check_columns(seq, entry, body, stored_nanos, stored_indexed)

        # Checkpoints (a later issue) hook in here: a CHECKPOINT entry for tree size n is compared with
        # self._tree.root() once n leaves are in, and a COSIGNATURE from a trusted witness raises the
        # witnessed size. See step 5 of verify_journal.

    def _decode(self, seq: int, stored_entry: object, stored_signature: object) -> Entry | None:
        if not isinstance(stored_entry, bytes) or not isinstance(stored_signature, bytes):
            self._add(seq, FindingCode.MALFORMED_ENTRY, "the entry or signature column does not hold a BLOB")
            return None
        try:
            return decode_entry(stored_entry)
        except MalformedEntryError as exc:
            self._add(seq, FindingCode.MALFORMED_ENTRY, str(exc))
            return None

    def _check_signature(self, seq: int, entry: Entry, signature: bytes) -> None:
        candidates = self._keys.get(entry.key_id)
        if not candidates:
            self._add(
                seq,
                FindingCode.UNKNOWN_KEY,
                f"key id {entry.key_id.hex()} matches none of the given public keys",
            )
            return
        payload = signature_payload(self._origin, entry.raw)
        # Key ids are 4 bytes, so two trusted keys may share one; any of them verifying is enough.
        if not any(verifier.verify(payload, signature) for verifier in candidates):
            names = ", ".join(f"{v.name}+{v.key_id.hex()}" for v in candidates)
            self._add(
                seq,
                FindingCode.BAD_SIGNATURE,
                f"signature does not verify under {names} for origin {self._origin!r}",
            )

    def _check_body(self, seq: int, body_bytes: bytes) -> dict[str, Any] | None:
        """Returns the parsed body when it is a JSON object (canonical or not), else None."""
        try:
            # Decode explicitly: json.loads(bytes) would also accept UTF-16 and UTF-32.
            body = json.loads(body_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            self._add(seq, FindingCode.NONCANONICAL_BODY, f"body is not UTF-8 JSON: {exc}")
            return None
        if not isinstance(body, dict):
            self._add(seq, FindingCode.NONCANONICAL_BODY, f"body is a JSON {type(body).__name__}, not an object")
            return None
        try:
            canonical = canonical_json(body)
        except (CanonicalizationError, RecursionError) as exc:
            # json.loads accepts what JCS cannot encode (NaN, integers beyond 2**53, lone surrogates).
            self._add(seq, FindingCode.NONCANONICAL_BODY, f"body has no RFC 8785 form: {exc}")
            return body
        if canonical != body_bytes:
            self._add(
                seq,
                FindingCode.NONCANONICAL_BODY,
                "body is not byte-identical to its RFC 8785 canonical form",
            )
        return body

    def _check_kind(self, seq: int, kind: int, body: dict[str, Any]) -> None:
        try:
            label = EventKind(kind).label
        except ValueError:
            self._add(seq, FindingCode.KIND_MISMATCH, f"header kind {kind} is not a known event kind")
            return
        if body.get("kind") != label:
            self._add(
                seq,
                FindingCode.KIND_MISMATCH,
                f"header kind {kind} is {label!r}, body kind is {_quote(body.get('kind'))}",
            )

    def _check_columns(
        self,
        seq: int,
        entry: Entry,
        body: dict[str, Any] | None,
        stored_nanos: Any,
        stored_indexed: tuple[Any, ...],
    ) -> None:
        if stored_nanos != entry.unix_nanos:
            self._add(
                seq,
                FindingCode.COLUMN_MISMATCH,
                _column_message("unix_nanos", stored_nanos, entry.unix_nanos),
            )
        if body is None:
            return  # Already reported as noncanonical_body; the body columns have no signed value to match.
        for (_, column), stored, signed in zip(INDEXED_FIELDS, stored_indexed, indexed_values(body), strict=True):
            if stored != signed:
                self._add(seq, FindingCode.COLUMN_MISMATCH, _column_message(column, stored, signed))

    def report(self, *, witnessed_size: int) -> VerifyReport:
        """Builds the report from the rows checked so far."""
        return VerifyReport(
            origin=self._origin,
            entries=self.entries,
            findings=list(self._findings),
            tree_size=self._tree.size,
            root_hash=self._tree.root(),
            last_leaf_hash=self._last_leaf,
            witnessed_size=witnessed_size,
        )


def _missing(first: int, next_present: int) -> str:
    count = next_present - first
    if count == 1:
        return f"seq {first} is missing"
    return f"seq {first}..{next_present - 1} are missing ({count} entries)"


def _column_message(column: str, stored: object, signed: object) -> str:
    return f"column {column} holds {_quote(stored)}, the signed entry says {_quote(signed)}"
