"""Redaction alone, in-process: what the name rules and value detectors cost per Decide, against redaction off.

Run as ``python -m bench.redaction`` (``make bench`` runs it too). A Decide's args of about 1 KiB and 16 KiB
(an order with line items, a customer with an e-mail and a phone, free-text notes, timestamps, UUIDs, amounts)
and two labels are redacted with three settings in the same run: off (no rules, no detectors), the default name
rules only, and the default rules with every detector on. Each redaction (args and labels, as the recorder does
for a pre-event) is timed with ``perf_counter_ns``.

The settings take turns in ``--rounds`` rounds (each a block of calls per setting and size, in a rotating
order), so a change in the machine's load lands on all of them alike. The garbage collector stays on, as the
sidecar runs it; a ``gc.callbacks`` hook counts the collections that ran inside timed calls, and the p99 of the
calls no collection landed on is reported beside the p99 of all. ``--gc-freeze`` calls ``gc.freeze()`` after
the warm-up, as the sidecar may at start. The load average before and after is part of the result. The target
is a p99 under 50 µs for 1 KiB with detectors on. The result says whether the redaction modules ran compiled
(``scripts/build_native.py``, ADR 0027); ``AGENTAUDIT_NATIVE=0`` measures them as Python.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from gateway.redaction import DETECTOR_NAMES, Redactor, native

TARGET_P99_US_1KIB = 50.0
DEFAULT_RULES = ("email", "phone", "card_number")
SIZES = {"1KiB": 1024, "16KiB": 16 * 1024}
SETTINGS = {
    "off": ((), ()),
    "names": (DEFAULT_RULES, ()),
    "names+detectors": (DEFAULT_RULES, DETECTOR_NAMES),
}
LABELS = {"env": "prod", "ticket": "SUP-48213"}


def _item(i: int) -> dict[str, Any]:
    return {
        "sku": f"SKU-{10000 + i}-XL",
        "qty": 1 + i % 3,
        "unit_price": f"{19.99 + i:.2f}",
        "added_at": f"2024-01-15T10:{i % 60:02d}:00Z",
        "line_id": f"550e8400-e29b-41d4-a716-{446655440000 + i:012d}",
    }


def payload(size: int) -> dict[str, Any]:
    """Realistic args of about ``size`` bytes of JSON (line items added until it is reached)."""
    args: dict[str, Any] = {
        "order_id": "ORD-20240115-0042",
        "customer": {"id": "c_981", "name": "Ann Smith", "email": "ann.smith@example.com", "phone": "+15557654321"},
        "note": "Customer asked for delivery after 5pm; call +44 20 7946 0958 if the gate is locked.",
        "amount": 1234.5,
        "currency": "USD",
        "items": [],
    }
    while len(json.dumps(args)) < size:
        args["items"].append(_item(len(args["items"])))
    return args


class _Collections:
    """Counts garbage collections (and their time) while armed: a ``gc.callbacks`` hook."""

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0
        self._started = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            self.count += 1
            self.ns += time.perf_counter_ns() - self._started


Sample = tuple[int, int, bool]
"""One timed call: wall-clock ns, this thread's CPU ns (time the scheduler gave to others excluded), whether a
garbage collection ran inside it."""


def _block(redactor: Redactor, args: dict[str, Any], calls: int, gcs: _Collections, out: list[Sample]) -> None:
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    for _ in range(calls):
        before = gcs.count
        started, cpu_started = clock(), cpu()
        redactor.redact(args, "args")
        redactor.redact(LABELS, "labels")
        cpu_ns, wall_ns = cpu() - cpu_started, clock() - started
        out.append((wall_ns, cpu_ns, gcs.count != before))


def _summary(samples: list[Sample]) -> dict[str, Any]:
    ordered = sorted(ns for ns, _, _ in samples)
    quiet = sorted(ns for ns, _, collected in samples if not collected)
    cpu = sorted(ns for _, ns, _ in samples)

    def p99(values: list[int]) -> float:
        return round(values[int(len(values) * 0.99)] / 1000, 2) if values else 0.0

    return {
        "evaluations": len(ordered),
        "p50_us": round(ordered[len(ordered) // 2] / 1000, 2),
        "p99_us": p99(ordered),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
        "calls_with_gc": len(ordered) - len(quiet),
        "p99_without_gc_us": p99(quiet),
        "cpu_p50_us": round(cpu[len(cpu) // 2] / 1000, 2),
        "cpu_p99_us": p99(cpu),
    }


def run(evaluations: int, rounds: int = 20, gc_freeze: bool = False) -> dict[str, Any]:
    """Every size under every setting, interleaved in ``rounds`` rounds, and the target check."""
    load_before = os.getloadavg()
    cases = []
    for size_name, size in SIZES.items():
        args = payload(size)
        per_round = max(max(evaluations // (size // 1024), 200) // rounds, 1)  # 16 KiB: 16x longer per call
        for name, (rules, detectors) in SETTINGS.items():
            cases.append((size_name, name, Redactor.create(bytes(32), rules, True, detectors), args, per_round))
    gcs = _Collections()
    samples: dict[tuple[str, str], list[Sample]] = {(c[0], c[1]): [] for c in cases}
    for _, _, redactor, args, _ in cases:  # warm-up: key caches, regex internals, allocator
        _block(redactor, args, 200, gcs, [])
    if gc_freeze:
        gc.freeze()
    gc.callbacks.append(gcs)
    try:
        for i in range(rounds):
            for size_name, name, redactor, args, per_round in cases[i % len(cases) :] + cases[: i % len(cases)]:
                _block(redactor, args, per_round, gcs, samples[(size_name, name)])
    finally:
        gc.callbacks.remove(gcs)
        if gc_freeze:
            gc.unfreeze()
    result: dict[str, Any] = {
        size_name: {"payload_bytes": len(json.dumps(payload(size)))} for size_name, size in SIZES.items()
    }
    for (size_name, name), taken in samples.items():
        result[size_name][name] = _summary(taken)
    p99 = result["1KiB"]["names+detectors"]["p99_us"]
    result.update(
        {
            "rounds": rounds,
            "gc_freeze": gc_freeze,
            "gc_collections": gcs.count,
            "gc_ms": round(gcs.ns / 1e6, 2),
            "load_avg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "compiled": native.active(),  # mypyc build in use (ADR 0027); AGENTAUDIT_NATIVE=0 measures the source
            "target_p99_us_1kib": TARGET_P99_US_1KIB,
            "target_met": p99 < TARGET_P99_US_1KIB,
        }
    )
    return result


def format_result(result: dict[str, Any]) -> str:
    """The redaction section of the bench table."""
    rows = [
        "redaction per Decide (in-process)     p50 µs    p99 µs   mean µs  gc calls  p99 no-gc µs"
        "  cpu p50 µs  cpu p99 µs"
    ]
    for size_name in SIZES:
        for name in SETTINGS:
            r = result[size_name][name]
            label = f"{size_name} {name}"
            rows.append(
                f"  {label:<34} {r['p50_us']:>8.2f}  {r['p99_us']:>8.2f}  {r['mean_us']:>8.2f}"
                f"  {r['calls_with_gc']:>8}  {r['p99_without_gc_us']:>12.2f}"
                f"  {r['cpu_p50_us']:>10.2f}  {r['cpu_p99_us']:>10.2f}"
            )
    met = "met" if result["target_met"] else "NOT met"
    p99 = result["1KiB"]["names+detectors"]["p99_us"]
    before, after = result["load_avg_1m"]
    rows.append(
        f"  {result['rounds']} interleaved rounds; {result['gc_collections']} collections ({result['gc_ms']:.2f} ms)"
        f"{', gc frozen after warm-up' if result['gc_freeze'] else ''}; load average {before:.2f} -> {after:.2f}"
    )
    built = "compiled (mypyc)" if result.get("compiled") else "as Python (no build, or AGENTAUDIT_NATIVE=0)"
    rows.append(f"  redaction modules {built}")
    rows.append(f"  1 KiB with detectors p99 {p99:.2f} µs (target < {TARGET_P99_US_1KIB:g} µs): {met}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table, then the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--evaluations", type=int, default=20_000, help="timed redactions for the 1 KiB payload")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds the evaluations are split into")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after the warm-up")
    args = parser.parse_args(argv)
    result = run(args.evaluations, args.rounds, args.gc_freeze)
    print(format_result(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
