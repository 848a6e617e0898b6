"""Closed-loop load of whole tool steps (decide, then report the result) through one side's Python client.

``python bench/step_load.py --side SIDE --target ADDRESS --concurrency N --duration S --warmup S``

Run as a script (not ``-m``), so it also runs in the Tracekit virtual environment, which has Tracekit's client
and not agentaudit; it imports only the standard library until it knows the side. Sides:

* ``agentaudit-async``, ``agentaudit-sync``: ``agentaudit_client`` (``AsyncGatewayClient`` in N asyncio tasks,
  ``GatewayClient`` in N threads), one client (one channel) per process, as one agent process would hold.
* ``agentaudit-session``, ``agentaudit-session-awaited``: ``AsyncGatewayClient.session()`` (one Session stream
  shared by N asyncio tasks); reports pipelined (``wait=False``: acknowledged before the worker's next decide is
  answered, all of them before the load generator exits) or awaited (``wait=True``).
* ``agentaudit-sync-session``: ``GatewayClient.session()`` in N threads (the stream on its own loop thread),
  reports pipelined.
* ``raw-async``, ``raw-sync``: the generated ``GatewayService`` stubs, no client library: the floor the clients
  are measured against (``bench.client_step``).
* ``tracekit``: Tracekit's own ``tracekit.sdk.client.Client`` in N threads (its documented model: one pipelined
  connection that any number of threads share), a run per worker.

A step is the same everywhere: an allowed ``kb.search`` with five small arguments, then its result reported as
succeeded. A worker starts its next step when the previous one is answered. Steps finishing in the warm-up are
discarded; of those finishing in the window, the latencies (decide start to report end) and the count are kept.
Prints one JSON object on stdout: steps, steps_per_s, p50_ms, p99_ms, errors and what the sides decided.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

ARGS = {"customer_id": "cus_100042", "fields": "name,plan", "include_history": True, "limit": 20, "region": "eu"}
"""The five small arguments of every step."""
ACTION = "kb.search"
TENANT, AGENT, ACTOR = "t_42", "support-agent", ("user", "u_1001")
STEPS_PER_RUN = 50  # agentaudit's dev policy budgets steps per run; a new run_id every 50 steps, as bench.loadgen
CALL_TIMEOUT_S = 10.0
_NS = 1_000_000_000


@dataclass
class Tally:
    """Latencies and counts of the measured window; guarded by ``lock`` where threads share it."""

    start_ns: int
    end_ns: int
    latencies_ns: list[int] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    decisions: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, began: int, ended: int, decision: str | None, error: str | None) -> None:
        if ended < self.start_ns or ended > self.end_ns:
            return  # warm-up, or in flight when the window closed
        if error is None and decision != "allow":
            error = f"not allowed: {decision}"  # the workload is an allowed step; anything else is not one
        with self.lock:
            if error is not None:
                self.errors[error] += 1
                return
            self.latencies_ns.append(ended - began)
            self.decisions[str(decision)] += 1


# --- agentaudit ---------------------------------------------------------------------------------------------


def _run_id(worker: int, step: int) -> str:
    # The pid keeps runs apart across load generators sharing a sidecar (each run has a step budget).
    return f"run_steps_{os.getpid()}_{worker}_{step // STEPS_PER_RUN}"


async def _agentaudit_async(target: str, concurrency: int, tally: Tally, raw: bool, session_mode: str = "") -> None:
    if raw:
        import grpc  # noqa: PLC0415

        channel = grpc.aio.insecure_channel(target)
        step_fn = _raw_async_step(channel)
    elif session_mode:
        from agentaudit_client import AsyncGatewayClient  # noqa: PLC0415

        client = AsyncGatewayClient(target, timeout=CALL_TIMEOUT_S)
        session = client.session()
        wait = session_mode == "awaited"

        async def step_fn(worker: int, step: int) -> str:
            decision = await session.decide(
                run_id=_run_id(worker, step),
                step_id=step % STEPS_PER_RUN + 1,
                tenant_id=TENANT,
                agent_id=AGENT,
                actor=ACTOR,
                action=ACTION,
                args=ARGS,
            )
            if decision.allowed:
                # Pipelined: queued now, acknowledged before this worker's next decide is answered.
                await session.report_result(decision.event_id, status="succeeded", wait=wait)
                return decision.decision
            return f"{decision.decision}:{decision.reason}"
    else:
        from agentaudit_client import AsyncGatewayClient  # noqa: PLC0415

        client = AsyncGatewayClient(target, timeout=CALL_TIMEOUT_S)

        async def step_fn(worker: int, step: int) -> str:
            decision = await client.decide(
                run_id=_run_id(worker, step),
                step_id=step % STEPS_PER_RUN + 1,
                tenant_id=TENANT,
                agent_id=AGENT,
                actor=ACTOR,
                action=ACTION,
                args=ARGS,
            )
            if decision.allowed:
                await client.report_result(decision.event_id, status="succeeded")
                return decision.decision
            return f"{decision.decision}:{decision.reason}"

    async def worker(n: int) -> None:
        step = 0
        while time.perf_counter_ns() < tally.end_ns:
            began = time.perf_counter_ns()
            decision, error = None, None
            try:
                decision = await step_fn(n, step)
            except Exception as exc:  # any failure is counted, never a crashed load generator
                error = type(exc).__name__
            tally.record(began, time.perf_counter_ns(), decision, error)
            step += 1

    try:
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        if session_mode:
            await session.aclose()  # every pipelined report acknowledged before the load generator reports
    finally:
        await (channel.close() if raw else client.aclose())


def _raw_async_step(channel: Any) -> Callable[[int, int], Awaitable[str]]:
    from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2  # noqa: PLC0415

    stub = gateway_pb2_grpc.GatewayServiceStub(channel)

    async def step_fn(worker: int, step: int) -> str:
        response = await stub.Decide(_raw_request(gateway_pb2, types_pb2, worker, step), timeout=CALL_TIMEOUT_S)
        if response.decision == types_pb2.DECISION_ALLOW:
            await stub.ReportResult(
                gateway_pb2.ReportResultRequest(event_id=response.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED),
                timeout=CALL_TIMEOUT_S,
            )
            return "allow"
        return f"{types_pb2.Decision.Name(response.decision)}:{response.reason}"

    return step_fn


def _raw_request(gateway_pb2: Any, types_pb2: Any, worker: int, step: int) -> Any:
    """A DecideRequest built as a careful caller of the bare stubs would: the fields, the args as a Struct."""
    from google.protobuf import struct_pb2  # noqa: PLC0415

    args = struct_pb2.Struct()
    args.update(ARGS)
    return gateway_pb2.DecideRequest(
        run_id=_run_id(worker, step),
        step_id=step % STEPS_PER_RUN + 1,
        tenant_id=TENANT,
        agent_id=AGENT,
        actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_USER, id=ACTOR[1]),
        action=gateway_pb2.Action(name=ACTION, args=args),
    )


def _agentaudit_sync(target: str, concurrency: int, tally: Tally, raw: bool, session: bool = False) -> None:
    import grpc  # noqa: PLC0415

    from agentaudit_client import GatewayClient  # noqa: PLC0415

    if raw:
        from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2  # noqa: PLC0415

        channel = grpc.insecure_channel(target)
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        def step_fn(worker: int, step: int) -> str:
            response = stub.Decide(_raw_request(gateway_pb2, types_pb2, worker, step), timeout=CALL_TIMEOUT_S)
            if response.decision == types_pb2.DECISION_ALLOW:
                report = gateway_pb2.ReportResultRequest(
                    event_id=response.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED
                )
                stub.ReportResult(report, timeout=CALL_TIMEOUT_S)
                return "allow"
            return f"{types_pb2.Decision.Name(response.decision)}:{response.reason}"

        close = channel.close
    elif session:
        client = GatewayClient(target, timeout=CALL_TIMEOUT_S)
        stream = client.session()

        def step_fn(worker: int, step: int) -> str:
            decision = stream.decide(
                run_id=_run_id(worker, step),
                step_id=step % STEPS_PER_RUN + 1,
                tenant_id=TENANT,
                agent_id=AGENT,
                actor=ACTOR,
                action=ACTION,
                args=ARGS,
            )
            if decision.allowed:
                stream.report_result(decision.event_id, status="succeeded")  # pipelined
                return decision.decision
            return f"{decision.decision}:{decision.reason}"

        def close() -> None:
            stream.close()  # every report acknowledged
            client.close()
    else:
        client = GatewayClient(target, timeout=CALL_TIMEOUT_S)

        def step_fn(worker: int, step: int) -> str:
            decision = client.decide(
                run_id=_run_id(worker, step),
                step_id=step % STEPS_PER_RUN + 1,
                tenant_id=TENANT,
                agent_id=AGENT,
                actor=ACTOR,
                action=ACTION,
                args=ARGS,
            )
            if decision.allowed:
                client.report_result(decision.event_id, status="succeeded")
                return decision.decision
            return f"{decision.decision}:{decision.reason}"

        close = client.close
    try:
        _threads(concurrency, tally, lambda n: lambda step: step_fn(n, step))
    finally:
        close()


# --- Tracekit -----------------------------------------------------------------------------------------------


def _tracekit(target: str, concurrency: int, tally: Tally) -> None:
    from tracekit.sdk.client import Client  # noqa: PLC0415

    client = Client(signer=target, timeout=CALL_TIMEOUT_S)
    # A run per worker, registered before the warm-up and closed after the window: register and close are not
    # part of a step (agentaudit's runs need no registration either).
    runs = [client.run(agent=f"bench-agent-{n}") for n in range(concurrency)]

    def make(n: int) -> Callable[[int], str]:
        run = runs[n]

        def step_fn(step: int) -> str:
            call_id = f"call-{n}-{step}"
            decided = run.decide(call_id, ACTION, ARGS)
            # The client warns and returns None when a result was not recorded: an error here.
            if decided["decision"] == "allow" and run.complete(call_id, "ok") is None:
                raise RuntimeError("complete not recorded")
            return str(decided["decision"])

        return step_fn

    try:
        _threads(concurrency, tally, make)
    finally:
        for run in runs:
            run.close()
        client.close()


# --- shared -------------------------------------------------------------------------------------------------


def _threads(concurrency: int, tally: Tally, make: Callable[[int], Callable[[int], str]]) -> None:
    """N threads, each running its step function in a closed loop until the window ends."""

    def loop(n: int) -> None:
        step_fn = make(n)
        step = 0
        while time.perf_counter_ns() < tally.end_ns:
            began = time.perf_counter_ns()
            decision, error = None, None
            try:
                decision = step_fn(step)
            except Exception as exc:  # counted, never a crashed load generator
                error = type(exc).__name__
            tally.record(began, time.perf_counter_ns(), decision, error)
            step += 1

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def percentile_ms(sorted_ns: list[int], pct: float) -> float | None:
    """Nearest-rank percentile in milliseconds (None without samples)."""
    if not sorted_ns:
        return None
    return round(sorted_ns[max(1, math.ceil(pct / 100 * len(sorted_ns))) - 1] / 1e6, 3)


def measure(side: str, target: str, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Runs the load and returns the summary."""
    now = time.perf_counter_ns()
    start = now + int(warmup_s * _NS)
    tally = Tally(start, start + int(duration_s * _NS))
    if side in ("agentaudit-async", "raw-async"):
        asyncio.run(_agentaudit_async(target, concurrency, tally, raw=side == "raw-async"))
    elif side in ("agentaudit-session", "agentaudit-session-awaited"):
        mode = "awaited" if side.endswith("awaited") else "pipelined"
        asyncio.run(_agentaudit_async(target, concurrency, tally, raw=False, session_mode=mode))
    elif side in ("agentaudit-sync", "raw-sync"):
        _agentaudit_sync(target, concurrency, tally, raw=side == "raw-sync")
    elif side == "agentaudit-sync-session":
        _agentaudit_sync(target, concurrency, tally, raw=False, session=True)
    else:
        _tracekit(target, concurrency, tally)
    samples = sorted(tally.latencies_ns)
    return {
        "side": side,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "steps": len(samples),
        "steps_per_s": round(len(samples) / duration_s, 1),
        "p50_ms": percentile_ms(samples, 50),
        "p99_ms": percentile_ms(samples, 99),
        "errors": sum(tally.errors.values()),
        "error_types": dict(tally.errors),
        "decisions": dict(tally.decisions),
    }


SIDES = (
    "agentaudit-async",
    "agentaudit-sync",
    "agentaudit-session",
    "agentaudit-session-awaited",
    "agentaudit-sync-session",
    "raw-async",
    "raw-sync",
    "tracekit",
)


def main(argv: list[str] | None = None) -> None:
    """Parses the command line, runs the load, prints the JSON result."""
    parser = argparse.ArgumentParser(description="Closed-loop tool steps through one side's client.")
    parser.add_argument("--side", choices=SIDES, required=True)
    parser.add_argument("--target", required=True, help="the side's address (gRPC target or Tracekit socket)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or not args.duration > 0 or not args.warmup >= 0:
        parser.error("--concurrency must be >= 1, --duration > 0, --warmup >= 0")
    result = measure(args.side, args.target, args.concurrency, args.duration, args.warmup)
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
