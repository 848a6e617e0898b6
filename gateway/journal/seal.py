"""Commit seals of journal format v2: one signed checkpoint per group commit (docs/adr/0024-seal-per-commit-signing.md).

A seal is a C2SP ``tlog-checkpoint`` signed note by the journal's key, with one extension line::

    agentaudit-dev/host              ← origin
    1234                                tree size: the commit's end (entries seq 0 .. 1233)
    Vy2r...=                            base64 RFC 6962 root over the leaf hashes
    agentaudit-seal 1220 q0Zx...=       the previous seal's size, base64 leaf hash of seq 1233
                                     ← blank line
    — agentaudit-dev/host AbCd...       the origin key's Ed25519 signature over the text above

The writer stores it in ``journal_seals`` in the same SQLite transaction as the commit's entries, so no entry is
ever durable without the seal that covers it. The root binds every entry up to the size (what verify and the
collector recompute); the last leaf hash binds them too, through each entry's ``prev_leaf_hash``, which lets a
reader check one entry by walking the chain to the end of its commit instead of hashing the whole tree
(:class:`SealedLookup`); the previous seal's size links the seals, so a deleted seal is seen.

A seal is also a checkpoint the collector can witness as is: the forwarder sends stored seals, it never signs a
new checkpoint over entries it did not verify. Pure apart from :class:`SealedLookup`, which reads a connection.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Callable, Collection
from dataclasses import dataclass

from gateway.errors import MalformedEntryError
from gateway.journal.entry import FORMAT_V1, FORMAT_V2, decode_entry, leaf_hash, signature_payload
from gateway.journal.merkle import HASH_SIZE
from gateway.journal.note import Checkpoint, NoteError, NoteSignature, SignedNote
from gateway.signing import Ed25519Signer

SEAL_EXTENSION = "agentaudit-seal"
FORMAT_META_KEY = "journal_format"

SignatureOk = Callable[[bytes, bytes], bool]
"""(message, signature) -> whether a trusted key of the origin signed it."""


@dataclass(frozen=True)
class Seal:
    """A parsed (not yet verified) seal."""

    checkpoint: Checkpoint
    prev_size: int
    last_leaf: bytes
    note: SignedNote

    @property
    def size(self) -> int:
        return self.checkpoint.size


def seal_text(origin: str, size: int, root: bytes, prev_size: int, last_leaf: bytes) -> str:
    """The note text of a seal (checkpoint lines, then the seal extension line)."""
    checkpoint = Checkpoint(origin, size, root).text()
    return f"{checkpoint}{SEAL_EXTENSION} {prev_size} {base64.b64encode(last_leaf).decode()}\n"


def make_seal(signer: Ed25519Signer, size: int, root: bytes, prev_size: int, last_leaf: bytes) -> str:
    """The encoded signed seal note: one Ed25519 signature."""
    text = seal_text(signer.name, size, root, prev_size, last_leaf)
    signature = NoteSignature(signer.name, signer.key_id, signer.sign(text.encode()))
    return SignedNote(text, (signature,)).encode()


def parse_seal(text: str) -> Seal:
    """Parses a seal note; checks its form only, not its signature.

    Raises:
        NoteError: not a signed checkpoint note with a well-formed seal extension line.
    """
    try:
        note = SignedNote.parse(text)
        checkpoint = Checkpoint.parse(note.text)
    except (NoteError, ValueError) as exc:
        raise NoteError(f"the seal note is malformed: {exc}") from exc
    lines = note.text.split("\n")
    extension = lines[3].split(" ") if len(lines) == 5 else []  # origin, size, root, extension, ""
    if len(extension) != 3 or extension[0] != SEAL_EXTENSION or not extension[1].isdigit():
        raise NoteError("the seal note lacks its agentaudit-seal line")
    try:
        last_leaf = base64.b64decode(extension[2], validate=True)
    except binascii.Error as exc:
        raise NoteError("the seal's last leaf hash is not base64") from exc
    prev_size = int(extension[1])
    if (
        len(last_leaf) != HASH_SIZE
        or prev_size >= checkpoint.size
        or note.text != seal_text(checkpoint.origin, checkpoint.size, checkpoint.root, prev_size, last_leaf)
    ):
        raise NoteError("the seal's line is malformed (hash size, previous size, or not in canonical form)")
    return Seal(checkpoint, prev_size, last_leaf, note)


def seal_signed(seal: Seal, origin: str, signature_ok: SignatureOk, key_ids: Collection[bytes] | None = None) -> bool:
    """Whether the seal is for ``origin`` and a signature line verifies under a trusted key.

    With ``key_ids`` (the trusted keys' C2SP key ids) a line must also name one of them: a signed note's line with
    another key id is from an unknown key and is ignored (C2SP signed-note), even if its signature bytes happen to
    verify, so a seal whose key id was edited is not believed.
    """
    if seal.checkpoint.origin != origin:
        return False
    message = seal.note.text.encode()
    return any(
        line.name == origin and (key_ids is None or line.key_id in key_ids) and signature_ok(message, line.signature)
        for line in seal.note.signatures
    )


def journal_format(conn: sqlite3.Connection) -> int:
    """The format a journal was created with (journal_meta ``journal_format``; absent: v1, the only format then)."""
    try:
        row = conn.execute("SELECT value FROM journal_meta WHERE key = ?", (FORMAT_META_KEY,)).fetchone()
    except sqlite3.Error:
        return FORMAT_V1
    return FORMAT_V2 if row is not None and str(row[0]) == str(FORMAT_V2) else FORMAT_V1


def has_seals_table(conn: sqlite3.Connection) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal_seals'"
    return conn.execute(query).fetchone() is not None


class SealedLookup:
    """Checks single entries of a journal as the readers that do not scan it whole need (state at start, the
    tail self-check): a v1 entry, or a v2 entry with its own signature, by that signature; an unsigned v2 entry
    by the first seal after it, whose signature must verify and whose last leaf hash the entry must chain to.
    """

    def __init__(
        self, conn: sqlite3.Connection, origin: str, signature_ok: SignatureOk, key_ids: Collection[bytes] | None = None
    ) -> None:
        self._conn = conn
        self._origin = origin
        self._ok = signature_ok
        self._key_ids = key_ids  # the trusted keys' ids: a seal line naming another is ignored (seal_signed)
        self._seals = has_seals_table(conn)
        self._verified: dict[int, tuple[int, bytes] | None] = {}  # seal size -> (size, last leaf) if it verified
        # leaf hashes proven to chain into a verified seal's last leaf, by seq (cleared per commit walk)
        self._proven: dict[int, bytes] = {}

    def authentic(self, seq: int, raw: bytes, signature: bytes) -> bool:
        """Whether the entry at ``seq`` with these bytes is vouched for by a trusted key."""
        try:
            entry = decode_entry(raw)
        except MalformedEntryError:
            return False
        if entry.version == FORMAT_V1 or signature:
            return self._ok(signature_payload(self._origin, raw), signature)
        if entry.version != FORMAT_V2 or not self._seals:
            return False
        leaf = leaf_hash(raw, signature)
        if self._proven.get(seq) is not None:
            return self._proven[seq] == leaf
        sealed = self._seal_after(seq)
        if sealed is None:
            return False
        size, last_leaf = sealed
        # Walk the chain from this entry to the end of its commit: each next entry must name the previous leaf.
        walked: dict[int, bytes] = {seq: leaf}
        current = leaf
        rows = self._conn.execute(
            "SELECT seq, entry, signature FROM journal WHERE seq > ? AND seq < ? ORDER BY seq", (seq, size)
        ).fetchall()
        if len(rows) != size - 1 - seq:
            return False
        for next_seq, next_raw, next_signature in rows:
            try:
                following = decode_entry(bytes(next_raw))
            except MalformedEntryError:
                return False
            if following.prev_leaf_hash != current or following.seq != next_seq:
                return False
            current = leaf_hash(bytes(next_raw), bytes(next_signature))
            walked[int(next_seq)] = current
        if current != last_leaf:
            return False
        self._proven.update(walked)
        return True

    def _seal_after(self, seq: int) -> tuple[int, bytes] | None:
        row = self._conn.execute(
            "SELECT size, note FROM journal_seals WHERE size > ? ORDER BY size LIMIT 1", (seq,)
        ).fetchone()
        if row is None:
            return None
        size = int(row[0])
        if size not in self._verified:
            self._verified[size] = None
            try:
                seal = parse_seal(str(row[1]))
            except NoteError:
                return None
            if seal.size == size and seal_signed(seal, self._origin, self._ok, self._key_ids):
                self._verified[size] = (size, seal.last_leaf)
        return self._verified[size]


__all__ = [
    "FORMAT_META_KEY",
    "SEAL_EXTENSION",
    "Seal",
    "SealedLookup",
    "journal_format",
    "make_seal",
    "parse_seal",
    "seal_signed",
    "seal_text",
]
