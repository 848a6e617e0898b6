"""The single writer: group commit, contiguous seq, hash chain, append-only tables, durable restart."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.journal import writer as writer_module
from gateway.journal.entry import ZERO_HASH, decode_entry, leaf_hash, signature_payload
from gateway.journal.verify import verify_journal
from gateway.journal.writer import JournalWriter
from gateway.signing import Ed25519Signer
from tests.journal_helpers import append_bodies, body, fixed_signer, write_journal


def rows(path: Path) -> list[tuple[int, bytes, bytes, bytes]]:
    with sqlite3.connect(path) as conn:
        return [
            (r[0], bytes(r[1]), bytes(r[2]), bytes(r[3]))
            for r in conn.execute("SELECT seq, entry, signature, leaf_hash FROM journal ORDER BY seq")
        ]


def test_entries_are_contiguous_chained_and_signed(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    receipts = write_journal(path, 50)
    assert [r.seq for r in receipts] == list(range(50))
    signer = fixed_signer()
    prev = ZERO_HASH
    for seq, raw, signature, stored_hash in rows(path):
        entry = decode_entry(raw)
        assert entry.seq == seq
        assert entry.prev_leaf_hash == prev
        assert entry.key_id == signer.key_id
        assert signer.verifier.verify(signature_payload("test/origin", raw), signature)
        assert leaf_hash(raw, signature) == stored_hash == receipts[seq].leaf_hash
        prev = stored_hash


def test_concurrent_appends_share_transactions(tmp_path: Path) -> None:
    async def run() -> tuple[int, int]:
        writer = JournalWriter(tmp_path / "j.db", fixed_signer())
        await writer.start()
        await append_bodies(writer, [body(i) for i in range(400)])
        batches = writer.batches_committed
        await writer.aclose()
        return batches, writer.size

    batches, size = asyncio.run(run())
    assert size == 400
    assert batches < 400 / 4, "appends waiting together must commit together"


def test_restart_resumes_seq_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    first = write_journal(path, 3)
    second = write_journal(path, 2, first=3)
    assert [r.seq for r in second] == [3, 4]
    assert decode_entry(rows(path)[3][1]).prev_leaf_hash == first[-1].leaf_hash


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("UPDATE journal SET decision = 'allow'", id="update"),
        pytest.param("DELETE FROM journal WHERE seq = 1", id="delete"),
        pytest.param("UPDATE journal_meta SET value = 'x'", id="meta-update"),
        pytest.param("DELETE FROM journal_meta", id="meta-delete"),
    ],
)
def test_tables_refuse_update_and_delete(tmp_path: Path, statement: str) -> None:
    path = tmp_path / "j.db"
    write_journal(path, 3)
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(statement)


def test_journal_file_is_private_and_durable_settings_apply(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    write_journal(path, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def page_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def test_a_new_journal_gets_the_small_page_size(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    write_journal(path, 3)
    assert page_size(path) == writer_module.NEW_JOURNAL_PAGE_SIZE == 1024
    assert verify_journal(path, [fixed_signer().verifier]).ok


def test_an_existing_journal_keeps_its_page_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.db"
    monkeypatch.setattr(writer_module, "NEW_JOURNAL_PAGE_SIZE", 4096)
    first = write_journal(path, 3)
    monkeypatch.undo()
    assert page_size(path) == 4096
    second = write_journal(path, 40, first=3)  # reopened with today's default: appends, chain and pages unchanged
    assert [r.seq for r in second] == list(range(3, 43))
    assert decode_entry(rows(path)[3][1]).prev_leaf_hash == first[-1].leaf_hash
    assert page_size(path) == 4096
    assert verify_journal(path, [fixed_signer().verifier]).ok


def test_the_checkpoint_window_is_4_mib_whatever_the_page_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    write_journal(new, 1)
    monkeypatch.setattr(writer_module, "NEW_JOURNAL_PAGE_SIZE", 4096)
    write_journal(old, 1)
    for path, frames in ((new, 4096), (old, 1024)):
        conn = writer_module.open_connection(path, busy_timeout_ms=1000)
        try:
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == frames
            assert conn.execute("PRAGMA cache_size").fetchone()[0] == -writer_module.WRITER_CACHE_KIB
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, unchanged
        finally:
            conn.close()


def test_a_journal_refuses_another_origins_key(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    write_journal(path, 1)
    with pytest.raises(ConfigError, match="belongs to origin 'test/origin'"):
        write_journal(path, 1, signer=Ed25519Signer("other/origin", bytes(32)))


def test_odd_body_types_neither_fail_the_batch_nor_break_verification(tmp_path: Path) -> None:

    async def run() -> None:
        writer = JournalWriter(tmp_path / "j.db", fixed_signer())
        await writer.start()
        try:
            await append_bodies(writer, [body(0), body(1, step_id=1.5, tenant_id=5), body(2, step_id="7")])
        finally:
            await writer.aclose()

    asyncio.run(run())
    assert verify_journal(tmp_path / "j.db", [fixed_signer().verifier]).ok
