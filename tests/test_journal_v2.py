"""Journal format v2 (docs/adr/0024-seal-per-commit-signing.md): one seal per group commit, real journals written by
JournalWriter, tampered with plain sqlite3 the way an attacker with the file would, then checked by verify."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.canonical import canonical_json
from gateway.journal import schema
from gateway.journal.entry import (
    ENTRY_DOMAIN,
    ENTRY_DOMAIN_V2,
    FORMAT_V1,
    FORMAT_V2,
    EventKind,
    decode_entry,
    leaf_hash,
    signature_payload,
)
from gateway.journal.merkle import rfc6962_root
from gateway.journal.note import Checkpoint, NoteError, cosign, sign_checkpoint
from gateway.journal.seal import SealedLookup, make_seal, parse_seal
from gateway.journal.verify import VerifyReport, verify_journal
from gateway.journal.writer import JournalWriter, Receipt
from gateway.signing import Ed25519Signer

ORIGIN = "seal-test.agentaudit.example"
SIGNER = Ed25519Signer(ORIGIN, hashlib.sha256(b"seal test key").digest())
OTHER = Ed25519Signer(ORIGIN, hashlib.sha256(b"another key, same origin name").digest())
BASE_NANOS = 1_735_689_600_000_000_000
REPO = Path(__file__).resolve().parent.parent


def event(i: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": f"ev-{i:04d}",
        "kind": "pre_exec",
        "run_id": "run-1",
        "step_id": i,
        "tenant_id": "acme",
        "action": "payments.refund",
        "decision": "allow",
        "reason": "allowed",
        "resumed_approval_id": "",
        "timestamp": "2025-01-01T00:00:00Z",
    }
    body.update(overrides)
    return body


async def _commit(writer: JournalWriter, first: int, n: int, run_id: str = "run-1") -> list[Receipt]:
    """n appends queued together, so they share one group commit (and one seal)."""
    return await asyncio.gather(
        *(
            writer.append(EventKind.PRE_EXEC, canonical_json(b), schema.indexed_values(b), BASE_NANOS + i)
            for i, b in ((i, event(i, run_id=run_id)) for i in range(first, first + n))
        )
    )


def write_commits(
    path: Path,
    shape: Sequence[int],
    *,
    signing: str = "per_commit",
    signer: Ed25519Signer = SIGNER,
    run_id: str = "run-1",
) -> None:
    """Writes one group commit per element of ``shape`` (its entry count)."""

    async def run() -> None:
        writer = JournalWriter(path, signer, signing=signing, max_batch=max(shape, default=1))
        await writer.start()
        try:
            first = writer.size
            for n in shape:
                await _commit(writer, first, n, run_id)
                first += n
        finally:
            await writer.aclose()

    asyncio.run(run())


def seals(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return [(int(s), str(n)) for s, n in conn.execute("SELECT size, note FROM journal_seals ORDER BY size")]


@contextmanager
def tampering(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-write connection with every append-only trigger dropped, as an attacker with file access has."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        triggers = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        for trigger in triggers:
            conn.execute(f"DROP TRIGGER {trigger}")
        yield conn
    finally:
        conn.close()


def pairs(report: VerifyReport) -> list[tuple[int | None, str]]:
    return sorted(((f.seq, str(f.code)) for f in report.findings), key=lambda p: (-1 if p[0] is None else p[0], p[1]))


# --- the format ---------------------------------------------------------------------------------------------


def test_per_commit_writes_v2_entries_without_signatures_and_one_seal_per_commit(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    write_commits(path, [3, 1, 4])

    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT seq, entry, signature, leaf_hash FROM journal ORDER BY seq").fetchall()
        fmt = conn.execute("SELECT value FROM journal_meta WHERE key = 'journal_format'").fetchone()
    assert fmt == ("2",)
    assert [bytes(r[1]).startswith(ENTRY_DOMAIN_V2) for r in rows] == [True] * 8
    assert {bytes(r[2]) for r in rows} == {b""}  # no per-entry signature on ordinary pre-events
    assert [size for size, _ in seals(path)] == [3, 4, 8]
    leaves = [bytes(r[3]) for r in rows]
    for size, note in seals(path):
        seal = parse_seal(note)
        # Each seal signs the RFC 6962 root and the last leaf hash at its commit's end, and links to the previous.
        assert seal.checkpoint.root == rfc6962_root(leaves[:size])
        assert seal.last_leaf == leaves[size - 1]
        assert SIGNER.verifier.verify(seal.note.text.encode(), seal.note.signatures[0].signature)
    assert [parse_seal(n).prev_size for _, n in seals(path)] == [0, 3, 4]
    report = verify_journal(path, [SIGNER.verifier])
    assert report.ok, report.findings
    assert report.root_hash == rfc6962_root(leaves)


def test_approval_entries_keep_their_own_signature_in_v2(tmp_path: Path) -> None:
    """Entries the fleet verifies one by one (approval events) are still signed each, as v2 entries."""
    path = tmp_path / "j.db"

    async def run() -> None:
        writer = JournalWriter(path, SIGNER, signing="per_commit")
        await writer.start()
        try:
            granted = {"event_id": "ev-g", "kind": "approval_granted", "approval_id": "ap-1"}
            await writer.append(EventKind.APPROVAL_GRANTED, canonical_json(granted), schema.indexed_values(granted), 1)
            asked = event(1, decision="approval_required")
            await writer.append(EventKind.PRE_EXEC, canonical_json(asked), schema.indexed_values(asked), 2)
            await _commit(writer, 2, 1)
        finally:
            await writer.aclose()

    asyncio.run(run())
    with sqlite3.connect(path) as conn:
        sigs = [len(bytes(s)) for (s,) in conn.execute("SELECT signature FROM journal ORDER BY seq")]
    assert sigs == [64, 64, 0]
    assert verify_journal(path, [SIGNER.verifier]).ok


def test_per_entry_writes_v1_and_an_existing_journal_never_changes_format(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1.db", tmp_path / "v2.db"
    write_commits(v1, [2], signing="per_entry")
    write_commits(v1, [2], signing="per_commit")  # reopened with the other mode: stays v1
    write_commits(v2, [2], signing="per_commit")
    write_commits(v2, [2], signing="per_entry")  # stays v2

    with sqlite3.connect(v1) as conn:
        entries = [decode_entry(bytes(e)) for (e,) in conn.execute("SELECT entry FROM journal")]
        assert {e.version for e in entries} == {FORMAT_V1}
        assert conn.execute("SELECT count(*) FROM journal_seals").fetchone() == (0,)
    with sqlite3.connect(v2) as conn:
        entries = [decode_entry(bytes(e)) for (e,) in conn.execute("SELECT entry FROM journal")]
        assert {e.version for e in entries} == {FORMAT_V2}
    assert [s for s, _ in seals(v2)] == [2, 4]
    assert verify_journal(v1, [SIGNER.verifier]).ok
    assert verify_journal(v2, [SIGNER.verifier]).ok


def test_a_v1_journal_without_the_format_key_still_verifies(tmp_path: Path) -> None:
    """A journal written before v2 existed has no journal_format row and no journal_seals table."""
    path = tmp_path / "old.db"
    write_commits(path, [3], signing="per_entry")
    with tampering(path) as conn:
        conn.execute("DELETE FROM journal_meta WHERE key = 'journal_format'")
        conn.execute("DROP TABLE journal_seals")
    report = verify_journal(path, [SIGNER.verifier])
    assert report.ok, report.findings
    write_commits(path, [2], signing="per_commit")  # the writer reopens it as v1
    with sqlite3.connect(path) as conn:
        assert {decode_entry(bytes(e)).version for (e,) in conn.execute("SELECT entry FROM journal")} == {FORMAT_V1}
    assert verify_journal(path, [SIGNER.verifier]).ok


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_any_commit_shape_verifies_and_every_seal_matches(
    tmp_path_factory: pytest.TempPathFactory, shape: list[int]
) -> None:
    path = tmp_path_factory.mktemp("shape") / "j.db"
    write_commits(path, shape)
    sizes = [size for size, _ in seals(path)]
    assert sizes == [sum(shape[: i + 1]) for i in range(len(shape))]
    report = verify_journal(path, [SIGNER.verifier])
    assert report.ok, report.findings
    assert report.tree_size == sum(shape)


def test_the_writer_restarts_from_the_last_seal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    write_commits(path, [5])
    write_commits(path, [3])
    assert [parse_seal(n).prev_size for _, n in seals(path)] == [0, 5]
    assert verify_journal(path, [SIGNER.verifier]).ok


# --- tamper matrix ------------------------------------------------------------------------------------------
# Six entries in two commits: seq 0..2 sealed at size 3, seq 3..5 sealed at size 6.

Tamper = Callable[[sqlite3.Connection, Path], object]


def _blob(conn: sqlite3.Connection, seq: int, column: str) -> bytes:
    return bytes(conn.execute(f"SELECT {column} FROM journal WHERE seq = ?", (seq,)).fetchone()[0])


def _set(conn: sqlite3.Connection, seq: int, column: str, value: bytes) -> None:
    conn.execute(f"UPDATE journal SET {column} = ? WHERE seq = ?", (value, seq))


def _year(entry: bytes) -> bytes:
    at = entry.index(b'"timestamp":"2025') + len(b'"timestamp":"2025') - 1
    return entry[:at] + b"4" + entry[at + 1 :]


def edit_body(seq: int) -> Tamper:
    return lambda conn, _: _set(conn, seq, "entry", _year(_blob(conn, seq, "entry")))


def edit_body_and_leaf(seq: int) -> Tamper:
    def tamper(conn: sqlite3.Connection, _: Path) -> None:
        changed = _year(_blob(conn, seq, "entry"))
        _set(conn, seq, "entry", changed)
        _set(conn, seq, "leaf_hash", leaf_hash(changed, b""))

    return tamper


def edit_and_rechain(seq: int, last: int) -> Tamper:
    """The careful attacker of format v2: entries carry no signature, so after editing one they rewrite every
    later entry's prev_leaf_hash and leaf_hash column: the chain and the columns are perfect again."""

    def tamper(conn: sqlite3.Connection, _: Path) -> None:
        changed = _year(_blob(conn, seq, "entry"))
        _set(conn, seq, "entry", changed)
        prev = leaf_hash(changed, b"")
        _set(conn, seq, "leaf_hash", prev)
        prev_offset = len(ENTRY_DOMAIN_V2) + 17
        for s in range(seq + 1, last + 1):
            entry = _blob(conn, s, "entry")
            entry = entry[:prev_offset] + prev + entry[prev_offset + 32 :]
            _set(conn, s, "entry", entry)
            prev = leaf_hash(entry, b"")
            _set(conn, s, "leaf_hash", prev)

    return tamper


def delete_seal(size: int) -> Tamper:
    return lambda conn, _: conn.execute("DELETE FROM journal_seals WHERE size = ?", (size,))


def swap_seals(a: int, b: int) -> Tamper:
    def tamper(conn: sqlite3.Connection, _: Path) -> None:
        note_a = conn.execute("SELECT note FROM journal_seals WHERE size = ?", (a,)).fetchone()[0]
        note_b = conn.execute("SELECT note FROM journal_seals WHERE size = ?", (b,)).fetchone()[0]
        conn.execute("UPDATE journal_seals SET note = ? WHERE size = ?", (note_b, a))
        conn.execute("UPDATE journal_seals SET note = ? WHERE size = ?", (note_a, b))

    return tamper


def forge_seal(size: int) -> Tamper:
    """A seal over the journal's true root and last leaf, signed by another key under the same origin name."""

    def tamper(conn: sqlite3.Connection, _: Path) -> None:
        real = parse_seal(conn.execute("SELECT note FROM journal_seals WHERE size = ?", (size,)).fetchone()[0])
        forged = make_seal(OTHER, size, real.checkpoint.root, real.prev_size, real.last_leaf)
        conn.execute("UPDATE journal_seals SET note = ? WHERE size = ?", (forged, size))

    return tamper


def forge_after_edit(seq: int, size: int) -> Tamper:
    """Edit and rechain, then a new seal over the new root signed by another key."""

    def tamper(conn: sqlite3.Connection, path: Path) -> None:
        edit_and_rechain(seq, size - 1)(conn, path)
        query = "SELECT leaf_hash FROM journal WHERE seq < ? ORDER BY seq"
        leaves = [bytes(x) for (x,) in conn.execute(query, (size,))]
        real = parse_seal(conn.execute("SELECT note FROM journal_seals WHERE size = ?", (size,)).fetchone()[0])
        forged = make_seal(OTHER, size, rfc6962_root(leaves), real.prev_size, leaves[-1])
        conn.execute("UPDATE journal_seals SET note = ? WHERE size = ?", (forged, size))

    return tamper


def replay_old_seal(old: int, at: int) -> Tamper:
    """An old, genuine seal put in place of a newer one."""

    def tamper(conn: sqlite3.Connection, _: Path) -> None:
        note = conn.execute("SELECT note FROM journal_seals WHERE size = ?", (old,)).fetchone()[0]
        conn.execute("UPDATE journal_seals SET note = ? WHERE size = ?", (note, at))

    return tamper


def truncate_entries(first: int) -> Tamper:
    return lambda conn, _: conn.execute("DELETE FROM journal WHERE seq >= ?", (first,))


def delete_entry(seq: int) -> Tamper:
    return lambda conn, _: conn.execute("DELETE FROM journal WHERE seq = ?", (seq,))


def edit_header_seq(seq: int) -> Tamper:
    def tamper(conn: sqlite3.Connection, _: Path) -> None:
        entry = _blob(conn, seq, "entry")
        at = len(ENTRY_DOMAIN_V2) + 8
        _set(conn, seq, "entry", entry[:at] + bytes([entry[at] ^ 1]) + entry[at + 1 :])

    return tamper


def inject_v1_entry(seq: int) -> Tamper:
    """A v1 envelope (other domain tag) in place of a v2 one, signed by the real key: still refused."""

    def tamper(conn: sqlite3.Connection, _: Path) -> None:
        entry = _blob(conn, seq, "entry")
        v1 = ENTRY_DOMAIN + entry[len(ENTRY_DOMAIN_V2) :]
        signature = SIGNER.sign(signature_payload(ORIGIN, v1))
        _set(conn, seq, "entry", v1)
        _set(conn, seq, "signature", signature)

    return tamper


EDIT, CHAIN, BAD, MISMATCH, MISSING, UNSEALED = (
    "edited_entry",
    "chain_break",
    "bad_seal",
    "seal_mismatch",
    "missing_seal",
    "unsealed",
)
V2_TAMPER_CASES = [
    pytest.param(edit_body(1), [(0, UNSEALED), (1, EDIT), (2, CHAIN), (2, MISMATCH), (5, MISMATCH)], id="body-byte"),
    pytest.param(
        edit_body_and_leaf(4), [(3, UNSEALED), (5, CHAIN), (5, MISMATCH)], id="body-byte-and-leaf-hash-column"
    ),
    pytest.param(edit_and_rechain(4, 5), [(3, UNSEALED), (5, MISMATCH)], id="body-byte-rechained"),
    pytest.param(edit_and_rechain(1, 5), [(0, UNSEALED), (2, MISMATCH), (5, MISMATCH)], id="rechained-across-seals"),
    pytest.param(
        edit_header_seq(4), [(3, UNSEALED), (4, EDIT), (4, "reorder"), (5, CHAIN), (5, MISMATCH)], id="header-seq"
    ),
    pytest.param(delete_seal(6), [(3, UNSEALED)], id="delete-last-seal"),
    pytest.param(delete_seal(3), [(5, MISSING)], id="delete-middle-seal"),
    pytest.param(swap_seals(3, 6), [(0, UNSEALED), (2, BAD), (5, BAD)], id="swap-seals"),
    pytest.param(forge_seal(6), [(3, UNSEALED), (5, BAD)], id="forge-seal-other-key"),
    pytest.param(forge_after_edit(4, 6), [(3, UNSEALED), (5, BAD)], id="edit-and-forge-seal"),
    pytest.param(replay_old_seal(3, 6), [(3, UNSEALED), (5, BAD)], id="replay-old-seal"),
    pytest.param(truncate_entries(4), [(None, "truncated"), (3, UNSEALED)], id="truncate-keeping-seals"),
    pytest.param(delete_entry(1), [(None, "truncated"), (0, UNSEALED), (1, "gap"), (2, MISMATCH)], id="delete-entry"),
    pytest.param(
        inject_v1_entry(4),
        [(3, UNSEALED), (4, EDIT), (4, "malformed_entry"), (5, CHAIN), (5, MISMATCH)],
        id="v1-entry-in-v2-journal",
    ),
]


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "six.db"
    write_commits(path, [3, 3])
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert [s for s, _ in seals(path)] == [3, 6]
    return path


@pytest.mark.parametrize(("tamper", "expected"), V2_TAMPER_CASES)
def test_v2_tamper_is_reported_at_its_seq(
    two_commits: Path, tmp_path: Path, tamper: Tamper, expected: list[tuple[int | None, str]]
) -> None:
    path = tmp_path / "j.db"
    shutil.copy(two_commits, path)
    assert verify_journal(path, [SIGNER.verifier]).ok
    with tampering(path) as conn:
        tamper(conn, path)

    report = verify_journal(path, [SIGNER.verifier])

    assert not report.ok
    assert pairs(report) == sorted(expected, key=lambda p: (-1 if p[0] is None else p[0], p[1]))


def test_truncation_with_its_seals_is_caught_by_an_anchor(two_commits: Path, tmp_path: Path) -> None:
    """Cutting the last commit and its seal leaves a valid shorter journal (as in v1); a seal kept outside the
    journal (or a cosigned checkpoint) is the anchor that proves it was longer."""
    path = tmp_path / "j.db"
    shutil.copy(two_commits, path)
    anchor = seals(path)[-1][1]
    with tampering(path) as conn:
        conn.execute("DELETE FROM journal WHERE seq >= 3")
        conn.execute("DELETE FROM journal_seals WHERE size = 6")
    assert verify_journal(path, [SIGNER.verifier]).ok
    report = verify_journal(path, [SIGNER.verifier], anchors=[anchor])
    assert pairs(report) == [(None, "truncated")]


def test_a_receipt_is_credited_only_once_a_seal_vouches_for_it(tmp_path: Path) -> None:
    """A cosignature receipt in an unsealed (seal deleted) commit is not credited towards the witnessed size."""
    path = tmp_path / "j.db"
    write_commits(path, [3])
    witness = Ed25519Signer("collector.example", hashlib.sha256(b"witness").digest())
    root = parse_seal(seals(path)[0][1]).checkpoint.root
    note = sign_checkpoint(Checkpoint(ORIGIN, 3, root), SIGNER)
    cosigned = note.with_signature(cosign(note, witness, 1_700_000_000)).encode()
    receipt = {"event_id": "ev-r", "kind": "cosignature", "tree_size": 3, "root_hash": root.hex()}
    receipt["checkpoint"] = cosigned

    async def run() -> None:
        writer = JournalWriter(path, SIGNER, signing="per_commit")
        await writer.start()
        try:
            await writer.append(EventKind.COSIGNATURE, canonical_json(receipt), schema.indexed_values(receipt), 9)
        finally:
            await writer.aclose()

    asyncio.run(run())
    witnesses = [witness.verifier]
    assert verify_journal(path, [SIGNER.verifier], witnesses=witnesses).witnessed_size == 3
    with tampering(path) as conn:
        conn.execute("DELETE FROM journal_seals WHERE size = 4")
    report = verify_journal(path, [SIGNER.verifier], witnesses=witnesses)
    assert pairs(report) == [(3, UNSEALED)]
    assert report.witnessed_size == 0


# --- readers that check single entries ----------------------------------------------------------------------


def test_sealed_lookup_vouches_only_for_entries_that_chain_to_a_signed_seal(two_commits: Path, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    shutil.copy(two_commits, path)
    ok = SIGNER.verifier.verify
    with sqlite3.connect(path) as conn:
        rows = [(int(s), bytes(e), bytes(g)) for s, e, g in conn.execute("SELECT seq, entry, signature FROM journal")]
        lookup = SealedLookup(conn, ORIGIN, ok)
        assert all(lookup.authentic(*row) for row in rows)
        edited = (rows[4][0], _year(rows[4][1]), rows[4][2])
        assert not SealedLookup(conn, ORIGIN, ok).authentic(*edited)
        assert not SealedLookup(conn, ORIGIN, OTHER.verifier.verify).authentic(*rows[1])
    with tampering(path) as conn:
        edit_and_rechain(4, 5)(conn, path)
        rows = [(int(s), bytes(e), bytes(g)) for s, e, g in conn.execute("SELECT seq, entry, signature FROM journal")]
        lookup = SealedLookup(conn, ORIGIN, ok)
        assert [lookup.authentic(*row) for row in rows] == [True, True, True, False, False, False]
        conn.execute("DELETE FROM journal_seals WHERE size = 3")
        assert not SealedLookup(conn, ORIGIN, ok).authentic(*rows[0])  # the next seal does not verify either


# --- crash between the entries and their seal -----------------------------------------------------------------

_KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, hashlib, os, signal, sqlite3, sys
    from pathlib import Path
    from gateway.canonical import canonical_json
    from gateway.journal import schema, writer as writer_module
    from gateway.journal.entry import EventKind
    from gateway.journal.writer import JournalWriter
    from gateway.signing import Ed25519Signer

    real_connection = writer_module.open_connection

    def killing_connection(path, **kwargs):
        conn = real_connection(path, **kwargs)
        def trace(statement):
            # The entries' INSERT has run inside the transaction; die before the seal's INSERT runs.
            if statement.startswith("INSERT INTO journal_seals") and os.environ.get("ARMED") == "1":
                os.kill(os.getpid(), signal.SIGKILL)
        conn.set_trace_callback(trace)
        return conn

    writer_module.open_connection = killing_connection

    async def main():
        signer = Ed25519Signer("seal-test.agentaudit.example", hashlib.sha256(b"seal test key").digest())
        writer = JournalWriter(Path(sys.argv[1]), signer, signing="per_commit")
        await writer.start()
        for i in range(3):
            body = {"event_id": f"ev-{i}", "kind": "pre_exec", "resumed_approval_id": ""}
            await writer.append(EventKind.PRE_EXEC, canonical_json(body), schema.indexed_values(body), i)
        os.environ["ARMED"] = "1"
        await asyncio.gather(*(
            writer.append(EventKind.PRE_EXEC, canonical_json(b), schema.indexed_values(b), 9)
            for b in ({"event_id": f"late-{i}", "kind": "pre_exec", "resumed_approval_id": ""} for i in range(4))
        ))
        print("answered", flush=True)  # never reached: no receipt resolves before the seal is durable

    asyncio.run(main())
    """
)


def test_sigkill_between_the_entries_and_their_seal_leaves_neither(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "answered" not in proc.stdout
    with sqlite3.connect(path) as conn:
        event_ids = [e for (e,) in conn.execute("SELECT event_id FROM journal ORDER BY seq")]
        sizes = [s for (s,) in conn.execute("SELECT size FROM journal_seals ORDER BY size")]
    # The killed commit's entries rolled back with the seal they were waiting for: nothing unsealed is durable.
    assert event_ids == ["ev-0", "ev-1", "ev-2"]
    assert sizes == [1, 2, 3]
    report = verify_journal(path, [SIGNER.verifier])
    assert report.ok, report.findings
    # And the writer carries on from there.
    write_commits(path, [2])
    assert verify_journal(path, [SIGNER.verifier]).tree_size == 5


def test_seal_parse_refuses_a_checkpoint_without_the_seal_line() -> None:
    plain = sign_checkpoint(Checkpoint(ORIGIN, 3, bytes(32)), SIGNER).encode()
    with pytest.raises(NoteError):
        parse_seal(plain)
    good = make_seal(SIGNER, 3, bytes(32), 0, bytes(32))
    assert parse_seal(good).size == 3
    bad_prev = make_seal(SIGNER, 3, bytes(32), 3, bytes(32))
    with pytest.raises(NoteError):
        parse_seal(bad_prev)
    assert base64.b64decode(good.split("\n")[2]) == bytes(32)
    assert FORMAT_V2 == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    target=st.sampled_from(["entry", "seal"]),
    index=st.integers(0, 5),
    position=st.integers(0, 10_000),
    mask=st.integers(1, 255),
)
def test_any_single_byte_change_of_an_entry_or_a_seal_is_found(
    two_commits: Path, tmp_path_factory: pytest.TempPathFactory, target: str, index: int, position: int, mask: int
) -> None:
    path = tmp_path_factory.mktemp("flip") / "j.db"
    shutil.copy(two_commits, path)
    with tampering(path) as conn:
        if target == "entry":
            data = _blob(conn, index, "entry")
            at = position % len(data)
            _set(conn, index, "entry", data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :])
        else:
            size = 3 if index < 3 else 6
            note = conn.execute("SELECT note FROM journal_seals WHERE size = ?", (size,)).fetchone()[0].encode()
            at = position % len(note)
            flipped = (note[:at] + bytes([note[at] ^ mask]) + note[at + 1 :]).decode("utf-8", errors="replace")
            conn.execute("UPDATE journal_seals SET note = ? WHERE size = ?", (flipped, size))
    report = verify_journal(path, [SIGNER.verifier])
    assert not report.ok


def test_a_seal_whose_key_id_was_edited_is_not_believed(two_commits: Path, tmp_path: Path) -> None:
    """Found by the byte-flip property above: the signature line's key id changed ('B' -> 'C' in its base64) while
    the signature bytes still verify. C2SP signed notes ignore a line of an unknown key id, so the seal counts as
    unsigned (verify used to accept it, trying the signature under every trusted key whatever the line named)."""
    path = tmp_path / "j.db"
    shutil.copy(two_commits, path)
    with tampering(path) as conn:
        note = conn.execute("SELECT note FROM journal_seals WHERE size = 3").fetchone()[0]
        head, _, line = note.rstrip("\n").rpartition("\n")
        name, b64 = line.rsplit(" ", 1)
        raw = bytearray(base64.b64decode(b64))
        raw[0] ^= 1  # the key id's first byte; the 64 signature bytes unchanged
        edited = f"{head}\n{name} {base64.b64encode(bytes(raw)).decode()}\n"
        conn.execute("UPDATE journal_seals SET note = ? WHERE size = 3", (edited,))
    report = verify_journal(path, [SIGNER.verifier])
    assert not report.ok
    assert any(f.code.value == "bad_seal" for f in report.findings), report.findings
    with sqlite3.connect(path) as conn:  # the start-up state derivation's lookup: the same rule
        seq, raw, signature = conn.execute("SELECT seq, entry, signature FROM journal WHERE seq = 0").fetchone()
        assert SealedLookup(conn, ORIGIN, SIGNER.verifier.verify).authentic(seq, bytes(raw), bytes(signature))
        strict = SealedLookup(conn, ORIGIN, SIGNER.verifier.verify, {SIGNER.key_id})
        assert not strict.authentic(seq, bytes(raw), bytes(signature))
