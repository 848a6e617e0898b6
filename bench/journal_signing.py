"""The sidecar's journal write path under both signing modes (docs/adr/0024-seal-per-commit-signing.md).

Run as ``python -m bench.journal_signing``. The real :class:`~gateway.journal.writer.JournalWriter` appends realistic
``pre_exec`` bodies (the collector bench's) from ``concurrency`` concurrent tasks in a closed loop, fsync'd as in
production, into a fresh journal per measurement, alternating ``per_entry`` (format v1) and ``per_commit`` (v2)
for several rounds; the best of each is kept. Reported per mode: appends/s, the process CPU per append (the
signing is on the loop thread, the CPU Decide competes with) and entries per commit; and the ratios v2 over v1.
It measures the journal alone, not Decide: ``python -m bench.run`` measures Decide against echo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.collector_ingest import ORIGIN_KEY, pre_exec_body
from gateway.canonical import canonical_json
from gateway.journal.entry import EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.writer import JournalWriter

MODES = ("per_entry", "per_commit")


async def append_closed_loop(
    writer: JournalWriter,
    payloads: Sequence[tuple[bytes, tuple[Any, ...]]],
    concurrency: int,
    took: list[float] | None = None,
) -> float:
    """Appends every payload from ``concurrency`` tasks in a closed loop; the wall seconds. Each append's seconds
    go to ``took`` when given."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(payloads):
            i = next_index
            next_index += 1
            body, columns = payloads[i]
            started = time.perf_counter()
            await writer.append(EventKind.PRE_EXEC, body, columns, 1_800_000_000_000_000_000 + i)
            if took is not None:
                took.append(time.perf_counter() - started)

    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - wall


async def _measure(path: Path, mode: str, appends: int, concurrency: int) -> dict[str, float]:
    bodies = [pre_exec_body(i) for i in range(appends)]
    payloads = [(canonical_json(b), indexed_values(b)) for b in bodies]
    writer = JournalWriter(path, ORIGIN_KEY, signing=mode)
    await writer.start()
    try:
        cpu = time.process_time()
        wall = await append_closed_loop(writer, payloads, concurrency)
        cpu = time.process_time() - cpu
        commits = writer.batches_committed
    finally:
        await writer.aclose()
    return {"wall_s": wall, "cpu_us_per_append": cpu / appends * 1e6, "entries_per_commit": appends / commits}


def run(appends: int = 4000, concurrency: int = 64, rounds: int = 3) -> dict[str, Any]:
    """Best appends/s and CPU per append per mode over interleaved rounds, and the v2/v1 ratios."""
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="agentaudit-bench-") as tmp:
        for r in range(rounds):
            for mode in MODES:
                got = asyncio.run(_measure(Path(tmp) / f"{mode}-{r}.db", mode, appends, concurrency))
                if mode not in best or got["wall_s"] < best[mode]["wall_s"]:
                    best[mode] = got
                if mode in best:
                    best[mode]["cpu_us_per_append"] = min(best[mode]["cpu_us_per_append"], got["cpu_us_per_append"])
    out: dict[str, Any] = {"appends": appends, "concurrency": concurrency, "rounds": rounds}
    for mode, got in best.items():
        out[mode] = {
            "appends_per_s": round(appends / got["wall_s"], 1),
            "cpu_us_per_append": round(got["cpu_us_per_append"], 1),
            "entries_per_commit": round(got["entries_per_commit"], 1),
        }
    out["ratio_appends_per_s_v2_over_v1"] = round(
        out["per_commit"]["appends_per_s"] / out["per_entry"]["appends_per_s"], 3
    )
    out["ratio_cpu_per_append_v2_over_v1"] = round(
        out["per_commit"]["cpu_us_per_append"] / out["per_entry"]["cpu_us_per_append"], 3
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--appends", type=int, default=4000, help="appends per measurement (default 4000)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent appenders (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    if min(args.appends, args.concurrency, args.rounds) < 1:
        parser.error("--appends, --concurrency and --rounds must be at least 1")
    print(json.dumps({"journal_signing": run(args.appends, args.concurrency, args.rounds)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
