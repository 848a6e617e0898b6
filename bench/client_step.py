"""The Python client's cost per tool step: ``agentaudit_client`` (sync and asyncio) against the raw generated stubs.

``python -m bench.client_step [--duration S] [--rounds N]`` (``make bench`` runs it too)

One sidecar (``agentaudit dev``, as ``bench.run`` starts it) serves all four sides in the same run, one load
generator (``bench/step_load.py``) at a time, each in its own process:

* ``raw_async`` / ``raw_sync``: ``GatewayServiceStub`` on a ``grpc.aio`` / ``grpc`` channel, the request built by
  hand: the floor.
* ``async`` / ``sync``: ``AsyncGatewayClient`` / ``GatewayClient``, the same step through the client's API.
* ``session`` / ``session_awaited``: ``AsyncGatewayClient.session()`` (one Session stream), reports pipelined
  (acknowledged before the worker's next decide is answered) or awaited; ``sync_session``:
  ``GatewayClient.session()`` in threads, reports pipelined.

``best`` names the fastest client path (by c16 steps/s); ``step_p50_ms.c1.best`` and ``steps_per_s.c16.best``
are its figures.

A step is a Decide then a ReportResult (``bench/step_load.py``). At concurrency 1 and 16 the sides take turns
(raw, client, raw, client, ...) for ``--rounds`` rounds and the best round of each is kept, to damp the noise of
a shared machine. Reported: ``client.step_p50_ms.c1`` and ``client.steps_per_s.c16`` per side, and each client
against its raw counterpart (p50 difference, steps/s ratio). Informational, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.peers import agentaudit_sidecar, load
from bench.run import progress

SIDES = {
    "raw_async": "raw-async",
    "async": "agentaudit-async",
    "session": "agentaudit-session",
    "session_awaited": "agentaudit-session-awaited",
    "raw_sync": "raw-sync",
    "sync": "agentaudit-sync",
    "sync_session": "agentaudit-sync-session",
}
CLIENT_SIDES = ("async", "session", "session_awaited", "sync", "sync_session")  # the client's own paths (not raw stubs)
LEVELS = (1, 16)
DEFAULT_DURATION_S = 3.0
DEFAULT_WARMUP_S = 0.5
DEFAULT_ROUNDS = 2


def run(
    duration_s: float = DEFAULT_DURATION_S,
    warmup_s: float = DEFAULT_WARMUP_S,
    rounds: int = DEFAULT_ROUNDS,
    say: Callable[[str], None] = progress,
) -> dict[str, Any]:
    """Every side at c1 and c16 against one sidecar; the ``client`` figures (``error`` if it cannot start)."""
    points: dict[str, dict[str, list[dict[str, Any]]]] = {side: {f"c{n}": [] for n in LEVELS} for side in SIDES}
    try:
        with tempfile.TemporaryDirectory(prefix="aa-client-") as tmp, agentaudit_sidecar(Path(tmp)) as (address, _):
            for level in LEVELS:
                for round_number in range(rounds):
                    for side, load_side in SIDES.items():
                        say(f"client step: {side} at concurrency {level}, round {round_number + 1}/{rounds}")
                        points[side][f"c{level}"].append(
                            load(Path(sys.executable), load_side, address, level, duration_s, warmup_s)
                        )
    except Exception as exc:  # a sidecar that does not start: reported, never a crashed bench
        return {"error": f"{type(exc).__name__}: {exc}"}
    return summarise(points, duration_s, rounds)


def _best(runs: list[dict[str, Any]], key: str, pick: Callable[[list[float]], float]) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None and not r.get("errors") and "error" not in r]
    return pick(values) if values else None


def summarise(points: dict[str, dict[str, list[dict[str, Any]]]], duration_s: float, rounds: int) -> dict[str, Any]:
    """The best round per side, and each client against its raw stubs."""
    p50 = {side: _best(points[side]["c1"], "p50_ms", min) for side in SIDES}
    rate = {side: _best(points[side]["c16"], "steps_per_s", max) for side in SIDES}
    overhead: dict[str, float | None] = {}
    for client, raw in (
        ("sync", "raw_sync"),
        ("async", "raw_async"),
        ("session", "raw_async"),
        ("session_awaited", "raw_async"),
        ("sync_session", "raw_sync"),
    ):
        a, b = p50[client], p50[raw]
        overhead[f"{client}_p50_delta_ms_c1"] = round(a - b, 3) if a is not None and b is not None else None
        x, y = rate[client], rate[raw]
        overhead[f"{client}_steps_ratio_c16"] = round(x / y, 3) if x and y else None
    errors = {
        f"{side}.{level}": sum(r.get("errors", 0) for r in runs) + sum("error" in r for r in runs)
        for side, by_level in points.items()
        for level, runs in by_level.items()
    }
    measured = [side for side in CLIENT_SIDES if rate[side]]
    best = max(measured, key=lambda side: rate[side] or 0.0) if measured else None
    return {
        "best": best,
        "step_p50_ms": {"c1": {**p50, "best": p50[best] if best else None}},
        "steps_per_s": {"c16": {**rate, "best": rate[best] if best else None}},
        "client_over_raw": overhead,
        "errors": {k: v for k, v in errors.items() if v},
        "duration_s": duration_s,
        "rounds": rounds,
        "points": points,
    }


def format_result(result: dict[str, Any]) -> str:
    """The client section of the bench table."""
    title = "Python client per step (Decide + ReportResult) vs raw stubs, one sidecar, best of the rounds"
    if "error" in result:
        return f"{title}\n  failed: {result['error']}"
    p50, rate, over = result["step_p50_ms"]["c1"], result["steps_per_s"]["c16"], result["client_over_raw"]
    lines = [title, f"  {'side':<16} {'p50 ms c1':>10} {'steps/s c16':>12}"]
    for side in SIDES:
        lines.append(f"  {side:<16} {_num(p50[side], '.3f'):>10} {_num(rate[side], '.1f'):>12}")
    lines.append(f"  fastest client path: {result.get('best')}")
    for client in CLIENT_SIDES:
        lines.append(
            f"  {client} client over raw: p50 {_num(over[f'{client}_p50_delta_ms_c1'], '+.3f')} ms at c1, "
            f"steps/s {_num(over[f'{client}_steps_ratio_c16'], '.2f')}x at c16"
        )
    if result["errors"]:
        lines.append(f"  errors: {result['errors']}")
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else f"{value:{spec}}"


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table, then the figures as one JSON line (``{"client": ...}``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.client_step", description="Python client vs raw stubs")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S, help="discarded seconds per point")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="turns per side (best kept)")
    args = parser.parse_args(argv)
    if not args.duration > 0 or not args.warmup >= 0 or args.rounds < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --rounds >= 1")
    result = run(args.duration, args.warmup, args.rounds)
    print(format_result(result))
    print(json.dumps({"client": result}))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
