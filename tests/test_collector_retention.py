"""Collector retention: ``prune`` on both stores, the append-only triggers around it, and its configuration.

Test journals stamp entry ``i`` at ``BASE_NS + i`` nanoseconds, so a cutoff of ``BASE_NS + k`` prunes seqs below k.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.collector.app import NANOS_PER_DAY, retention_loop
from gateway.collector.ingest import IngestRejected
from gateway.collector.store import CollectorStore, CollectorUnavailableError
from gateway.config import load_collector_config
from gateway.errors import ConfigError
from tests import test_collector_store
from tests.test_collector_store import (
    ORIGIN,
    OTHER_ORIGIN,
    POSTGRES_DSN,
    Backend,
    assert_witnessed,
    checkpoint,
    ingest,
    journal,
    run,
    signer,
)

store = test_collector_store.store  # the fixture running each test on SQLite and on PostgreSQL

BASE_NS = 1_700_000_000_000_000_000


async def raw_delete(backend: Backend, s: CollectorStore, sql: str) -> None:
    """Runs ``sql`` directly on the store's database, as an operator with a SQL shell would."""
    if backend.name == "sqlite":
        conn = sqlite3.connect(s.path)  # type: ignore[attr-defined]
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    import asyncpg  # noqa: PLC0415

    conn2 = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": s.schema})  # type: ignore[attr-defined]
    try:
        await conn2.execute(sql)
    finally:
        await conn2.close()


def refused(backend: Backend) -> tuple[type[BaseException], ...]:
    if backend.name == "sqlite":
        return (sqlite3.DatabaseError,)
    import asyncpg  # noqa: PLC0415

    return (asyncpg.PostgresError,)


def test_prune_deletes_older_events_only_and_the_tree_still_extends(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows = journal(tmp_path, "a", 30, key)
    other = journal(tmp_path, "b", 4, signer(OTHER_ORIGIN))

    async def scenario() -> None:
        async with store.open() as s:
            await ingest(s, rows[:20], checkpoint(rows[:20], key))
            await ingest(s, other, checkpoint(other, signer(OTHER_ORIGIN)), origin=OTHER_ORIGIN)
            # A rollback leaves evidence; retention must keep it.
            with pytest.raises(IngestRejected):
                await ingest(s, rows[:5], checkpoint(rows[:5], key))
            evidence = await s.evidence(ORIGIN)
            assert len(evidence) == 1
            _, note_before = await s.latest(ORIGIN)

            # Batches of 3 rows: 12 old events of ORIGIN and all 4 of OTHER_ORIGIN take several transactions.
            assert await s.prune(BASE_NS + 12, batch_rows=3) == 16
            assert await s.entries(ORIGIN) == rows[12:20]
            assert await s.entries(OTHER_ORIGIN) == []
            assert (await s.latest(OTHER_ORIGIN))[0] == 4
            assert await s.evidence(ORIGIN) == evidence
            assert await s.latest(ORIGIN) == (20, note_before)
            assert await s.prune(BASE_NS + 12) == 0  # nothing left to delete

            # The frontier stayed: the next batch verifies against it and is cosigned over all 30 entries.
            outcome = await ingest(s, rows[20:], checkpoint(rows, key))
            assert (outcome.size, outcome.accepted) == (30, 10)
            assert_witnessed(outcome.cosigned_note, key, 30)
            assert await s.entries(ORIGIN) == rows[12:]
            # An overlapping resend of entries still held is accepted as before.
            again = await ingest(s, rows[25:], checkpoint(rows, key))
            assert (again.size, again.accepted) == (30, 0)
            # A resend reaching back into the pruned range is refused cleanly, naming the seq to resume from.
            with pytest.raises(IngestRejected) as pruned:
                await ingest(s, rows[5:], checkpoint(rows, key))
            assert pruned.value.code == "pruned"

    run(scenario())


def test_prune_with_nothing_to_delete_returns_zero(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows = journal(tmp_path, "a", 5, key)

    async def scenario() -> None:
        async with store.open() as s:
            assert await s.prune(BASE_NS + 10**18) == 0  # empty store
            await ingest(s, rows, checkpoint(rows, key))
            assert await s.prune(BASE_NS) == 0  # every event is at or after the cutoff
            assert await s.entries(ORIGIN) == rows

    run(scenario())


def test_other_deletes_and_updates_are_still_refused(store: Backend, tmp_path: Path) -> None:
    key = signer()
    rows = journal(tmp_path, "a", 6, key)

    async def scenario() -> None:
        async with store.open() as s:
            await ingest(s, rows, checkpoint(rows, key))
            assert await s.prune(BASE_NS + 2) == 2
            for sql in (
                "DELETE FROM events",
                f"DELETE FROM events WHERE unix_nanos < {BASE_NS + 4}",  # old enough, but not from prune
                "UPDATE events SET kind = 'x'",
            ):
                with pytest.raises(refused(store), match="append-only"):
                    await raw_delete(store, s, sql)
            if store.name == "postgres":
                with pytest.raises(refused(store), match="append-only"):
                    await raw_delete(store, s, "TRUNCATE events")
            else:
                # Even with the window row removed, DELETE is refused.
                await raw_delete(store, s, "DELETE FROM retention_window")
                with pytest.raises(refused(store), match="append-only"):
                    await raw_delete(store, s, "DELETE FROM events")
            assert await s.entries(ORIGIN) == rows[2:]

    run(scenario())


def test_prune_rejects_a_zero_batch(store: Backend) -> None:
    async def scenario() -> None:
        async with store.open() as s:
            with pytest.raises(ValueError, match="batch_rows"):
                await s.prune(BASE_NS, batch_rows=0)

    run(scenario())


# --- configuration and the periodic task ---------------------------------------------------------------------


def write_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(f"collector:\n  store: sqlite:///{tmp_path}/c.db\n  witness_key: witness.key\n{extra}")
    return path


def test_retention_defaults_to_keep_forever(tmp_path: Path) -> None:
    cfg = load_collector_config(write_config(tmp_path, ""))
    assert cfg.retention_days is None
    assert cfg.prune_interval_s == 3600


def test_retention_config_is_parsed(tmp_path: Path) -> None:
    cfg = load_collector_config(write_config(tmp_path, "  retention_days: 30\n  prune_interval_s: 60\n"))
    assert (cfg.retention_days, cfg.prune_interval_s) == (30, 60.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  retention_days: 0\n", "retention_days"),
        ("  retention_days: -3\n", "retention_days"),
        ("  retention_days: 1.5\n", "retention_days"),
        ("  retention_days: '30'\n", "retention_days"),
        ("  retention_days: true\n", "retention_days"),
        ("  prune_interval_s: 0\n", "prune_interval_s"),
        ("  prune_interval_s: fast\n", "prune_interval_s"),
        ("  retention: 30\n", "unknown key"),
    ],
)
def test_retention_config_errors(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_collector_config(write_config(tmp_path, extra))


class FakeStore:
    def __init__(self, fail_first: bool) -> None:
        self.cutoffs: list[int] = []
        self.fail_first = fail_first
        self.three = asyncio.Event()

    async def prune(self, before_ns: int, **_: Any) -> int:
        self.cutoffs.append(before_ns)
        if len(self.cutoffs) == 3:
            self.three.set()
        if self.fail_first and len(self.cutoffs) == 1:
            raise CollectorUnavailableError("down")
        return 7


def test_retention_loop_prunes_periodically_and_survives_failures(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeStore(fail_first=True)
    now = 100 * NANOS_PER_DAY

    async def scenario() -> None:
        task = asyncio.create_task(retention_loop(fake, 30, 0.01, now_ns=lambda: now))  # type: ignore[arg-type]
        await asyncio.wait_for(fake.three.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    caplog.set_level("INFO", logger="gateway.collector.app")
    run(scenario())
    assert set(fake.cutoffs) == {70 * NANOS_PER_DAY}
    assert "prune failed" in caplog.text
    assert "deleted 7 event(s)" in caplog.text
