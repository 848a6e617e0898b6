"""Retention: only witnessed entries are pruned, through a signed marker, and the journal still verifies."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.collector.app import Collector
from gateway.config import CollectorConfig
from gateway.journal.store import JournalReader
from gateway.journal.verify import FindingCode, verify_journal
from gateway.journal.writer import JournalWriter, now_nanos
from gateway.redaction import Redactor
from gateway.sidecar.forwarder import Forwarder, GrpcUpstream
from gateway.sidecar.recorder import AuditRecorder
from gateway.sidecar.retention import RetentionJob
from gateway.signing import Ed25519Signer, write_secret_file

DAY_NS = 86_400 * 1_000_000_000
SIGNER = Ed25519Signer("retention-test/origin", bytes(range(32)))


async def wait_until(predicate: object, deadline_s: float = 15.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


class Sidecar:
    """The real journal, recorder, forwarder and an in-process collector, wired as the app wires them."""

    def __init__(self, directory: Path, collector: Collector) -> None:
        self.path = directory / "journal.db"
        self.collector = collector
        self.writer = JournalWriter(self.path, SIGNER)
        self.reader = JournalReader(self.path)
        self.recorder = AuditRecorder(self.writer, self.reader, Redactor.create(os.urandom(32), [], True))
        self.forwarder: Forwarder | None = None

    async def start(self, target: str) -> None:
        await self.writer.start()
        self.forwarder = Forwarder(
            self.writer,
            self.reader,
            self.recorder,
            SIGNER,
            GrpcUpstream(target),
            batch_max_age_s=0.01,
            backoff_initial_s=0.01,
            backoff_max_s=0.1,
        )
        await self.forwarder.start()

    async def aclose(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.aclose()
        await self.writer.aclose()
        await self.reader.aclose()


def run(directory: Path, scenario: object) -> None:
    async def main() -> None:
        witness = directory / "witness.key"
        if not witness.exists():
            write_secret_file(witness, Ed25519Signer("collector.test", bytes([7]) * 32).encode_private() + "\n")
        socket = directory / "c.sock"
        collector = Collector(
            CollectorConfig(listen=(f"unix://{socket}",), store=f"sqlite://{directory / 'c.db'}", witness_key=witness)
        )
        await collector.start()
        assert collector.store is not None
        await collector.store.register_origin(SIGNER.name, [SIGNER.verifier])
        sidecar = Sidecar(directory, collector)
        try:
            await sidecar.start(f"unix://{socket}")
            assert callable(scenario)
            await scenario(sidecar)
        finally:
            await sidecar.aclose()
            await collector.aclose()

    asyncio.run(main())


def rows(path: Path) -> list[int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM journal ORDER BY seq")]


def test_only_witnessed_old_entries_are_pruned_and_the_rest_still_verifies(tmp_path: Path) -> None:
    witness = Ed25519Signer("collector.test", bytes([7]) * 32).verifier
    pruned: dict[str, int] = {}

    async def scenario(sidecar: Sidecar) -> None:
        for _ in range(40):
            await sidecar.recorder.record_heartbeat()
        fwd = sidecar.forwarder
        assert fwd is not None
        await wait_until(lambda: fwd.status.acked_size >= 40)
        job = RetentionJob(sidecar.reader, sidecar.recorder, fwd, retention_days=1, interval_s=3600)
        assert await job.prune_once(now_nanos()) == 0, "nothing is older than a day yet"
        pruned["acked"] = fwd.status.acked_size
        pruned["count"] = await job.prune_once(now_nanos() + 2 * DAY_NS)  # two days later: all of it is old
        for _ in range(5):
            await sidecar.recorder.record_heartbeat()
        await wait_until(lambda: fwd.status.acked_size >= pruned["acked"] + 5)

    run(tmp_path, scenario)
    assert 0 < pruned["count"] <= pruned["acked"], "only what the collector had cosigned was pruned"
    remaining = rows(tmp_path / "journal.db")
    assert remaining[0] == pruned["count"], "the pruned prefix is gone"
    report = verify_journal(tmp_path / "journal.db", [SIGNER.verifier], witnesses=[witness])
    assert report.ok, report.findings
    assert report.pruned_before == pruned["count"]
    assert report.witnessed_size > pruned["count"], "forwarding went on after the prune (tree continued)"
    with sqlite3.connect(tmp_path / "journal.db") as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM journal WHERE seq = ?", (remaining[-1],))


def test_a_restarted_sidecar_forwards_on_from_the_pruned_state(tmp_path: Path) -> None:
    async def first(sidecar: Sidecar) -> None:
        for _ in range(20):
            await sidecar.recorder.record_heartbeat()
        fwd = sidecar.forwarder
        assert fwd is not None
        await wait_until(lambda: fwd.status.acked_size >= 20)
        await RetentionJob(sidecar.reader, sidecar.recorder, fwd, retention_days=1, interval_s=3600).prune_once(
            now_nanos() + 2 * DAY_NS
        )

    async def second(sidecar: Sidecar) -> None:
        fwd = sidecar.forwarder
        assert fwd is not None
        for _ in range(5):
            await sidecar.recorder.record_heartbeat()
        await wait_until(lambda: fwd.status.acked_size >= sidecar.writer.size - 1)
        assert not fwd.status.recovery_required

    run(tmp_path, first)
    run(tmp_path, second)  # restart: the tree is rebuilt from the prune marker's state, the handshake agrees
    assert verify_journal(tmp_path / "journal.db", [SIGNER.verifier]).ok


def test_an_unsigned_prune_is_tamper_evidence(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        for _ in range(10):
            await sidecar.recorder.record_heartbeat()

    run(tmp_path, scenario)
    with sqlite3.connect(tmp_path / "journal.db") as conn:
        conn.execute("DROP TRIGGER journal_no_delete")
        conn.execute("DELETE FROM journal WHERE seq < 4")
    report = verify_journal(tmp_path / "journal.db", [SIGNER.verifier])
    assert not report.ok
    assert report.findings[0].code == FindingCode.GAP
