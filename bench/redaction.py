"""Redaction alone, in-process: what the name rules and value detectors cost per Decide, against redaction off.

Run as ``python -m bench.redaction`` (``make bench`` runs it too). A Decide's args of about 1 KiB and 16 KiB
(an order with line items, a customer with an e-mail and a phone, free-text notes, timestamps, UUIDs, amounts)
and two labels are redacted with three settings in the same run: off (no rules, no detectors), the default name
rules only, and the default rules with every detector on. Each redaction (args and labels, as the recorder does
for a pre-event) is timed with ``perf_counter_ns``. The target is a p99 under 50 µs for 1 KiB with detectors on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

from gateway.redaction import DETECTOR_NAMES, Redactor

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


def measure(redactor: Redactor, args: dict[str, Any], evaluations: int) -> dict[str, Any]:
    """Times ``evaluations`` redactions of args and labels; returns p50/p99/mean in µs."""
    for _ in range(200):  # warm-up: key-word caches, regex internals, allocator
        redactor.redact(args, "args")
        redactor.redact(LABELS, "labels")
    samples = []
    clock = time.perf_counter_ns
    for _ in range(evaluations):
        started = clock()
        redactor.redact(args, "args")
        redactor.redact(LABELS, "labels")
        samples.append(clock() - started)
    samples.sort()
    return {
        "evaluations": evaluations,
        "p50_us": round(samples[len(samples) // 2] / 1000, 2),
        "p99_us": round(samples[int(len(samples) * 0.99)] / 1000, 2),
        "mean_us": round(statistics.fmean(samples) / 1000, 2),
    }


def run(evaluations: int) -> dict[str, Any]:
    """Every size under every setting, and the target check."""
    result: dict[str, Any] = {}
    for size_name, size in SIZES.items():
        args = payload(size)
        runs = max(evaluations // (size // 1024), 200)  # the 16 KiB case takes 16x longer per call
        result[size_name] = {"payload_bytes": len(json.dumps(args))} | {
            name: measure(Redactor.create(bytes(32), rules, True, detectors), args, runs)
            for name, (rules, detectors) in SETTINGS.items()
        }
    p99 = result["1KiB"]["names+detectors"]["p99_us"]
    result.update({"target_p99_us_1kib": TARGET_P99_US_1KIB, "target_met": p99 < TARGET_P99_US_1KIB})
    return result


def format_result(result: dict[str, Any]) -> str:
    """The redaction section of the bench table."""
    rows = ["redaction per Decide (in-process)     p50 µs    p99 µs   mean µs"]
    for size_name in SIZES:
        for name in SETTINGS:
            r = result[size_name][name]
            label = f"{size_name} {name}"
            rows.append(f"  {label:<34} {r['p50_us']:>8.2f}  {r['p99_us']:>8.2f}  {r['mean_us']:>8.2f}")
    met = "met" if result["target_met"] else "NOT met"
    p99 = result["1KiB"]["names+detectors"]["p99_us"]
    rows.append(f"  1 KiB with detectors p99 {p99:.2f} µs (target < {TARGET_P99_US_1KIB:g} µs): {met}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table, then the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--evaluations", type=int, default=20_000, help="timed redactions for the 1 KiB payload")
    args = parser.parse_args(argv)
    result = run(args.evaluations)
    print(format_result(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
