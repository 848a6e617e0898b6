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

import base64
import binascii
import enum
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, JournalUnreadableError, MalformedEntryError
from gateway.journal import state as state_tables
from gateway.journal.check import SIGNATURE_FAULTS, EntryProblem, check_entry
from gateway.journal.entry import (
    ENTRY_DOMAIN,
    ZERO_HASH,
    Entry,
    EventKind,
    decode_entry,
    leaf_hash,
)
from gateway.journal.merkle import EMPTY_ROOT, HASH_SIZE, MerkleRoot, decode_state
from gateway.journal.note import Checkpoint, NoteError, SignedNote, verify_cosignature, verify_note, witness_key_id
from gateway.journal.schema import COLUMNS, INDEXED_FIELDS, SCHEMA_VERSION, indexed_values
from gateway.signing import Verifier

# Rows are read in the order of the ``seq`` column; the row's own seq is then checked against the signed one.
# COLUMNS is a constant of schema.py, not input, so building the statement from it is safe.
_SELECT_ROWS = f"SELECT {', '.join(COLUMNS)} FROM journal ORDER BY seq"  # noqa: S608
# The pre-pass: rows whose entry bytes carry the cosignature kind byte in their header. It selects on the signed
# header, not on the (untrusted) kind column, so every row the main pass can credit as a receipt is among them.
_SELECT_RECEIPT_CANDIDATES = "SELECT entry FROM journal WHERE substr(entry, ?, 1) = ?"
_RECEIPT_KIND_FILTER = (len(ENTRY_DOMAIN) + 1, bytes([EventKind.COSIGNATURE]))
# A cosignature entry is a receipt when its body claims a checkpoint, i.e. has any of these fields.
_RECEIPT_FIELDS = ("tree_size", "root_hash", "checkpoint")
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
    BAD_PRUNE_MARKER = "bad_prune_marker"
    """The journal starts after a pruned prefix, but the prune marker saying so does not verify or disagrees."""
    """The journal's recorded origin differs from the origin its signatures are checked against."""
    BAD_CHECKPOINT = "bad_checkpoint"
    """A cosignature receipt is malformed: fields missing, the note or checkpoint unparsable, another origin,
    body and checkpoint disagreeing, or no valid signature by the origin key on the note."""
    BAD_COSIGNATURE = "bad_cosignature"
    """A receipt's note has a cosignature line naming a given witness key that does not verify."""
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    """A cosigned checkpoint (receipt or anchor) disagrees with the journal: another root at its size, or a size
    the journal cannot have had at that point."""
    TRUNCATED = "truncated"
    """The journal has fewer entries than an anchor (a cosigned checkpoint given by the caller) covers."""
    UNWITNESSED = "unwitnessed"
    """Journal-level, only with ``--require-witnessed N``: more than N entries lie beyond the last cosigned
    checkpoint's grace (docs/verify.md, "Assurance levels"); the key holder could cut or rewrite them unseen."""
    BELOW_MIN_SIZE = "below_min_size"
    """Journal-level, only with ``--min-size N``: the journal holds fewer than N entries."""
    STATE_MISMATCH = "state_mismatch"
    """A state table row (approvals, kill_switches, forwarder_state) contradicts the signed events; the sidecar
    ignores it for enforcement (docs/adr/0012). The message names the table and key."""


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
        witnessed_size: how many leading entries are covered by a checkpoint that a given witness key validly
            cosigned and that matches the journal (a receipt in the journal or an anchor); 0 when there is none
            or no witness key was given.
        witnessed_by: the given witness keys (names) with a valid cosignature on a checkpoint of that size.
        witness_keys: the names of the witness keys verification was given.
        receipts: cosignature entries found in entries that verified (whatever their checkpoint's state).
        uncredited_receipts: receipts that passed every check except that no given witness key cosigned them
            (with no witness key given, every such receipt).
        uncredited_witnesses: the names those uncredited receipts are cosigned by, as the notes say.
        pruned_before: entries before this seq were removed by retention, as a signed prune marker in the
            journal records (0: nothing pruned); the tree and chain continue from the marker's state.
        witnessed_receipt_seq: the seq of the first receipt that made ``witnessed_size`` witnessed, None when no
            receipt did (nothing witnessed, or only an anchor covers that size).
        unwitnessed_beyond_grace: entries after the witnessed prefix *and* after that receipt (see
            :func:`witness_grace_end`); what ``require_witnessed`` bounds.
        require_witnessed: the bound asked for (``--require-witnessed N``), None when not asked.
        min_size: the size asked for (``--min-size N``), None when not asked.
    """

    origin: str
    entries: int
    findings: list[Finding]
    tree_size: int
    root_hash: bytes
    last_leaf_hash: bytes | None
    witnessed_size: int = 0
    pruned_before: int = 0
    witnessed_by: tuple[str, ...] = ()
    witness_keys: tuple[str, ...] = ()
    receipts: int = 0
    uncredited_receipts: int = 0
    uncredited_witnesses: tuple[str, ...] = ()
    witnessed_receipt_seq: int | None = None
    unwitnessed_beyond_grace: int = 0
    require_witnessed: int | None = None
    min_size: int | None = None

    @property
    def ok(self) -> bool:
        """True when no tamper evidence was found."""
        return not self.findings

    @property
    def unwitnessed_tail(self) -> int:
        """Entries after the witnessed prefix: cutting them off is not detectable from this journal alone."""
        return max(self.entries - self.witnessed_size, 0)

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
            "unwitnessed_tail": self.unwitnessed_tail,
            "witnessed_by": list(self.witnessed_by),
            "witness_keys": list(self.witness_keys),
            "receipts": self.receipts,
            "uncredited_receipts": self.uncredited_receipts,
            "uncredited_witnesses": list(self.uncredited_witnesses),
            "witnessed_receipt_seq": self.witnessed_receipt_seq,
            "unwitnessed_beyond_grace": self.unwitnessed_beyond_grace,
            "require_witnessed": self.require_witnessed,
            "min_size": self.min_size,
            "findings": [{"seq": f.seq, "code": str(f.code), "message": f.message} for f in self.findings],
        }


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
    notes = _NoteChecker(origin, verifiers, witnesses)
    # Anchors are the caller's evidence, not the journal's: one that does not verify is a usage error.
    anchor_points = [_read_anchor(number, text, notes) for number, text in enumerate(anchors, 1)]

    conn = _open_read_only(path)
    scan = _Scan(origin, keys, notes)
    try:
        # Step 2: read everything inside one read transaction, so a journal that a live sidecar is
        # appending to is verified as one consistent snapshot (meta and rows from the same instant).
        conn.execute("BEGIN")
        _check_shape(conn, path)
        # Step 3: cross-check the recorded origin against the trusted one.
        scan.check_meta(_read_meta(conn, path))
        # Step 4: learn the tree sizes that checkpoints claim (anchors, and receipt bodies read in a cheap
        # pre-pass without verifying anything), so the streaming pass can keep the Merkle root at each of them.
        # Sizes from forged rows only cost a remembered root: the main pass credits verified receipts only.
        marker = _latest_prune_marker(conn)
        if marker is not None:
            scan.start_after_prune(*marker)
        scan.want_roots(a.note.checkpoint.size for a in anchor_points)
        scan.want_roots(_claimed_sizes(conn))
        # Step 5: stream the rows in seq order (constant memory: the cursor is iterated, never fetched
        # whole) and check each against its signed bytes; see _Scan.check_row for the per-row procedure,
        # which also checks every cosignature receipt in a verified entry (_Scan._check_receipt).
        for row in conn.execute(_SELECT_ROWS):
            scan.check_row(row)
        # Step 5b: the state tables must say what the signed events say.
        _check_state_tables(conn, origin, verifiers, scan)
    except sqlite3.Error as exc:
        # A file that stops being readable part-way (corrupt page, I/O error) proves nothing either way.
        raise JournalUnreadableError(f"{path}: reading failed after {scan.entries} rows: {exc}") from exc
    finally:
        conn.close()

    # Step 6: receipts whose root could not be compared in stream, then the anchors: a journal shorter than an
    # anchor lost entries; another root at an anchor's size means history was rewritten (or the file replaced).
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


def witness_grace_end(witnessed_size: int, receipt_seq: int | None) -> int:
    """The tree size up to which the journal is witnessed or necessarily unwitnessed (the *grace*).

    A receipt for a checkpoint of size S can only be appended after the collector answered, so it sits at some
    seq R >= S, and the entries S..R (those written while the batch was in flight, and the receipt itself) can
    never be covered by that checkpoint. The grace therefore ends after the first receipt that witnessed S:
    ``max(S, R + 1)``. The *first* such receipt, because a copy of the same cosigned note can be appended again
    later by anyone holding the key, and must not stretch the grace over entries written after the original.
    With no receipt (nothing witnessed, or only an anchor), the grace ends at S itself.
    """
    return witnessed_size if receipt_seq is None else max(witnessed_size, receipt_seq + 1)


def _check_state_tables(conn: sqlite3.Connection, origin: str, verifiers: Sequence[Verifier], scan: _Scan) -> None:
    """Reports every state row that contradicts the signed events (``state.trusted_state``, as the sidecar does at
    start). Entries are re-verified there under the trusted keys; an entry that fails is not believed."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"approvals", "kill_switches", "forwarder_state"} <= tables:
        return  # a journal file without state tables (e.g. exported) has nothing to contradict

    def signature_ok(payload: bytes, signature: bytes) -> bool:
        return any(v.verify(payload, signature) for v in verifiers)

    for mismatch in state_tables.trusted_state(conn, origin, signature_ok).mismatches:
        scan.add_finding(
            None,
            FindingCode.STATE_MISMATCH,
            f"{mismatch.table} {_quote(mismatch.key)}: {mismatch.detail}; the signed events are what is enforced",
        )


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


def printable_names(names: Sequence[str]) -> str:
    """Key names for a message: as they are when printable, else quoted (names from a note are not trusted)."""
    return ", ".join(n if n.isprintable() and len(n) <= _MAX_QUOTED else _quote(n) for n in names)


def _short(digest: object) -> str:
    """The first 8 bytes of a hash in hex, enough to tell hashes apart in a message."""
    return digest.hex()[:16] if isinstance(digest, bytes) else _quote(digest)


def _stored_bytes(value: object) -> bytes:
    """The bytes of a stored BLOB; any other SQLite value as its UTF-8 text (NULL as no bytes)."""
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


class _BadCheckpoint(Exception):
    """A checkpoint note or receipt cannot be used; the message says why."""


@dataclass(frozen=True)
class _Cosigned:
    """A checkpoint note that parsed, is for the trusted origin and carries a valid signature by its key.

    Attributes:
        checkpoint: the checkpoint the note signs.
        cosigners: names of given witness keys with a valid cosignature on it.
        forged: names of given witness keys that a cosignature line claims (name and key id) but whose
            signature does not verify.
        others: names of signature lines by neither the origin's key nor a given witness key.
    """

    checkpoint: Checkpoint
    cosigners: tuple[str, ...]
    forged: tuple[str, ...]
    others: tuple[str, ...]


@dataclass(frozen=True)
class _Anchor:
    number: int
    note: _Cosigned


class _NoteChecker:
    """Checks C2SP checkpoint notes against the trusted origin key(s) and witness keys."""

    def __init__(self, origin: str, verifiers: Sequence[Verifier], witnesses: Sequence[Verifier]) -> None:
        self._origin = origin
        self._verifiers = tuple(verifiers)
        self._witnesses = tuple((w, witness_key_id(w.name, w.public_key)) for w in witnesses)
        self.witness_names = tuple(dict.fromkeys(w.name for w in witnesses))

    def check(self, text: str) -> _Cosigned:
        """Parses and checks one cosigned checkpoint note.

        Raises:
            _BadCheckpoint: the note or its checkpoint is malformed, is for another origin, or has no valid
                signature by the origin's key.
        """
        try:
            note = SignedNote.parse(text)
            checkpoint = Checkpoint.parse(note.text)
        except (NoteError, ValueError) as exc:  # ValueError: e.g. a size of non-ASCII digits, lone surrogates
            raise _BadCheckpoint(f"the checkpoint note is malformed: {exc}") from exc
        if checkpoint.origin != self._origin:
            raise _BadCheckpoint(f"the checkpoint is for origin {_quote(checkpoint.origin)}, not {self._origin!r}")
        if not any(verify_note(note, verifier) for verifier in self._verifiers):
            raise _BadCheckpoint("the checkpoint note has no valid signature by the origin's key")
        cosigners: dict[str, None] = {}
        forged: dict[str, None] = {}
        others: dict[str, None] = {}
        for signature in note.signatures:
            if any(signature.name == v.name and signature.key_id == v.key_id for v in self._verifiers):
                continue  # The origin's own signature, checked above.
            claimed = [w for w, kid in self._witnesses if signature.name == w.name and signature.key_id == kid]
            if not claimed:
                others[signature.name] = None
                continue
            # Checked line by line: a forged line must not hide behind a valid one by another witness.
            alone = SignedNote(note.text, (signature,))
            if any(verify_cosignature(alone, witness) is not None for witness in claimed):
                cosigners[signature.name] = None
            else:
                forged[signature.name] = None
        return _Cosigned(checkpoint, tuple(cosigners), tuple(forged), tuple(others))


def _read_anchor(number: int, text: str, notes: _NoteChecker) -> _Anchor:
    try:
        cosigned = notes.check(text)
    except _BadCheckpoint as exc:
        raise ConfigError(f"anchor {number}: {exc}") from exc
    if cosigned.forged:
        raise ConfigError(f"anchor {number}: the cosignature by {', '.join(cosigned.forged)} does not verify")
    if notes.witness_names and not cosigned.cosigners:
        raise ConfigError(
            f"anchor {number}: no given witness key ({', '.join(notes.witness_names)}) cosigned it"
            + (f"; it is cosigned by {printable_names(cosigned.others)}" if cosigned.others else "")
        )
    return _Anchor(number, cosigned)


def _receipt_claim(body: dict[str, Any]) -> tuple[int, bytes, str]:
    """The tree size, root hash and note text a cosignature receipt body states.

    Raises:
        _BadCheckpoint: a field is missing or has the wrong type or form.
    """
    size, root_hex, text = body.get("tree_size"), body.get("root_hash"), body.get("checkpoint")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _BadCheckpoint(f"tree_size {_quote(size)} is not a non-negative integer")
    root = None
    if isinstance(root_hex, str) and len(root_hex) == 2 * HASH_SIZE:
        try:
            root = bytes.fromhex(root_hex)
        except ValueError:
            root = None
    if root is None or len(root) != HASH_SIZE:
        raise _BadCheckpoint(f"root_hash {_quote(root_hex)} is not a {HASH_SIZE}-byte hash in hex")
    if not isinstance(text, str):
        raise _BadCheckpoint("checkpoint is not the note text")
    return size, root, text


_PRUNE_FIELDS = ("pruned_before", "last_leaf_hash", "tree_state")


def _latest_prune_marker(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]] | None:
    """The newest prune marker's seq and (not yet verified) claim, read by the kind byte in its entry."""
    rows = conn.execute("SELECT seq, entry FROM journal WHERE kind = 'prune' ORDER BY seq DESC LIMIT 1").fetchall()
    for seq, raw in rows:
        try:
            entry = decode_entry(_stored_bytes(raw))
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


class _Scan:
    """State carried from row to row: expected seq, previous leaf hash, Merkle tree, findings, witnessing."""

    def __init__(self, origin: str, keys: dict[bytes, list[Verifier]], notes: _NoteChecker) -> None:
        self._origin = origin
        self._keys = keys
        self._notes = notes
        self._findings: list[Finding] = []
        self._tree = MerkleRoot()
        self.entries = 0
        # Rows read so far; the seq the next row should have; the recomputed leaf hash of the row before.
        self._next_seq = 0
        self._prev_leaf = ZERO_HASH
        self._last_leaf: bytes | None = None
        # Retention: the prefix a prune marker says was removed, and the marker's seq (checked when reached).
        self._pruned_before = 0
        self._marker_seq: int | None = None
        self._marker_claim: dict[str, Any] = {}
        self._marker_ok = False
        # Tree sizes some checkpoint claims, and the recomputed root at each once the scan reached it. This is
        # the only state that grows, and it grows with the number of receipts, not of entries.
        self._wanted: set[int] = set()
        self._roots: dict[int, bytes] = {}
        # Verified receipts whose size the scan had not reached when they were read (possible only when rows
        # are missing before them); compared at the end.
        self._deferred: list[tuple[int, _Cosigned]] = []
        self._receipts = 0
        self._uncredited = 0
        self._uncredited_by: dict[str, None] = {}
        self._witnessed = 0
        self._witnessed_by: dict[str, None] = {}
        # The lowest seq of a credited receipt, per checkpoint size (the grace of --require-witnessed).
        self._receipt_seq_at: dict[int, int] = {}
        self._require_witnessed: int | None = None
        self._min_size: int | None = None

    def start_after_prune(self, marker_seq: int, claim: dict[str, Any]) -> None:
        """Continues from a prune marker's state: the chain after its last leaf, the tree from its frontier.

        The claim is read before the scan and trusted only once the marker's own entry verifies in the scan;
        a marker that does not is a finding, and so is a claim that cannot be decoded.
        """
        try:
            before = int(claim["pruned_before"])
            last_leaf = bytes.fromhex(str(claim["last_leaf_hash"]))
            tree = decode_state(base64.b64decode(str(claim["tree_state"]), validate=True))
        except (KeyError, TypeError, ValueError, binascii.Error):
            self._add(marker_seq, FindingCode.BAD_PRUNE_MARKER, "the prune marker's state cannot be decoded")
            return
        if tree.size != before or len(last_leaf) != 32:
            self._add(marker_seq, FindingCode.BAD_PRUNE_MARKER, "the prune marker's tree does not end at its prefix")
            return
        self._pruned_before, self._marker_seq, self._marker_claim = before, marker_seq, claim
        self._next_seq, self._prev_leaf, self._tree = before, last_leaf, tree

    def finish_prune(self) -> None:
        """A pruned prefix counts only if its marker's entry verified and carried the claim the scan used."""
        if self._marker_seq is not None and not self._marker_ok:
            self._add(
                self._marker_seq,
                FindingCode.BAD_PRUNE_MARKER,
                f"entries before seq {self._pruned_before} are gone, but the prune marker saying so does not verify",
            )

    def want_roots(self, sizes: Iterable[int]) -> None:
        """Asks the scan to keep the Merkle root at each of these tree sizes (call before the first row)."""
        for size in sizes:
            if size == 0:
                self._roots[0] = EMPTY_ROOT
            elif size == self._tree.size:
                self._roots[size] = self._tree.root()  # where a prune marker's tree starts the scan
            else:
                self._wanted.add(size)

    def add_finding(self, seq: int | None, code: FindingCode, message: str) -> None:
        """Records a finding made outside the row scan (the state tables)."""
        self._add(seq, code, message)

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
        if self._tree.size in self._wanted:
            self._roots[self._tree.size] = self._tree.root()
        self._prev_leaf = self._last_leaf = leaf

        # 3. Check the entry against its signed bytes, by the steps every holder of an entry runs
        #    (gateway/journal/check.py): decode, signature bound to the trusted origin under the key the entry
        #    names, signed seq, chain link, canonical body, kind. Values that are not BLOBs are no entry at all.
        if isinstance(stored_entry, bytes) and isinstance(stored_signature, bytes):
            checked = check_entry(
                seq, stored_entry, stored_signature, origin=self._origin, keys=self._keys, prev_leaf_hash=expected_prev
            )
            problems = checked.problems
        else:
            self._add(seq, FindingCode.MALFORMED_ENTRY, "the entry or signature column does not hold a BLOB")
            checked, problems = None, ()
        self._add_problems(seq, (p for p in problems if p.fault in SIGNATURE_FAULTS))

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
        if checked is None or checked.entry is None:
            return
        entry, body, signed, canonical, kind_ok = (
            checked.entry,
            checked.body,
            checked.signed,
            checked.canonical,
            checked.kind_ok,
        )

        # 5-8. What the signed entry says, reported after the stored leaf hash: the signed seq is the row's, the
        #    chain links to the previous row, the body is canonical JSON, its kind names the header's.
        self._add_problems(seq, (p for p in problems if p.fault not in SIGNATURE_FAULTS))

        # 9. Indexed columns are what search and the forwarder read: each must equal the signed value.
        self._check_columns(seq, entry, body, stored_nanos, stored_indexed)

        # 10. A cosignature receipt is trusted only from an entry that verified: signed by a trusted key, with
        #     a canonical body of the header's kind. (Seq and chain findings on its row are reported above.)
        if entry.kind == EventKind.COSIGNATURE and signed and body is not None and canonical and kind_ok:
            self._check_receipt(seq, entry.seq, body)
        # 11. The prune marker the scan started from must be a verified entry making exactly that claim.
        if seq == self._marker_seq and signed and body is not None and canonical and kind_ok:
            self._marker_ok = all(body.get(k) == self._marker_claim.get(k) for k in _PRUNE_FIELDS)

    def _check_receipt(self, seq: int, signed_seq: int, body: dict[str, Any]) -> None:
        """Checks a cosignature receipt: its note, the origin's signature, the witness cosignatures, and the
        checkpoint root against the root recomputed at its size."""
        if not any(field in body for field in _RECEIPT_FIELDS):
            return  # Claims no checkpoint, so it vouches for nothing: not a receipt.
        self._receipts += 1
        try:
            size, root, text = _receipt_claim(body)
            cosigned = self._notes.check(text)
        except _BadCheckpoint as exc:
            self._add(seq, FindingCode.BAD_CHECKPOINT, f"cosignature receipt: {exc}")
            return
        checkpoint = cosigned.checkpoint
        if (checkpoint.size, checkpoint.root) != (size, root):
            self._add(
                seq,
                FindingCode.BAD_CHECKPOINT,
                f"the receipt says tree size {size}, root {_short(root)}..., its checkpoint says size "
                f"{checkpoint.size}, root {_short(checkpoint.root)}...",
            )
            return
        for name in cosigned.forged:
            self._add(seq, FindingCode.BAD_COSIGNATURE, f"the cosignature by witness {name!r} does not verify")
        if size > signed_seq:
            self._add(
                seq,
                FindingCode.CHECKPOINT_MISMATCH,
                f"the receipt's checkpoint covers {size} entries, but a receipt at seq {signed_seq} can only "
                f"cover the {signed_seq} before it",
            )
            return
        if size in self._roots:
            self._settle_receipt(seq, cosigned)
        else:
            self._deferred.append((seq, cosigned))

    def _settle_receipt(self, seq: int, cosigned: _Cosigned) -> None:
        checkpoint = cosigned.checkpoint
        if checkpoint.size < self._pruned_before:
            return  # covers only pruned entries: nothing left to compare (the marker vouches for the prefix)
        recomputed = self._roots.get(checkpoint.size)
        if recomputed is None:
            self._add(
                seq,
                FindingCode.CHECKPOINT_MISMATCH,
                f"the receipt's checkpoint covers {checkpoint.size} entries, the journal has only {self._tree.size}",
            )
        elif recomputed != checkpoint.root:
            self._add(
                seq,
                FindingCode.CHECKPOINT_MISMATCH,
                f"the cosigned root at tree size {checkpoint.size} is {_short(checkpoint.root)}..., the journal's "
                f"is {_short(recomputed)}...: entries before seq {checkpoint.size} changed after it was cosigned",
            )
        else:
            self._credit(cosigned, receipt=True)
            if cosigned.cosigners:
                size = checkpoint.size
                self._receipt_seq_at[size] = min(seq, self._receipt_seq_at.get(size, seq))

    def _credit(self, cosigned: _Cosigned, *, receipt: bool) -> None:
        """Counts a checkpoint that matches the journal towards the witnessed size."""
        size = cosigned.checkpoint.size
        if cosigned.cosigners:
            if size > self._witnessed:
                self._witnessed, self._witnessed_by = size, {}
            if size == self._witnessed and size > 0:
                self._witnessed_by.update(dict.fromkeys(cosigned.cosigners))
        elif receipt and not cosigned.forged:  # A forged cosignature is already a finding.
            self._uncredited += 1
            self._uncredited_by.update(dict.fromkeys(cosigned.others))

    def finish_receipts(self) -> None:
        """Compares the receipts whose size the scan had not reached when they were read."""
        for seq, cosigned in self._deferred:
            self._settle_receipt(seq, cosigned)
        self._deferred.clear()

    def check_anchor(self, anchor: _Anchor) -> None:
        """Compares a caller-supplied cosigned checkpoint with the journal as read."""
        checkpoint = anchor.note.checkpoint
        recomputed = self._roots.get(checkpoint.size)
        if 0 < checkpoint.size < self._pruned_before:
            return  # the anchor covers only pruned entries
        if checkpoint.size > self._tree.size or recomputed is None:
            self._add(
                None,
                FindingCode.TRUNCATED,
                f"journal has {_count(self._tree.size, 'entry', 'entries')} but a cosigned checkpoint "
                f"(anchor {anchor.number}) covers {checkpoint.size}: entries were removed",
            )
        elif recomputed != checkpoint.root:
            self._add(
                None,
                FindingCode.CHECKPOINT_MISMATCH,
                f"anchor {anchor.number} has root {_short(checkpoint.root)}... at tree size {checkpoint.size}, "
                f"the journal's is {_short(recomputed)}...: the journal was rewritten or replaced",
            )
        else:
            self._credit(anchor.note, receipt=False)

    def require(self, require_witnessed: int | None, min_size: int | None) -> None:
        """Adds the findings of the assurance the caller demanded (call after every receipt and anchor)."""
        self._require_witnessed, self._min_size = require_witnessed, min_size
        size = self._tree.size
        if min_size is not None and size < min_size:
            self._add(
                None,
                FindingCode.BELOW_MIN_SIZE,
                f"journal holds {_count(size, 'entry', 'entries')}, fewer than --min-size {min_size}: "
                f"{_count(min_size - size, 'entry was', 'entries were')} removed, or this is another journal",
            )
        beyond = self._beyond_grace()
        if require_witnessed is None or beyond <= require_witnessed:
            return
        first = size - beyond
        span = f"seq {first}" if beyond == 1 else f"seq {first}..{size - 1}"
        receipt_seq = self._receipt_seq_at.get(self._witnessed)
        if self._witnessed == 0:
            where = "no checkpoint cosigned by a given witness key covers any entry"
        elif receipt_seq is None:
            where = f"the last cosigned checkpoint (an anchor) covers {self._witnessed}"
        else:
            where = f"the last cosigned checkpoint covers {self._witnessed}, its receipt is at seq {receipt_seq}"
        self._add(
            None,
            FindingCode.UNWITNESSED,
            f"{_count(beyond, 'entry is', 'entries are')} beyond the last cosigned checkpoint ({span}; {where}), "
            f"more than the {require_witnessed} allowed: the signing key's holder could cut or rewrite "
            f"{'it' if beyond == 1 else 'them'} without detection",
        )

    def _beyond_grace(self) -> int:
        grace_end = witness_grace_end(self._witnessed, self._receipt_seq_at.get(self._witnessed))
        return max(self._tree.size - grace_end, 0)

    def _add_problems(self, seq: int, problems: Iterable[EntryProblem]) -> None:
        for problem in problems:
            # EntryFault values are finding codes by construction (gateway/journal/check.py).
            self._add(seq, FindingCode(problem.fault.value), problem.message)

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

    def report(self) -> VerifyReport:
        """Builds the report from the rows checked so far."""
        # Rows are checked in seq order, so findings already are, except those settled after the scan
        # (deferred receipts, anchors): a stable sort puts them in place, journal-level ones first.
        findings = sorted(self._findings, key=lambda f: (0, 0) if f.seq is None else (1, f.seq))
        return VerifyReport(
            origin=self._origin,
            entries=self.entries,
            findings=findings,
            tree_size=self._tree.size,
            root_hash=self._tree.root(),
            last_leaf_hash=self._last_leaf,
            witnessed_size=self._witnessed,
            pruned_before=self._pruned_before,
            witnessed_by=tuple(sorted(self._witnessed_by)),
            witness_keys=self._notes.witness_names,
            receipts=self._receipts,
            uncredited_receipts=self._uncredited,
            uncredited_witnesses=tuple(self._uncredited_by),
            witnessed_receipt_seq=self._receipt_seq_at.get(self._witnessed),
            unwitnessed_beyond_grace=self._beyond_grace(),
            require_witnessed=self._require_witnessed,
            min_size=self._min_size,
        )


def _missing(first: int, next_present: int) -> str:
    count = next_present - first
    if count == 1:
        return f"seq {first} is missing"
    return f"seq {first}..{next_present - 1} are missing ({count} entries)"


def _column_message(column: str, stored: object, signed: object) -> str:
    return f"column {column} holds {_quote(stored)}, the signed entry says {_quote(signed)}"
