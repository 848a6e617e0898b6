"""Collector ingest into PostgreSQL, fully verified, against a raw ``COPY`` of the same rows, for both formats.

Run as ``python -m bench.collector_ingest`` (``make bench`` runs it too). Two journals of realistic ``pre_exec``
entries are written once by the real :class:`~gateway.journal.writer.JournalWriter`, one per journal format
(docs/adr/0024-seal-per-commit-signing.md), then sent in batches exactly as the forwarder sends them:

* **v1** (``audit.signing: per_entry``): batches of 500, each with a checkpoint signed over its end; every entry
  carries its own Ed25519 signature, which ingest verifies.
* **v2** (``per_commit``, the default): written in group commits of ``COMMIT_SIZE`` (what a sidecar at
  concurrency 64 commits), cut into batches at commit boundaries (the last seal within 500 entries), each sent with
  its stored seal: one signature verification per batch, the per-entry check without Ed25519.

* **ingest**: :meth:`PostgresCollectorStore.ingest` (lock the origin, verify every entry's Ed25519 signature,
  the hash chain and the checkpoint's signature and RFC 6962 root, cosign, ``COPY`` the rows, update the state,
  commit). Checkpoints are signed before the clock starts: in production the sidecar signs them.
* **raw COPY**: the same rows (the tuples the store writes, built by the store's own ``event_row``) into the
  same ``events`` table (created by the same migrations), with ``copy_records_to_table``, the fastest path
  asyncpg has (``executemany`` is slower), one batch per statement, so one commit per batch as in ingest.

Each measurement gets a fresh schema, dropped afterwards. They alternate per round (v2 ingest, v2 raw, v1 ingest,
v1 raw, then again) and the better of each is kept, to damp noise on a shared machine. Each format's ratio is its
ingest rate over the raw COPY of its own rows; ``ratio_ingest_over_raw`` is the default format's (v2), and
``formats.v1`` / ``formats.v2`` carry both. The target is ingest at least 0.5x the raw rate;
it is informational. The DSN comes from ``$AGENTAUDIT_BENCH_POSTGRES_DSN``; when PostgreSQL cannot be reached
the result says ``skipped`` and why, and nothing fails.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.canonical import canonical_json
from gateway.collector.ingest import NewEntry, storable_indexed_values
from gateway.collector.store import EVENT_COLUMNS, event_row
from gateway.journal.entry import EventKind, decode_entry, leaf_hash
from gateway.journal.merkle import MerkleRoot
from gateway.journal.note import Checkpoint, SignedNote, sign_checkpoint, verify_cosignature
from gateway.journal.schema import indexed_values
from gateway.journal.writer import JournalWriter
from gateway.signing import Ed25519Signer

DSN_ENV = "AGENTAUDIT_BENCH_POSTGRES_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_EVENTS = 20_000
BATCH_SIZE = 500
ROUNDS = 2
COMMIT_SIZE = 64  # entries per group commit in the v2 journal (a sidecar under load at concurrency 64)
FORMATS = ("v2", "v1")  # the first is the default format: its ratio is ``ratio_ingest_over_raw``
TARGET_RATIO = 0.5  # ingest events/s over raw COPY events/s
CONNECT_TIMEOUT_S = 5.0

ORIGIN = "bench.agentaudit/collector"
ORIGIN_KEY = Ed25519Signer(ORIGIN, bytes(range(32)))
# Another sidecar whose one batch is ingested before the clock starts: a collector that has been running has its
# entry-check worker processes up (gateway/collector/checking.py); starting them is not ingest.
WARMUP_KEY = Ed25519Signer("bench.agentaudit/warm-up", bytes([7]) * 32)
WITNESS = Ed25519Signer("bench.agentaudit/witness", bytes([9]) * 32)
_BASE_NANOS = 1_800_000_000_000_000_000

Row = tuple[int, bytes, bytes]
Batch = tuple[list[Row], str]
_T = TypeVar("_T")


# --- the journal --------------------------------------------------------------------------------------------


def pre_exec_body(i: int) -> dict[str, Any]:
    """A pre_exec body with every field AuditRecorder.record_decision writes, for the load generator's request.

    That is the real shape (the recorder always writes all these keys), about 1 KB of canonical JSON.
    """
    return {
        "event_id": f"evt_01JHB{i:021d}",
        "kind": "pre_exec",
        "timestamp": f"2027-01-15T08:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}123456Z",
        "run_id": f"run_01JHB{i // 50:021d}",
        "step_id": i % 50,
        "attempt": 1,
        "tenant_id": "t_42",
        "actor": {"type": "user", "id": "u_1001"},
        "agent_id": "support-agent",
        "action": "kb.search",
        "args": {
            "customer_id": f"cus_{100_000 + i % 64}",
            "fields": ["name", "plan", "open_tickets"],
            "include_history": True,
            "limit": 20,
        },
        "args_digest": f"hmac-sha256:{i * 2654435761 % 2**256:064x}",
        "redacted_paths": ["args.email"],
        "action_key": f"ak_{i * 40503 % 2**128:032x}",
        "scope": "tenant",
        "decision": "allow",
        "reason": "allowed",
        "policy_layer": "access",
        "policy_rule": "support",
        "policy_version": f"sha256:{0x4F2A9C0E1B7D:064x}",
        "retry_after_ms": None,
        "shadow_decision": "",
        "shadow_reason": "",
        "shadow_layer": "",
        "shadow_rule": "",
        "approval_id": "",
        "approvers": [],
        "approval_expires_in_s": 0,
        "resumed_approval_id": "",
        "trace_id": "",
        "span_id": "",
        "labels": {"env": "bench", "team": "support"},
    }


def write_journal(
    path: Path, events: int, key: Ed25519Signer = ORIGIN_KEY, *, signing: str = "per_entry", commit: int = 512
) -> list[Row]:
    """Appends ``events`` entries concurrently (so they group-commit, ``commit`` at most per transaction) and
    returns (seq, entry, signature) rows."""

    async def append_all() -> None:
        writer = JournalWriter(path, key, signing=signing, max_batch=commit)
        await writer.start()
        try:
            await asyncio.gather(
                *(
                    writer.append(EventKind.PRE_EXEC, canonical_json(b), indexed_values(b), _BASE_NANOS + i * 1000)
                    for i, b in enumerate(pre_exec_body(i) for i in range(events))
                )
            )
        finally:
            await writer.aclose()

    asyncio.run(append_all())
    conn = sqlite3.connect(path)
    try:
        return [
            (int(seq), bytes(entry), bytes(signature))
            for seq, entry, signature in conn.execute("SELECT seq, entry, signature FROM journal ORDER BY seq")
        ]
    finally:
        conn.close()


def signed_batches(rows: Sequence[Row], batch_size: int, key: Ed25519Signer = ORIGIN_KEY) -> list[Batch]:
    """The rows in batches, each with the origin-signed checkpoint after its last entry (as the sidecar sends)."""
    tree = MerkleRoot()
    batches = []
    for start in range(0, len(rows), batch_size):
        batch = list(rows[start : start + batch_size])
        for _, entry, signature in batch:
            tree.append(leaf_hash(entry, signature))
        note = sign_checkpoint(Checkpoint(key.name, tree.size, tree.root()), key).encode()
        batches.append((batch, note))
    return batches


def sealed_batches(path: Path, rows: Sequence[Row], batch_size: int) -> list[Batch]:
    """A v2 journal's rows cut as the forwarder cuts them: at the last seal within ``batch_size`` entries (or the
    first after, for a larger commit), each batch with that stored seal as its checkpoint."""
    conn = sqlite3.connect(path)
    try:
        seals = {int(size): str(note) for size, note in conn.execute("SELECT size, note FROM journal_seals")}
    finally:
        conn.close()
    sizes = sorted(seals)
    batches, acked = [], 0
    while acked < len(rows):
        ahead = [size for size in sizes if size > acked]
        within = [size for size in ahead if size <= acked + batch_size]
        end = within[-1] if within else ahead[0]
        batches.append((list(rows[acked:end]), seals[end]))
        acked = end
    return batches


def stored_entry(seq: int, raw: bytes, signature: bytes) -> NewEntry:
    """What verification yields for an entry (the values the store writes), derived without verifying."""
    entry = decode_entry(raw)
    body = json.loads(entry.body.decode("utf-8"))
    return NewEntry(seq, raw, signature, leaf_hash(raw, signature), entry.unix_nanos, storable_indexed_values(body))


def event_records(batches: Sequence[Batch]) -> list[list[tuple[Any, ...]]]:
    """Per batch, the exact ``events`` tuples the store copies, from the store's own ``event_row``."""
    return [[event_row(ORIGIN, stored_entry(*row)) for row in rows] for rows, _ in batches]


# --- PostgreSQL ---------------------------------------------------------------------------------------------


def _run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Runs on uvloop when installed, as ``agentaudit collector`` does, without touching the global policy."""
    try:
        import uvloop  # noqa: PLC0415 -- optional, as in gateway.app
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _where(dsn: str) -> str:
    """The DSN without credentials, for messages and results."""
    return dsn.rsplit("@", 1)[-1]


async def _probe(dsn: str) -> str:
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415

    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def unreachable(dsn: str) -> tuple[str | None, str]:
    """(why PostgreSQL cannot be used or None, its server version)."""
    try:
        return None, _run_async(_probe(dsn))
    except Exception as exc:  # any failure to connect means "skip", never a failed bench
        return f"PostgreSQL at {_where(dsn)} unreachable: {type(exc).__name__}: {exc}", ""


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def _table_rows(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S, server_settings={"search_path": schema})
    try:
        rows = await conn.fetch(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE origin = $1 ORDER BY seq",
            ORIGIN,
        )
        return [tuple(row.values()) for row in rows]
    finally:
        await conn.close()


async def _ingest(
    dsn: str,
    schema: str,
    batches: Sequence[Batch],
    warmup: Batch,
    check: list[tuple[Any, ...]] | None,
    check_workers: int | None = None,
) -> float:
    """Seconds spent in ``ingest`` for every batch, through the real store; ``check``: the expected rows;
    ``check_workers``: the store's entry-check processes (None: its default)."""
    from gateway.collector.postgres_store import PostgresCollectorStore  # noqa: PLC0415

    store = PostgresCollectorStore(dsn, schema=schema, check_workers=check_workers)
    await store.start()
    try:
        await store.register_origin(ORIGIN, [ORIGIN_KEY.verifier])
        await store.register_origin(WARMUP_KEY.name, [WARMUP_KEY.verifier])
        now_s = int(time.time())
        await store.ingest(WARMUP_KEY.name, warmup[0], warmup[1], WITNESS, now_s)
        size = 0
        started = time.perf_counter()
        for rows, note in batches:
            outcome = await store.ingest(ORIGIN, rows, note, WITNESS, now_s)
            size = outcome.size
        elapsed = time.perf_counter() - started
        expected = sum(len(rows) for rows, _ in batches)
        if size != expected or verify_cosignature(SignedNote.parse(outcome.cosigned_note), WITNESS.verifier) is None:
            raise RuntimeError(f"ingest ended at size {size}, expected {expected} with a valid cosignature")
    finally:
        await store.aclose()
    # Once: the baseline must copy exactly the rows the store wrote, or the comparison means nothing.
    if check is not None and await _table_rows(dsn, schema) != check:
        raise RuntimeError("the raw COPY rows differ from the rows the collector store wrote")
    return elapsed


async def _copy(dsn: str, schema: str, records: Sequence[list[tuple[Any, ...]]]) -> float:
    """Seconds to ``COPY`` every batch into the store's ``events`` table, one statement (and commit) per batch."""
    import asyncpg  # noqa: PLC0415

    from gateway.collector.postgres_store import PostgresCollectorStore  # noqa: PLC0415

    store = PostgresCollectorStore(dsn, schema=schema)
    await store.start()  # the same migrations, so the same table, indexes and triggers
    await store.aclose()
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S, server_settings={"search_path": schema})
    try:
        columns = list(EVENT_COLUMNS)
        started = time.perf_counter()
        for batch in records:
            await conn.copy_records_to_table("events", records=batch, columns=columns, schema_name=schema)
        elapsed = time.perf_counter() - started
        count = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    expected = sum(len(batch) for batch in records)
    if count != expected:
        raise RuntimeError(f"raw COPY left {count} rows, expected {expected}")
    return elapsed


def _in_fresh_schema(dsn: str, measure: Callable[[str], Coroutine[Any, Any, float]]) -> float:
    schema = f"aa_bench_{uuid.uuid4().hex[:16]}"
    try:
        return _run_async(measure(schema))
    finally:
        _run_async(_drop_schema(dsn, schema))


# --- the benchmark ------------------------------------------------------------------------------------------


def run(
    events: int = DEFAULT_EVENTS,
    dsn: str | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    rounds: int = ROUNDS,
    check_workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ingest and raw COPY rates (events/s), their ratio and the target check; ``skipped`` without PostgreSQL.
    ``check_workers``: the store's entry-check processes (None: the store's default)."""
    dsn = dsn or os.environ.get(DSN_ENV) or DEFAULT_DSN
    say = progress or (lambda _: None)
    result: dict[str, Any] = {
        "events": events,
        "batch_size": batch_size,
        "postgres": _where(dsn),
        "target_ratio": TARGET_RATIO,
        "check_workers": "default" if check_workers is None else check_workers,
    }
    reason, version = unreachable(dsn)
    if reason is not None:
        say(f"collector ingest skipped: {reason}")
        return {**result, "skipped": True, "reason": reason}
    result["postgres_version"] = version

    started = time.monotonic()
    batches: dict[str, list[Batch]] = {}
    with tempfile.TemporaryDirectory(prefix="agentaudit-bench-") as tmp:
        v1_rows = write_journal(Path(tmp) / "v1.db", events, signing="per_entry")
        batches["v1"] = signed_batches(v1_rows, batch_size)
        v2_path = Path(tmp) / "v2.db"
        v2_rows = write_journal(v2_path, events, signing="per_commit", commit=COMMIT_SIZE)
        batches["v2"] = sealed_batches(v2_path, v2_rows, batch_size)
        warmup = signed_batches(write_journal(Path(tmp) / "warm-up.db", batch_size, WARMUP_KEY), batch_size, WARMUP_KEY)
    result["journal_write_s"] = round(time.monotonic() - started, 2)
    result["entry_bytes_mean"] = round(statistics.fmean(len(entry) for _, entry, _ in v1_rows), 1)
    records = {fmt: event_records(batches[fmt]) for fmt in FORMATS}
    expected = {fmt: [record for batch in records[fmt] for record in batch] for fmt in FORMATS}

    ingest_s: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    copy_s: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    try:
        for i in range(rounds):
            for fmt in FORMATS:
                say(f"collector ingest round {i + 1}/{rounds}: ingest {events} {fmt} events into PostgreSQL")
                check = expected[fmt] if i == 0 else None
                measure = functools.partial(
                    _ingest, dsn, batches=batches[fmt], warmup=warmup[0], check=check, check_workers=check_workers
                )
                ingest_s[fmt].append(_in_fresh_schema(dsn, measure))
                say(f"collector ingest round {i + 1}/{rounds}: raw COPY of the same {fmt} rows")
                copy_s[fmt].append(_in_fresh_schema(dsn, functools.partial(_copy, dsn, records=records[fmt])))
    except Exception as exc:  # a broken store or database: reported, never a crashed bench
        say(f"collector ingest failed: {type(exc).__name__}: {exc}")
        return {**result, "error": f"{type(exc).__name__}: {exc}"}

    formats: dict[str, Any] = {}
    for fmt in FORMATS:
        ingest_rate, copy_rate = events / min(ingest_s[fmt]), events / min(copy_s[fmt])
        formats[fmt] = {
            "batches": len(batches[fmt]),
            "ingest": {"events_per_s": round(ingest_rate, 1), "runs_s": [round(x, 3) for x in ingest_s[fmt]]},
            "raw_copy": {"events_per_s": round(copy_rate, 1), "runs_s": [round(x, 3) for x in copy_s[fmt]]},
            "ratio_ingest_over_raw": round(ingest_rate / copy_rate, 3),
        }
    default = formats[FORMATS[0]]
    return {
        **result,
        "rounds": rounds,
        "default_format": FORMATS[0],
        "ingest": default["ingest"],
        "raw_copy": default["raw_copy"],
        "ratio_ingest_over_raw": default["ratio_ingest_over_raw"],
        "ratio_ingest_over_raw_v1": formats["v1"]["ratio_ingest_over_raw"],
        "ratio_ingest_over_raw_v2": formats["v2"]["ratio_ingest_over_raw"],
        "formats": formats,
        "target_met": default["ratio_ingest_over_raw"] >= TARGET_RATIO,
        "wall_s": round(time.monotonic() - started, 1),
    }


def format_result(result: dict[str, Any]) -> str:
    """The collector section of the bench table."""
    title = f"collector ingest into PostgreSQL ({result['events']} events, batches of {result['batch_size']})"
    if result.get("skipped"):
        return f"{title}\n  skipped: {result['reason']}"
    if "error" in result:
        return f"{title}\n  failed: {result['error']}"
    met = "met" if result["target_met"] else "NOT met"
    lines = [f"{title}       events/s   runs (s)"]
    for fmt, figures in result["formats"].items():
        ingest, raw = figures["ingest"], figures["raw_copy"]
        what = "one seal per batch" if fmt == "v2" else "every entry signature"
        lines += [
            f"  {fmt} ingest, {what} verified".ljust(41)
            + f"{ingest['events_per_s']:>10.1f}   "
            + " ".join(f"{s:.3f}" for s in ingest["runs_s"]),
            f"  {fmt} raw COPY of the same rows".ljust(41)
            + f"{raw['events_per_s']:>10.1f}   "
            + " ".join(f"{s:.3f}" for s in raw["runs_s"]),
            f"  {fmt} ingest / raw {figures['ratio_ingest_over_raw']:.2f}x ({figures['batches']} batches)",
        ]
    lines.append(
        f"  default format ({result['default_format']}) ingest / raw {result['ratio_ingest_over_raw']:.2f}x "
        f"(target >= {TARGET_RATIO:g}x): {met}"
        f"   [entries {result['entry_bytes_mean']:.0f} B, PostgreSQL {result['postgres_version']}]"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table, then the figures as one JSON line; exits 1 only if a measurement failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--events", type=int, default=DEFAULT_EVENTS, help=f"journal entries (default {DEFAULT_EVENTS})"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"entries per batch (default {BATCH_SIZE})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"ingest/raw alternations (default {ROUNDS})")
    parser.add_argument("--dsn", help=f"PostgreSQL DSN (default ${DSN_ENV} or {DEFAULT_DSN})")
    parser.add_argument(
        "--check-workers",
        type=int,
        help="entry-check worker processes of the collector store (default: the store's own default; 0: none)",
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.batch_size < 1 or args.rounds < 1:
        parser.error("--events, --batch-size and --rounds must be at least 1")
    if args.check_workers is not None and args.check_workers < 0:
        parser.error("--check-workers must be 0 or more")
    result = run(
        args.events, args.dsn, batch_size=args.batch_size, rounds=args.rounds, check_workers=args.check_workers
    )
    print(format_result(result))
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
