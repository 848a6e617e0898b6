"""The single pass of offline verification over a journal's rows (:class:`Scan`), with its receipts, prune
marker and anchors; :func:`gateway.journal.verify.verify_journal` drives it. Pure apart from what it is fed."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from typing import Any

from gateway.canonical import bulk_parse_canonical
from gateway.journal.check import SIGNATURE_FAULTS, EntryProblem, check_entry
from gateway.journal.entry import (
    FORMAT_V1,
    ZERO_HASH,
    Entry,
    EventKind,
    leaf_hash,
)
from gateway.journal.merkle import EMPTY_ROOT, MerkleRoot, decode_state
from gateway.journal.note import NoteError
from gateway.journal.report import (
    Finding,
    FindingCode,
    VerifyReport,
    column_message,
    counted,
    missing_message,
    quote,
    short_hash,
    stored_bytes,
    witness_grace_end,
)
from gateway.journal.schema import INDEXED_FIELDS, indexed_values
from gateway.journal.seal import Seal, parse_seal, seal_signed
from gateway.journal.witness import Anchor, BadCheckpoint, Cosigned, NoteChecker, receipt_claim
from gateway.signing import Verifier

# A cosignature entry is a receipt when its body claims a checkpoint, i.e. has any of these fields.
RECEIPT_FIELDS = ("tree_size", "root_hash", "checkpoint")


PRUNE_FIELDS = ("pruned_before", "last_leaf_hash", "tree_state")


class Scan:
    """State carried from row to row: expected seq, previous leaf hash, Merkle tree, findings, witnessing."""

    def __init__(self, origin: str, keys: dict[bytes, list[Verifier]], notes: NoteChecker) -> None:
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
        self._deferred: list[tuple[int, Cosigned]] = []
        self._receipts = 0
        self._uncredited = 0
        self._uncredited_by: dict[str, None] = {}
        self._witnessed = 0
        self._witnessed_by: dict[str, None] = {}
        # The lowest seq of a credited receipt, per checkpoint size (the grace of --require-witnessed).
        self._receipt_seq_at: dict[int, int] = {}
        self._require_witnessed: int | None = None
        self._min_size: int | None = None
        # Format v2 (gateway/journal/seal.py): the stored seals by size, the size of the last seal passed, and the
        # entries read since the last seal that verified, with what may be done only once a seal vouches for them.
        self._format = FORMAT_V1
        self._seals: dict[int, Seal | str] = {}  # size -> parsed seal, or why it does not parse
        self._last_seal = 0
        self._pending: list[tuple[int, Callable[[], None] | None]] = []
        self._verifiers = [v for candidates in keys.values() for v in candidates]

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

    def set_seals(self, journal_format: int, seals: Iterable[tuple[int, str]]) -> None:
        """The journal's format and its stored seals as (size, note text); call before the first row."""
        self._format = journal_format
        for size, text in seals:
            try:
                self._seals[size] = parse_seal(text)
            except (NoteError, TypeError, ValueError) as exc:
                self._seals[size] = str(exc)
        # Seals at or below where the scan starts (a pruned prefix) cover nothing left to check.
        self._last_seal = max((size for size in self._seals if size <= self._tree.size), default=0)

    def _signature_ok(self, message: bytes, signature: bytes) -> bool:
        return any(v.verify(message, signature) for v in self._verifiers)

    def _check_seal(self, size: int, last_leaf: bytes) -> None:
        """Checks the seal stored at ``size`` now that the scan's tree has that size; a good one vouches for
        every entry read since the last good one."""
        stored = self._seals[size]
        at = size - 1
        previous, self._last_seal = self._last_seal, size
        if isinstance(stored, str):
            self._add(at, FindingCode.BAD_SEAL, f"the seal at tree size {size} is malformed: {stored}")
            return
        checkpoint = stored.checkpoint
        if checkpoint.size != size:
            self._add(
                at,
                FindingCode.BAD_SEAL,
                f"the seal stored at tree size {size} is signed for size {checkpoint.size}: seals were moved",
            )
            return
        if not seal_signed(stored, self._origin, self._signature_ok, {v.key_id for v in self._verifiers}):
            self._add(
                at,
                FindingCode.BAD_SEAL,
                f"the seal at tree size {size} has no valid signature by the key of origin {self._origin!r}",
            )
            return
        root = self._tree.root()
        if checkpoint.root != root or stored.last_leaf != last_leaf:
            self._add(
                at,
                FindingCode.SEAL_MISMATCH,
                f"the sealed root at tree size {size} is {short_hash(checkpoint.root)}..., the journal's is "
                f"{short_hash(root)}...: entries before seq {size} changed after they were committed",
            )
            return
        if stored.prev_size != previous:
            self._add(
                at,
                FindingCode.MISSING_SEAL,
                f"the seal at tree size {size} follows a seal at size {stored.prev_size}, but the seal before it "
                f"in the journal is at size {previous}: a seal was removed",
            )
        pending, self._pending = self._pending, []
        for _, action in pending:
            if action is not None:
                action()

    def finish_seals(self) -> None:
        """After the last row: seals beyond the journal, and entries that no valid seal vouches for."""
        beyond = [size for size in self._seals if size > self._tree.size]
        if beyond:
            self._add(
                None,
                FindingCode.TRUNCATED,
                f"a seal covers {max(beyond)} entries but the journal has {self._tree.size}: entries were removed",
            )
        if self._pending:
            first, last = self._pending[0][0], self._pending[-1][0]
            span = f"seq {first}" if first == last else f"seq {first}..{last}"
            self._add(
                first,
                FindingCode.UNSEALED,
                f"{span}: no valid seal covers {'it' if first == last else 'them'} (their commit's seal was removed "
                "or does not verify), so nothing signed vouches for them",
            )
            self._pending = []

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
                f"journal_meta says origin {quote(recorded)}, signatures are checked for {self._origin!r}",
            )

    def check_row(self, row: tuple[Any, ...]) -> None:
        """Checks one row against its signed bytes (:meth:`_check_row`), then the seal stored at the tree size it
        reaches, if any (format v2)."""
        self._check_row(row)
        size = self._tree.size
        if size in self._seals and self._last_leaf is not None:
            self._check_seal(size, self._last_leaf)

    def _check_row(self, row: tuple[Any, ...]) -> None:
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
            self._add(first_missing, FindingCode.GAP, missing_message(first_missing, seq))
        else:
            expected_prev = ZERO_HASH if seq == 0 else self._prev_leaf
        self._next_seq = seq + 1

        # 2. Recompute the leaf hash from the stored bytes. It, not the stored column, feeds the chain and
        #    the Merkle tree: a tamperer who rewrites both an entry and its leaf_hash column must still be
        #    caught by the next entry's link and by any checkpoint.
        #    (A rebuilt, non-STRICT table could hold TEXT here; its bytes are hashed as stored.)
        entry_bytes, signature = stored_bytes(stored_entry), stored_bytes(stored_signature)
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
                seq,
                stored_entry,
                stored_signature,
                origin=self._origin,
                keys=self._keys,
                prev_leaf_hash=expected_prev,
                parse_body=bulk_parse_canonical,
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
                f"stored leaf_hash {short_hash(stored_leaf)}... differs from SHA-256(0x00|entry|signature) "
                f"{short_hash(leaf)}...: the entry or signature changed after it was written",
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
        if entry.version != self._format:
            self._add(
                seq,
                FindingCode.MALFORMED_ENTRY,
                f"a format v{entry.version} entry in a format v{self._format} journal (a journal never changes format)",
            )

        # 9. Indexed columns are what search and the forwarder read: each must equal the signed value.
        self._check_columns(seq, entry, body, stored_nanos, stored_indexed)

        # 10. A cosignature receipt is trusted only from an entry that verified: signed by a trusted key (its own
        #     signature, or in format v2 the seal of its commit: then only once that seal verified), with a
        #     canonical body of the header's kind. (Seq and chain findings on its row are reported above.)
        action: Callable[[], None] | None = None
        if body is not None and canonical and kind_ok:
            marker_body = body
            if entry.kind == EventKind.COSIGNATURE:
                signed_seq = entry.seq

                def action() -> None:
                    self._check_receipt(seq, signed_seq, marker_body)

            # 11. The prune marker the scan started from must be a verified entry making exactly that claim.
            elif seq == self._marker_seq:

                def action() -> None:
                    self._marker_ok = all(marker_body.get(k) == self._marker_claim.get(k) for k in PRUNE_FIELDS)

        if checked.needs_seal:
            self._pending.append((seq, action))
        elif signed and action is not None:
            action()

    def _check_receipt(self, seq: int, signed_seq: int, body: dict[str, Any]) -> None:
        """Checks a cosignature receipt: its note, the origin's signature, the witness cosignatures, and the
        checkpoint root against the root recomputed at its size."""
        if not any(field in body for field in RECEIPT_FIELDS):
            return  # Claims no checkpoint, so it vouches for nothing: not a receipt.
        self._receipts += 1
        try:
            size, root, text = receipt_claim(body)
            cosigned = self._notes.check(text)
        except BadCheckpoint as exc:
            self._add(seq, FindingCode.BAD_CHECKPOINT, f"cosignature receipt: {exc}")
            return
        checkpoint = cosigned.checkpoint
        if (checkpoint.size, checkpoint.root) != (size, root):
            self._add(
                seq,
                FindingCode.BAD_CHECKPOINT,
                f"the receipt says tree size {size}, root {short_hash(root)}..., its checkpoint says size "
                f"{checkpoint.size}, root {short_hash(checkpoint.root)}...",
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

    def _settle_receipt(self, seq: int, cosigned: Cosigned) -> None:
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
                f"the cosigned root at tree size {checkpoint.size} is {short_hash(checkpoint.root)}..., the journal's "
                f"is {short_hash(recomputed)}...: entries before seq {checkpoint.size} changed after it was cosigned",
            )
        else:
            self._credit(cosigned, receipt=True)
            if cosigned.cosigners:
                size = checkpoint.size
                self._receipt_seq_at[size] = min(seq, self._receipt_seq_at.get(size, seq))

    def _credit(self, cosigned: Cosigned, *, receipt: bool) -> None:
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

    def check_anchor(self, anchor: Anchor) -> None:
        """Compares a caller-supplied cosigned checkpoint with the journal as read."""
        checkpoint = anchor.note.checkpoint
        recomputed = self._roots.get(checkpoint.size)
        if 0 < checkpoint.size < self._pruned_before:
            return  # the anchor covers only pruned entries
        if checkpoint.size > self._tree.size or recomputed is None:
            self._add(
                None,
                FindingCode.TRUNCATED,
                f"journal has {counted(self._tree.size, 'entry', 'entries')} but a cosigned checkpoint "
                f"(anchor {anchor.number}) covers {checkpoint.size}: entries were removed",
            )
        elif recomputed != checkpoint.root:
            self._add(
                None,
                FindingCode.CHECKPOINT_MISMATCH,
                f"anchor {anchor.number} has root {short_hash(checkpoint.root)}... at tree size {checkpoint.size}, "
                f"the journal's is {short_hash(recomputed)}...: the journal was rewritten or replaced",
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
                f"journal holds {counted(size, 'entry', 'entries')}, fewer than --min-size {min_size}: "
                f"{counted(min_size - size, 'entry was', 'entries were')} removed, or this is another journal",
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
            f"{counted(beyond, 'entry is', 'entries are')} beyond the last cosigned checkpoint ({span}; {where}), "
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
                column_message("unix_nanos", stored_nanos, entry.unix_nanos),
            )
        if body is None:
            return  # Already reported as noncanonical_body; the body columns have no signed value to match.
        for (_, column), stored, signed in zip(INDEXED_FIELDS, stored_indexed, indexed_values(body), strict=True):
            if stored != signed:
                self._add(seq, FindingCode.COLUMN_MISMATCH, column_message(column, stored, signed))

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
