"""Large batches checked on worker processes (collector/checking.py), against forged entries, on both stores.

A batch of more than ``MIN_PARALLEL_ENTRIES`` new entries is split into chunks checked by worker processes. The
outcome must be the sequential one: one forged entry anywhere (mid-chunk, first of a chunk, last of the batch)
refuses the whole batch, naming the first faulty seq, and nothing is stored or cosigned. A killed worker must
cost nothing but speed. The PostgreSQL store COPYs each chunk once it is checked, inside the batch's transaction,
while later chunks are still being checked: a refusal found after chunks were copied (a later entry, the root),
or an ingest cancelled mid-copy, must still leave nothing of the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.collector.checking import CHUNK_ENTRIES, MIN_PARALLEL_ENTRIES, EntryCheckPool
from gateway.collector.ingest import IngestRejected, RejectCode
from gateway.collector.sqlite_store import SqliteCollectorStore
from gateway.collector.store import CollectorStore
from gateway.journal.entry import decode_entry, encode_entry, leaf_hash, signature_payload
from tests.test_collector_store import (
    NOW,
    ORIGIN,
    POSTGRES_DSN,
    REQUIRE_POSTGRES,
    WITNESS,
    Row,
    checkpoint,
    drop_schema,
    journal,
    postgres_unreachable,
    signer,
)

SIZE = 3 * CHUNK_ENTRIES + 100  # four chunks, the last one short
T = TypeVar("T")
KEY = signer()


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[Row]:
    """An honest journal of SIZE entries, written by the real writer (shared: each test copies what it forges)."""
    return journal(tmp_path_factory.mktemp("journal"), "big", SIZE, KEY)


@pytest.fixture(params=["sqlite", "postgres", "postgres-inline"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], CollectorStore]]:
    """Makes stores with two check workers, so large batches go to processes even on one core; and a PostgreSQL
    store with none (its pipelined chunks are then checked one after another in a thread)."""
    if request.param == "sqlite":
        yield lambda: SqliteCollectorStore(tmp_path / "collector.db", check_workers=2)
        return
    reason = postgres_unreachable()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"AGENTAUDIT_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    from gateway.collector.postgres_store import PostgresCollectorStore  # noqa: PLC0415

    schema = f"aa_test_{os.urandom(8).hex()}"
    workers = 0 if request.param == "postgres-inline" else 2
    try:
        yield lambda: PostgresCollectorStore(POSTGRES_DSN, schema=schema, check_workers=workers)
    finally:
        drop_schema(schema)


def resign(row: Row, *, prev: bytes | None = None, body: bytes | None = None) -> Row:
    """``row`` rewritten (its prev_leaf_hash or body) and validly signed again by the origin's key."""
    seq, raw, _ = row
    e = decode_entry(raw)
    rewritten = encode_entry(
        e.kind, e.seq, e.unix_nanos, e.prev_leaf_hash if prev is None else prev, e.key_id, body or e.body
    )
    return seq, rewritten, KEY.sign(signature_payload(ORIGIN, rewritten))


def bad_signature(rows: list[Row], seq: int) -> list[Row]:
    forged = list(rows)
    s, raw, sig = forged[seq]
    forged[seq] = (s, raw, sig[:-1] + bytes([sig[-1] ^ 1]))
    return forged


def chain_break(rows: list[Row], seq: int) -> list[Row]:
    forged = list(rows)
    forged[seq] = resign(forged[seq], prev=bytes(32))
    return forged


def noncanonical(rows: list[Row], seq: int) -> list[Row]:
    forged = list(rows)
    forged[seq] = resign(forged[seq], body=decode_entry(forged[seq][1]).body.replace(b",", b", ", 1))
    return forged


FORGERIES = [
    pytest.param(bad_signature, 2 * CHUNK_ENTRIES + 17, RejectCode.BAD_SIGNATURE, id="bad_signature-mid_chunk"),
    pytest.param(bad_signature, SIZE - 1, RejectCode.BAD_SIGNATURE, id="bad_signature-last_entry"),
    pytest.param(chain_break, CHUNK_ENTRIES, RejectCode.CHAIN_BREAK, id="chain_break-first_of_a_chunk"),
    pytest.param(noncanonical, CHUNK_ENTRIES - 1, RejectCode.MALFORMED_ENTRY, id="noncanonical-last_of_a_chunk"),
]


async def opened(new_store: Callable[[], CollectorStore]) -> CollectorStore:
    store = new_store()
    await store.start()
    await store.register_origin(ORIGIN, [KEY.verifier])
    return store


async def holds_nothing_then_takes_the_batch(store: CollectorStore, rows: list[Row]) -> None:
    """After a refused batch: nothing of it is held, and the honest batch is then taken whole."""
    assert await store.latest(ORIGIN) == (0, "")
    assert await store.entries(ORIGIN) == []
    outcome = await store.ingest(ORIGIN, rows, checkpoint(rows, KEY), WITNESS, NOW)
    assert (outcome.size, outcome.accepted) == (SIZE, SIZE)
    assert await store.entries(ORIGIN) == rows


@pytest.mark.parametrize(("forge", "seq", "code"), FORGERIES)
def test_one_forged_entry_refuses_the_whole_large_batch(
    new_store: Callable[[], CollectorStore],
    rows: list[Row],
    forge: Callable[[list[Row], int], list[Row]],
    seq: int,
    code: RejectCode,
) -> None:
    assert SIZE >= MIN_PARALLEL_ENTRIES  # the batch goes to the workers
    forged = forge(rows, seq)

    async def scenario() -> None:
        store = await opened(new_store)
        try:
            with pytest.raises(IngestRejected) as caught:
                # The checkpoint is honestly signed over the forged entries: only the entry check can refuse.
                await store.ingest(ORIGIN, forged, checkpoint(forged, KEY), WITNESS, NOW)
            assert caught.value.code == code
            assert caught.value.seq == seq
            await holds_nothing_then_takes_the_batch(store, rows)
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_the_first_faulty_entry_is_named_when_several_chunks_hold_one(
    new_store: Callable[[], CollectorStore], rows: list[Row]
) -> None:
    # The later chunk's fault must not win because its worker answered first.
    forged = noncanonical(bad_signature(rows, 3 * CHUNK_ENTRIES + 5), CHUNK_ENTRIES + 3)

    async def scenario() -> None:
        store = await opened(new_store)
        try:
            with pytest.raises(IngestRejected) as caught:
                await store.ingest(ORIGIN, forged, checkpoint(forged, KEY), WITNESS, NOW)
            assert (caught.value.code, caught.value.seq) == (RejectCode.MALFORMED_ENTRY, CHUNK_ENTRIES + 3)
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_a_large_batch_extending_held_entries_is_checked_against_the_held_tail(
    new_store: Callable[[], CollectorStore], rows: list[Row]
) -> None:
    # The first new entry links to the collector's last held leaf, the others to their own predecessor.
    held = 7

    async def scenario() -> None:
        store = await opened(new_store)
        try:
            await store.ingest(ORIGIN, rows[:held], checkpoint(rows[:held], KEY), WITNESS, NOW)
            broken = chain_break(rows, held)
            with pytest.raises(IngestRejected) as caught:
                await store.ingest(ORIGIN, broken[held:], checkpoint(broken, KEY), WITNESS, NOW)
            assert (caught.value.code, caught.value.seq) == (RejectCode.CHAIN_BREAK, held)
            outcome = await store.ingest(ORIGIN, rows[held:], checkpoint(rows, KEY), WITNESS, NOW)
            assert (outcome.size, outcome.accepted) == (SIZE, SIZE - held)
        finally:
            await store.aclose()

    asyncio.run(scenario())


def _worker_pids(pool: EntryCheckPool) -> list[int]:
    executor = pool._executor  # private: the test kills the processes the pool owns
    assert executor is not None
    return list(executor._processes)


def test_a_killed_worker_costs_speed_never_a_check(rows: list[Row]) -> None:
    pool = EntryCheckPool(2)
    keys = {KEY.verifier.key_id: [KEY.verifier]}
    try:
        assert len(pool.check(ORIGIN, keys, rows, bytes(32))) == SIZE  # starts the workers
        for pid in _worker_pids(pool):
            os.kill(pid, signal.SIGKILL)
        forged = bad_signature(rows, CHUNK_ENTRIES + 1)
        with pytest.raises(IngestRejected) as caught:
            pool.check(ORIGIN, keys, forged, bytes(32))  # the broken pool: checked in this process instead
        assert (caught.value.code, caught.value.seq) == (RejectCode.BAD_SIGNATURE, CHUNK_ENTRIES + 1)
        checked = pool.check(ORIGIN, keys, rows, bytes(32))  # in-process for a while, then new workers
        assert [e.leaf_hash for e in checked] == [leaf_hash(raw, sig) for _, raw, sig in rows]
        pool._inline_until = 0.0  # private: skip the wait before workers are started again
        assert [e.leaf_hash for e in pool.check(ORIGIN, keys, rows, bytes(32))] == [e.leaf_hash for e in checked]
        assert _worker_pids(pool)
    finally:
        pool.close()


def test_a_root_mismatch_found_after_every_chunk_was_copied_leaves_nothing(
    new_store: Callable[[], CollectorStore], rows: list[Row]
) -> None:
    # Every entry is honest, so every chunk is checked and copied; only the root, compared last, is wrong.
    wrong = checkpoint(rows, KEY, root=bytes(32))

    async def scenario() -> None:
        store = await opened(new_store)
        try:
            with pytest.raises(IngestRejected) as caught:
                await store.ingest(ORIGIN, rows, wrong, WITNESS, NOW)
            assert (caught.value.code, caught.value.seq) == (RejectCode.ROOT_MISMATCH, SIZE - 1)
            assert await store.latest(ORIGIN) == (0, "")
            assert await store.entries(ORIGIN) == []
            outcome = await store.ingest(ORIGIN, rows, checkpoint(rows, KEY), WITNESS, NOW)
            assert (outcome.size, outcome.accepted) == (SIZE, SIZE)
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_an_ingest_cancelled_while_its_chunks_are_copied_leaves_all_or_nothing(
    new_store: Callable[[], CollectorStore], rows: list[Row]
) -> None:
    # A forwarder that hangs up mid-batch cancels the ingest: the batch is then held whole (the cancel came after
    # the commit, or the SQLite store's thread committed anyway) or not at all (copied chunks rolled back with the
    # transaction), never in part; the connection goes back to the pool usable; the resent batch completes it.
    async def scenario() -> None:
        store = await opened(new_store)
        try:
            cancelled = 0
            for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05):
                held = await store.entries(ORIGIN)
                task = asyncio.ensure_future(store.ingest(ORIGIN, rows, checkpoint(rows, KEY), WITNESS, NOW))
                await asyncio.sleep(delay)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                cancelled += task.cancelled()
                size, _ = await store.latest(ORIGIN)
                assert (size, await store.entries(ORIGIN)) in ((0, []), (SIZE, rows))
                if held:
                    break
            assert cancelled  # at least the first, cancelled before it began, proves the rollback path ran
            outcome = await store.ingest(ORIGIN, rows, checkpoint(rows, KEY), WITNESS, NOW)
            assert outcome.size == SIZE
            assert await store.entries(ORIGIN) == rows
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_chunks_streamed_from_a_pool_whose_worker_is_killed_are_checked_in_process(rows: list[Row]) -> None:
    pool = EntryCheckPool(1)
    keys = {KEY.verifier.key_id: [KEY.verifier]}
    bounds = [(0, 25), *((start, min(SIZE, start + 100)) for start in range(25, SIZE, 100))]
    forged = bad_signature(rows, SIZE - 3)

    async def streamed(entries: list[Row], kill_after: int | None = None) -> list[bytes]:
        leaves: list[bytes] = []
        parts = pool.check_chunks(ORIGIN, keys, entries, bytes(32), bounds)
        try:
            async for index, part in _enumerate(parts):
                leaves.extend(e.leaf_hash for e in part)
                if index == kill_after:
                    for pid in _worker_pids(pool):
                        os.kill(pid, signal.SIGKILL)
        finally:
            await parts.aclose()
        return leaves

    try:
        honest = [leaf_hash(raw, sig) for _, raw, sig in rows]
        assert asyncio.run(streamed(rows)) == honest  # starts the worker
        assert asyncio.run(streamed(rows, kill_after=1)) == honest
        pool._inline_until = 0.0  # private: skip the wait before workers are started again
        asyncio.run(streamed(rows))
        for pid in _worker_pids(pool):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(IngestRejected) as caught:
            asyncio.run(streamed(forged))  # every chunk was sent to the dead worker: all checked in-process
        assert (caught.value.code, caught.value.seq) == (RejectCode.BAD_SIGNATURE, SIZE - 3)
    finally:
        pool.close()


async def _enumerate(parts: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    index = 0
    async for part in parts:
        yield index, part
        index += 1


def test_a_chunk_check_that_fails_raises_rather_than_hangs(rows: list[Row], monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a refusal (those are values) but a failure of the check itself: the caller must get it, not wait forever.
    import gateway.collector.checking as checking  # noqa: PLC0415

    def failing(*_: object) -> None:
        raise MemoryError("no memory for this chunk")

    monkeypatch.setattr(checking, "check_new_entries", failing)
    pool = EntryCheckPool(0)
    keys = {KEY.verifier.key_id: [KEY.verifier]}

    async def scenario() -> None:
        parts = pool.check_chunks(ORIGIN, keys, rows, bytes(32), [(0, 25), (25, 125), (125, SIZE)])
        try:
            with pytest.raises(MemoryError):
                async with asyncio.timeout(10):
                    async for _ in parts:
                        pass
        finally:
            await parts.aclose()

    try:
        asyncio.run(scenario())
    finally:
        pool.close()


@pytest.mark.parametrize("new_store", ["postgres", "postgres-inline"], indirect=True)
def test_the_database_connection_killed_after_a_chunk_was_copied_leaves_nothing(
    new_store: Callable[[], CollectorStore], rows: list[Row]
) -> None:
    # The ingest is held after its first chunk was copied; then PostgreSQL kills its backend, as a failover or an
    # operator's pg_terminate_backend would. The batch must be refused as "unavailable", nothing of it kept, and
    # the store must take the resent batch on a new connection.
    import asyncpg  # noqa: PLC0415

    from gateway.collector.postgres_store import PostgresCollectorStore  # noqa: PLC0415
    from gateway.collector.store import CollectorUnavailableError  # noqa: PLC0415

    async def scenario() -> None:
        store = await opened(new_store)
        assert isinstance(store, PostgresCollectorStore)  # only it copies in chunks
        copied_one, resume = asyncio.Event(), asyncio.Event()
        chunks = store._checks.check_chunks  # private: the test holds the pipeline between two chunks

        async def held(*args: object) -> AsyncIterator[object]:
            parts = chunks(*args)  # type: ignore[arg-type]
            try:
                async for index, part in _enumerate(parts):
                    if index == 1:
                        copied_one.set()  # the first chunk's COPY was issued when the second is asked for
                        await resume.wait()
                    yield part
            finally:
                await parts.aclose()

        store._checks.check_chunks = held  # type: ignore[method-assign]
        admin = await asyncpg.connect(POSTGRES_DSN)
        task = asyncio.ensure_future(store.ingest(ORIGIN, rows, checkpoint(rows, KEY), WITNESS, NOW))
        try:
            await asyncio.wait_for(copied_one.wait(), 30)
            await asyncio.sleep(0.2)  # let the first COPY end
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'COPY %' "
                "AND query LIKE '%' || $1 || '%' AND state = 'idle in transaction'",
                store.schema,
            )
            assert killed == 1  # the ingest's own connection, inside its transaction
            resume.set()
            with pytest.raises(CollectorUnavailableError):
                await asyncio.wait_for(task, 30)
            store._checks.check_chunks = chunks  # type: ignore[method-assign]
            await holds_nothing_then_takes_the_batch(store, rows)
        finally:
            resume.set()  # a failed assertion must not leave the ingest waiting (and the pool unable to close)
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await admin.close()
            await store.aclose()

    asyncio.run(scenario())
