"""Regenerates the journal verification test vectors in this directory.

    .venv/bin/python tests/vectors/make_vectors.py

Writes ``valid.db`` (5 entries, written by the real JournalWriter), ``signing.pub``, one tampered copy per
attack, and ``expected.json``: for each file, the findings verify must report as (seq, code). The expected
findings are stated here by hand from the attack, never produced by running the verifier, so the vectors
test the verifier instead of recording whatever it happens to say.

Deterministic: a fixed key seed, fixed timestamps and event ids, so the same SQLite version produces the
same bytes. The key is public test material: never use it to sign anything real.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.canonical import canonical_json
from gateway.journal import schema
from gateway.journal.entry import EventKind, leaf_hash
from gateway.journal.writer import JournalWriter, Receipt
from gateway.signing import Ed25519Signer

HERE = Path(__file__).resolve().parent
ORIGIN = "vectors.agentaudit.example"
SEED = hashlib.sha256(b"agentaudit public test vector key: never use for real journals").digest()
BASE_NANOS = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z


def events() -> list[tuple[EventKind, dict[str, Any]]]:
    """One small incident: a refund allowed and executed, a second one stopped, then run anyway."""
    run = {"run_id": "run-0001", "tenant_id": "acme", "agent_id": "billing-agent"}
    refund = {"action": "payments.refund", "actor": {"type": "user", "id": "u-42"}, "scope": "tenant"}
    return [
        (EventKind.JOURNAL_STARTED, {"event_id": "ev-0000", "kind": "journal_started", "origin": ORIGIN}),
        (
            EventKind.PRE_EXEC,
            {
                "event_id": "ev-0001",
                "kind": "pre_exec",
                "step_id": 1,
                **run,
                **refund,
                "action_key": "ak-1f00",
                "args_digest": "hmac-sha256:5f1c",
                "redacted_paths": ["card_number"],
                "decision": "allow",
                "reason": "allowed",
                "policy_layer": "access",
                "policy_rule": "refunds-billing",
                "policy_version": "sha256:0a1b",
            },
        ),
        (
            EventKind.POST_EXEC,
            {
                "event_id": "ev-0002",
                "kind": "post_exec",
                "pre_event_id": "ev-0001",
                "step_id": 1,
                **run,
                "action": "payments.refund",
                "result": {"status": "succeeded", "duration_ms": 84},
            },
        ),
        (
            EventKind.PRE_EXEC,
            {
                "event_id": "ev-0003",
                "kind": "pre_exec",
                "step_id": 2,
                **run,
                **refund,
                "action_key": "ak-2e11",
                "args_digest": "hmac-sha256:9a0d",
                "redacted_paths": ["card_number"],
                "decision": "stop",
                "reason": "rate_limited_tenant",
                "policy_layer": "limits",
                "policy_rule": "refunds-per-hour",
                "policy_version": "sha256:0a1b",
            },
        ),
        (
            EventKind.VIOLATION,
            {
                "event_id": "ev-0004",
                "kind": "violation",
                "pre_event_id": "ev-0003",
                "step_id": 2,
                **run,
                "action": "payments.refund",
                "reason": "executed_after_stop",
            },
        ),
    ]


def write_valid(path: Path, signer: Ed25519Signer) -> list[Receipt]:
    async def run() -> list[Receipt]:
        writer = JournalWriter(path, signer)
        await writer.start()
        try:
            receipts = []
            for i, (kind, fields) in enumerate(events()):
                body = {**fields, "timestamp": f"2025-01-01T00:00:{i:02d}Z"}
                nanos = BASE_NANOS + i * 10**9
                receipts.append(await writer.append(kind, canonical_json(body), schema.indexed_values(body), nanos))
            return receipts
        finally:
            await writer.aclose()

    return asyncio.run(run())


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash, written out here so the expected root does not come from the verifier."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def blob(conn: sqlite3.Connection, seq: int, column: str) -> bytes:
    return bytes(conn.execute(f"SELECT {column} FROM journal WHERE seq = ?", (seq,)).fetchone()[0])


def edit_body_byte(conn: sqlite3.Connection) -> None:
    # The year of seq 1's timestamp, 2025 → 2024: still canonical JSON, no indexed column involved, so the
    # only evidence is cryptographic.
    entry = blob(conn, 1, "entry")
    index = entry.index(b'"timestamp":"2025') + len(b'"timestamp":"2025') - 1
    conn.execute("UPDATE journal SET entry = ? WHERE seq = 1", (flip(entry, index),))


def edit_signature_byte(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE journal SET signature = ? WHERE seq = 3", (flip(blob(conn, 3, "signature"), 10),))


def delete_middle(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM journal WHERE seq = 2")


def swap_entries(conn: sqlite3.Connection) -> None:
    # Exchanging the seq values swaps every other column of rows 1 and 2.
    conn.execute("UPDATE journal SET seq = -1 WHERE seq = 1")
    conn.execute("UPDATE journal SET seq = 1 WHERE seq = 2")
    conn.execute("UPDATE journal SET seq = 2 WHERE seq = -1")


def edit_column(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE journal SET decision = 'allow' WHERE seq = 3")  # signed as 'stop'


def truncate_tail(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM journal WHERE seq = 4")


# file → (attack, expected findings as (seq, code), note).
VARIANTS: dict[str, tuple[Callable[[sqlite3.Connection], None], list[tuple[int | None, str]], str]] = {
    "edited_byte.db": (
        edit_body_byte,
        [(1, "bad_signature"), (1, "edited_entry"), (2, "chain_break")],
        "one body byte of seq 1 changed (timestamp year)",
    ),
    "bad_signature.db": (
        edit_signature_byte,
        [(3, "bad_signature"), (3, "edited_entry"), (4, "chain_break")],
        "one byte of seq 3's signature changed",
    ),
    "deleted_middle.db": (delete_middle, [(2, "gap")], "seq 2 deleted"),
    "swapped.db": (
        swap_entries,
        [(1, "reorder"), (1, "chain_break"), (2, "reorder"), (2, "chain_break"), (3, "chain_break")],
        "rows 1 and 2 swapped (every column but seq)",
    ),
    "edited_column.db": (edit_column, [(3, "column_mismatch")], "seq 3's decision column changed stop → allow"),
    "truncated_tail.db": (
        truncate_tail,
        [],
        "seq 4 deleted: a cut-off tail is NOT detectable locally; only a witnessed checkpoint catches it",
    ),
}


def finalize(path: Path) -> None:
    """Folds everything into the one file (no -wal sidecar) and drops free pages, so vectors stay small."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA page_size=512")  # The smallest SQLite allows; VACUUM applies it.
        conn.execute("VACUUM")
    finally:
        conn.close()


def tamper(path: Path, attack: Callable[[sqlite3.Connection], None]) -> None:
    """Applies an attack as someone with write access to the file would, then puts the triggers back."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for trigger in ("journal_no_update", "journal_no_delete"):
            conn.execute(f"DROP TRIGGER {trigger}")
        attack(conn)
        conn.executescript(schema.DDL)  # IF NOT EXISTS: recreates just the dropped triggers.
    finally:
        conn.close()


def main(out: Path = HERE) -> None:
    """Writes every vector file and expected.json into ``out``."""
    signer = Ed25519Signer(ORIGIN, SEED)
    with tempfile.TemporaryDirectory() as tmp:
        valid = Path(tmp) / "valid.db"
        receipts = write_valid(valid, signer)
        finalize(valid)
        expected: dict[str, Any] = {
            "valid.db": {
                "note": "5 entries written by JournalWriter",
                "entries": len(receipts),
                "root_hash": mth([r.leaf_hash for r in receipts]).hex(),
                "last_leaf_hash": receipts[-1].leaf_hash.hex(),
                "findings": [],
            }
        }
        shutil.copy(valid, out / "valid.db")
        for name, (attack, findings, note) in VARIANTS.items():
            path = Path(tmp) / name
            shutil.copy(valid, path)
            tamper(path, attack)
            finalize(path)
            shutil.copy(path, out / name)
            expected[name] = {"note": note, "findings": [{"seq": seq, "code": code} for seq, code in findings]}

    # The stored leaf hashes must be what the envelope says (a guard against this script drifting from
    # entry.py): recompute the last one from the stored bytes of the valid vector.
    with contextlib.closing(sqlite3.connect(f"{(out / 'valid.db').as_uri()}?mode=ro", uri=True)) as conn:
        entry, signature = conn.execute("SELECT entry, signature FROM journal WHERE seq = 4").fetchone()
    assert leaf_hash(entry, signature) == receipts[-1].leaf_hash
    (out / "signing.pub").write_text(signer.verifier.encode() + "\n")
    (out / "expected.json").write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
