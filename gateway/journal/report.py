"""What offline verification reports: finding codes, findings, the report and the witness grace rule.

Shared by :mod:`gateway.journal.verify` (the procedure) and :mod:`gateway.journal.scan` (the per-row checks); pure.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Attacker-controlled values are quoted in messages; cap them so one huge column cannot flood a report.
MAX_QUOTED = 80


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
    BAD_SEAL = "bad_seal"
    """Format v2: a stored commit seal is malformed, stored at another size than it signs, or has no valid
    signature by the origin's key (forged, or swapped from another journal)."""
    SEAL_MISMATCH = "seal_mismatch"
    """Format v2: a validly signed seal's root (or last leaf hash) differs from the journal's at its size: entries
    before it changed after they were committed."""
    MISSING_SEAL = "missing_seal"
    """Format v2: a seal names a previous seal size at which the journal holds no seal: a seal was removed."""
    UNSEALED = "unsealed"
    """Format v2: entries after the last valid seal, which nothing signed vouches for (their seal was removed or
    does not verify)."""
    STATE_MISMATCH = "state_mismatch"
    """A state table row (approvals, approval_votes, kill_switches, forwarder_state) contradicts the signed events;
    the sidecar ignores it for enforcement (docs/adr/0012). The message names the table and key."""


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


def counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def quote(value: object) -> str:
    """Quotes a stored value for a message. repr() escapes control characters, so a tampered column cannot
    inject terminal escape sequences into the report an auditor reads."""
    text = value.hex() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def printable_names(names: Sequence[str]) -> str:
    """Key names for a message: as they are when printable, else quoted (names from a note are not trusted)."""
    return ", ".join(n if n.isprintable() and len(n) <= MAX_QUOTED else quote(n) for n in names)


def short_hash(digest: object) -> str:
    """The first 8 bytes of a hash in hex, enough to tell hashes apart in a message."""
    return digest.hex()[:16] if isinstance(digest, bytes) else quote(digest)


def stored_bytes(value: object) -> bytes:
    """The bytes of a stored BLOB; any other SQLite value as its UTF-8 text (NULL as no bytes)."""
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


def missing_message(first: int, next_present: int) -> str:
    count = next_present - first
    if count == 1:
        return f"seq {first} is missing"
    return f"seq {first}..{next_present - 1} are missing ({count} entries)"


def column_message(column: str, stored: object, signed: object) -> str:
    return f"column {column} holds {quote(stored)}, the signed entry says {quote(signed)}"


def assurance(report: VerifyReport) -> str:
    """What a clean report proves, in plain words: signed, and how far witnessed (docs/verify.md, levels)."""
    signed = "signed: no entry was edited without the signing key"
    size, keys = report.witnessed_size, report.witness_keys
    if not keys:
        return f"{signed}; witnessing not checked (no --witness-key): the key holder could rewrite any of it"
    if size == 0:
        return f"{signed}; not witnessed: no checkpoint cosigned by {', '.join(keys)} covers any entry"
    by = ", ".join(report.witnessed_by)
    if size >= report.tree_size:
        return f"{signed}; witnessed to the end by {by}: not even the key holder can rewrite it"
    return (
        f"{signed}; witnessed up to seq {size - 1} by {by}: not even the key holder can rewrite those; "
        f"seq {size} on is not witnessed"
    )
