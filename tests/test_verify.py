"""Offline journal verification: real journals written by JournalWriter, tampered with plain sqlite3."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.canonical import canonical_json
from gateway.cli.render import format_report
from gateway.errors import ConfigError, JournalUnreadableError
from gateway.journal import schema
from gateway.journal.entry import ENTRY_DOMAIN, HEADER_SIZE, EventKind, leaf_hash
from gateway.journal.merkle import EMPTY_ROOT, MerkleRoot, rfc6962_root
from gateway.journal.verify import (
    FindingCode,
    VerifyReport,
    verify_journal,
)
from gateway.journal.writer import JournalWriter, Receipt
from gateway.signing import Ed25519Signer

ORIGIN = "verify-test.agentaudit.example"
SIGNER = Ed25519Signer(ORIGIN, hashlib.sha256(b"verify test key").digest())
BASE_NANOS = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z

# Byte offsets inside an entry (see gateway/journal/entry.py).
OFF_KIND = len(ENTRY_DOMAIN)
OFF_SEQ_LAST = OFF_KIND + 8
OFF_NANOS_LAST = OFF_KIND + 16
OFF_PREV = OFF_KIND + 17
OFF_KEY_ID = OFF_KIND + 49
OFF_BODY_LEN_LAST = HEADER_SIZE - 1

Item = tuple[int, bytes, tuple[Any, ...], int]


def event(i: int, **overrides: Any) -> dict[str, Any]:
    """A realistic pre_exec body; every third decision is a stop."""
    stop = i % 3 == 2
    body: dict[str, Any] = {
        "event_id": f"ev-{i:04d}",
        "kind": "pre_exec",
        "run_id": "run-1",
        "step_id": i,
        "tenant_id": "acme",
        "agent_id": "billing-agent",
        "action": "payments.refund",
        "action_key": f"ak-{i:04d}",
        "decision": "stop" if stop else "allow",
        "reason": "rate_limited_tenant" if stop else "allowed",
        "timestamp": f"2025-01-01T00:00:{i % 60:02d}Z",
    }
    body.update(overrides)
    return body


def item(i: int, **overrides: Any) -> Item:
    body = event(i, **overrides)
    return (EventKind.PRE_EXEC, canonical_json(body), schema.indexed_values(body), BASE_NANOS + i * 10**9)


def write_items(path: Path, items: Sequence[Item], signer: Ed25519Signer = SIGNER) -> list[Receipt]:
    async def run() -> list[Receipt]:
        writer = JournalWriter(path, signer)
        await writer.start()
        try:
            return [await writer.append(kind, body, columns, nanos) for kind, body, columns, nanos in items]
        finally:
            await writer.aclose()

    return asyncio.run(run())


def write_journal(path: Path, n: int, signer: Ed25519Signer = SIGNER) -> list[Receipt]:
    return write_items(path, [item(i) for i in range(n)], signer)


@contextmanager
def tampering(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-write connection with the append-only triggers dropped, as an attacker with file access has."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for trigger in ("journal_no_update", "journal_no_delete", "journal_meta_no_update"):
            conn.execute(f"DROP TRIGGER {trigger}")
        yield conn
    finally:
        conn.close()


def read_blob(conn: sqlite3.Connection, seq: int, column: str) -> bytes:
    (value,) = conn.execute(f"SELECT {column} FROM journal WHERE seq = ?", (seq,)).fetchone()
    return bytes(value)


def write_blob(conn: sqlite3.Connection, seq: int, column: str, value: bytes) -> None:
    conn.execute(f"UPDATE journal SET {column} = ? WHERE seq = ?", (value, seq))


def flipped(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def by_seq(pair: tuple[int | None, str]) -> tuple[int, str]:
    """Sort key: journal-level findings (seq None) first, then by seq and code."""
    return (-1 if pair[0] is None else pair[0], pair[1])


def pairs(report: VerifyReport) -> list[tuple[int | None, str]]:
    """The (seq, code) of each finding, sorted."""
    return sorted(((f.seq, str(f.code)) for f in report.findings), key=by_seq)


def reference_mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1 written recursively, as independent of the streaming implementation as possible."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


# --- Merkle tree --------------------------------------------------------------------------------------------

# certificate-transparency merkle_tree_test.cc: leaf data and the published tree heads for sizes 1..8.
CT_LEAF_DATA = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_merkle_root_matches_certificate_transparency_vectors() -> None:
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(d)).digest() for d in CT_LEAF_DATA]
    assert rfc6962_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    for n in range(1, 9):
        assert rfc6962_root(leaves[:n]).hex() == CT_ROOTS[n - 1]


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=70))
def test_streaming_merkle_root_equals_recursive_definition(leaves: list[bytes]) -> None:
    tree = MerkleRoot()
    for i, leaf in enumerate(leaves):
        tree.append(leaf)
        # The root is available at every size, which checkpoints at intermediate sizes will need.
        assert tree.root() == reference_mth(leaves[: i + 1])
    assert tree.size == len(leaves)


def test_merkle_rejects_a_leaf_that_is_not_a_hash() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        rfc6962_root([b"short"])


# --- clean journals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 18))
def test_clean_journal_verifies_with_the_independent_merkle_root(tmp_path: Path, n: int) -> None:
    receipts = write_journal(tmp_path / "j.db", n)

    report = verify_journal(tmp_path / "j.db", [SIGNER.verifier])

    assert report.ok, format_report(report)
    assert report.findings == []
    assert (report.entries, report.tree_size) == (n, n)
    assert report.root_hash == reference_mth([r.leaf_hash for r in receipts])
    assert report.last_leaf_hash == receipts[-1].leaf_hash
    assert report.witnessed_size == 0
    assert report.origin == ORIGIN


def test_empty_journal_verifies_with_the_empty_root(tmp_path: Path) -> None:
    write_items(tmp_path / "j.db", [])

    report = verify_journal(tmp_path / "j.db", [SIGNER.verifier])

    assert report.ok
    assert (report.entries, report.root_hash, report.last_leaf_hash) == (0, EMPTY_ROOT, None)


def test_format_report_of_a_clean_journal_ends_with_the_summary(tmp_path: Path) -> None:
    write_journal(tmp_path / "j.db", 3)
    report = verify_journal(tmp_path / "j.db", [SIGNER.verifier])

    lines = format_report(report).splitlines()

    assert lines[-1] == f"journal OK: 3 entries, root {report.root_hash.hex()}"
    assert lines[-2].startswith("witnessed: 0 of 3 entries")


def test_every_kind_of_event_verifies(tmp_path: Path) -> None:
    items = [
        (kind, canonical_json(body), schema.indexed_values(body), BASE_NANOS + kind)
        for kind in EventKind
        for body in [event(kind, kind=kind.label)]
    ]
    write_items(tmp_path / "j.db", items)

    assert verify_journal(tmp_path / "j.db", [SIGNER.verifier]).ok


# --- tampering ----------------------------------------------------------------------------------------------

Tamper = Callable[[sqlite3.Connection], None]


def edit_entry(seq: int, index: Callable[[bytes], int], *, fix_leaf_hash: bool = False) -> Tamper:
    def tamper(conn: sqlite3.Connection) -> None:
        entry = read_blob(conn, seq, "entry")
        changed = flipped(entry, index(entry))
        write_blob(conn, seq, "entry", changed)
        if fix_leaf_hash:  # A careful attacker also recomputes the stored leaf hash.
            write_blob(conn, seq, "leaf_hash", leaf_hash(changed, read_blob(conn, seq, "signature")))

    return tamper


def body_year(entry: bytes) -> int:
    """Index of the last digit of the year in the body's timestamp (2025 → 2024: still canonical JSON)."""
    return entry.index(b'"timestamp":"2025') + len(b'"timestamp":"2025') - 1


def edit_signature(seq: int) -> Tamper:
    return lambda conn: write_blob(conn, seq, "signature", flipped(read_blob(conn, seq, "signature"), 17))


def edit_leaf_hash_column(seq: int) -> Tamper:
    return lambda conn: write_blob(conn, seq, "leaf_hash", flipped(read_blob(conn, seq, "leaf_hash"), 0))


def replace_entry(seq: int, data: bytes) -> Tamper:
    return lambda conn: write_blob(conn, seq, "entry", data)


def delete(*seqs: int) -> Tamper:
    def tamper(conn: sqlite3.Connection) -> None:
        for seq in seqs:
            conn.execute("DELETE FROM journal WHERE seq = ?", (seq,))

    return tamper


def swap(a: int, b: int) -> Tamper:
    # Moving the seq values swaps every other column of the two rows (entry, signature, indexed columns)
    # without tripping the unique event_id index midway.
    def tamper(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE journal SET seq = -1 WHERE seq = ?", (a,))
        conn.execute("UPDATE journal SET seq = ? WHERE seq = ?", (a, b))
        conn.execute("UPDATE journal SET seq = ? WHERE seq = -1", (b,))

    return tamper


def delete_and_renumber(seq: int, last: int) -> Tamper:
    def tamper(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM journal WHERE seq = ?", (seq,))
        for s in range(seq + 1, last + 1):
            conn.execute("UPDATE journal SET seq = ? WHERE seq = ?", (s - 1, s))

    return tamper


def set_column(seq: int, column: str, value: Any) -> Tamper:
    def tamper(conn: sqlite3.Connection) -> None:
        conn.execute(f"UPDATE journal SET {column} = ? WHERE seq = ?", (value, seq))

    return tamper


def set_meta_origin(value: str) -> Tamper:
    def tamper(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE journal_meta SET value = ? WHERE key = 'origin'", (value,))

    return tamper


SIG, EDIT, CHAIN = "bad_signature", "edited_entry", "chain_break"
TAMPER_CASES = [
    pytest.param(edit_entry(2, body_year), [(2, SIG), (2, EDIT), (3, CHAIN)], id="body-byte"),
    pytest.param(
        edit_entry(2, lambda _: OFF_NANOS_LAST),
        [(2, SIG), (2, "column_mismatch"), (2, EDIT), (3, CHAIN)],
        id="header-timestamp-byte",
    ),
    pytest.param(
        edit_entry(2, lambda _: OFF_KIND), [(2, SIG), (2, EDIT), (2, "kind_mismatch"), (3, CHAIN)], id="header-kind"
    ),
    pytest.param(
        edit_entry(2, lambda _: OFF_SEQ_LAST), [(2, SIG), (2, EDIT), (2, "reorder"), (3, CHAIN)], id="header-seq"
    ),
    pytest.param(
        edit_entry(2, lambda _: OFF_PREV + 5), [(2, SIG), (2, CHAIN), (2, EDIT), (3, CHAIN)], id="header-prev-hash"
    ),
    pytest.param(edit_entry(2, lambda _: OFF_KEY_ID), [(2, EDIT), (2, "unknown_key"), (3, CHAIN)], id="header-key-id"),
    pytest.param(
        edit_entry(2, lambda _: OFF_BODY_LEN_LAST),
        [(2, EDIT), (2, "malformed_entry"), (3, CHAIN)],
        id="header-body-length",
    ),
    pytest.param(edit_entry(2, lambda _: 3), [(2, EDIT), (2, "malformed_entry"), (3, CHAIN)], id="header-domain-tag"),
    pytest.param(edit_signature(2), [(2, SIG), (2, EDIT), (3, CHAIN)], id="signature-byte"),
    pytest.param(
        edit_entry(2, body_year, fix_leaf_hash=True), [(2, SIG), (3, CHAIN)], id="body-byte-and-leaf-hash-column"
    ),
    pytest.param(edit_leaf_hash_column(2), [(2, EDIT)], id="leaf-hash-column"),
    pytest.param(
        replace_entry(2, b"not an entry"), [(2, EDIT), (2, "malformed_entry"), (3, CHAIN)], id="entry-garbage"
    ),
    pytest.param(delete(2), [(2, "gap")], id="delete-middle"),
    pytest.param(delete(2, 3), [(2, "gap")], id="delete-two-middle"),
    pytest.param(delete(0), [(0, "gap")], id="delete-first"),
    pytest.param(
        swap(2, 3),
        [(2, CHAIN), (2, "reorder"), (3, CHAIN), (3, "reorder"), (4, CHAIN)],
        id="swap-two",
    ),
    pytest.param(
        delete_and_renumber(2, last=5),
        [(2, CHAIN), (2, "reorder"), (3, "reorder"), (4, "reorder")],
        id="delete-and-renumber",
    ),
    pytest.param(set_column(2, "decision", "allow"), [(2, "column_mismatch")], id="column-decision"),
    pytest.param(set_column(4, "tenant_id", None), [(4, "column_mismatch")], id="column-tenant-null"),
    pytest.param(set_column(1, "unix_nanos", BASE_NANOS), [(1, "column_mismatch")], id="column-unix-nanos"),
    pytest.param(set_meta_origin("elsewhere"), [(None, "origin_mismatch")], id="meta-origin"),
]


@pytest.fixture(scope="module")
def six_entries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine 6-entry journal (seq 0..5); copy it before changing it."""
    path = tmp_path_factory.mktemp("template") / "six.db"
    write_journal(path, 6)
    return path


@pytest.mark.parametrize(("tamper", "expected"), TAMPER_CASES)
def test_tamper_is_reported_at_its_seq(
    six_entries: Path, tmp_path: Path, tamper: Tamper, expected: list[tuple[int | None, str]]
) -> None:
    path = tmp_path / "j.db"
    shutil.copy(six_entries, path)
    assert read_decision(path, 2) == "stop"  # The column case below relies on it.
    with tampering(path) as conn:
        tamper(conn)

    report = verify_journal(path, [SIGNER.verifier])

    assert not report.ok
    assert pairs(report) == sorted(expected, key=by_seq)


def read_decision(path: Path, seq: int) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT decision FROM journal WHERE seq = ?", (seq,)).fetchone()[0])


def test_gap_names_the_missing_seqs(six_entries: Path, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    shutil.copy(six_entries, path)
    with tampering(path) as conn:
        delete(2, 3)(conn)

    (finding,) = verify_journal(path, [SIGNER.verifier]).findings

    assert (finding.seq, finding.code) == (2, FindingCode.GAP)
    assert "2..3" in finding.message


def test_column_mismatch_names_the_column(six_entries: Path, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    shutil.copy(six_entries, path)
    with tampering(path) as conn:
        set_column(2, "decision", "allow")(conn)

    (finding,) = verify_journal(path, [SIGNER.verifier]).findings

    assert "column decision holds 'allow', the signed entry says 'stop'" in finding.message


def test_truncated_tail_is_not_detectable_locally(six_entries: Path, tmp_path: Path) -> None:
    # Removing the newest entries leaves a shorter, perfectly valid journal: every remaining entry is signed
    # and chained. Only a witnessed checkpoint (a later issue) proves the journal once had more entries;
    # the report says so by giving witnessed_size 0.
    path = tmp_path / "j.db"
    shutil.copy(six_entries, path)
    with tampering(path) as conn:
        delete(4, 5)(conn)

    report = verify_journal(path, [SIGNER.verifier])

    assert report.ok
    assert (report.entries, report.witnessed_size) == (4, 0)


def test_tamper_report_lists_each_finding_then_the_summary(six_entries: Path, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    shutil.copy(six_entries, path)
    with tampering(path) as conn:
        edit_signature(2)(conn)

    lines = format_report(verify_journal(path, [SIGNER.verifier])).splitlines()

    assert lines[0].startswith("seq 2: bad_signature: ")
    assert lines[-1] == "TAMPER EVIDENCE: 3 findings in 6 entries"


def test_report_json_carries_every_finding(six_entries: Path, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    shutil.copy(six_entries, path)
    with tampering(path) as conn:
        set_column(2, "decision", "allow")(conn)
    report = verify_journal(path, [SIGNER.verifier])

    document = json.loads(json.dumps(report.to_json()))  # What `verify --json` prints.

    assert document["ok"] is False
    assert document["entries"] == 6
    assert document["root_hash"] == report.root_hash.hex()
    assert document["witnessed_size"] == 0
    assert [(f["seq"], f["code"]) for f in document["findings"]] == [(2, "column_mismatch")]


def test_messages_escape_control_characters_from_tampered_columns(six_entries: Path, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    shutil.copy(six_entries, path)
    with tampering(path) as conn:
        set_column(1, "reason", "\x1b[2J\x1b[Hall good\n" + "x" * 500)(conn)

    text = format_report(verify_journal(path, [SIGNER.verifier]))

    assert "\x1b" not in text
    assert len(text.splitlines()) == 3  # finding, witness line, summary: no injected line break
    assert "x" * 200 not in text  # quoted values are capped


# --- signed but inconsistent entries (a writer bug, not tampering: the signatures are valid) ----------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        pytest.param(
            (EventKind.PRE_EXEC, b'{"event_id":"ev-0001", "kind":"pre_exec"}', ("pre_exec", "ev-0001")),
            "noncanonical_body",
            id="whitespace",
        ),
        pytest.param(
            (EventKind.PRE_EXEC, b'{"event_id":"ev-0001","kind":"pre_exec","n":1.0}', ("pre_exec", "ev-0001")),
            "noncanonical_body",
            id="float-not-shortest",
        ),
        pytest.param(
            (EventKind.PRE_EXEC, b'{"event_id":"ev-0001","kind":"pre_exec"}', ("pre_exec", "ev-0001")),
            None,
            id="canonical-control",
        ),
        pytest.param((EventKind.PRE_EXEC, b"\xff\xfe{}", ("pre_exec", "ev-0001")), "noncanonical_body", id="not-utf8"),
        pytest.param((EventKind.PRE_EXEC, b"[1,2]", ("pre_exec", "ev-0001")), "noncanonical_body", id="array"),
        pytest.param(
            (EventKind.POST_EXEC, b'{"event_id":"ev-0001","kind":"pre_exec"}', ("pre_exec", "ev-0001")),
            "kind_mismatch",
            id="kind-byte-vs-body",
        ),
        pytest.param(
            (200, b'{"event_id":"ev-0001","kind":"pre_exec"}', ("pre_exec", "ev-0001")),
            "kind_mismatch",
            id="unknown-kind-byte",
        ),
        pytest.param(
            (EventKind.PRE_EXEC, b'{"event_id":"ev-0001","kind":"pre_exec"}', ("pre_exec", "ev-other")),
            "column_mismatch",
            id="wrong-event-id-column",
        ),
    ],
)
def test_signed_entry_that_breaks_the_schema_is_reported(
    tmp_path: Path, written: tuple[int, bytes, tuple[str, str]], expected: str | None
) -> None:
    kind, body, (kind_column, event_id_column) = written
    columns = (kind_column, event_id_column) + (None,) * (len(schema.INDEXED_FIELDS) - 2)
    write_items(tmp_path / "j.db", [item(0), (kind, body, columns, BASE_NANOS)])

    report = verify_journal(tmp_path / "j.db", [SIGNER.verifier])

    assert pairs(report) == ([] if expected is None else [(1, expected)])


# --- keys and origin ----------------------------------------------------------------------------------------


def test_entries_signed_by_an_untrusted_key_are_unknown_key(tmp_path: Path) -> None:
    write_journal(tmp_path / "j.db", 3)
    stranger = Ed25519Signer(ORIGIN, hashlib.sha256(b"someone else").digest())

    report = verify_journal(tmp_path / "j.db", [stranger.verifier])

    assert pairs(report) == [(0, "unknown_key"), (1, "unknown_key"), (2, "unknown_key")]


def test_rotated_keys_verify_together_and_each_alone_flags_the_other(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    rotated = Ed25519Signer(ORIGIN, hashlib.sha256(b"rotated key").digest())
    write_items(path, [item(0), item(1)], SIGNER)
    write_items(path, [item(2)], rotated)

    assert verify_journal(path, [SIGNER.verifier, rotated.verifier]).ok
    assert pairs(verify_journal(path, [SIGNER.verifier])) == [(2, "unknown_key")]
    assert pairs(verify_journal(path, [rotated.verifier])) == [(0, "unknown_key"), (1, "unknown_key")]


def test_explicit_wrong_origin_fails_every_signature(tmp_path: Path) -> None:
    write_journal(tmp_path / "j.db", 2)

    report = verify_journal(tmp_path / "j.db", [SIGNER.verifier], origin="other")

    assert pairs(report) == [(None, "origin_mismatch"), (0, "bad_signature"), (1, "bad_signature")]


def test_no_public_key_is_a_usage_error(tmp_path: Path) -> None:
    write_journal(tmp_path / "j.db", 1)
    with pytest.raises(ConfigError, match="at least one public key"):
        verify_journal(tmp_path / "j.db", [])


def test_keys_for_different_origins_need_an_explicit_origin(tmp_path: Path) -> None:
    write_journal(tmp_path / "j.db", 1)
    other = Ed25519Signer("other-origin", hashlib.sha256(b"k").digest())

    with pytest.raises(ConfigError, match="different origins"):
        verify_journal(tmp_path / "j.db", [SIGNER.verifier, other.verifier])
    assert verify_journal(tmp_path / "j.db", [SIGNER.verifier, other.verifier], origin=ORIGIN).ok


# --- reading --------------------------------------------------------------------------------------------


def test_verify_never_writes_the_journal_file(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    write_journal(path, 4)  # Left in WAL mode, as a sidecar leaves it.
    before = (path.read_bytes(), path.stat().st_mtime_ns)

    assert verify_journal(path, [SIGNER.verifier]).ok

    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_verify_reads_a_journal_whose_name_looks_like_uri_syntax(tmp_path: Path) -> None:
    path = tmp_path / "odd?mode=rwc#name%20.db"
    write_journal(path, 2)

    assert verify_journal(path, [SIGNER.verifier]).entries == 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(
            lambda p: p.write_text("just some text, not a database\n" * 50), "not an agentaudit journal", id="text"
        ),
        pytest.param(lambda p: p.write_bytes(b""), "no journal table", id="empty-file"),
        pytest.param(
            lambda p: sqlite3.connect(p).execute("CREATE TABLE other (x)").connection.commit(),
            "no journal table",
            id="other-sqlite-db",
        ),
        pytest.param(
            lambda p: sqlite3.connect(p).execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY)").connection.commit(),
            "lacks entry",
            id="journal-table-without-columns",
        ),
        pytest.param(lambda p: None, "cannot open", id="missing-file"),
    ],
)
def test_a_file_that_is_not_a_journal_is_a_clear_error(
    tmp_path: Path, make: Callable[[Path], Any], message: str
) -> None:
    path = tmp_path / "not-a-journal.db"
    make(path)

    with pytest.raises(JournalUnreadableError, match=message):
        verify_journal(path, [SIGNER.verifier])


def test_a_newer_schema_version_is_refused_not_misreported(six_entries: Path, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    shutil.copy(six_entries, path)
    with tampering(path) as conn:
        conn.execute("UPDATE journal_meta SET value = '2' WHERE key = 'schema_version'")

    with pytest.raises(JournalUnreadableError, match="schema version"):
        verify_journal(path, [SIGNER.verifier])


# --- property: any single-byte change is caught at its seq -------------------------------------------------


@pytest.fixture(scope="module")
def four_entries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "four.db"
    write_journal(path, 4)
    # The writer checkpoints on close; this makes sure the copied file alone holds every entry.
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@settings(max_examples=60, deadline=None)
@given(
    seq=st.integers(0, 3),
    column=st.sampled_from(["entry", "signature"]),
    position=st.integers(0, 10_000),
    mask=st.integers(1, 255),
)
def test_any_single_byte_change_is_reported_at_its_seq(
    four_entries: Path, seq: int, column: str, position: int, mask: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.db"
        shutil.copy(four_entries, path)
        with tampering(path) as conn:
            data = read_blob(conn, seq, column)
            write_blob(conn, seq, column, flipped(data, position % len(data), mask))

        report = verify_journal(path, [SIGNER.verifier])

    assert not report.ok
    assert seq in {f.seq for f in report.findings}, format_report(report)


def test_verify_memory_does_not_grow_with_the_journal(tmp_path: Path) -> None:
    async def write_many(path: Path, n: int) -> None:
        writer = JournalWriter(path, SIGNER)
        await writer.start()
        try:  # Concurrent appends: the writer commits them in a few large batches.
            await asyncio.gather(*(writer.append(*item(i)) for i in range(n)))
        finally:
            await writer.aclose()

    path = tmp_path / "j.db"
    asyncio.run(write_many(path, 3000))  # ~1.5 MB of rows: holding them all would blow the bound below.

    tracemalloc.start()
    try:
        report = verify_journal(path, [SIGNER.verifier])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (report.ok, report.entries) == (True, 3000)
    assert peak < 256 * 1024


def test_verify_of_a_journal_being_written_sees_a_consistent_prefix(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def run() -> list[VerifyReport]:
        writer = JournalWriter(path, SIGNER)
        await writer.start()
        try:
            await writer.append(*item(0))

            async def append_one_by_one() -> None:  # One commit per entry: many states to observe.
                for i in range(1, 300):
                    await writer.append(*item(i))

            appender = asyncio.create_task(append_one_by_one())
            reports = []
            while not appender.done():
                reports.append(await asyncio.to_thread(verify_journal, path, [SIGNER.verifier]))
            await appender
            return reports
        finally:
            await writer.aclose()

    reports = asyncio.run(run())

    for report in reports:
        assert report.ok, format_report(report)
    sizes = [report.entries for report in reports]
    assert sizes == sorted(sizes)
    assert len(set(sizes)) > 1, f"verify never overlapped the appends: {sizes}"
