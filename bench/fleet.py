"""The fleet control plane with real processes: a kill switch from the collector's operator API to 20 connected
sidecars, and an approval opened on a sidecar until the collector lists it, each against a baseline measured in
the same run (issue 16, "Performance").

Run as ``python -m bench.fleet [--sidecars 20] [--rounds 5] [--approvals 20]`` (also part of ``make bench``).
One collector process (``agentaudit collector``) on a fresh PostgreSQL database at
``$AGENTAUDIT_BENCH_POSTGRES_DSN`` (default the local ``test`` server; SQLite when PostgreSQL does not answer,
said in the result) and N sidecar processes (``agentaudit serve``, the example policy), each holding its control
stream to the collector and forwarding to it (tests/fleet_processes.py starts them all).

* **kill switch → next Decide stops**: at T0 the bench calls ``EngageKillSwitch`` (tenant scope, a tenant of its
  own per round) on the collector's operator API; from T0 one probe per sidecar sends ``Decide`` for that tenant in
  a loop (a 20 ms pause between one probe's calls). A sidecar's figure is when its first ``stop``
  (``kill_switch_engaged``) answer arrived, minus T0: the propagation plus at most one Decide. Per round: p50 and
  max over the sidecars; the table gives the median round and the worst round's max (target: max < 1 s).
  **Baseline**, same rounds: a bare control stream (the sidecar's protocol, scripted here, nothing applied or
  journaled) connected to the same collector: T0 until its ``kill_switch`` message arrives.
* **approval opened → listed on the collector**: a sidecar answers ``approval_required`` (the pre-event is
  committed before the answer and pushed up on its control stream); from that answer the bench polls
  ``ListApprovals`` on the collector until the approval is there. **Baseline**: one ``ListApprovals`` round trip
  (the poll's own floor).

Figures are informational, never pass/fail. Bounded: start-up (about 1-2 s per sidecar on two cores), then
``rounds`` x (engage + at most 10 s) and ``approvals`` x (at most 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from agentaudit.v1 import control_pb2, control_pb2_grpc, gateway_pb2_grpc, operator_pb2, types_pb2
from gateway.control import message
from gateway.signing import Ed25519Signer
from tests.fleet_processes import CONTROL, CollectorProcess, FleetOperator, SidecarProcess
from tests.gateway_helpers import decide_request

DSN = os.environ.get("AGENTAUDIT_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_SIDECARS = 20
DEFAULT_ROUNDS = 5
DEFAULT_APPROVALS = 20
TARGET_MAX_S = 1.0
PROBE_PAUSE_S = 0.02  # between one probe's Decides: the resolution, and 20 sidecars' load kept moderate
SETTLE_S = 2.0  # between rounds: forwarded batches of the last round are ingested first
FORWARD_AGE_S = 1.0  # forward.batch_max_age_s's default
ROUND_DEADLINE_S = 10.0
PROBE_ORIGIN = "fleet.bench/bare-stream"


def _progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def _stats(samples: list[float]) -> dict[str, float | int]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "n": len(ordered),
    }


# --- a database ---------------------------------------------------------------------------------------------


async def _create_database() -> tuple[str, str]:
    """A fresh PostgreSQL database (its URL and name), or ("", why) when the server does not answer."""
    import asyncpg  # noqa: PLC0415

    name = f"aa_bench_fleet_{uuid.uuid4().hex[:10]}"
    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return "", f"PostgreSQL unavailable ({exc}); the collector runs on SQLite"
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return f"{DSN.rsplit('/', 1)[0]}/{name}", name


async def _drop_database(name: str) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


# --- the bare stream (the baseline) -------------------------------------------------------------------------


class BareStream:
    """The sidecar's side of one control stream, scripted: hello, then every message verified and acked."""

    def __init__(self, target: str, key: Ed25519Signer) -> None:
        self.key = key
        self.channel = grpc.aio.insecure_channel(target)
        self.call: Any = control_pb2_grpc.ControlServiceStub(self.channel).Connect()
        self.verifier = message.ControlVerifier(CONTROL.verifier, key.name, 0)
        self.nonce = b""

    async def open(self) -> None:
        first = await asyncio.wait_for(self.call.read(), 30)
        self.nonce = first.challenge.nonce
        body, sig = message.sign_hello(self.key, first.challenge.collector, self.nonce, 0)
        hello = control_pb2.ControlHello(body=body, signature=sig)
        await self.call.write(control_pb2.ConnectRequest(hello=hello))
        assert (await self.next()).kind == message.KILL_SWITCH_SET

    async def next(self) -> message.ControlMessage:
        response = await asyncio.wait_for(self.call.read(), ROUND_DEADLINE_S)
        msg = self.verifier.verify(response.control.body, response.control.signature, stream_nonce=self.nonce)
        self.verifier.applied(msg.seq)
        await self.call.write(control_pb2.ConnectRequest(ack=control_pb2.ControlAck(seq=msg.seq)))
        return msg

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


# --- the measurements ---------------------------------------------------------------------------------------


async def _probe(stub: gateway_pb2_grpc.GatewayServiceStub, tenant: str, t0: float, index: int) -> float:
    """Decides for ``tenant`` until the answer is stop; returns when that answer arrived, after ``t0``."""
    deadline = t0 + ROUND_DEADLINE_S
    step = 0
    while time.perf_counter() < deadline:
        step += 1
        request = decide_request(run_id=f"probe-{index}-{tenant}", tenant_id=tenant, action="kb.search", step_id=step)
        reply = await stub.Decide(request, timeout=ROUND_DEADLINE_S)
        if reply.decision == types_pb2.DECISION_STOP:
            if reply.reason != "kill_switch_engaged":
                raise RuntimeError(f"probe {index}: stopped for {reply.reason}, not the kill switch")
            return time.perf_counter() - t0
        await asyncio.sleep(PROBE_PAUSE_S)
    raise TimeoutError(f"sidecar {index} still allows {tenant} {ROUND_DEADLINE_S} s after the engage")


async def _kill_switch_rounds(
    collector: CollectorProcess, sidecars: list[SidecarProcess], probe_key: Ed25519Signer, rounds: int
) -> dict[str, Any]:
    ops = FleetOperator(collector, "ops")
    channels = [grpc.aio.insecure_channel(s.target) for s in sidecars]
    stubs = [gateway_pb2_grpc.GatewayServiceStub(c) for c in channels]
    bare = BareStream(collector.target, probe_key)
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1)  # the operator stub is synchronous: off the loop, so probes start at once
    per_round: list[dict[str, Any]] = []
    try:
        await bare.open()
        for i, stub in enumerate(stubs):  # warm: every sidecar answers (its first complete set has arrived)
            reply = await stub.Decide(decide_request(run_id=f"warm-{i}", tenant_id="t_warm", action="kb.search"))
            assert reply.decision == types_pb2.DECISION_ALLOW, reply
        for r in range(rounds):
            tenant = f"t_bench_{r}"
            await asyncio.sleep(SETTLE_S)
            t0 = time.perf_counter()
            engage = loop.run_in_executor(
                pool,
                lambda t=tenant: ops(
                    "EngageKillSwitch", scope=operator_pb2.KILL_SWITCH_SCOPE_TENANT, target=t, reason="bench"
                ),
            )
            bare_wait = asyncio.ensure_future(bare.next())
            probes = [asyncio.ensure_future(_probe(stub, tenant, t0, i)) for i, stub in enumerate(stubs)]
            await engage
            engaged = time.perf_counter() - t0
            msg = await bare_wait
            bare_s = time.perf_counter() - t0
            assert (msg.kind, msg.body["target"]) == (message.KILL_SWITCH, tenant)
            delays = await asyncio.gather(*probes)
            per_round.append(
                {"engage_rpc_ms": round(engaged * 1000, 2), "bare_stream_ms": round(bare_s * 1000, 2), **_stats(delays)}
            )
            _progress(
                f"round {r + 1}/{rounds}: engage RPC {engaged * 1000:.1f} ms, bare stream {bare_s * 1000:.1f} ms, "
                f"{len(delays)} sidecars p50 {per_round[-1]['p50_ms']} ms max {per_round[-1]['max_ms']} ms"
            )
    finally:
        pool.shutdown()
        await bare.close()
        for channel in channels:
            await channel.close()
        ops.close()
    p50s = [x["p50_ms"] for x in per_round]
    maxes = [x["max_ms"] for x in per_round]
    bare_ms = [x["bare_stream_ms"] for x in per_round]
    return {
        "rounds": per_round,
        "sidecars_p50_ms": round(statistics.median(p50s), 2),
        "sidecars_max_ms": max(maxes),
        "bare_stream_p50_ms": round(statistics.median(bare_ms), 2),
        "bare_stream_max_ms": max(bare_ms),
        "engage_rpc_p50_ms": round(statistics.median(x["engage_rpc_ms"] for x in per_round), 2),
        "max_over_bare_max": round(max(maxes) / max(bare_ms), 2) if max(bare_ms) else None,
        "target_max_ms": TARGET_MAX_S * 1000,
        "target_met": max(maxes) < TARGET_MAX_S * 1000,
    }


def _approvals(collector: CollectorProcess, sidecars: list[SidecarProcess], count: int) -> dict[str, Any]:
    ops = FleetOperator(collector, "ops")
    listed: list[float] = []
    floor: list[float] = []
    try:
        for i in range(count):
            sidecar = sidecars[i % len(sidecars)]
            channel = grpc.insecure_channel(sidecar.target)
            request = decide_request(
                run_id=f"refund-{i}", tenant_id="t_approvals", action="refund.create", args={"amount": 250}
            )
            reply = gateway_pb2_grpc.GatewayServiceStub(channel).Decide(request, timeout=30)
            opened = time.perf_counter()
            channel.close()
            assert reply.decision == types_pb2.DECISION_APPROVAL_REQUIRED, reply
            while True:
                started = time.perf_counter()
                page = ops("ListApprovals", tenant_id="t_approvals", limit=1000)
                done = time.perf_counter()
                if any(a.approval_id == reply.approval_id for a in page.approvals):
                    listed.append(done - opened)
                    floor.append(done - started)  # a poll that found it: the detection's own round trip
                    break
                if done - opened > ROUND_DEADLINE_S:
                    raise TimeoutError(f"approval {reply.approval_id} not listed after {ROUND_DEADLINE_S} s")
    finally:
        ops.close()
    opened_stats, floor_stats = _stats(listed), _stats(floor)
    return {
        "opened_to_listed": opened_stats,
        "list_round_trip": floor_stats,
        "ratio_p50": round(opened_stats["p50_ms"] / floor_stats["p50_ms"], 2) if floor_stats["p50_ms"] else None,
    }


def run(
    sidecars: int = DEFAULT_SIDECARS,
    rounds: int = DEFAULT_ROUNDS,
    approvals: int = DEFAULT_APPROVALS,
    progress: Callable[[str], None] = _progress,
) -> dict[str, Any]:
    """Starts the fleet, measures, stops it; the result (or ``{"error": ...}``)."""
    started = time.monotonic()
    load_before = round(os.getloadavg()[0], 2)
    url, name_or_why = asyncio.run(_create_database())
    with tempfile.TemporaryDirectory(prefix="aa-bench-fleet-") as tmp:
        base = Path(tmp)
        store = url or f"sqlite:///{base / 'collector.db'}"
        processes: list[Any] = []
        try:
            fleet = [SidecarProcess.prepare(base / f"s{i}", f"fleet.bench/sidecar-{i}") for i in range(sidecars)]
            probe_key = Ed25519Signer.generate(PROBE_ORIGIN)
            (base / "probe.pub").write_text(probe_key.verifier.encode() + "\n")
            origins = [(s.origin, s.public_key) for s in fleet] + [(PROBE_ORIGIN, base / "probe.pub")]
            collector = CollectorProcess(base / "collector", store, origins)
            collector.start()
            processes.append(collector)
            progress(
                f"fleet bench: starting {sidecars} sidecars against one collector ({'PostgreSQL' if url else 'SQLite'})"
            )
            for sidecar in fleet:
                sidecar.start(collector.target, wait=False, forward_age_s=FORWARD_AGE_S)
                processes.append(sidecar)
            from tests.fleet_processes import wait_serving  # noqa: PLC0415

            for sidecar in fleet:
                assert sidecar.proc is not None
                wait_serving(sidecar.target, sidecar.proc, sidecar.log_path, deadline_s=300)
            start_s = time.monotonic() - started
            progress(f"fleet bench: {sidecars} sidecars serving after {start_s:.0f} s; kill-switch rounds")
            switches = asyncio.run(_kill_switch_rounds(collector, fleet, probe_key, rounds))
            progress(f"fleet bench: {approvals} approvals opened -> listed")
            opened = _approvals(collector, fleet, approvals)
        except (AssertionError, RuntimeError, TimeoutError, OSError, grpc.RpcError) as exc:
            tail = ""
            for process in processes[:3]:
                tail += f"\n--- {process.log_path}\n{process.log()[-1500:]}"
            return {"error": f"fleet bench failed: {exc!r}{tail}"}
        finally:
            for process in reversed(processes):
                process.stop()
            if url:
                asyncio.run(_drop_database(name_or_why))
    return {
        "sidecars": sidecars,
        "store": "postgresql" if url else "sqlite",
        "store_note": "" if url else name_or_why,
        "kill_switch": switches,
        "approvals": opened,
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
        "wall_s": round(time.monotonic() - started, 1),
    }


def format_result(result: dict[str, Any]) -> str:
    """The fleet section of the bench table."""
    if "error" in result:
        return result["error"]
    k, a = result["kill_switch"], result["approvals"]

    def row(label: str, p50: float, worst: float | None = None) -> str:
        return f"  {label:<56}{p50:>9.1f}" + ("" if worst is None else f"{worst:>10.1f}")

    ok = "met" if k["target_met"] else "NOT met"
    rows = [
        f"fleet control plane: {result['sidecars']} sidecars, one collector on {result['store']}".ljust(58)
        + f"{'p50 ms':>9}{'max ms':>10}",
        row("engage (operator API) -> each sidecar's next Decide stops", k["sidecars_p50_ms"], k["sidecars_max_ms"])
        + f"   (target max < {k['target_max_ms']:.0f} ms: {ok})",
        row("  baseline: engage -> a bare control stream's message", k["bare_stream_p50_ms"], k["bare_stream_max_ms"]),
        row("  the engage RPC itself", k["engage_rpc_p50_ms"]),
        row(
            "approval opened -> listed on the collector",
            a["opened_to_listed"]["p50_ms"],
            a["opened_to_listed"]["max_ms"],
        ),
        row("  baseline: one ListApprovals round trip", a["list_round_trip"]["p50_ms"], a["list_round_trip"]["max_ms"]),
        f"  sidecars max / bare stream max: {k['max_over_bare_max']}x; opened->listed / list p50: {a['ratio_p50']}x;"
        f" load {result['load_avg_1m_before']} -> {result['load_avg_1m_after']} on {result['cores']} cores",
    ]
    if result["store_note"]:
        rows.append(f"  ({result['store_note']})")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sidecars", type=int, default=DEFAULT_SIDECARS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--approvals", type=int, default=DEFAULT_APPROVALS)
    args = parser.parse_args(argv)
    result = run(args.sidecars, args.rounds, args.approvals)
    print(format_result(result))
    print(json.dumps({"fleet": result}), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
