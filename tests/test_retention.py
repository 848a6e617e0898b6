"""Retention: only witnessed entries are pruned, through a signed marker, and the journal still verifies."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway import devenv
from gateway.app import Sidecar
from gateway.collector.app import Collector
from gateway.config import CollectorConfig
from gateway.journal.search_table import SEARCH_BATCH
from gateway.journal.verify import FindingCode, verify_journal
from gateway.journal.writer import now_nanos
from gateway.sidecar.forwarder import Forwarder
from gateway.sidecar.recorder import AuditRecorder
from gateway.sidecar.retention import RetentionJob
from gateway.signing import Ed25519Signer, load_signer, write_secret_file
from tests.helpers import eventually_async

DAY_NS = 86_400 * 1_000_000_000


def run(directory: Path, scenario: object) -> None:
    """Runs ``scenario(sidecar)`` against the real, fully started sidecar forwarding to an in-process collector."""

    async def main() -> None:
        witness = directory / "witness.key"
        if not witness.exists():
            write_secret_file(witness, Ed25519Signer("collector.test", bytes([7]) * 32).encode_private() + "\n")
        socket = directory / "c.sock"
        collector = Collector(
            CollectorConfig(listen=(f"unix://{socket}",), store=f"sqlite://{directory / 'c.db'}", witness_key=witness)
        )
        await collector.start()
        env = {
            "AGENTAUDIT_FORWARD_TARGET": f"unix://{socket}",
            "AGENTAUDIT_FORWARD_BATCH_MAX_AGE_S": "0.01",
            "AGENTAUDIT_FORWARD_BACKOFF_INITIAL_S": "0.01",
            "AGENTAUDIT_FORWARD_BACKOFF_MAX_S": "0.1",
        }
        config, _ = devenv.prepare(directory / "sidecar", [f"unix://{directory / 'gw.sock'}"], env)
        assert collector.store is not None
        await collector.store.register_origin(signer(directory).name, [signer(directory).verifier])
        sidecar = Sidecar(config)
        try:
            await sidecar.start()
            assert callable(scenario)
            await scenario(sidecar)
        finally:
            await sidecar.aclose()
            await collector.aclose()

    asyncio.run(main())


def signer(directory: Path) -> Ed25519Signer:
    """The sidecar's signing key (made by ``devenv.prepare``)."""
    return load_signer(directory / "sidecar" / "signing.key")


def journal(directory: Path) -> Path:
    return directory / "sidecar" / "journal.db"


def writer_size(sidecar: Sidecar) -> int:
    assert sidecar.writer is not None
    return sidecar.writer.size


def recorder(sidecar: Sidecar) -> AuditRecorder:
    assert sidecar.recorder is not None
    return sidecar.recorder


def retention(sidecar: Sidecar, fwd: Forwarder) -> RetentionJob:
    assert sidecar.reader is not None
    return RetentionJob(sidecar.reader, recorder(sidecar), fwd, retention_days=1, interval_s=3600)


def rows(path: Path) -> list[int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM journal ORDER BY seq")]


def test_only_witnessed_old_entries_are_pruned_and_the_rest_still_verifies(tmp_path: Path) -> None:
    witness = Ed25519Signer("collector.test", bytes([7]) * 32).verifier
    pruned: dict[str, int] = {}

    async def scenario(sidecar: Sidecar) -> None:
        for _ in range(40):
            await recorder(sidecar).record_heartbeat()
        fwd = sidecar.forwarder
        assert fwd is not None
        await eventually_async(lambda: fwd.status.acked_size >= 40)
        job = retention(sidecar, fwd)
        assert await job.prune_once(now_nanos()) == 0, "nothing is older than a day yet"
        pruned["acked"] = fwd.status.acked_size
        pruned["count"] = await job.prune_once(now_nanos() + 2 * DAY_NS)  # two days later: all of it is old
        for _ in range(5):
            await recorder(sidecar).record_heartbeat()
        await eventually_async(lambda: fwd.status.acked_size >= pruned["acked"] + 5)

    run(tmp_path, scenario)
    assert 0 < pruned["count"] <= pruned["acked"], "only what the collector had cosigned was pruned"
    remaining = rows(journal(tmp_path))
    assert remaining[0] == pruned["count"], "the pruned prefix is gone"
    report = verify_journal(journal(tmp_path), [signer(tmp_path).verifier], witnesses=[witness])
    assert report.ok, report.findings
    assert report.pruned_before == pruned["count"]
    assert report.witnessed_size > pruned["count"], "forwarding went on after the prune (tree continued)"
    with sqlite3.connect(journal(tmp_path)) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM journal WHERE seq = ?", (remaining[-1],))


def test_a_restarted_sidecar_forwards_on_from_the_pruned_state(tmp_path: Path) -> None:
    async def first(sidecar: Sidecar) -> None:
        for _ in range(20):
            await recorder(sidecar).record_heartbeat()
        fwd = sidecar.forwarder
        assert fwd is not None
        await eventually_async(lambda: fwd.status.acked_size >= 20)
        await retention(sidecar, fwd).prune_once(now_nanos() + 2 * DAY_NS)

    async def second(sidecar: Sidecar) -> None:
        fwd = sidecar.forwarder
        assert fwd is not None
        for _ in range(5):
            await recorder(sidecar).record_heartbeat()
        await eventually_async(lambda: fwd.status.acked_size >= writer_size(sidecar) - 1)
        assert not fwd.status.recovery_required

    run(tmp_path, first)
    run(tmp_path, second)  # restart: the tree is rebuilt from the prune marker's state, the handshake agrees
    assert verify_journal(journal(tmp_path), [signer(tmp_path).verifier]).ok


def test_an_unsigned_prune_is_tamper_evidence(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        for _ in range(10):
            await recorder(sidecar).record_heartbeat()

    run(tmp_path, scenario)
    with sqlite3.connect(journal(tmp_path)) as conn:
        conn.execute("DROP TRIGGER journal_no_delete")
        conn.execute("DELETE FROM journal WHERE seq < 4")
    report = verify_journal(journal(tmp_path), [signer(tmp_path).verifier])
    assert not report.ok
    # The first finding with a seq is the gap (format v2 adds, journal-level, seals beyond the entries left).
    assert next(f.code for f in report.findings if f.seq is not None) == FindingCode.GAP


def test_a_prune_removes_the_search_rows_of_the_entries_it_prunes(tmp_path: Path) -> None:
    """More than a batch of entries is copied into the search table first; the prune takes their rows with them."""
    witness = Ed25519Signer("collector.test", bytes([7]) * 32).verifier
    pruned: dict[str, int] = {}

    async def scenario(sidecar: Sidecar) -> None:
        for _ in range(SEARCH_BATCH + 20):
            await recorder(sidecar).record_heartbeat()
        fwd = sidecar.forwarder
        assert fwd is not None
        await eventually_async(lambda: fwd.status.acked_size >= SEARCH_BATCH + 20)
        pruned["count"] = await retention(sidecar, fwd).prune_once(now_nanos() + 2 * DAY_NS)

    run(tmp_path, scenario)
    assert pruned["count"] >= SEARCH_BATCH, "the prune covers entries that were copied"
    with sqlite3.connect(f"file:{journal(tmp_path)}?mode=ro", uri=True) as conn:
        (oldest,) = conn.execute("SELECT min(seq) FROM journal_search").fetchone()
    assert oldest is None or oldest >= pruned["count"], "no search row is left for a pruned entry"
    report = verify_journal(journal(tmp_path), [signer(tmp_path).verifier], witnesses=[witness])
    assert report.ok, report.findings
