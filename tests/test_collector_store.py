"""The collector stores (SQLite and PostgreSQL) against one suite: ingest, idempotency, witness rules, tampering.

Journals are written by the real writer; batches are their rows, exactly as the forwarder reads them. The
PostgreSQL cases use a fresh schema per test on ``AGENTAUDIT_TEST_POSTGRES_DSN`` (default: the local ``test``
database) and skip, saying why, when it is unreachable, unless ``AGENTAUDIT_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.collector.ingest import IngestRejected, RejectCode
from gateway.collector.sqlite_store import SqliteCollectorStore
from gateway.collector.store import CollectorStore, IngestOutcome
from gateway.errors import ConfigError
from gateway.journal.entry import EventKind, decode_entry, encode_entry, leaf_hash, signature_payload
from gateway.journal.merkle import MerkleRoot, decode_state, encode_state, rfc6962_root
from gateway.journal.note import Checkpoint, SignedNote, sign_checkpoint, verify_cosignature, verify_note
from gateway.signing import Ed25519Signer
from tests.journal_helpers import write_journal

POSTGRES_DSN = os.environ.get("AGENTAUDIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("AGENTAUDIT_REQUIRE_POSTGRES") == "1"

ORIGIN = "collector.test/alpha"
OTHER_ORIGIN = "collector.test/beta"
NOW = 1_800_000_000

Row = tuple[int, bytes, bytes]


def signer(origin: str = ORIGIN, seed: int = 1) -> Ed25519Signer:
    return Ed25519Signer(origin, bytes([seed]) * 32)


WITNESS = Ed25519Signer("collector.test/witness", bytes([9]) * 32)


# --- journals and checkpoints -------------------------------------------------------------------------------


def rows_of(path: Path) -> list[Row]:
    """(seq, entry, signature) of every journal row, in seq order, as the forwarder sends them."""
    conn = sqlite3.connect(path)
    try:
        return [
            (seq, bytes(e), bytes(s))
            for seq, e, s in conn.execute("SELECT seq, entry, signature FROM journal ORDER BY seq")
        ]
    finally:
        conn.close()


def journal(tmp_path: Path, name: str, n: int, key: Ed25519Signer, first: int = 0) -> list[Row]:
    path = tmp_path / f"{name}.db"
    write_journal(path, n, key, first=first)
    return rows_of(path)


def root_of(rows: list[Row]) -> bytes:
    return rfc6962_root(leaf_hash(e, s) for _, e, s in rows)


def checkpoint(rows: list[Row], key: Ed25519Signer, *, origin: str | None = None, root: bytes | None = None) -> str:
    """The checkpoint note over ``rows`` (the whole journal prefix), signed by ``key``."""
    cp = Checkpoint(origin or key.name, len(rows), root_of(rows) if root is None else root)
    return sign_checkpoint(cp, key).encode()


# --- the two stores -----------------------------------------------------------------------------------------


@functools.cache
def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used (None when it can)."""
    try:
        import asyncpg  # noqa: PLC0415
    except ImportError:
        return "asyncpg is not installed"

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES_DSN.rsplit('@', 1)[-1]} unreachable: {exc}"
    return None


def drop_schema(schema: str) -> None:
    import asyncpg  # noqa: PLC0415

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()

    asyncio.run(drop())


@dataclass
class Backend:
    """One database; ``open()`` starts a new store object on it (a restart, or another replica)."""

    name: str
    new: Callable[[], CollectorStore]

    @asynccontextmanager
    async def open(self, *, register: bool = True) -> AsyncIterator[CollectorStore]:
        store = self.new()
        await store.start()
        try:
            if register:
                await store.register_origin(ORIGIN, [signer().verifier])
                await store.register_origin(OTHER_ORIGIN, [signer(OTHER_ORIGIN).verifier])
            yield store
        finally:
            await store.aclose()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        db = tmp_path / "collector.db"
        yield Backend("sqlite", lambda: SqliteCollectorStore(db))
        return
    reason = postgres_unreachable()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"AGENTAUDIT_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    from gateway.collector.postgres_store import PostgresCollectorStore  # noqa: PLC0415

    schema = f"aa_test_{uuid.uuid4().hex[:16]}"
    try:
        yield Backend("postgres", lambda: PostgresCollectorStore(POSTGRES_DSN, schema=schema))
    finally:
        drop_schema(schema)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def ingest(s: CollectorStore, rows: list[Row], note: str, origin: str = ORIGIN) -> IngestOutcome:
    return await s.ingest(origin, rows, note, WITNESS, NOW)


def assert_witnessed(note_text: str, key: Ed25519Signer, size: int) -> None:
    note = SignedNote.parse(note_text)
    assert Checkpoint.parse(note.text).size == size
    assert verify_note(note, key.verifier)
    assert verify_cosignature(note, WITNESS.verifier) == NOW


# --- ingest -------------------------------------------------------------------------------------------------


def test_batches_are_stored_byte_identical_and_cosigned(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows = journal(tmp_path, "a", 25, key)

    async def scenario() -> None:
        async with store.open() as s:
            assert await s.latest(ORIGIN) == (0, "")
            for lo, hi in [(0, 7), (7, 8), (8, 25)]:
                outcome = await ingest(s, rows[lo:hi], checkpoint(rows[:hi], key))
                assert (outcome.size, outcome.accepted) == (hi, hi - lo)
                assert_witnessed(outcome.cosigned_note, key, hi)
            assert await s.entries(ORIGIN) == rows
            assert await s.entries(ORIGIN, 5, 9) == rows[5:9]
            size, note = await s.latest(ORIGIN)
            assert size == 25
            assert_witnessed(note, key, 25)
            assert await s.evidence(ORIGIN) == []

    run(scenario())


def test_resent_batch_is_accepted_without_duplicates(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows = journal(tmp_path, "a", 10, key)

    async def scenario() -> None:
        async with store.open() as s:
            first = await ingest(s, rows, checkpoint(rows, key))
            again = await s.ingest(ORIGIN, rows, checkpoint(rows, key), WITNESS, NOW + 60)
            assert (again.size, again.accepted) == (10, 0)
            assert again.cosigned_note == first.cosigned_note  # the note cosigned the first time
            assert await s.entries(ORIGIN) == rows

    run(scenario())


def test_overlapping_batch_stores_only_the_new_half(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows = journal(tmp_path, "a", 20, key)

    async def scenario() -> None:
        async with store.open() as s:
            await ingest(s, rows[:10], checkpoint(rows[:10], key))
            outcome = await ingest(s, rows[5:20], checkpoint(rows, key))
            assert (outcome.size, outcome.accepted) == (20, 10)
            assert await s.entries(ORIGIN) == rows

    run(scenario())


def test_two_origins_interleaved_are_kept_apart(store: Backend, tmp_path: Path) -> None:
    alpha, beta = signer(), signer(OTHER_ORIGIN)
    a = journal(tmp_path, "a", 12, alpha)
    b = journal(tmp_path, "b", 9, beta)

    async def scenario() -> None:
        async with store.open() as s:
            await ingest(s, a[:4], checkpoint(a[:4], alpha))
            await ingest(s, b[:5], checkpoint(b[:5], beta), OTHER_ORIGIN)
            await ingest(s, a[4:12], checkpoint(a, alpha))
            await ingest(s, b[5:9], checkpoint(b, beta), OTHER_ORIGIN)
            assert await s.entries(ORIGIN) == a
            assert await s.entries(OTHER_ORIGIN) == b
            size_a, note_a = await s.latest(ORIGIN)
            size_b, note_b = await s.latest(OTHER_ORIGIN)
            assert (size_a, size_b) == (12, 9)
            assert_witnessed(note_a, alpha, 12)
            assert_witnessed(note_b, beta, 9)

    run(scenario())


def test_a_new_store_object_on_the_same_database_keeps_the_state(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows = journal(tmp_path, "a", 13, key)

    async def scenario() -> None:
        async with store.open() as s:
            first = await ingest(s, rows[:6], checkpoint(rows[:6], key))
        async with store.open() as s:  # restart: keys registered again, witness state kept
            assert await s.latest(ORIGIN) == (6, first.cosigned_note)
            outcome = await ingest(s, rows[6:], checkpoint(rows, key))
            assert (outcome.size, outcome.accepted) == (13, 7)
            assert await s.entries(ORIGIN) == rows

    run(scenario())


def test_concurrent_ingests_of_one_origin_serialize(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows = journal(tmp_path, "a", 40, key)
    note = checkpoint(rows, key)

    async def scenario() -> None:
        # Two store objects on one database are two replicas; each also runs requests concurrently.
        async with store.open() as one, store.open() as two:
            outcomes = await asyncio.gather(*(ingest(s, rows, note) for s in (one, two, one, two, one, two)))
            assert sorted(o.accepted for o in outcomes) == [0, 0, 0, 0, 0, 40]
            assert {o.size for o in outcomes} == {40}
            assert len({o.cosigned_note for o in outcomes}) == 1
            assert await one.entries(ORIGIN) == rows
            assert await two.latest(ORIGIN) == (40, outcomes[0].cosigned_note)

    run(scenario())


def test_replicas_starting_together_apply_the_migrations_once(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows = journal(tmp_path, "a", 3, key)

    async def scenario() -> None:
        replicas = [store.new() for _ in range(4)]
        await asyncio.gather(*(r.start() for r in replicas))
        try:
            await asyncio.gather(*(r.register_origin(ORIGIN, [key.verifier]) for r in replicas))
            outcome = await ingest(replicas[0], rows, checkpoint(rows, key))
            assert await replicas[3].latest(ORIGIN) == (3, outcome.cosigned_note)
        finally:
            for r in replicas:
                await r.aclose()

    run(scenario())


# --- refusals -----------------------------------------------------------------------------------------------


@dataclass
class Journals:
    """The held journal ``a`` and material to tamper with; ``a[:HELD]`` is ingested before each case."""

    key: Ed25519Signer
    a: list[Row]
    same_key_other_bodies: list[Row]
    foreign_key_same_name: list[Row]
    foreign: Ed25519Signer
    stranger: list[Row]


HELD = 4


def flip(data: bytes, at: int = -1) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + (data[at + 1 :] if at != -1 else b"")


Case = Callable[[Journals], tuple[str, list[Row], str]]


def _bad_signature(j: Journals) -> tuple[str, list[Row], str]:
    batch = list(j.a[HELD:8])
    seq, entry, sig = batch[1]
    batch[1] = (seq, entry, flip(sig))
    return ORIGIN, batch, checkpoint(j.a[:8], j.key)


def _chain_break(j: Journals) -> tuple[str, list[Row], str]:
    batch = j.same_key_other_bodies[HELD:8]  # validly signed, but chained to another journal's entries
    return ORIGIN, batch, checkpoint(j.a[:HELD] + batch, j.key)


def _root_mismatch(j: Journals) -> tuple[str, list[Row], str]:
    return ORIGIN, j.a[HELD:8], checkpoint(j.a[:8], j.key, root=root_of(j.a[:7]))


def _foreign_checkpoint(j: Journals) -> tuple[str, list[Row], str]:
    return ORIGIN, j.a[HELD:8], checkpoint(j.a[:8], j.foreign)


def _unknown_origin(j: Journals) -> tuple[str, list[Row], str]:
    return "collector.test/stranger", j.stranger, checkpoint(j.stranger, signer("collector.test/stranger"))


def _gap(j: Journals) -> tuple[str, list[Row], str]:
    return ORIGIN, j.a[HELD + 1 : 8], checkpoint(j.a[:8], j.key)


def _not_contiguous(j: Journals) -> tuple[str, list[Row], str]:
    return ORIGIN, [j.a[4], j.a[6], j.a[7]], checkpoint(j.a[:8], j.key)


def _renumbered(j: Journals) -> tuple[str, list[Row], str]:
    batch = [(seq + 1, e, s) for seq, e, s in j.a[HELD - 1 : 7]]  # sent as 4..7, signed as 3..6
    return ORIGIN, batch, checkpoint(j.a[:8], j.key)


def _conflicting_entry(j: Journals) -> tuple[str, list[Row], str]:
    batch = j.same_key_other_bodies[2:8]  # seq 2 and 3 are held with other bytes
    return ORIGIN, batch, checkpoint(j.a[:2] + batch, j.key)


def _size_mismatch(j: Journals) -> tuple[str, list[Row], str]:
    return ORIGIN, j.a[HELD:8], checkpoint(j.a[:9], j.key)


def _unknown_key(j: Journals) -> tuple[str, list[Row], str]:
    batch = j.foreign_key_same_name[HELD:8]
    return ORIGIN, batch, checkpoint(j.a[:HELD] + batch, j.key)


def _malformed_entry(j: Journals) -> tuple[str, list[Row], str]:
    batch = list(j.a[HELD:8])
    seq, entry, sig = batch[0]
    batch[0] = (seq, entry[:-1], sig)  # body shorter than its length field
    return ORIGIN, batch, checkpoint(j.a[:HELD] + batch, j.key)


def _resigned(j: Journals, *, body: bytes | None = None, kind: int | None = None) -> tuple[str, list[Row], str]:
    """Seq HELD rewritten (its body or kind byte) and validly signed again: only the shared entry check sees it."""
    seq, raw, _ = j.a[HELD]
    e = decode_entry(raw)
    rewritten = encode_entry(
        e.kind if kind is None else kind,
        e.seq,
        e.unix_nanos,
        e.prev_leaf_hash,
        e.key_id,
        e.body if body is None else body,
    )
    batch = [(seq, rewritten, j.key.sign(signature_payload(ORIGIN, rewritten)))]
    return ORIGIN, batch, checkpoint(j.a[:HELD] + batch, j.key)


def _noncanonical_body(j: Journals) -> tuple[str, list[Row], str]:
    body = json.loads(decode_entry(j.a[HELD][1]).body)
    return _resigned(j, body=json.dumps(body, indent=1).encode())  # same JSON, not its RFC 8785 bytes


def _unknown_kind(j: Journals) -> tuple[str, list[Row], str]:
    return _resigned(j, kind=200)


def _kind_mismatch(j: Journals) -> tuple[str, list[Row], str]:
    kind = decode_entry(j.a[HELD][1]).kind
    return _resigned(j, kind=EventKind.HEARTBEAT if kind != EventKind.HEARTBEAT else EventKind.PRE_EXEC)


def _garbage_checkpoint(j: Journals) -> tuple[str, list[Row], str]:
    return ORIGIN, j.a[HELD:8], "not a signed note\n"


def _checkpoint_for_another_origin(j: Journals) -> tuple[str, list[Row], str]:
    return ORIGIN, j.a[HELD:8], checkpoint(j.a[:8], signer(OTHER_ORIGIN))


def _control_characters(j: Journals) -> tuple[str, list[Row], str]:
    return ORIGIN, j.a[HELD:8], checkpoint(j.a[:8], j.key).replace("\n\n", "\n\x00\n")


def _seq_beyond_int64(j: Journals) -> tuple[str, list[Row], str]:
    last = 2**64 - 1  # the largest uint64 a request can carry
    return ORIGIN, [(last, *j.a[HELD][1:])], sign_checkpoint(Checkpoint(ORIGIN, 2**64, bytes(32)), j.key).encode()


def _empty_batch(j: Journals) -> tuple[str, list[Row], str]:
    return ORIGIN, [], checkpoint(j.a[:HELD], j.key)


REFUSALS = [
    pytest.param(_bad_signature, RejectCode.BAD_SIGNATURE, "seq 5", id="bad_signature"),
    pytest.param(_chain_break, RejectCode.CHAIN_BREAK, "seq 4", id="chain_break"),
    pytest.param(_root_mismatch, RejectCode.ROOT_MISMATCH, "size 8", id="root_mismatch"),
    pytest.param(_foreign_checkpoint, RejectCode.CHECKPOINT_SIGNATURE, "size 8", id="checkpoint_signature"),
    pytest.param(_unknown_origin, RejectCode.UNKNOWN_ORIGIN, "stranger", id="unknown_origin"),
    pytest.param(_gap, RejectCode.GAP, "seq 4", id="gap"),
    pytest.param(_not_contiguous, RejectCode.NOT_CONTIGUOUS, "expected 5", id="not_contiguous"),
    pytest.param(_renumbered, RejectCode.NOT_CONTIGUOUS, "signed as seq 3", id="renumbered"),
    pytest.param(_conflicting_entry, RejectCode.CONFLICTING_ENTRY, "seq 2", id="conflicting_entry"),
    pytest.param(_size_mismatch, RejectCode.SIZE_MISMATCH, "seq 7", id="size_mismatch"),
    pytest.param(_unknown_key, RejectCode.UNKNOWN_KEY, "seq 4", id="unknown_key"),
    pytest.param(_malformed_entry, RejectCode.MALFORMED_ENTRY, "seq 4", id="malformed_entry"),
    pytest.param(_noncanonical_body, RejectCode.MALFORMED_ENTRY, "RFC 8785", id="noncanonical_body"),
    pytest.param(_unknown_kind, RejectCode.MALFORMED_ENTRY, "kind 200 is not a known", id="unknown_kind"),
    pytest.param(_kind_mismatch, RejectCode.MALFORMED_ENTRY, "body kind is", id="kind_mismatch"),
    pytest.param(_garbage_checkpoint, RejectCode.BAD_CHECKPOINT, "malformed", id="bad_checkpoint"),
    pytest.param(_checkpoint_for_another_origin, RejectCode.BAD_CHECKPOINT, OTHER_ORIGIN, id="checkpoint_origin"),
    pytest.param(_control_characters, RejectCode.BAD_CHECKPOINT, "control", id="checkpoint_control_chars"),
    pytest.param(_seq_beyond_int64, RejectCode.GAP, "seq 4", id="seq_beyond_int64"),
    pytest.param(_empty_batch, RejectCode.EMPTY_BATCH, "no entries", id="empty_batch"),
]


@pytest.fixture
def journals(tmp_path: Path) -> Journals:
    key, foreign = signer(), signer(seed=2)
    stranger_key = signer("collector.test/stranger")
    return Journals(
        key=key,
        a=journal(tmp_path, "a", 10, key),
        same_key_other_bodies=journal(tmp_path, "fork", 10, key, first=500),
        foreign_key_same_name=journal(tmp_path, "foreign", 10, foreign),
        foreign=foreign,
        stranger=journal(tmp_path, "stranger", 3, stranger_key),
    )


@pytest.mark.parametrize(("tamper", "code", "where"), REFUSALS)
def test_tampered_batch_is_refused_with_a_precise_reason(
    store: Backend, journals: Journals, tamper: Case, code: RejectCode, where: str
) -> None:
    j = journals
    origin, batch, note = tamper(j)

    async def scenario() -> None:
        async with store.open() as s:
            held = await ingest(s, j.a[:HELD], checkpoint(j.a[:HELD], j.key))
            with pytest.raises(IngestRejected) as caught:
                await ingest(s, batch, note, origin)
            assert caught.value.code == code
            assert where in str(caught.value)
            # Nothing changed: entries, witness state, no evidence (only rollback and fork leave some).
            assert await s.latest(ORIGIN) == (HELD, held.cosigned_note)
            assert await s.entries(ORIGIN) == j.a[:HELD]
            assert await s.evidence(ORIGIN) == []
            # And the honest continuation is still accepted.
            outcome = await ingest(s, j.a[HELD:], checkpoint(j.a, j.key))
            assert (outcome.size, outcome.accepted) == (10, 10 - HELD)

    run(scenario())


def test_rollback_to_a_truncated_copy_is_refused_and_kept_as_evidence(store: Backend, tmp_path: Path) -> None:
    key = signer()
    path = tmp_path / "a.db"
    write_journal(path, 6, key)
    shutil.copy(path, tmp_path / "truncated.db")  # the journal as it was at size 6
    write_journal(path, 6, key, first=6)
    full, truncated = rows_of(path), rows_of(tmp_path / "truncated.db")
    assert full[:6] == truncated

    async def scenario() -> None:
        async with store.open() as s:
            cosigned = await ingest(s, full, checkpoint(full, key))
            stale = checkpoint(truncated, key)
            with pytest.raises(IngestRejected) as caught:
                await ingest(s, truncated, stale)
            assert caught.value.code == RejectCode.ROLLBACK
            assert caught.value.is_evidence
            assert "size 6 is smaller than the cosigned size 12" in str(caught.value)
            assert await s.latest(ORIGIN) == (12, cosigned.cosigned_note)
            assert await s.entries(ORIGIN) == full
            evidence = await s.evidence(ORIGIN)
            assert [(e["code"], e["note"], e["cosigned_note"], e["received_at"]) for e in evidence] == [
                ("rollback", stale, cosigned.cosigned_note, NOW)
            ]
            # The same stale note sent again is refused again and kept once.
            with pytest.raises(IngestRejected):
                await ingest(s, truncated, stale)
            assert len(await s.evidence(ORIGIN)) == 1

    run(scenario())


def test_rollback_then_rewrite_is_refused_as_rollback(store: Backend, tmp_path: Path) -> None:
    key = signer()
    path = tmp_path / "a.db"
    write_journal(path, 6, key)
    shutil.copy(path, tmp_path / "rewritten.db")
    write_journal(path, 6, key, first=6)
    write_journal(tmp_path / "rewritten.db", 3, key, first=900)  # truncated to 6, then 3 other entries
    full, rewritten = rows_of(path), rows_of(tmp_path / "rewritten.db")

    async def scenario() -> None:
        async with store.open() as s:
            await ingest(s, full, checkpoint(full, key))
            with pytest.raises(IngestRejected) as caught:
                await ingest(s, rewritten[6:], checkpoint(rewritten, key))
            assert caught.value.code == RejectCode.ROLLBACK
            assert [e["code"] for e in await s.evidence(ORIGIN)] == ["rollback"]

    run(scenario())


def test_fork_of_the_same_size_is_refused_and_kept_as_evidence(store: Backend, tmp_path: Path) -> None:
    key = signer()
    a = journal(tmp_path, "a", 8, key)
    b = journal(tmp_path, "b", 8, key, first=100)  # same key and size, other entries

    async def scenario() -> None:
        async with store.open() as s:
            cosigned = await ingest(s, a, checkpoint(a, key))
            forked = checkpoint(b, key)
            with pytest.raises(IngestRejected) as caught:
                await ingest(s, b, forked)
            assert caught.value.code == RejectCode.FORK
            assert "size 8" in str(caught.value)
            assert await s.latest(ORIGIN) == (8, cosigned.cosigned_note)
            assert await s.entries(ORIGIN) == a
            evidence = await s.evidence(ORIGIN)
            assert [(e["code"], e["note"], e["cosigned_note"]) for e in evidence] == [
                ("fork", forked, cosigned.cosigned_note)
            ]

    run(scenario())


def test_evidence_survives_a_restart(store: Backend, tmp_path: Path) -> None:
    key = signer()
    a = journal(tmp_path, "a", 5, key)
    b = journal(tmp_path, "b", 5, key, first=100)

    async def scenario() -> None:
        async with store.open() as s:
            await ingest(s, a, checkpoint(a, key))
            with pytest.raises(IngestRejected):
                await ingest(s, b, checkpoint(b, key))
        async with store.open() as s:
            assert [e["code"] for e in await s.evidence(ORIGIN)] == ["fork"]

    run(scenario())


def test_register_origin_refuses_a_key_named_for_another_origin(store: Backend) -> None:
    async def scenario() -> None:
        async with store.open(register=False) as s:
            with pytest.raises(ConfigError, match="named for origin"):
                await s.register_origin(ORIGIN, [signer(OTHER_ORIGIN).verifier])
            with pytest.raises(ConfigError, match="at least one"):
                await s.register_origin(ORIGIN, [])

    run(scenario())


def test_key_rotation_is_read_from_the_database(store: Backend, tmp_path: Path) -> None:
    """Keys registered by one replica apply to ingests served by another."""
    old, new = signer(), signer(seed=3)
    rows = journal(tmp_path, "new", 4, new)

    async def scenario() -> None:
        async with store.open() as one, store.open(register=False) as two:
            with pytest.raises(IngestRejected) as caught:
                await ingest(two, rows, checkpoint(rows, new))
            assert caught.value.code == RejectCode.CHECKPOINT_SIGNATURE
            await one.register_origin(ORIGIN, [old.verifier, new.verifier])
            outcome = await ingest(two, rows, checkpoint(rows, new))
            assert outcome.accepted == 4

    run(scenario())


# --- Merkle tree state (what the stores persist per origin) ---------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 8, 64, 100])
def test_merkle_state_round_trips_and_extends(size: int) -> None:
    leaves = [bytes([i % 256]) * 32 for i in range(size + 9)]
    tree = MerkleRoot()
    for leaf in leaves[:size]:
        tree.append(leaf)
    for restored in (decode_state(encode_state(tree)), MerkleRoot.restore(tree.size, tree.state())):
        assert restored.size == size and restored.root() == tree.root()
        for leaf in leaves[size:]:
            restored.append(leaf)
        assert restored.root() == rfc6962_root(leaves)


@pytest.mark.parametrize(
    ("size", "stack"),
    [
        pytest.param(3, [(1, bytes(32))], id="missing-subtree"),
        pytest.param(2, [(0, bytes(32)), (0, bytes(32))], id="wrong-heights"),
        pytest.param(1, [(0, bytes(31))], id="short-hash"),
        pytest.param(-1, [], id="negative"),
    ],
)
def test_merkle_restore_refuses_an_inconsistent_state(size: int, stack: list[tuple[int, bytes]]) -> None:
    with pytest.raises(ValueError):
        MerkleRoot.restore(size, stack)


def test_merkle_decode_refuses_truncated_state() -> None:
    tree = MerkleRoot()
    for i in range(5):
        tree.append(bytes([i]) * 32)
    with pytest.raises(ValueError):
        decode_state(encode_state(tree)[:-1])
