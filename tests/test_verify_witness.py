"""Witnessed verification: cosignature receipts in the journal and cosigned checkpoints given as anchors.

Journals are written with the real JournalWriter; receipts are made here the way the sidecar makes them: the
RFC 6962 root of the leaves so far, a checkpoint signed by the origin key, cosigned by a (test) witness key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.canonical import canonical_json
from gateway.cli.render import format_report
from gateway.errors import ConfigError
from gateway.journal import schema
from gateway.journal.entry import EventKind
from gateway.journal.merkle import rfc6962_root
from gateway.journal.note import Checkpoint, NoteSignature, SignedNote, cosign, sign_checkpoint
from gateway.journal.verify import VerifyReport, verify_journal
from gateway.journal.writer import JournalWriter
from gateway.signing import Ed25519Signer, Verifier
from tests.conftest import run_cli
from tests.journal_helpers import body, fixed_signer

ORIGIN = "witness-test.agentaudit.example"
SIGNER = fixed_signer(ORIGIN)
WITNESS = Ed25519Signer("collector.agentaudit.example", hashlib.sha256(b"witness test key").digest())
OTHER_WITNESS = Ed25519Signer("rogue-collector.example", hashlib.sha256(b"another witness").digest())
BASE_NANOS = 1_700_000_000_000_000_000
COSIGN_TIME = 1_700_000_000


@dataclass(frozen=True)
class Receipt:
    """Plan step: append a cosignature receipt covering every entry so far (or ``size`` of them)."""

    witnesses: Sequence[Ed25519Signer] = (WITNESS,)
    size: int | None = None
    root: bytes | None = None  # Override the checkpoint root (a lying receipt).
    forge: bool = False  # Flip a bit of every cosignature.
    body_extra: dict[str, Any] = field(default_factory=dict)


Step = int | Receipt


def cosigned_note(
    size: int, root: bytes, witnesses: Sequence[Ed25519Signer] = (WITNESS,), signer: Ed25519Signer = SIGNER
) -> SignedNote:
    note = sign_checkpoint(Checkpoint(signer.name, size, root), signer)
    for witness in witnesses:
        note = note.with_signature(cosign(note, witness, COSIGN_TIME))
    return note


def forged(note: SignedNote) -> SignedNote:
    """The note with the last bit of each cosignature flipped (the origin's signature stays valid)."""
    signatures = tuple(
        s if s.name == SIGNER.name else NoteSignature(s.name, s.key_id, s.signature[:-1] + bytes([s.signature[-1] ^ 1]))
        for s in note.signatures
    )
    return SignedNote(note.text, signatures)


def receipt_body(n: int, note: SignedNote, step: Receipt) -> dict[str, Any]:
    checkpoint = Checkpoint.parse(note.text)
    return {
        "event_id": f"evt_cosig_{n:06d}",
        "kind": "cosignature",
        "timestamp": "2026-11-27T00:00:00.000000000Z",
        "tree_size": checkpoint.size,
        "root_hash": checkpoint.root.hex(),
        "checkpoint": note.encode(),
        "witness": step.witnesses[0].name if step.witnesses else "",
        **step.body_extra,
    }


def build(path: Path, plan: Sequence[Step], signer: Ed25519Signer = SIGNER, first: int | None = None) -> list[bytes]:
    """Writes the plan (ints: that many pre_exec entries; Receipt: one receipt) after whatever the journal
    already holds, and returns all its leaf hashes. Event ``i`` gets event id ``first + i`` (default: go on
    from the entries already there), so two journals built with different ``first`` differ from the start."""
    leaves: list[bytes] = []
    if path.exists():
        conn = sqlite3.connect(path)
        try:
            leaves = [bytes(leaf) for (leaf,) in conn.execute("SELECT leaf_hash FROM journal ORDER BY seq")]
        finally:
            conn.close()

    async def run() -> list[bytes]:
        writer = JournalWriter(path, signer)
        await writer.start()
        events = len(leaves) if first is None else first
        try:
            for step in plan:
                if isinstance(step, int):
                    for _ in range(step):
                        b = body(events)
                        r = await writer.append(
                            EventKind.PRE_EXEC, canonical_json(b), schema.indexed_values(b), BASE_NANOS + len(leaves)
                        )
                        leaves.append(r.leaf_hash)
                        events += 1
                    continue
                size = len(leaves) if step.size is None else step.size
                root = step.root if step.root is not None else rfc6962_root(leaves[:size])
                note = cosigned_note(size, root, step.witnesses, signer)
                if step.forge:
                    note = forged(note)
                b = receipt_body(len(leaves), note, step)
                r = await writer.append(
                    EventKind.COSIGNATURE, canonical_json(b), schema.indexed_values(b), BASE_NANOS + len(leaves)
                )
                leaves.append(r.leaf_hash)
            return leaves
        finally:
            await writer.aclose()

    return asyncio.run(run())


def verify(
    path: Path, witnesses: Sequence[Verifier] = (WITNESS.verifier,), anchors: Sequence[str] = ()
) -> VerifyReport:
    return verify_journal(path, [SIGNER.verifier], witnesses=witnesses, anchors=anchors)


def codes(report: VerifyReport) -> list[tuple[int | None, str]]:
    return [(f.seq, str(f.code)) for f in report.findings]


# --- receipts in the journal ---------------------------------------------------------------------------------


def test_witnessed_size_and_unwitnessed_tail_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    # seq 0-4 events, seq 5 receipt for 5, seq 6-9 events, seq 10 receipt for 10, seq 11-13 events.
    build(path, [5, Receipt(), 4, Receipt(), 3])

    report = verify(path)

    assert report.ok, format_report(report)
    assert (report.entries, report.witnessed_size, report.unwitnessed_tail) == (14, 10, 4)
    assert (report.receipts, report.uncredited_receipts) == (2, 0)
    assert report.witnessed_by == (WITNESS.name,)
    lines = format_report(report).splitlines()
    assert lines == [
        f"witnessed: 10 of 14 entries (cosigned by {WITNESS.name})",
        f"journal OK: 14 entries, root {report.root_hash.hex()}",
    ]
    document = json.loads(json.dumps(report.to_json()))
    assert (document["witnessed_size"], document["unwitnessed_tail"]) == (10, 4)
    assert document["witnessed_by"] == [WITNESS.name]


def test_a_receipt_may_cover_an_earlier_size_than_its_own_seq(tmp_path: Path) -> None:
    # Receipts arrive late: the one at seq 8 covers only the first 3 entries.
    path = tmp_path / "j.db"
    build(path, [8, Receipt(size=3)])

    report = verify(path)

    assert report.ok, format_report(report)
    assert (report.witnessed_size, report.unwitnessed_tail) == (3, 6)


def test_a_receipt_for_the_empty_tree_verifies(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [Receipt(), 2])

    report = verify(path)

    assert report.ok, format_report(report)
    assert (report.receipts, report.witnessed_size) == (1, 0)


def test_receipts_are_not_counted_without_witness_keys(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [3, Receipt(), 2])

    report = verify(path, witnesses=())

    assert report.ok  # The checkpoint still matched the journal; only witnessing is not established.
    assert (report.witnessed_size, report.unwitnessed_tail, report.uncredited_receipts) == (0, 6, 1)
    lines = format_report(report).splitlines()
    assert lines[0] == "witnessed: 0 of 6 entries (a cut-off tail is not detectable locally)"
    assert lines[1].startswith("not counted: 1 cosigned checkpoint receipt")
    assert "no witness key was given" in lines[1]


def test_receipt_with_a_wrong_root_is_a_checkpoint_mismatch_at_its_seq(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [4, Receipt(), 3, Receipt(root=hashlib.sha256(b"another history").digest()), 1])

    report = verify(path)

    assert codes(report) == [(8, "checkpoint_mismatch")]
    assert "at tree size 8" in report.findings[0].message
    assert report.witnessed_size == 4  # The lying receipt credits nothing; the earlier one still counts.


def test_receipt_claiming_entries_after_itself_is_a_checkpoint_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [3, Receipt(size=5, root=bytes(32)), 3])

    report = verify(path)

    assert codes(report) == [(3, "checkpoint_mismatch")]
    assert report.witnessed_size == 0


def test_receipt_cosigned_by_an_unknown_witness_is_not_counted_and_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [3, Receipt(), 2, Receipt(witnesses=(OTHER_WITNESS,)), 1])

    report = verify(path)

    assert report.ok  # Not tamper evidence: just not a witness this auditor trusts.
    assert (report.witnessed_size, report.uncredited_receipts) == (3, 1)
    assert report.uncredited_witnesses == (OTHER_WITNESS.name,)
    text = format_report(report)
    assert f"witnessed: 3 of 8 entries (cosigned by {WITNESS.name})" in text
    assert (
        f"not counted: 1 cosigned checkpoint receipt cosigned by none of the given witness keys ({WITNESS.name})"
        in text
    )
    assert OTHER_WITNESS.name in text


def test_witness_names_from_a_note_cannot_inject_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    leaves = build(path, [3])
    note = cosigned_note(3, rfc6962_root(leaves), ()).with_signature(NoteSignature("evil\x1b[2J", b"abcd", bytes(72)))
    build(path, [Receipt(body_extra={"checkpoint": note.encode()})])

    report = verify(path)

    assert report.uncredited_witnesses == ("evil\x1b[2J",)
    text = format_report(report)
    assert "\x1b" not in text
    assert len(text.splitlines()) == 3


def test_receipt_cosigned_by_several_witnesses_counts_each_trusted_one(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [3, Receipt(witnesses=(OTHER_WITNESS, WITNESS))])

    both = verify(path, witnesses=(WITNESS.verifier, OTHER_WITNESS.verifier))
    one = verify(path)

    assert (both.ok, both.witnessed_size, both.witnessed_by) == (
        True,
        3,
        tuple(sorted([WITNESS.name, OTHER_WITNESS.name])),
    )
    assert (one.ok, one.witnessed_size, one.witnessed_by) == (True, 3, (WITNESS.name,))


def test_forged_cosignature_bytes_are_bad_cosignature(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [3, Receipt(), 2, Receipt(forge=True), 1])

    report = verify(path)

    assert codes(report) == [(6, "bad_cosignature")]
    assert WITNESS.name in report.findings[0].message
    assert (report.witnessed_size, report.uncredited_receipts) == (3, 0)


def test_a_forged_line_is_reported_even_next_to_a_valid_cosignature(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    leaves = build(path, [3])
    note = cosigned_note(3, rfc6962_root(leaves), (WITNESS,))
    bad = forged(cosigned_note(3, rfc6962_root(leaves), (OTHER_WITNESS,))).signatures[-1]
    build(path, [Receipt(body_extra={"checkpoint": note.with_signature(bad).encode()})])

    report = verify(path, witnesses=(WITNESS.verifier, OTHER_WITNESS.verifier))

    assert codes(report) == [(3, "bad_cosignature")]
    assert OTHER_WITNESS.name in report.findings[0].message


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"checkpoint": "not a note"}, "malformed"),
        ({"tree_size": "3"}, "tree_size"),
        ({"root_hash": "zz" * 32}, "root_hash"),
        ({"checkpoint": None}, "checkpoint is not the note text"),
        ({"tree_size": 2}, "its checkpoint says size 3"),
        ({"root_hash": "00" * 32}, "its checkpoint says"),
    ],
)
def test_malformed_receipt_is_bad_checkpoint(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    path = tmp_path / "j.db"
    build(path, [3, Receipt(body_extra=extra), 1])

    report = verify(path)

    assert codes(report) == [(3, "bad_checkpoint")]
    assert message in report.findings[0].message
    assert report.witnessed_size == 0


def test_checkpoint_not_signed_by_the_origin_key_is_bad_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    leaves = build(path, [3])
    impostor = Ed25519Signer(ORIGIN, hashlib.sha256(b"not the origin key").digest())
    note = cosigned_note(3, rfc6962_root(leaves), (WITNESS,), signer=impostor)
    build(path, [Receipt(body_extra={"checkpoint": note.encode()})])

    report = verify(path)

    assert codes(report) == [(3, "bad_checkpoint")]
    assert "no valid signature by the origin's key" in report.findings[0].message


def test_checkpoint_of_another_origin_is_bad_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    leaves = build(path, [3])
    other = fixed_signer("other-origin.example")
    note = cosigned_note(3, rfc6962_root(leaves), (WITNESS,), signer=other)
    build(path, [Receipt(body_extra={"checkpoint": note.encode()})])

    report = verify_journal(path, [SIGNER.verifier, other.verifier], origin=ORIGIN, witnesses=[WITNESS.verifier])

    assert codes(report) == [(3, "bad_checkpoint")]
    assert "for origin 'other-origin.example'" in report.findings[0].message


def test_a_receipt_in_a_tampered_row_is_not_credited(tmp_path: Path) -> None:
    # Someone without the key copies a receipt's body claims into a forged row: the row's signature fails,
    # and the receipt it carries counts for nothing.
    path = tmp_path / "j.db"
    build(path, [3, Receipt(), 2])
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER journal_no_update")
        (entry,) = conn.execute("SELECT entry FROM journal WHERE seq = 3").fetchone()
        conn.execute("UPDATE journal SET signature = ? WHERE seq = 3", (bytes(64),))
    finally:
        conn.close()
    assert entry  # The receipt bytes are untouched; only the signature no longer verifies.

    report = verify(path)

    assert (3, "bad_signature") in codes(report)
    assert report.witnessed_size == 0
    assert report.receipts == 0


def test_a_tampered_entry_below_a_receipt_is_also_a_checkpoint_mismatch(tmp_path: Path) -> None:
    # The attacker edits entry 1 and fixes its stored leaf hash and the chain... but not the cosigned root.
    path = tmp_path / "j.db"
    build(path, [3, Receipt(), 2])
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER journal_no_update")
        conn.execute("UPDATE journal SET signature = ? WHERE seq = 1", (bytes(64),))
    finally:
        conn.close()

    report = verify(path)

    assert (3, "checkpoint_mismatch") in codes(report)
    assert report.witnessed_size == 0


def test_rows_deleted_before_a_receipt_leave_a_gap_and_a_checkpoint_mismatch_in_seq_order(tmp_path: Path) -> None:
    # With seq 1 and 2 gone, the scan reaches tree size 4 only after the receipt (seq 4): it is settled at the
    # end, and its finding still lands in seq order.
    path = tmp_path / "j.db"
    build(path, [4, Receipt(), 2])
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER journal_no_delete")
        conn.execute("DELETE FROM journal WHERE seq IN (1, 2)")
    finally:
        conn.close()

    report = verify(path)

    assert codes(report) == [(1, "gap"), (4, "checkpoint_mismatch")]
    assert report.witnessed_size == 0


def test_a_cosignature_entry_that_claims_no_checkpoint_is_not_a_receipt(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    b = body(0, kind="cosignature")

    async def run() -> None:
        writer = JournalWriter(path, SIGNER)
        await writer.start()
        try:
            await writer.append(EventKind.COSIGNATURE, canonical_json(b), schema.indexed_values(b), BASE_NANOS)
        finally:
            await writer.aclose()

    asyncio.run(run())

    report = verify(path)

    assert report.ok
    assert (report.receipts, report.witnessed_size) == (0, 0)


# --- anchors ---------------------------------------------------------------------------------------------------


def anchor_of(path: Path, witnesses: Sequence[Ed25519Signer] = (WITNESS,)) -> str:
    """A cosigned checkpoint of the journal as it is now (what the collector returned at that point)."""
    report = verify_journal(path, [SIGNER.verifier])
    return cosigned_note(report.tree_size, report.root_hash, witnesses).encode()


def test_clean_journal_with_a_valid_anchor_is_ok_and_witnessed(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [6])
    anchor = anchor_of(path)
    build(path, [2])  # The journal grew after the anchor was taken.

    report = verify(path, anchors=[anchor])

    assert report.ok, format_report(report)
    assert (report.witnessed_size, report.unwitnessed_tail) == (6, 2)


def test_truncation_below_an_anchor_is_detected(tmp_path: Path) -> None:
    # Write 8 entries, take an anchor at 8, then "roll back" to a journal of the first 5 (same key, same bytes:
    # every remaining entry is validly signed and chained, so local checks alone call it intact).
    full, short = tmp_path / "full.db", tmp_path / "short.db"
    build(full, [8])
    anchor = anchor_of(full)
    build(short, [5])
    assert verify_journal(short, [SIGNER.verifier]).ok

    report = verify(short, anchors=[anchor])

    assert codes(report) == [(None, "truncated")]
    assert report.findings[0].message == (
        "journal has 5 entries but a cosigned checkpoint (anchor 1) covers 8: entries were removed"
    )


def test_truncation_below_the_last_receipt_is_caught_by_an_anchor_only(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [4, Receipt(), 3])
    anchor = anchor_of(path)
    shutil.copy(path, tmp_path / "full.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:  # Cut the receipt and everything after it.
        conn.execute("DROP TRIGGER journal_no_delete")
        conn.execute("DELETE FROM journal WHERE seq >= 4")
    finally:
        conn.close()

    assert verify(path).ok  # Nothing left in the file says it was longer.
    assert codes(verify(path, anchors=[anchor])) == [(None, "truncated")]


def test_a_fork_at_the_anchor_size_is_a_checkpoint_mismatch(tmp_path: Path) -> None:
    # Same key, same size, different history (rewritten and re-signed by someone holding the key).
    original, fork = tmp_path / "original.db", tmp_path / "fork.db"
    build(original, [6])
    anchor = anchor_of(original)
    build(fork, [6], first=100)
    assert verify_journal(fork, [SIGNER.verifier]).ok

    report = verify(fork, anchors=[anchor])

    assert codes(report) == [(None, "checkpoint_mismatch")]
    assert "rewritten or replaced" in report.findings[0].message


def test_a_rollback_that_regrew_past_the_anchor_is_a_checkpoint_mismatch(tmp_path: Path) -> None:
    original, regrown = tmp_path / "original.db", tmp_path / "regrown.db"
    build(original, [6])
    anchor = anchor_of(original)
    build(regrown, [4])
    build(regrown, [5], first=200)

    assert codes(verify(regrown, anchors=[anchor])) == [(None, "checkpoint_mismatch")]


def test_anchor_without_witness_keys_needs_only_the_origin_signature(tmp_path: Path) -> None:
    full, short = tmp_path / "full.db", tmp_path / "short.db"
    build(full, [4])
    anchor = anchor_of(full, witnesses=())
    build(short, [3])

    report = verify(short, witnesses=(), anchors=[anchor])

    assert codes(report) == [(None, "truncated")]
    assert report.witnessed_size == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: "not a note\n", "anchor 1: the checkpoint note is malformed"),
        (lambda root: forged(cosigned_note(3, root)).encode(), "does not verify"),
        (lambda root: cosigned_note(3, root, (OTHER_WITNESS,)).encode(), "no given witness key"),
        (
            lambda root: cosigned_note(3, root, signer=Ed25519Signer(ORIGIN, bytes(32))).encode(),
            "no valid signature by the origin's key",
        ),
    ],
)
def test_an_anchor_that_does_not_verify_is_a_usage_error(tmp_path: Path, make: Any, message: str) -> None:
    path = tmp_path / "j.db"
    leaves = build(path, [3])

    with pytest.raises(ConfigError, match=message):
        verify(path, anchors=[make(rfc6962_root(leaves))])


# --- CLI -------------------------------------------------------------------------------------------------------


def key_files(tmp_path: Path) -> tuple[Path, Path]:
    pub, wpub = tmp_path / "signing.pub", tmp_path / "witness.pub"
    pub.write_text(SIGNER.verifier.encode() + "\n")
    wpub.write_text(WITNESS.verifier.encode() + "\n")
    return pub, wpub


def test_cli_reports_truncation_below_an_anchor_with_exit_1(tmp_path: Path) -> None:
    pub, wpub = key_files(tmp_path)
    full, short, anchor = tmp_path / "full.db", tmp_path / "short.db", tmp_path / "checkpoint.note"
    build(full, [5, Receipt(), 4])
    anchor.write_text(anchor_of(full))
    build(short, [5, Receipt(), 1])

    args = ["verify", str(short), "--public-key", str(pub), "--witness-key", str(wpub)]
    intact = run_cli(*args)
    result = run_cli(*args, "--anchor", str(anchor))

    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert f"witnessed: 5 of 7 entries (cosigned by {WITNESS.name})" in intact.stdout
    assert result.returncode == 1, result.stdout + result.stderr
    assert "journal: truncated: journal has 7 entries but a cosigned checkpoint (anchor 1) covers 10" in result.stdout


def test_cli_json_carries_the_witness_status(tmp_path: Path) -> None:
    pub, wpub = key_files(tmp_path)
    path, anchor = tmp_path / "j.db", tmp_path / "checkpoint.note"
    build(path, [3, Receipt(), 2])
    anchor.write_text(anchor_of(path))
    build(path, [1])

    result = run_cli(
        "verify", str(path), "--public-key", str(pub), "--witness-key", str(wpub), "--anchor", str(anchor), "--json"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert (document["ok"], document["entries"], document["witnessed_size"], document["unwitnessed_tail"]) == (
        True,
        7,
        6,
        1,
    )
    assert document["witnessed_by"] == [WITNESS.name]


def test_cli_bad_anchor_or_witness_key_is_exit_2(tmp_path: Path) -> None:
    pub, _ = key_files(tmp_path)
    path, anchor = tmp_path / "j.db", tmp_path / "checkpoint.note"
    build(path, [3])
    anchor.write_text("garbage\n")

    bad_anchor = run_cli("verify", str(path), "--public-key", str(pub), "--anchor", str(anchor))
    missing_anchor = run_cli("verify", str(path), "--public-key", str(pub), "--anchor", str(tmp_path / "nope"))
    missing_key = run_cli("verify", str(path), "--public-key", str(pub), "--witness-key", str(tmp_path / "nope"))

    assert bad_anchor.returncode == 2 and "anchor 1" in bad_anchor.stderr
    assert missing_anchor.returncode == 2 and "cannot read anchor" in missing_anchor.stderr
    assert missing_key.returncode == 2


def test_witness_key_is_read_in_the_same_format_as_signing_pub() -> None:
    encoded = WITNESS.verifier.encode()
    name, _, b64 = encoded.split("+", 2)
    assert name == WITNESS.name
    assert base64.b64decode(b64)[1:] == WITNESS.verifier.public_key
