"""Closed-loop load generator for ``GatewayService/Decide``; prints one JSON object on stdout.

``python -m bench.loadgen --target unix:///path.sock --concurrency 16 --duration 5 --warmup 1``

N workers share one channel (as one agent process would) and each sends its next request as soon as the
previous one is answered. Requests completing during the warm-up are discarded; of those completing inside
the measured window, successes give the latencies and throughput, failures are counted by status code. The
window closes at ``--duration`` seconds or after ``--max-requests`` requests, whichever comes first.
Diagnostics go to stderr so stdout holds only the result.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from bench._loop import current_loop_name, install_event_loop_policy

# Real agents end runs; a run of bounded length also keeps per-run step budgets from turning the whole
# benchmark into a stream of budget stops.
DEFAULT_STEPS_PER_RUN = 50
DEFAULT_MAX_REQUESTS = 1_000_000
# A call slower than this is an error, not a latency sample; it also bounds a hung server.
CALL_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000


@dataclass
class Window:
    """The measured interval on the ``time.perf_counter_ns`` clock, plus its request budget."""

    start_ns: int
    end_ns: int
    max_requests: int
    issued: int = 0  # requests sent inside the window, checked against max_requests


@dataclass
class Tally:
    """What the workers observed. Only touched from the event loop thread, so it needs no lock."""

    latencies_ns: list[int] = field(default_factory=list)
    last_completion_ns: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    warmup_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    decisions: collections.Counter[str] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


def make_request(worker: int) -> gateway_pb2.DecideRequest:
    """Builds the request template a worker reuses, shaped like a real agent's lookup step."""
    args = struct_pb2.Struct()
    args.update(
        {
            "customer_id": f"cus_{100_000 + worker}",
            "email": "jane.doe@example.com",  # one of the redacted fields, so redaction is exercised
            "fields": ["name", "plan", "open_tickets"],
            "include_history": True,
            "limit": 20,
        }
    )
    return gateway_pb2.DecideRequest(
        run_id="",
        step_id=0,
        tenant_id="t_42",
        actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_USER, id="u_1001"),
        agent_id="support-agent",
        action=gateway_pb2.Action(name="kb.search", args=args),
        scope=types_pb2.SCOPE_TENANT,
        labels={"env": "bench", "team": "support"},
    )


async def _worker(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    worker: int,
    window: Window,
    tally: Tally,
    steps_per_run: int,
) -> None:
    """Sends Decide in a closed loop until the window closes or its request budget is spent."""
    # One message per worker, mutated between calls: the call serialises it before it completes, and building
    # a fresh Struct per request would spend the load generator's CPU, which the server needs on 2 cores.
    request = make_request(worker)
    run_prefix = f"run_bench_{os.getpid()}_{worker}_"
    run_number = 0
    step = steps_per_run  # start a new run on the first request
    while True:
        start = time.perf_counter_ns()
        if start >= window.end_ns:
            return
        if start >= window.start_ns:
            if window.issued >= window.max_requests:
                return
            window.issued += 1
        if step >= steps_per_run:
            run_number += 1
            step = 0
            request.run_id = f"{run_prefix}{run_number}"
        step += 1
        request.step_id = step

        error: str | None = None
        try:
            response = await stub.Decide(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            error = exc.code().name
        end = time.perf_counter_ns()

        if end < window.start_ns:
            if error is not None:
                tally.warmup_errors[error] += 1
            continue
        if end > window.end_ns:
            continue  # in flight when the window closed
        tally.last_completion_ns = max(tally.last_completion_ns, end)
        if error is not None:
            tally.errors[error] += 1
            continue
        tally.latencies_ns.append(end - start)
        tally.decisions[types_pb2.Decision.Name(response.decision)] += 1
        tally.reasons[response.reason] += 1


def percentile_ms(sorted_ns: list[int], pct: float) -> float | None:
    """Nearest-rank percentile of sorted nanosecond samples, in milliseconds (None without samples)."""
    if not sorted_ns:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / _NS_PER_MS


def summarise(tally: Tally, window: Window, *, target: str, concurrency: int, warmup_s: float) -> dict[str, Any]:
    """Turns the tally into the result object printed on stdout."""
    # A window closed early by the request budget ends at its last completion, not at the deadline.
    budget_spent = window.issued >= window.max_requests
    end_ns = tally.last_completion_ns if budget_spent and tally.last_completion_ns else window.end_ns
    elapsed_s = max(end_ns - window.start_ns, 1) / _NS_PER_S
    samples = sorted(tally.latencies_ns)
    mean_ms = sum(samples) / len(samples) / _NS_PER_MS if samples else None
    return {
        "target": target,
        "concurrency": concurrency,
        "warmup_s": warmup_s,
        "duration_s": round(elapsed_s, 3),
        "stopped_by": "max_requests" if budget_spent else "duration",
        "requests": len(samples),
        "rps": round(len(samples) / elapsed_s, 1),
        "p50_ms": _round(percentile_ms(samples, 50)),
        "p90_ms": _round(percentile_ms(samples, 90)),
        "p99_ms": _round(percentile_ms(samples, 99)),
        "max_ms": _round(samples[-1] / _NS_PER_MS if samples else None),
        "mean_ms": _round(mean_ms),
        "errors": sum(tally.errors.values()),
        "error_codes": dict(tally.errors),
        "warmup_errors": sum(tally.warmup_errors.values()),
        "decisions": dict(tally.decisions),
        "reasons": dict(tally.reasons),
        "loop": current_loop_name(),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def run_load(
    target: str,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    max_requests: int,
    steps_per_run: int,
) -> dict[str, Any]:
    """Connects, runs the warm-up and the measured window, and returns the summary."""
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        now = time.perf_counter_ns()
        start_ns = now + int(warmup_s * _NS_PER_S)
        window = Window(start_ns=start_ns, end_ns=start_ns + int(duration_s * _NS_PER_S), max_requests=max_requests)
        tally = Tally()
        async with asyncio.TaskGroup() as group:
            for worker in range(concurrency):
                group.create_task(_worker(stub, worker, window, tally, steps_per_run))
    return summarise(tally, window, target=target, concurrency=concurrency, warmup_s=warmup_s)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError("must be a number >= 0")
    return value


def main(argv: list[str] | None = None) -> None:
    """Parses the command line, runs the load and prints the JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description="Closed-loop Decide load.")
    parser.add_argument("--target", required=True, help="gRPC address, for example unix:///tmp/gateway.sock")
    parser.add_argument("--concurrency", type=_positive_int, default=1, help="concurrent workers (default 1)")
    parser.add_argument("--duration", type=_non_negative_float, default=5.0, help="measured seconds (default 5)")
    parser.add_argument("--warmup", type=_non_negative_float, default=1.0, help="discarded seconds (default 1)")
    parser.add_argument(
        "--max-requests",
        type=_positive_int,
        default=DEFAULT_MAX_REQUESTS,
        help=f"end the measured window after this many requests (default {DEFAULT_MAX_REQUESTS})",
    )
    parser.add_argument(
        "--steps-per-run",
        type=_positive_int,
        default=DEFAULT_STEPS_PER_RUN,
        help=f"steps before a worker starts a new run_id (default {DEFAULT_STEPS_PER_RUN})",
    )
    args = parser.parse_args(argv)
    install_event_loop_policy()
    result = asyncio.run(
        run_load(
            args.target,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            max_requests=args.max_requests,
            steps_per_run=args.steps_per_run,
        )
    )
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
