"""Collector ingest of format v2 journals (docs/adr/0024-seal-per-commit-signing.md) through both stores (SQLite and
PostgreSQL): batches cut at commit boundaries carry the stored seal as their checkpoint, one signature per batch;
every rejection still names its fault; v1 and v2 origins share one collector."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.collector.checking import EntryCheckPool
from gateway.collector.ingest import IngestRejected, OriginState, RejectCode, verify_batch
from gateway.journal.entry import ENTRY_DOMAIN_V2, FORMAT_V2, decode_entry, leaf_hash
from gateway.journal.merkle import rfc6962_root
from gateway.journal.note import SignedNote, verify_cosignature
from gateway.journal.seal import make_seal, parse_seal
from gateway.signing import Ed25519Signer
from tests.test_collector_store import (
    NOW,
    ORIGIN,
    OTHER_ORIGIN,
    WITNESS,
    Backend,
    Row,
    checkpoint,
    ingest,
    journal,
    run,
    signer,
)
from tests.test_collector_store import store as v1_store
from tests.test_journal_v2 import write_commits

Seals = dict[int, str]
store = v1_store  # the two-database fixture of the v1 suite


def v2_journal(tmp_path: Path, name: str, shape: list[int], key: Ed25519Signer) -> tuple[list[Row], Seals]:
    """A real v2 journal written by the writer, one commit per element of ``shape``: its rows and seals."""
    path = tmp_path / f"{name}.db"
    write_commits(path, shape, signer=key, run_id=f"run-{name}")
    with sqlite3.connect(path) as conn:
        rows = [(int(s), bytes(e), bytes(g)) for s, e, g in conn.execute("SELECT seq, entry, signature FROM journal")]
        seals = {int(s): str(n) for s, n in conn.execute("SELECT size, note FROM journal_seals")}
    return rows, seals


def rechained(rows: list[Row], seq: int) -> list[Row]:
    """The careful attacker: one body byte changed, every later entry re-chained (v2 entries carry no signature)."""
    out = list(rows[:seq])
    prev = None
    offset = len(ENTRY_DOMAIN_V2) + 17
    for s, stored, sig in rows[seq:]:
        if s == seq:
            at = stored.index(b'"timestamp":"2025') + len(b'"timestamp":"2025') - 1
            raw = stored[:at] + b"4" + stored[at + 1 :]
        else:
            assert prev is not None
            raw = stored[:offset] + prev + stored[offset + 32 :]
        out.append((s, raw, sig))
        prev = leaf_hash(raw, sig)
    return out


def test_v2_batches_at_commit_boundaries_are_witnessed_with_their_stored_seals(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows, seals = v2_journal(tmp_path, "a", [4, 1, 7, 3], key)
    assert sorted(seals) == [4, 5, 12, 15]
    assert {decode_entry(raw).version for _, raw, _ in rows} == {FORMAT_V2}
    assert {sig for _, _, sig in rows} == {b""}

    async def scenario() -> None:
        async with store.open() as s:
            # One batch of one commit, then one of two commits (the seal at its end covers both), then the last.
            for lo, hi in [(0, 4), (4, 12), (12, 15)]:
                outcome = await ingest(s, rows[lo:hi], seals[hi])
                assert (outcome.size, outcome.accepted) == (hi, hi - lo)
                note = SignedNote.parse(outcome.cosigned_note)
                assert note.text == parse_seal(seals[hi]).note.text  # the seal itself is what is cosigned
                assert verify_cosignature(note, WITNESS.verifier) == NOW
            assert await s.entries(ORIGIN) == rows
            # A resend of a stored seal is answered with the held note.
            again = await ingest(s, rows[12:15], seals[15])
            assert (again.size, again.accepted) == (15, 0)

    run(scenario())


def _refused(backend: Backend, held: list[Row], held_note: str, batch: list[Row], note: str) -> IngestRejected:
    caught: list[IngestRejected] = []

    async def scenario() -> None:
        async with backend.open() as s:
            await ingest(s, held, held_note)
            with pytest.raises(IngestRejected) as refused:
                await ingest(s, batch, note)
            caught.append(refused.value)
            assert await s.entries(ORIGIN) == held  # nothing of a refused batch is stored

    run(scenario())
    return caught[0]


def test_v2_rejections_name_their_fault(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows, seals = v2_journal(tmp_path, "a", [4, 4, 4], key)
    forked, fork_seals = v2_journal(tmp_path, "fork", [3, 5, 4], key)  # same key, other commits: other roots
    held, held_note = rows[:4], seals[4]
    batch = rows[4:12]

    # An edit the attacker re-chained: only the root, which the seal signs, shows it.
    refusal = _refused(store, held, held_note, rechained(rows, 6)[4:12], seals[12])
    assert (refusal.code, refusal.seq) == (RejectCode.ROOT_MISMATCH, 11)
    # A naive edit breaks the chain at the next entry.
    edited = list(batch)
    raw = edited[2][1]
    at = raw.index(b'"timestamp":"2025') + len(b'"timestamp":"2025') - 1
    edited[2] = (edited[2][0], raw[:at] + b"4" + raw[at + 1 :], b"")
    assert _refused(store, held, held_note, edited, seals[12]).code == RejectCode.CHAIN_BREAK
    # A seal forged with another key over the true root: the batch's one signature check refuses it.
    other = signer(seed=7)
    real = parse_seal(seals[12])
    forged = make_seal(other, 12, real.checkpoint.root, real.prev_size, real.last_leaf)
    assert _refused(store, held, held_note, batch, forged).code == RejectCode.CHECKPOINT_SIGNATURE
    # A genuine seal of another size: it does not cover the batch.
    assert _refused(store, held, held_note, batch, seals[8]).code == RejectCode.SIZE_MISMATCH
    # An unsigned v2 entry with a checkpoint over a root that does not include it.
    assert _refused(store, held, held_note, batch, checkpoint(rows[:12], key, root=bytes(32))).code == (
        RejectCode.ROOT_MISMATCH
    )
    # (From here the database holds 12 entries.)
    # Replaying an older genuine seal after a larger one was cosigned: rollback.
    assert _refused(store, rows[:12], seals[12], rows[4:8], seals[8]).code == RejectCode.ROLLBACK
    # Another journal of the same size under the same key: a fork.
    assert fork_seals[12] != seals[12]
    assert _refused(store, rows[:12], seals[12], forked[8:12], fork_seals[12]).code == RejectCode.FORK


def test_a_v1_origin_and_a_v2_origin_share_one_collector(store: Backend, tmp_path: Path) -> None:
    v1_rows = journal(tmp_path, "v1", 9, signer(OTHER_ORIGIN))  # written per entry, the pre-v2 format
    v2_rows, v2_seals = v2_journal(tmp_path, "v2", [5, 4], signer())

    async def scenario() -> None:
        async with store.open() as s:
            one = await ingest(s, v1_rows[:5], checkpoint(v1_rows[:5], signer(OTHER_ORIGIN)), OTHER_ORIGIN)
            two = await ingest(s, v2_rows[:5], v2_seals[5])
            three = await ingest(s, v1_rows[5:], checkpoint(v1_rows, signer(OTHER_ORIGIN)), OTHER_ORIGIN)
            four = await ingest(s, v2_rows[5:], v2_seals[9])
            assert [o.size for o in (one, two, three, four)] == [5, 5, 9, 9]
            assert await s.entries(OTHER_ORIGIN) == v1_rows
            assert await s.entries(ORIGIN) == v2_rows
            assert {len(sig) for _, _, sig in await s.entries(OTHER_ORIGIN)} == {64}

    run(scenario())


def test_v2_batches_are_checked_in_process_by_a_pool_with_workers(tmp_path: Path) -> None:
    """Entries vouched for by a seal have no signature to verify: sending them to a worker costs more than checking
    them (collector/checking.py), so a pool checks them in-process, with the same verdicts; a v1 batch of the same
    size starts the workers."""
    key = signer()
    rows, seals = v2_journal(tmp_path, "a", [120], key)
    pool = EntryCheckPool(workers=1, min_parallel=8)
    try:
        state = OriginState.empty(ORIGIN)
        result = verify_batch(state, [key.verifier], rows, seals[120], lambda _: None, check_entries=pool.check)
        assert len(result.new_entries) == 120
        assert result.checkpoint.root == rfc6962_root(leaf_hash(e, g) for _, e, g in rows)
        with pytest.raises(IngestRejected) as caught:
            verify_batch(
                state, [key.verifier], rechained(rows, 90), seals[120], lambda _: None, check_entries=pool.check
            )
        assert caught.value.code == RejectCode.ROOT_MISMATCH
        assert pool._executor is None  # private: no worker was started for them
        v1_rows = journal(tmp_path, "v1", 120, key)
        assert len(pool.check(ORIGIN, {key.verifier.key_id: [key.verifier]}, v1_rows, bytes(32))) == 120
        assert pool._executor is not None
    finally:
        pool.close()


def test_collector_ingest_of_v2_checks_no_entry_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the format: one Ed25519 verification per batch, however many entries it holds."""
    key = signer()
    rows, seals = v2_journal(tmp_path, "a", [50], key)
    calls = []
    real_verify = type(key.verifier).verify

    def counting(self: object, message: bytes, signature: bytes) -> bool:
        calls.append(len(message))
        return real_verify(self, message, signature)  # type: ignore[arg-type]

    monkeypatch.setattr(type(key.verifier), "verify", counting)
    verify_batch(OriginState.empty(ORIGIN), [key.verifier], rows, seals[50], lambda _: None)
    assert len(calls) == 1
    asyncio.run(asyncio.sleep(0))
