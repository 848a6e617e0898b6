"""The start-up self-check: the journal's tail re-verified from its stored bytes before the sidecar serves.

At start the writer refuses a journal younger than its high-water mark (:mod:`gateway.journal.head`) and the state
tables are derived from the signed events (ADR 0012), but neither looks at whether the stored entries still verify:
an entry edited in place (the triggers dropped, a byte spliced in, ``agentaudit journal tamper-demo`` on the live
file) would go unnoticed until someone ran ``agentaudit verify``. So, bounded to stay cheap on a large journal:

1. Read the last ``TAIL_ENTRIES`` entries, widened back to the mark's seq if the mark is older (it lags the tail by
   at most ``head_interval_s``), plus the one entry before them to anchor the chain.
2. Check each with :func:`gateway.journal.check.check_entry` (signature, signed seq, chain link to the previous
   entry's *recomputed* leaf hash, canonical body, kind), and that its stored leaf hash is the recomputed one.
3. Check the recomputed leaf hash at the mark's seq against the mark, so an entry edited at or before the point
   this sidecar last acknowledged cannot re-link the chain unnoticed.
4. Format v2: each commit seal ending in the window must be signed by the key and name the recomputed leaf hash
   at its size as its last leaf, and the last one must end at the tail: v2 entries carry no signature of their
   own, so this is what catches an edit whose author re-chained the entries after it.

On any finding :func:`report_tamper` logs one ERROR block naming each seq and finding, journals it once (a
``gap_recovery`` event with ``operation: tamper_detected``; not again on a restart that finds the same), alerts,
and, with ``journal.on_tamper: stop``, makes Decide answer ``stop``/``journal_recovery_required`` until an operator
acknowledges (``agentaudit recovery acknowledge``). With ``warn`` (the default) the sidecar keeps serving.

Measured (check_tail on a 5,000-entry journal made by tests.journal_helpers.write_journal, best of 5, on a
shared 2-core machine): 128 ms for the default 1,000 entries, 751 ms for 5,000; about 0.13 ms per entry, almost
all of it the Ed25519 verifications.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway import reasons
from gateway.alerts import AlertDispatcher, journal_alert
from gateway.errors import MalformedEntryError
from gateway.journal.check import check_entry
from gateway.journal.entry import FORMAT_V2, ZERO_HASH, decode_entry, leaf_hash
from gateway.journal.head import read_head
from gateway.journal.note import NoteError
from gateway.journal.seal import parse_seal, seal_signed
from gateway.journal.store import JournalReader
from gateway.sidecar.recorder import AuditRecorder
from gateway.signing import Verifier

log = logging.getLogger(__name__)

TAIL_ENTRIES = 1000
"""How many of the newest entries the self-check re-verifies at every start."""

ON_TAMPER = ("warn", "stop")


@dataclass(frozen=True)
class TailFinding:
    """One problem found in the journal's tail: the seq, a finding code (``verify``'s vocabulary) and why."""

    seq: int
    code: str
    message: str


@dataclass(frozen=True)
class TailCheck:
    """What the self-check looked at and found."""

    start: int  # first seq checked
    end: int  # one past the last seq checked (the journal's size)
    mark_seq: int | None  # the high-water mark's seq, when there is one
    findings: tuple[TailFinding, ...]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """No finding."""
        return not self.findings


async def check_tail(
    reader: JournalReader, journal: Path, verifier: Verifier, size: int, *, entries: int = TAIL_ENTRIES
) -> TailCheck:
    """Re-verifies the journal's newest ``entries`` entries and the link to the high-water mark (steps 1-3)."""
    started = time.perf_counter()
    mark = read_head(journal)
    # 1. The window: the tail, widened back to the mark, and one entry before it to anchor the chain.
    start = max(0, size - entries)
    if mark is not None and mark.seq < size:
        start = min(start, mark.seq)
    anchor = max(0, start - 1)
    rows = await reader.signed_entries(anchor, size) if size else []
    keys = {verifier.key_id: [verifier]}
    findings: list[TailFinding] = []
    leaves: dict[int, bytes] = {}
    prev: bytes | None = ZERO_HASH if anchor == 0 else None
    expected = anchor
    for row in rows:
        if row.seq != expected:
            findings.append(TailFinding(expected, "gap", f"entries {expected}..{row.seq - 1} are missing"))
            prev = None  # the entry before is missing: its link cannot be checked
        recomputed = leaf_hash(row.entry, row.signature)
        leaves[row.seq] = recomputed
        if row.seq >= start:
            # 2. Each entry from its stored bytes, linked to the previous entry's recomputed leaf hash.
            checked = check_entry(
                row.seq, row.entry, row.signature, origin=verifier.name, keys=keys, prev_leaf_hash=prev
            )
            findings += [TailFinding(row.seq, str(p.fault), p.message) for p in checked.problems]
            if row.leaf_hash != recomputed:
                findings.append(
                    TailFinding(row.seq, "leaf_hash_mismatch", "the stored leaf hash is not the entry's own")
                )
        # After an edited entry, the next one is linked to the stored leaf hash: that is what the writer chained it
        # to, so an edit is reported once, at its own seq, and a second edit (of the column too) still shows.
        faulty = bool(findings) and findings[-1].seq == row.seq
        prev, expected = (row.leaf_hash if faulty else recomputed), row.seq + 1
    if expected != size:
        findings.append(TailFinding(expected, "gap", f"entries {expected}..{size - 1} are missing"))
    # 3. The mark: what this sidecar last acknowledged must still be the entry at that seq.
    if mark is not None and mark.seq in leaves and leaves[mark.seq] != mark.leaf_hash:
        findings.append(
            TailFinding(
                mark.seq,
                "head_mismatch",
                f"the entry at the high-water mark's seq {mark.seq} is not the one acknowledged "
                f"(leaf hash {leaves[mark.seq].hex()[:16]}…, the mark says {mark.leaf_hash.hex()[:16]}…)",
            )
        )
    # 4. The seals of the window (format v2).
    if rows and decode_version(rows[-1].entry) == FORMAT_V2:
        findings += await _check_seals(reader, verifier, leaves, start, size)
    return TailCheck(start, size, mark.seq if mark else None, tuple(findings), time.perf_counter() - started)


def decode_version(raw: bytes) -> int:
    """The format of an entry's bytes (0: they do not decode)."""
    try:
        return decode_entry(raw).version
    except MalformedEntryError:
        return 0


async def _check_seals(
    reader: JournalReader, verifier: Verifier, leaves: dict[int, bytes], start: int, size: int
) -> list[TailFinding]:
    findings: list[TailFinding] = []
    last = 0
    for seal_size, text in await reader.seals(start, size + 1_000_000_000):
        at = seal_size - 1
        try:
            seal = parse_seal(text)
        except NoteError as exc:
            findings.append(TailFinding(at, "bad_seal", str(exc)))
            continue
        if seal.size != seal_size or not seal_signed(seal, verifier.name, verifier.verify, {verifier.key_id}):
            findings.append(TailFinding(at, "bad_seal", f"the seal at size {seal_size} does not verify"))
            continue
        if seal_size > size or leaves.get(at) != seal.last_leaf:
            findings.append(TailFinding(at, "seal_mismatch", f"the seal at size {seal_size} names another last entry"))
            continue
        last = seal_size
    if last != size:
        findings.append(TailFinding(max(last, start), "unsealed", f"no valid seal ends at the tail (size {size})"))
    return findings


@dataclass
class TamperGate:
    """Whether Decide must refuse because the self-check found tampering (``on_tamper: stop``), until acknowledged."""

    reason: str = ""
    acknowledged: bool = field(default=False)

    @property
    def blocked(self) -> str:
        """Why Decide must refuse, or ''."""
        return "" if self.acknowledged else self.reason

    def acknowledge(self) -> None:
        """An operator accepted the finding (``agentaudit recovery acknowledge``): Decide answers again."""
        self.acknowledged = True


async def report_tamper(
    check: TailCheck,
    recorder: AuditRecorder,
    reader: JournalReader,
    *,
    on_tamper: str,
    origin: str,
    alerts: AlertDispatcher | None,
) -> TamperGate:
    """Logs, journals (once), alerts on and gates on the self-check's findings; returns the gate for Decide."""
    gate = TamperGate()
    checked = f"entries {check.start}..{check.end - 1}" if check.end else "an empty journal"
    found = "" if check.ok else f", {len(check.findings)} finding(s)"
    log.info("start-up self-check: %s verified in %.3fs%s", checked, check.elapsed_s, found)
    if check.ok:
        return gate
    stop = on_tamper == "stop"
    lines = "\n".join(f"  seq {f.seq}: {f.code}: {f.message}" for f in check.findings)
    log.error(
        "JOURNAL TAMPERING DETECTED at start: the stored entries of the journal's tail no longer verify\n%s\n"
        "  checked seq %d..%d; run `agentaudit verify` for the whole journal. %s",
        lines,
        check.start,
        check.end - 1,
        "Decide answers stop (journal_recovery_required) until an operator runs `agentaudit recovery acknowledge`"
        if stop
        else "Serving anyway (journal.on_tamper: warn)",
    )
    summary = "; ".join(f"seq {f.seq}: {f.code}" for f in check.findings[:20])
    if stop:
        gate.reason = f"journal tampering detected at start ({summary})"
    if await _already_journaled(reader, check):
        return gate
    event = await recorder.record_tamper_detected(
        summary,
        [{"seq": f.seq, "finding": f.code, "message": f.message} for f in check.findings[:100]],
        {"start": check.start, "end": check.end},
        fail_closed=stop,
    )
    if alerts is not None:
        alerts.notify(
            journal_alert(
                reason=reasons.JOURNAL_RECOVERY_REQUIRED,
                rule="journal_tampered",
                origin=origin,
                event_id=event.event_id,
                decision="stop" if stop else "allow",
            )
        )
    return gate


async def _already_journaled(reader: JournalReader, check: TailCheck) -> bool:
    """Whether earlier starts journaled every one of these findings (seq and code), in events after the first."""
    first = min(f.seq for f in check.findings)
    journaled: set[tuple[int, str]] = set()
    for row in await reader.signed_entries(first, 2**62):
        if b'"tamper_detected"' not in row.entry:
            continue
        body = check_entry(row.seq, row.entry, row.signature, origin="", keys={}, prev_leaf_hash=None).body or {}
        if body.get("operation") == "tamper_detected":
            journaled |= {(int(f["seq"]), str(f["finding"])) for f in body.get("findings", []) if isinstance(f, dict)}
    return {(f.seq, f.code) for f in check.findings[:100]} <= journaled
