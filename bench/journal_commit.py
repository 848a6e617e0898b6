"""Where a lone entry commits: on the loop thread against through the writer thread (docs/adr/0029).

Run as ``python -m bench.journal_commit``. The real :class:`~gateway.journal.writer.JournalWriter` appends the
collector bench's ``pre_exec`` bodies from ``concurrency`` tasks in a closed loop, fsync'd as in production, into a
fresh journal per measurement, alternating ``commit_here`` on and off for several rounds. Reported per side and
round: the append's p50 and p90 (µs, the first 100 appends discarded) and appends/s; and the median of the
per-round p50 ratios (on over off). It measures the journal alone, not Decide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.collector_ingest import ORIGIN_KEY, pre_exec_body
from bench.journal_signing import append_closed_loop
from gateway.canonical import canonical_json
from gateway.journal.schema import indexed_values
from gateway.journal.writer import JournalWriter

DISCARDED = 100


async def _measure(path: Path, commit_here: bool, appends: int, concurrency: int) -> dict[str, float]:
    payloads = [(canonical_json(b), indexed_values(b)) for b in map(pre_exec_body, range(appends))]
    writer = JournalWriter(path, ORIGIN_KEY, commit_here=commit_here)
    await writer.start()
    took: list[float] = []
    try:
        wall = await append_closed_loop(writer, payloads, concurrency, took)
    finally:
        await writer.aclose()
    kept = sorted(took[DISCARDED:])
    return {
        "p50_us": round(kept[len(kept) // 2] * 1e6, 1),
        "p90_us": round(kept[int(len(kept) * 0.9)] * 1e6, 1),
        "appends_per_s": round(appends / wall, 1),
    }


def run(appends: int = 1500, concurrency: int = 1, rounds: int = 4) -> dict[str, Any]:
    """Interleaved rounds, each side in a fresh journal; every round's figures and the median p50 ratio."""
    sides: dict[str, list[dict[str, float]]] = {"loop": [], "thread": []}
    with tempfile.TemporaryDirectory(prefix="agentaudit-bench-") as tmp:
        for r in range(rounds):
            for side, figures in sides.items():
                path = Path(tmp) / f"{side}-{r}.db"
                figures.append(asyncio.run(_measure(path, side == "loop", appends, concurrency)))
    ratios = [here["p50_us"] / there["p50_us"] for here, there in zip(sides["loop"], sides["thread"], strict=True)]
    return {
        "appends": appends,
        "concurrency": concurrency,
        "rounds": sides,
        "ratio_p50_loop_over_thread": round(statistics.median(ratios), 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--appends", type=int, default=1500, help="appends per measurement (default 1500)")
    parser.add_argument("--concurrency", type=int, default=1, help="concurrent appenders (default 1)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    args = parser.parse_args(argv)
    if min(args.concurrency, args.rounds) < 1 or args.appends <= DISCARDED:
        parser.error(f"--concurrency and --rounds must be at least 1, --appends more than {DISCARDED}")
    print(json.dumps({"journal_commit": run(args.appends, args.concurrency, args.rounds)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
