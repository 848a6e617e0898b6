"""Verification of one ingested batch against what the collector holds for its origin (pure, no I/O).

The collector is a witness (DESIGN §4, C2SP tlog-witness): it cosigns a checkpoint only if the batch extends
exactly what it already holds for that origin, so a sidecar that truncates, rewrites or forks its journal cannot
get the result witnessed. :func:`verify_batch` decides; the stores (SQLite, PostgreSQL) only load the origin's
state under a lock, call it, and write what it returns, so both backends behave identically.

The collector cosigns every state it stores, in the same transaction: the held size is always the cosigned size.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from gateway.canonical import bulk_parse_canonical, parse_json
from gateway.errors import FailedPreconditionError
from gateway.journal.check import EntryFault, check_entry
from gateway.journal.entry import HEADER_SIZE, ZERO_HASH, leaf_hash
from gateway.journal.merkle import MerkleRoot, decode_state, encode_state
from gateway.journal.note import Checkpoint, NoteError, NoteSignature, SignedNote, cosign
from gateway.journal.schema import indexed_values
from gateway.signing import Ed25519Signer, Verifier

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")

BatchEntry = tuple[int, bytes, bytes]
"""One entry of a batch as sent: (seq, exact entry bytes, signature)."""

Keys = dict[bytes, list[Verifier]]
"""The origin's registered public keys by key id (several may share a 4-byte id)."""


class RejectCode(enum.StrEnum):
    """Why a batch was refused. Stable: sidecars, alerts and dashboards match on these strings."""

    UNKNOWN_ORIGIN = "unknown_origin"
    """No keys are registered for the origin."""
    BAD_CHECKPOINT = "bad_checkpoint"
    """The checkpoint is not a well-formed C2SP signed note, or names another origin."""
    CHECKPOINT_SIGNATURE = "checkpoint_signature"
    """No key registered for the origin signed the checkpoint."""
    EMPTY_BATCH = "empty_batch"
    """The batch holds no entries."""
    PRUNED = "pruned"
    """The batch resends entries the collector held but has since removed by retention: they cannot be compared.
    Resend from the collector's size instead."""
    NOT_CONTIGUOUS = "not_contiguous"
    """The batch's seqs are not consecutive, or an entry is signed with another seq than it was sent as."""
    SIZE_MISMATCH = "size_mismatch"
    """The checkpoint's size is not the last entry's seq + 1."""
    GAP = "gap"
    """The batch starts after the last entry held: entries in between are missing."""
    CONFLICTING_ENTRY = "conflicting_entry"
    """An entry the collector already holds was resent with different bytes."""
    MALFORMED_ENTRY = "malformed_entry"
    """The entry bytes do not decode as an envelope, its body is not canonical (RFC 8785) JSON object, or the
    body's kind does not name the header's known kind byte (what ``verify`` reports as ``noncanonical_body``
    and ``kind_mismatch``)."""
    UNKNOWN_KEY = "unknown_key"
    """The entry's key id matches no key registered for the origin."""
    BAD_SIGNATURE = "bad_signature"
    """The entry's signature does not verify under the registered key it names."""
    CHAIN_BREAK = "chain_break"
    """The entry's prev_leaf_hash is not the leaf hash of the entry before it."""
    ROOT_MISMATCH = "root_mismatch"
    """The RFC 6962 root recomputed over all entries differs from the checkpoint's root."""
    ROLLBACK = "rollback"
    """The checkpoint is smaller than one already cosigned: the journal was truncated or rolled back."""
    FORK = "fork"
    """The checkpoint has the size of the one already cosigned but another root: the journal was forked."""


EVIDENCE_CODES = frozenset({RejectCode.ROLLBACK, RejectCode.FORK})
"""Refusals whose checkpoint is kept as evidence: a validly signed note contradicting a cosigned one."""


class IngestRejected(FailedPreconditionError):
    """A batch was refused. ``code`` is a stable :class:`RejectCode`; the message names the seq concerned."""

    def __init__(self, code: RejectCode, message: str, *, seq: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.detail = message
        self.seq = seq

    @property
    def is_evidence(self) -> bool:
        """Whether this refusal is evidence of rollback or fork (the store keeps the note and alerts)."""
        return self.code in EVIDENCE_CODES


@dataclass(frozen=True)
class OriginState:
    """What the collector holds for one origin.

    Attributes:
        origin: the journal's origin (its key name).
        size: entries held, seq 0 to size - 1.
        last_leaf_hash: leaf hash of seq size - 1 (32 zero bytes when size is 0).
        tree: the RFC 6962 tree over the held leaves, as :func:`gateway.journal.merkle.encode_state` bytes.
        cosigned_note: the last checkpoint note the collector cosigned ("" if none), cosignature included.
        cosigned_root: that checkpoint's root (b"" if none).
    """

    origin: str
    size: int
    last_leaf_hash: bytes
    tree: bytes
    cosigned_note: str
    cosigned_root: bytes

    @classmethod
    def empty(cls, origin: str) -> OriginState:
        """The state of an origin the collector holds nothing for."""
        return cls(origin, 0, ZERO_HASH, encode_state(MerkleRoot()), "", b"")

    def merkle(self) -> MerkleRoot:
        """A fresh accumulator restored from :attr:`tree`, ready to take leaf ``size``.

        Raises:
            ValueError: the stored tree state is corrupt or does not match ``size``.
        """
        tree = decode_state(self.tree)
        if tree.size != self.size:
            raise ValueError(f"origin {self.origin!r}: stored tree has {tree.size} leaves, state says {self.size}")
        return tree


class NewEntry(NamedTuple):
    """An entry verified and ready to store, with the values derived from its signed bytes (a named tuple: one is
    built per ingested entry, and a frozen dataclass costs ~1 µs more to build)."""

    seq: int
    entry: bytes
    signature: bytes
    leaf_hash: bytes
    unix_nanos: int
    indexed: tuple[Any, ...]
    """The indexed column values, in ``gateway.journal.schema.INDEXED_FIELDS`` order."""

    @property
    def body(self) -> dict[str, Any]:
        """The body, parsed again from the checked bytes (not kept: a worker process would have to send it back)."""
        body: dict[str, Any] = parse_json(self.entry[HEADER_SIZE:].decode("utf-8"))
        return body


EntriesCheck = Callable[[str, Keys, Sequence[BatchEntry], bytes], list[NewEntry]]
"""Step 9 of :func:`verify_batch`: (origin, keys, new entries, leaf hash before the first) to the entries to store,
raising :class:`IngestRejected` for the first faulty one in seq order."""


@dataclass(frozen=True)
class BatchResult:
    """The outcome of a batch that passed verification.

    Attributes:
        checkpoint: the checkpoint the batch brings the origin to.
        note: the checkpoint note reduced to the signature lines that verified under a registered key.
        new_entries: entries not held before, in seq order (empty for a resend).
        state: the origin's state after the batch; not cosigned yet unless ``resend``.
        resend: the checkpoint is the one already cosigned: nothing to store, answer with the held note.
    """

    checkpoint: Checkpoint
    note: SignedNote
    new_entries: tuple[NewEntry, ...]
    state: OriginState
    resend: bool

    def cosigned_state(self, witness: Ed25519Signer, now_s: int) -> OriginState:
        """The state to store: the new one with the witness cosignature (the held one, for a resend)."""
        if self.resend:
            return self.state
        cosigned = self.note.with_signature(cosign(self.note, witness, now_s))
        return replace(self.state, cosigned_note=cosigned.encode(), cosigned_root=self.checkpoint.root)


def held_range(size: int, entries: Sequence[BatchEntry]) -> range:
    """The seqs of a batch that overlap what is held (at most ``len(entries)``), for prefetching leaf hashes."""
    if not entries:
        return range(0)
    first = entries[0][0]
    return range(max(first, 0), max(min(size, first + len(entries)), 0))


def verify_batch(
    state: OriginState,
    verifiers: Sequence[Verifier],
    entries: Sequence[BatchEntry],
    checkpoint_note: str,
    stored_leaf: Callable[[int], bytes | None],
    *,
    check_entries: EntriesCheck | None = None,
) -> BatchResult:
    """Decides whether a batch extends exactly what is held for ``state.origin``: :func:`begin_batch` (steps 1
    to 8), then the new entries' check (step 9) and :meth:`PendingBatch.finish` (step 10).

    Args:
        state: what the collector holds for the origin (loaded under the origin's lock).
        verifiers: the public keys registered for the origin.
        entries: (seq, entry bytes, signature), consecutive; the first may overlap what is held.
        checkpoint_note: C2SP signed note of the checkpoint after the last entry, signed by the origin's key.
        stored_leaf: leaf hash held at a seq below ``state.size`` (None if absent: corrupt state).
        check_entries: runs step 9 (default :func:`check_new_entries`, in this thread); the stores pass
            :meth:`gateway.collector.checking.EntryCheckPool.check`, the same check spread over processes.

    Raises:
        IngestRejected: the batch is refused; ``code`` says why and the message names the seq.
        ValueError: the held state is inconsistent (a fault of the collector, not of the batch).
    """
    begun = begin_batch(state, verifiers, entries, checkpoint_note, stored_leaf)
    if isinstance(begun, BatchResult):
        return begun
    check = check_entries or check_new_entries
    return begun.finish(check(begun.origin, begun.keys, begun.new, begun.prev_leaf_hash))


@dataclass(frozen=True)
class PendingBatch:
    """A batch that passed steps 1 to 8 of :func:`verify_batch`: its new entries are still to be checked (step 9,
    by the caller, in one piece or chunk by chunk in seq order) and the root compared (step 10, :meth:`finish`).

    Every refusal still to come (a faulty entry, a root mismatch) is a plain refusal, never evidence: the witness
    rules were applied in step 4. So a store may write checked entries inside its transaction before the last
    chunk is checked, as long as any refusal rolls that transaction back.

    Attributes:
        origin: the batch's origin; keys: its registered keys by key id.
        new: the entries not held before, in seq order (at least one).
        prev_leaf_hash: the held leaf hash before the first new entry.
    """

    origin: str
    keys: Keys
    new: Sequence[BatchEntry]
    prev_leaf_hash: bytes
    checkpoint: Checkpoint
    note: SignedNote
    state: OriginState

    def finish(self, new_entries: Sequence[NewEntry]) -> BatchResult:
        """Step 10 over the checked entries (exactly :attr:`new`, checked in seq order from :attr:`prev_leaf_hash`).

        Raises:
            IngestRejected: ROOT_MISMATCH.
            ValueError: ``new_entries`` are not the checked :attr:`new` (a fault of the caller), or the held tree
                state is inconsistent.
        """
        # The new entries are consecutive (step 5) and checked in seq order, so their ends and count say it all.
        if (
            not new_entries
            or len(new_entries) != len(self.new)
            or (new_entries[0].seq, new_entries[-1].seq)
            != (
                self.new[0][0],
                self.new[-1][0],
            )
        ):
            raise ValueError("the checked entries are not the batch's new entries")
        # 10. The RFC 6962 root over every held leaf plus the new ones must be the checkpoint's: it is what gets
        #     cosigned, and what lets anyone prove later that an entry is in the witnessed journal.
        tree = self.state.merkle()
        for new_entry in new_entries:
            tree.append(new_entry.leaf_hash)
        root = tree.root()
        last = new_entries[-1].seq
        if root != self.checkpoint.root:
            raise IngestRejected(
                RejectCode.ROOT_MISMATCH,
                f"checkpoint root {_short(self.checkpoint.root)}... for size {self.checkpoint.size} differs from the "
                f"root {_short(root)}... recomputed over seq 0 to {last}",
                seq=last,
            )
        new_state = OriginState(
            self.origin, self.checkpoint.size, new_entries[-1].leaf_hash, encode_state(tree), "", b""
        )
        return BatchResult(self.checkpoint, self.note, tuple(new_entries), new_state, resend=False)


def begin_batch(
    state: OriginState,
    verifiers: Sequence[Verifier],
    entries: Sequence[BatchEntry],
    checkpoint_note: str,
    stored_leaf: Callable[[int], bytes | None],
) -> BatchResult | PendingBatch:
    """Steps 1 to 8 of :func:`verify_batch` (arguments and refusals as there): the resend's result, or the batch
    with its new entries still to check.

    Raises:
        IngestRejected: the batch is refused; evidence (rollback, fork) is refused only here.
        ValueError: the held state is inconsistent.
    """
    origin = state.origin

    # 1. Parse the signed note and the checkpoint it carries. Nothing in it is trusted yet.
    note, checkpoint = _parse_checkpoint(checkpoint_note)

    # 2. The checkpoint must be for this origin: a note from another journal proves nothing about this one.
    if checkpoint.origin != origin:
        raise IngestRejected(
            RejectCode.BAD_CHECKPOINT,
            f"checkpoint is for origin {_quote(checkpoint.origin)}, the batch for origin {origin!r}",
        )

    # 3. A key registered for the origin must have signed it; only those signature lines are kept, so the
    #    cosigned note never carries lines the collector did not check.
    if not verifiers:
        raise IngestRejected(RejectCode.UNKNOWN_ORIGIN, f"no keys are registered for origin {origin!r}")
    trusted = tuple(s for s in note.signatures if _signed_by_registered_key(note, s, verifiers))
    if not trusted:
        raise IngestRejected(
            RejectCode.CHECKPOINT_SIGNATURE,
            f"checkpoint for size {checkpoint.size} is not signed by a key registered for origin {origin!r}",
            seq=checkpoint.size - 1 if checkpoint.size else None,
        )
    note = SignedNote(note.text, trusted)

    # 4. Witness rules, before any entry is looked at: an authentic checkpoint that contradicts the cosigned one
    #    is evidence on its own, whatever entries come with it. Smaller means rollback; the same size with
    #    another root means a fork. (Every held state is cosigned, so the cosigned size is state.size.)
    if state.size and checkpoint.size < state.size:
        raise IngestRejected(
            RejectCode.ROLLBACK,
            f"checkpoint size {checkpoint.size} is smaller than the cosigned size {state.size}: entries from seq "
            f"{checkpoint.size} on were removed or rolled back",
            seq=checkpoint.size,
        )
    if state.size and checkpoint.size == state.size and checkpoint.root != state.cosigned_root:
        raise IngestRejected(
            RejectCode.FORK,
            f"checkpoint for size {checkpoint.size} has root {_short(checkpoint.root)}..., the cosigned checkpoint "
            f"of that size has root {_short(state.cosigned_root)}...: the journal forked",
            seq=checkpoint.size - 1,
        )

    # 5. The batch holds entries, numbered consecutively, up to the checkpoint's size.
    if not entries:
        raise IngestRejected(RejectCode.EMPTY_BATCH, f"batch for checkpoint size {checkpoint.size} has no entries")
    first = entries[0][0]
    if first < 0:
        raise IngestRejected(RejectCode.NOT_CONTIGUOUS, f"batch starts at negative seq {first}", seq=first)
    for position, (seq, _, _) in enumerate(entries):
        if seq != first + position:
            raise IngestRejected(
                RejectCode.NOT_CONTIGUOUS,
                f"entry {position} of the batch has seq {seq}, expected {first + position}",
                seq=first + position,
            )
    last = first + len(entries) - 1
    if checkpoint.size != last + 1:
        raise IngestRejected(
            RejectCode.SIZE_MISMATCH,
            f"checkpoint size {checkpoint.size} does not cover the batch, which ends at seq {last} (size {last + 1})",
            seq=last,
        )

    # 6. The batch must start within what is held or right after it: anything later leaves a gap.
    if first > state.size:
        raise IngestRejected(
            RejectCode.GAP,
            f"batch starts at seq {first} but the collector holds seq 0 to {state.size - 1}: "
            f"seq {state.size} to {first - 1} are missing",
            seq=state.size,
        )

    # 7. Entries already held must come back byte-identical (same leaf hash: SHA-256 over entry and signature).
    for seq in held_range(state.size, entries):
        _, raw, signature = entries[seq - first]
        held = stored_leaf(seq)
        if held is None:
            # Below the held size but gone: removed by the collector's retention (or the store is damaged).
            raise IngestRejected(
                RejectCode.PRUNED,
                f"seq {seq} was held but has been removed by retention; send entries from seq {state.size} on",
                seq=seq,
            )
        sent = leaf_hash(raw, signature)
        if sent != held:
            raise IngestRejected(
                RejectCode.CONFLICTING_ENTRY,
                f"seq {seq} differs from the entry already held (leaf hash {_short(sent)}... "
                f"instead of {_short(held)}...)",
                seq=seq,
            )

    # 8. Everything sent was already held and the checkpoint is the cosigned one (step 4 matched its root):
    #    a resend. Answer with the held cosigned note; store nothing.
    if checkpoint.size == state.size:
        return BatchResult(checkpoint, note, (), state, resend=True)

    # 9. (by the caller) Each new entry passes the check verify runs on every row: decodes, is signed as the seq
    #    it was sent as, names a registered key, carries a valid signature bound to this origin, links to the leaf
    #    hash before it, has a canonical JSON object body whose kind names the header's.
    keys: Keys = {}
    for verifier in verifiers:
        keys.setdefault(verifier.key_id, []).append(verifier)
    state.merkle()  # a corrupt held tree is the collector's fault: say so before any entry is looked at
    return PendingBatch(origin, keys, entries[state.size - first :], state.last_leaf_hash, checkpoint, note, state)


def check_new_entries(origin: str, keys: Keys, entries: Sequence[BatchEntry], prev_leaf_hash: bytes) -> list[NewEntry]:
    """Every new entry through :func:`check_new_entry`, in seq order, in this thread; refuses on the first fault."""
    new_entries = []
    prev = prev_leaf_hash
    for seq, raw, signature in entries:
        checked = check_new_entry(origin, keys, seq, raw, signature, prev)
        if isinstance(checked, IngestRejected):
            raise checked
        new_entries.append(checked)
        prev = checked.leaf_hash
    return new_entries


# An entry fault as the collector's refusal (its vocabulary predates the shared check and stays stable).
_REJECTION_FOR_FAULT: dict[EntryFault, RejectCode] = {
    EntryFault.MALFORMED_ENTRY: RejectCode.MALFORMED_ENTRY,
    EntryFault.UNKNOWN_KEY: RejectCode.UNKNOWN_KEY,
    EntryFault.BAD_SIGNATURE: RejectCode.BAD_SIGNATURE,
    EntryFault.REORDER: RejectCode.NOT_CONTIGUOUS,
    EntryFault.CHAIN_BREAK: RejectCode.CHAIN_BREAK,
    EntryFault.NONCANONICAL_BODY: RejectCode.MALFORMED_ENTRY,
    EntryFault.KIND_MISMATCH: RejectCode.MALFORMED_ENTRY,
}
# Which fault names the refusal when an entry has several: the order the collector has always checked in.
_FAULT_PRECEDENCE = (
    EntryFault.MALFORMED_ENTRY,
    EntryFault.REORDER,
    EntryFault.UNKNOWN_KEY,
    EntryFault.BAD_SIGNATURE,
    EntryFault.CHAIN_BREAK,
    EntryFault.NONCANONICAL_BODY,
    EntryFault.KIND_MISMATCH,
)


def check_new_entry(
    origin: str, keys: Keys, seq: int, raw: bytes, signature: bytes, prev: bytes
) -> NewEntry | IngestRejected:
    """Runs the check ``verify`` runs on a stored row (:func:`gateway.journal.check.check_entry`, the signature
    included) on a new entry, so the collector witnesses nothing ``verify`` would later report; returns the
    refusal for its first fault rather than raising it (a worker process sends it back as values)."""
    checked = check_entry(
        seq, raw, signature, origin=origin, keys=keys, prev_leaf_hash=prev, parse_body=bulk_parse_canonical
    )
    if checked.problems:
        problem = min(checked.problems, key=lambda p: _FAULT_PRECEDENCE.index(p.fault))
        return IngestRejected(_REJECTION_FOR_FAULT[problem.fault], f"seq {seq}: {problem.message}", seq=seq)
    assert checked.entry is not None and checked.body is not None  # no problems: it decoded to a JSON object
    return NewEntry(
        seq=seq,
        entry=raw,
        signature=signature,
        leaf_hash=leaf_hash(raw, signature),
        unix_nanos=checked.entry.unix_nanos,
        indexed=storable_indexed_values(checked.body, checked.entry.body),
    )


def _parse_checkpoint(text: str) -> tuple[SignedNote, Checkpoint]:
    # C2SP signed-note: valid UTF-8 with no control characters but newline. It also keeps the note storable
    # verbatim as evidence in any database (PostgreSQL text cannot hold NUL).
    if not is_storable_text(text) or _CONTROL_CHARACTERS.search(text):
        raise IngestRejected(RejectCode.BAD_CHECKPOINT, "checkpoint note holds control characters or invalid UTF-8")
    try:
        note = SignedNote.parse(text)
        return note, Checkpoint.parse(note.text)
    except NoteError as exc:
        raise IngestRejected(RejectCode.BAD_CHECKPOINT, f"checkpoint note is malformed: {exc}") from exc


def _signed_by_registered_key(note: SignedNote, line: NoteSignature, verifiers: Sequence[Verifier]) -> bool:
    message = note.text.encode()
    return any(line.name == v.name and line.key_id == v.key_id and v.verify(message, line.signature) for v in verifiers)


def storable_indexed_values(body: dict[str, Any], source: bytes | None = None) -> tuple[Any, ...]:
    """:func:`indexed_values` with text no database column can hold (NUL, lone surrogates) set to NULL.

    The columns are a search index over signed bytes that are stored verbatim, so an odd value costs only its
    index entry, never the batch, and both stores index it the same way. ``source``: the JSON bytes ``body`` was
    parsed from, if known; when they are ASCII without a ``\\u`` escape, no string in the body can hold anything
    but ASCII without NUL (only a ``\\u`` escape can put NUL, a surrogate or a non-ASCII character into a string
    of ASCII JSON), so the values need no closer look: ~0.1 µs against ~2 µs an entry.
    """
    values = indexed_values(body)
    if source is not None and source.isascii() and b"\\u" not in source:
        return values
    texts = "".join(v for v in values if isinstance(v, str))
    if texts.isascii() and "\x00" not in texts:  # the usual case: every value storable, told by one scan of them all
        return values
    return tuple(None if isinstance(v, str) and not is_storable_text(v) else v for v in values)


def is_storable_text(text: str) -> bool:
    """Whether both stores can hold ``text`` in a text column (no NUL, valid UTF-8)."""
    if "\x00" in text:
        return False
    if text.isascii():  # the usual case, and no lone surrogate is ASCII: skips encoding a copy (per indexed value)
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(digest: bytes) -> str:
    return digest.hex()[:12]


def _quote(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")
