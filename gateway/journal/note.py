"""C2SP signed notes: ``tlog-checkpoint`` checkpoints and ``tlog-cosignature`` witness cosignatures.

A signed note is UTF-8 text ending in a newline, a blank line, then one line per signature::

    agentaudit-dev/host          ← checkpoint body (C2SP tlog-checkpoint): origin,
    1234                            tree size,
    Vy2r...=                        base64 RFC 6962 root hash
                                 ← blank line
    — agentaudit-dev/host AbCd...   ← "— " name " " base64(key id (4) | signature)

* The origin's signature (type 0x01, Ed25519) signs the note text itself.
* A witness cosignature (``cosignature/v1``, type 0x04) has key id SHA-256(name | "\\n" | 0x04 | key)[:4] and signs
  ``"cosignature/v1\\ntime " <unix seconds> "\\n"`` followed by the checkpoint text; its line holds
  base64(key id | u64 timestamp | Ed25519 signature).

Pure (no I/O): the sidecar, the collector and the offline verifier share it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from gateway.errors import AgentAuditError
from gateway.signing import Ed25519Signer, Verifier

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
COSIGNATURE_ALG = b"\x04"
_COSIGN_HEADER = "cosignature/v1\ntime {}\n"
MAX_NOTE_BYTES = 64 * 1024


class NoteError(AgentAuditError):
    """Text is not a well-formed signed note or checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin, size and RFC 6962 root."""

    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        """The C2SP tlog-checkpoint note text."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parses checkpoint note text (extension lines after the root are ignored)."""
        lines = text.split("\n")
        if len(lines) < 4 or not text.endswith("\n"):
            raise NoteError("checkpoint text needs origin, size and root lines")
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        if not origin or not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
            raise NoteError("checkpoint origin or size is malformed")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error as exc:
            raise NoteError("checkpoint root is not base64") from exc
        if len(root) != 32:
            raise NoteError("checkpoint root is not a 32-byte hash")
        return cls(origin, int(size_text), root)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key id and the rest of the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The encoded signature line (without the newline)."""
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}"


@dataclass(frozen=True)
class SignedNote:
    """Note text plus its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> str:
        """The full signed note."""
        return self.text + "\n" + "".join(s.line() + "\n" for s in self.signatures)

    def with_signature(self, signature: NoteSignature) -> SignedNote:
        """A copy with one more signature line."""
        return SignedNote(self.text, (*self.signatures, signature))

    @classmethod
    def parse(cls, data: str) -> SignedNote:
        """Parses a signed note; refuses anything malformed or oversized."""
        if len(data.encode()) > MAX_NOTE_BYTES:
            raise NoteError("note is too large")
        text, sep, sigs = data.rpartition("\n\n")
        if not sep or not sigs.endswith("\n"):
            raise NoteError("note must be text, a blank line, then signature lines")
        signatures = []
        for line in sigs[:-1].split("\n"):
            if not line.startswith(SIGNATURE_PREFIX):
                raise NoteError("signature lines start with an em dash and a space")
            name, _, b64 = line[len(SIGNATURE_PREFIX) :].rpartition(" ")
            try:
                raw = base64.b64decode(b64, validate=True)
            except binascii.Error as exc:
                raise NoteError("signature is not base64") from exc
            if not name or len(raw) < 5:
                raise NoteError("signature line is malformed")
            signatures.append(NoteSignature(name, raw[:4], raw[4:]))
        return cls(text + "\n", tuple(signatures))


def sign_checkpoint(checkpoint: Checkpoint, signer: Ed25519Signer) -> SignedNote:
    """The checkpoint signed by the origin's key (its name must be the origin)."""
    text = checkpoint.text()
    signature = NoteSignature(signer.name, signer.key_id, signer.sign(text.encode()))
    return SignedNote(text, (signature,))


def verify_note(note: SignedNote, verifier: Verifier) -> bool:
    """Whether ``note`` carries a valid signature by ``verifier`` (matched by name and key id)."""
    return any(
        s.name == verifier.name and s.key_id == verifier.key_id and verifier.verify(note.text.encode(), s.signature)
        for s in note.signatures
    )


def witness_key_id(name: str, public_key: bytes) -> bytes:
    """The C2SP cosignature/v1 key id of a witness key."""
    return hashlib.sha256(name.encode() + b"\n" + COSIGNATURE_ALG + public_key).digest()[:4]


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return (_COSIGN_HEADER.format(timestamp) + text).encode()


def cosign(note: SignedNote, witness: Ed25519Signer, timestamp: int) -> NoteSignature:
    """A witness cosignature (cosignature/v1) over the note's checkpoint text at ``timestamp`` (unix seconds)."""
    key_id = witness_key_id(witness.name, witness.verifier.public_key)
    signature = witness.sign(_cosigned_message(note.text, timestamp))
    return NoteSignature(witness.name, key_id, struct.pack(">Q", timestamp) + signature)


def verify_cosignature(note: SignedNote, witness: Verifier) -> int | None:
    """The timestamp of a valid cosignature by ``witness`` on ``note``, or None."""
    key_id = witness_key_id(witness.name, witness.public_key)
    for s in note.signatures:
        if s.name != witness.name or s.key_id != key_id or len(s.signature) != 8 + 64:
            continue
        (timestamp,) = struct.unpack(">Q", s.signature[:8])
        if witness.verify(_cosigned_message(note.text, timestamp), s.signature[8:]):
            return int(timestamp)
    return None
