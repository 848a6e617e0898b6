"""What the journal's indexes cost a commit: the schema before ADR 0030 against the current one, in turns.

``python -m bench.journal_indexes [--commits 3000] [--rounds 2]``

For each layout a fresh SQLite file with the journal's settings (WAL, ``synchronous=FULL``, 1 KiB pages) gets
``--commits`` commits of one ~1 KB entry each, the way a sidecar at concurrency 1 commits (alternating pre- and
post-events of runs of 20 steps). Measured per commit: the bytes the kernel wrote for this process
(``/proc/self/io`` ``write_bytes``: WAL frames, checkpoints, in 4 KiB pages), the CPU time and the p50 latency;
and the database's bytes per entry at the end.

- ``legacy``: the journal's indexes before the search table: ten on the journal (``event_id``, run, link,
  tenant, agent, action, decision, reason, kind, time) and the operator events.
- ``current``: ``schema.DDL`` as the writer creates it, with the search table filled the way the writer fills
  it (``search_table.COPY_SQL`` inside every 128th commit).

It prints a table and, last, one JSON object. Not part of ``make bench`` (the footprint bench measures the whole
sidecar); this isolates the schema. Linux only (``/proc/self/io``).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.journal.schema import COLUMNS, DDL, insert_sql
from gateway.journal.search_table import COPY_SQL, LEGACY_LAYOUT_SQL, SEARCH_BATCH, copy_due

LAYOUTS = ("legacy", "current")


def _written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def _create(path: Path, layout: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size=1024")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(DDL)
    if layout == "legacy":
        conn.executescript(LEGACY_LAYOUT_SQL)
    return conn


def _row(seq: int, entry: bytes) -> tuple[Any, ...]:
    """One journal row in COLUMNS order: a step's pre-event (even seq) or its post-event (odd)."""
    pre = seq % 2 == 0
    values: dict[str, Any] = {
        "seq": seq,
        "entry": entry,
        "signature": b"",
        "leaf_hash": os.urandom(32),
        "unix_nanos": time.time_ns(),
        "kind": "pre_exec" if pre else "post_exec",
        "event_id": os.urandom(16).hex(),
        "run_id": f"run_{seq // 40}",
        "step_id": seq // 2 % 20,
        "tenant_id": "t_42",
        "agent_id": "support-agent",
        "action": "kb.search",
        "decision": "allow",
        "reason": "allowed",
        "action_key": os.urandom(16).hex(),
        "link_event_id": None if pre else os.urandom(16).hex(),
    }
    return tuple(values[column] for column in COLUMNS)


def measure(directory: Path, layout: str, commits: int) -> dict[str, Any]:
    path = directory / f"{layout}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = _create(path, layout)
    entry = os.urandom(1_000)
    insert = insert_sql(1)
    latencies: list[float] = []
    copy_from = 0
    cpu_before, bytes_before = time.process_time(), _written_bytes()
    for seq in range(commits):
        started = time.perf_counter()
        row = _row(seq, entry)
        if layout == "current" and copy_due(copy_from, seq + 1):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(insert, row)
            conn.execute(COPY_SQL, (copy_from,))
            conn.execute("COMMIT")
            copy_from = seq + 1
        else:
            conn.execute(insert, row)
        latencies.append(time.perf_counter() - started)
    cpu, written = time.process_time() - cpu_before, _written_bytes() - bytes_before
    conn.close()
    return {
        "layout": layout,
        "commits": commits,
        "bytes_per_commit": round(written / commits),
        "cpu_us_per_commit": round(cpu / commits * 1e6, 1),
        "commit_p50_us": round(statistics.median(latencies) * 1e6, 1),
        "db_bytes_per_entry": round(path.stat().st_size / commits),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=3000, help="commits per layout and round (default 3000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the layouts in turns (default 2)")
    args = parser.parse_args(argv)
    if args.commits < SEARCH_BATCH or args.rounds < 1:
        parser.error(f"--commits must be at least {SEARCH_BATCH} and --rounds at least 1")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agentaudit-indexes-") as tmp:
        for round_number in range(1, args.rounds + 1):
            for layout in LAYOUTS:
                run = {"round": round_number, **measure(Path(tmp), layout, args.commits)}
                runs.append(run)
                print(
                    f"round {round_number} {layout:8} {run['bytes_per_commit']:>7,} B/commit  "
                    f"{run['cpu_us_per_commit']:>6} µs CPU  p50 {run['commit_p50_us']:>6} µs  "
                    f"{run['db_bytes_per_entry']:>5} B/entry in the file",
                    file=sys.stderr,
                )
    load = os.getloadavg()[0]
    print(json.dumps({"journal_indexes": {"runs": runs, "load_avg_1m_after": round(load, 2)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
