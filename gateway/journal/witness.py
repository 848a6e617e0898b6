"""Checking C2SP checkpoint notes for verification: the origin's signature, witness cosignatures, anchors and
the claims of cosignature receipts (docs/verify.md, "Witnessing"). Pure; used by the scan and by verify."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError
from gateway.journal.merkle import HASH_SIZE
from gateway.journal.note import Checkpoint, NoteError, SignedNote, verify_cosignature, verify_note, witness_key_id
from gateway.journal.report import printable_names, quote
from gateway.signing import Verifier


class BadCheckpoint(Exception):
    """A checkpoint note or receipt cannot be used; the message says why."""


@dataclass(frozen=True)
class Cosigned:
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
class Anchor:
    number: int
    note: Cosigned


class NoteChecker:
    """Checks C2SP checkpoint notes against the trusted origin key(s) and witness keys."""

    def __init__(self, origin: str, verifiers: Sequence[Verifier], witnesses: Sequence[Verifier]) -> None:
        self._origin = origin
        self._verifiers = tuple(verifiers)
        self._witnesses = tuple((w, witness_key_id(w.name, w.public_key)) for w in witnesses)
        self.witness_names = tuple(dict.fromkeys(w.name for w in witnesses))

    def check(self, text: str) -> Cosigned:
        """Parses and checks one cosigned checkpoint note.

        Raises:
            BadCheckpoint: the note or its checkpoint is malformed, is for another origin, or has no valid
                signature by the origin's key.
        """
        try:
            note = SignedNote.parse(text)
            checkpoint = Checkpoint.parse(note.text)
        except (NoteError, ValueError) as exc:  # ValueError: e.g. a size of non-ASCII digits, lone surrogates
            raise BadCheckpoint(f"the checkpoint note is malformed: {exc}") from exc
        if checkpoint.origin != self._origin:
            raise BadCheckpoint(f"the checkpoint is for origin {quote(checkpoint.origin)}, not {self._origin!r}")
        if not any(verify_note(note, verifier) for verifier in self._verifiers):
            raise BadCheckpoint("the checkpoint note has no valid signature by the origin's key")
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
        return Cosigned(checkpoint, tuple(cosigners), tuple(forged), tuple(others))


def read_anchor(number: int, text: str, notes: NoteChecker) -> Anchor:
    try:
        cosigned = notes.check(text)
    except BadCheckpoint as exc:
        raise ConfigError(f"anchor {number}: {exc}") from exc
    if cosigned.forged:
        raise ConfigError(f"anchor {number}: the cosignature by {', '.join(cosigned.forged)} does not verify")
    if notes.witness_names and not cosigned.cosigners:
        raise ConfigError(
            f"anchor {number}: no given witness key ({', '.join(notes.witness_names)}) cosigned it"
            + (f"; it is cosigned by {printable_names(cosigned.others)}" if cosigned.others else "")
        )
    return Anchor(number, cosigned)


def receipt_claim(body: dict[str, Any]) -> tuple[int, bytes, str]:
    """The tree size, root hash and note text a cosignature receipt body states.

    Raises:
        BadCheckpoint: a field is missing or has the wrong type or form.
    """
    size, root_hex, text = body.get("tree_size"), body.get("root_hash"), body.get("checkpoint")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadCheckpoint(f"tree_size {quote(size)} is not a non-negative integer")
    root = None
    if isinstance(root_hex, str) and len(root_hex) == 2 * HASH_SIZE:
        try:
            root = bytes.fromhex(root_hex)
        except ValueError:
            root = None
    if root is None or len(root) != HASH_SIZE:
        raise BadCheckpoint(f"root_hash {quote(root_hex)} is not a {HASH_SIZE}-byte hash in hex")
    if not isinstance(text, str):
        raise BadCheckpoint("checkpoint is not the note text")
    return size, root, text
