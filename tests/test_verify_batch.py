"""The collector's decision on a batch (``collector/ingest.verify_batch``), directly: pure, in memory, each refusal.

The store suite (tests/test_collector_store.py) runs the same refusals through both databases; here the decision
is checked on its own, with entries built and signed in memory, so each case names exactly one fault.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from gateway.canonical import canonical_json
from gateway.collector.ingest import BatchEntry, IngestRejected, OriginState, RejectCode, verify_batch
from gateway.journal.entry import ZERO_HASH, EventKind, encode_entry, leaf_hash, signature_payload
from gateway.journal.merkle import rfc6962_root
from gateway.journal.note import Checkpoint, sign_checkpoint
from gateway.signing import Ed25519Signer

ORIGIN = "verify-batch.test/alpha"
KEY = Ed25519Signer(ORIGIN, bytes([1]) * 32)
OTHER_KEY = Ed25519Signer(ORIGIN, bytes([2]) * 32)  # same origin name, not registered
WITNESS = Ed25519Signer("verify-batch.test/witness", bytes([9]) * 32)
NOW_S = 1_800_000_000
HELD = 4


def body(seq: int, kind: EventKind = EventKind.HEARTBEAT, **extra: object) -> bytes:
    return canonical_json({"kind": kind.label, "event_id": f"ev_{seq}", **extra})


def entry(
    seq: int,
    prev: bytes,
    *,
    key: Ed25519Signer = KEY,
    kind: int = EventKind.HEARTBEAT,
    signed_seq: int | None = None,
    payload: bytes | None = None,
) -> BatchEntry:
    """One entry as a sidecar would send it, signed by ``key``; the keywords tamper with one thing each."""
    raw = encode_entry(
        kind, seq if signed_seq is None else signed_seq, 1_000 + seq, prev, key.key_id, payload or body(seq)
    )
    return (seq, raw, key.sign(signature_payload(ORIGIN, raw)))


def chain(n: int, *, salt: str = "") -> list[BatchEntry]:
    """An honest journal of ``n`` entries (``salt`` makes another journal with the same key)."""
    rows: list[BatchEntry] = []
    prev = ZERO_HASH
    for seq in range(n):
        rows.append(entry(seq, prev, payload=body(seq, salt=salt) if salt else None))
        prev = leaf_hash(rows[-1][1], rows[-1][2])
    return rows


def leaves(rows: list[BatchEntry]) -> list[bytes]:
    return [leaf_hash(raw, sig) for _, raw, sig in rows]


def note(
    rows: list[BatchEntry], *, key: Ed25519Signer = KEY, size: int | None = None, root: bytes | None = None
) -> str:
    """The checkpoint over ``rows`` (a whole journal prefix), signed by ``key``."""
    cp = Checkpoint(key.name, len(rows) if size is None else size, rfc6962_root(leaves(rows)) if root is None else root)
    return sign_checkpoint(cp, key).encode()


@dataclass
class Held:
    """The collector's state after accepting ``rows[:HELD]`` through verify_batch itself, and its leaf hashes."""

    rows: list[BatchEntry]
    state: OriginState
    leaves: dict[int, bytes]


@pytest.fixture
def held() -> Held:
    rows = chain(10)
    result = verify_batch(OriginState.empty(ORIGIN), [KEY.verifier], rows[:HELD], note(rows[:HELD]), lambda _: None)
    return Held(rows, result.cosigned_state(WITNESS, NOW_S), dict(enumerate(leaves(rows[:HELD]))))


def decide(h: Held, batch: list[BatchEntry], checkpoint_note: str, **overrides: object) -> None:
    verifiers = overrides.get("verifiers", [KEY.verifier])
    stored = overrides.get("stored_leaf", h.leaves.get)
    verify_batch(h.state, verifiers, batch, checkpoint_note, stored)  # type: ignore[arg-type]


def test_an_extending_batch_is_accepted_with_the_new_entries(held: Held) -> None:
    result = verify_batch(held.state, [KEY.verifier], held.rows[HELD:8], note(held.rows[:8]), held.leaves.get)
    assert not result.resend
    assert [e.seq for e in result.new_entries] == [4, 5, 6, 7]
    assert result.state.size == 8
    assert result.new_entries[0].body == json.loads(body(4))


def test_a_resent_batch_is_a_resend_with_nothing_new(held: Held) -> None:
    result = verify_batch(held.state, [KEY.verifier], held.rows[:HELD], note(held.rows[:HELD]), held.leaves.get)
    assert result.resend
    assert result.new_entries == ()
    assert result.state == held.state


Case = Callable[[Held], None]


def _unknown_origin(h: Held) -> None:
    decide(h, h.rows[HELD:8], note(h.rows[:8]), verifiers=[])


def _malformed_note(h: Held) -> None:
    decide(h, h.rows[HELD:8], "not a signed note\n")


def _note_for_another_origin(h: Held) -> None:
    decide(h, h.rows[HELD:8], note(h.rows[:8], key=Ed25519Signer("verify-batch.test/beta", bytes([1]) * 32)))


def _control_characters(h: Held) -> None:
    decide(h, h.rows[HELD:8], note(h.rows[:8]).replace("\n\n", "\n\x00\n"))


def _unregistered_checkpoint_key(h: Held) -> None:
    decide(h, h.rows[HELD:8], note(h.rows[:8], key=OTHER_KEY))


def _rollback(h: Held) -> None:
    decide(h, h.rows[:2], note(h.rows[:2]))


def _fork(h: Held) -> None:
    other = chain(HELD, salt="fork")
    decide(h, other, note(other))


def _empty_batch(h: Held) -> None:
    decide(h, [], note(h.rows[:8]))


def _not_contiguous(h: Held) -> None:
    decide(h, [h.rows[4], h.rows[6], h.rows[7]], note(h.rows[:8]))


def _size_mismatch(h: Held) -> None:
    decide(h, h.rows[HELD:8], note(h.rows[:9]))


def _gap(h: Held) -> None:
    decide(h, h.rows[HELD + 1 : 8], note(h.rows[:8]))


def _pruned(h: Held) -> None:
    decide(h, h.rows[2:8], note(h.rows[:8]), stored_leaf=lambda seq: None if seq < 3 else h.leaves.get(seq))


def _conflicting_entry(h: Held) -> None:
    other = chain(8, salt="other")
    decide(h, other[2:8], note(h.rows[:2] + other[2:8]))


def _one_bad_new_entry(h: Held, bad: BatchEntry) -> None:
    batch = [bad, *h.rows[HELD + 1 : 8]] if bad[0] == HELD else [h.rows[HELD], bad]
    decide(h, batch, note(h.rows[:HELD] + batch))


def _malformed_entry(h: Held) -> None:
    seq, raw, sig = h.rows[HELD]
    _one_bad_new_entry(h, (seq, raw[:-1], sig))


def _noncanonical_body(h: Held) -> None:
    _one_bad_new_entry(
        h, entry(HELD, h.leaves[HELD - 1], payload=json.dumps(json.loads(body(HELD)), indent=1).encode())
    )


def _unknown_kind(h: Held) -> None:
    _one_bad_new_entry(h, entry(HELD, h.leaves[HELD - 1], kind=200))


def _kind_mismatch(h: Held) -> None:
    _one_bad_new_entry(h, entry(HELD, h.leaves[HELD - 1], payload=body(HELD, EventKind.PRE_EXEC)))


def _renumbered(h: Held) -> None:
    _one_bad_new_entry(h, entry(HELD, h.leaves[HELD - 1], signed_seq=HELD + 1))


def _unknown_key(h: Held) -> None:
    _one_bad_new_entry(h, entry(HELD, h.leaves[HELD - 1], key=OTHER_KEY))


def _bad_signature(h: Held) -> None:
    seq, raw, sig = h.rows[HELD + 1]
    _one_bad_new_entry(h, (seq, raw, sig[:-1] + bytes([sig[-1] ^ 1])))


def _chain_break(h: Held) -> None:
    _one_bad_new_entry(h, entry(HELD, bytes(32)))


def _root_mismatch(h: Held) -> None:
    decide(h, h.rows[HELD:8], note(h.rows[:8], root=rfc6962_root(leaves(h.rows[:7]))))


REFUSALS = [
    pytest.param(_unknown_origin, RejectCode.UNKNOWN_ORIGIN, None, id="unknown_origin"),
    pytest.param(_malformed_note, RejectCode.BAD_CHECKPOINT, None, id="bad_checkpoint-malformed"),
    pytest.param(_note_for_another_origin, RejectCode.BAD_CHECKPOINT, None, id="bad_checkpoint-origin"),
    pytest.param(_control_characters, RejectCode.BAD_CHECKPOINT, None, id="bad_checkpoint-control"),
    pytest.param(_unregistered_checkpoint_key, RejectCode.CHECKPOINT_SIGNATURE, 7, id="checkpoint_signature"),
    pytest.param(_rollback, RejectCode.ROLLBACK, 2, id="rollback"),
    pytest.param(_fork, RejectCode.FORK, 3, id="fork"),
    pytest.param(_empty_batch, RejectCode.EMPTY_BATCH, None, id="empty_batch"),
    pytest.param(_not_contiguous, RejectCode.NOT_CONTIGUOUS, 5, id="not_contiguous"),
    pytest.param(_renumbered, RejectCode.NOT_CONTIGUOUS, 4, id="not_contiguous-renumbered"),
    pytest.param(_size_mismatch, RejectCode.SIZE_MISMATCH, 7, id="size_mismatch"),
    pytest.param(_gap, RejectCode.GAP, 4, id="gap"),
    pytest.param(_pruned, RejectCode.PRUNED, 2, id="pruned"),
    pytest.param(_conflicting_entry, RejectCode.CONFLICTING_ENTRY, 2, id="conflicting_entry"),
    pytest.param(_malformed_entry, RejectCode.MALFORMED_ENTRY, 4, id="malformed_entry"),
    pytest.param(_noncanonical_body, RejectCode.MALFORMED_ENTRY, 4, id="malformed_entry-noncanonical"),
    pytest.param(_unknown_kind, RejectCode.MALFORMED_ENTRY, 4, id="malformed_entry-unknown_kind"),
    pytest.param(_kind_mismatch, RejectCode.MALFORMED_ENTRY, 4, id="malformed_entry-kind_mismatch"),
    pytest.param(_unknown_key, RejectCode.UNKNOWN_KEY, 4, id="unknown_key"),
    pytest.param(_bad_signature, RejectCode.BAD_SIGNATURE, 5, id="bad_signature"),
    pytest.param(_chain_break, RejectCode.CHAIN_BREAK, 4, id="chain_break"),
    pytest.param(_root_mismatch, RejectCode.ROOT_MISMATCH, 7, id="root_mismatch"),
]


@pytest.mark.parametrize(("case", "code", "seq"), REFUSALS)
def test_each_fault_is_refused_with_its_reason_and_seq(
    held: Held, case: Case, code: RejectCode, seq: int | None
) -> None:
    with pytest.raises(IngestRejected) as caught:
        case(held)
    assert caught.value.code == code
    assert caught.value.seq == seq
    assert caught.value.is_evidence == (code in {RejectCode.ROLLBACK, RejectCode.FORK})


def test_every_reject_code_has_a_case() -> None:
    covered = {param.values[1] for param in REFUSALS}
    assert covered == set(RejectCode)
