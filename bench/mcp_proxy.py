"""The MCP proxy's cost per ``tools/call``: through ``agentaudit mcp`` against the same call made directly.

Run as ``python -m bench.mcp_proxy [--duration S] [--concurrency 1,16]`` (``make bench`` runs it too). In one run,
on this machine:

1. A real sidecar (``agentaudit dev``, forwarding off) with a policy that allows ``mcp.bench.*`` and limits
   nothing, so every call takes the allow path: Decide, forward, ReportResult.
2. **sidecar**: Decide + ReportResult for the same action and arguments, straight through ``agentaudit_client``;
   what the proxy cannot avoid paying, and the base of the target.
3. For stdio and for Streamable HTTP: **direct** (an SDK client calling ``bench.mcp_echo_server``) and
   **proxied** (the same client calling ``agentaudit mcp`` in front of the same server), at each concurrency:
   N workers on one client session, each sending its next ``tools/call`` when the last is answered.

Added latency is proxied minus direct (p50 and p99); the target is a p50 added at concurrency 1 no more than the
sidecar's own Decide + ReportResult p50 plus 1 ms (the proxy's own work: MCP parsing twice, the mapping, the
second hop). The load runs in this process, the same client for both, so the figures include the client's cost
on both sides. Each point is a warm-up then a measured window; the whole section takes about 45 s by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from agentaudit_client import AsyncGatewayClient

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DURATION_S = 3.0
DEFAULT_WARMUP_S = 0.5
DEFAULT_CONCURRENCY = (1, 16)
TARGET_SLACK_MS = 1.0  # proxy p50 added at c1 <= sidecar Decide+ReportResult p50 + this
READY_TIMEOUT_S = 30.0
ARGS = {"query": "quarterly revenue by region", "limit": 10}
POLICY = """version: 1
access: {default: allow}
"""

_CLI = [sys.executable, "-m", "gateway.cli"]
_SERVER = [sys.executable, "-m", "bench.mcp_echo_server"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {READY_TIMEOUT_S:g} s")
        time.sleep(0.05)


def _listening(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    return check


def _stats(latencies: list[float], window_s: float) -> dict[str, Any]:
    if not latencies:
        return {"calls": 0, "calls_per_s": 0.0, "p50_ms": None, "p99_ms": None}
    ordered = sorted(latencies)
    return {
        "calls": len(ordered),
        "calls_per_s": round(len(ordered) / window_s, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
    }


async def _closed_loop(call: Callable[[], Any], concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """N workers, each calling as soon as its last call returned; only calls inside the window count."""
    latencies: list[float] = []
    errors = 0
    start = time.monotonic() + warmup_s
    end = start + duration_s

    async def worker() -> None:
        nonlocal errors
        while (now := time.monotonic()) < end:
            try:
                result = await call()
            except Exception:
                errors += 1
                continue
            done = time.monotonic()
            if getattr(result, "is_error", False):
                errors += 1
            elif now >= start and done <= end:
                latencies.append(done - now)

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)
    return {**_stats(latencies, duration_s), "errors": errors}


@contextmanager
def _sidecar(workdir: Path) -> Iterator[str]:
    """``agentaudit dev`` with the benchmark's policy, forwarding off; yields its address once it exists."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policy.yaml").write_text(POLICY)
    address = f"unix://{workdir / 'gateway.sock'}"
    env = {**os.environ, "AGENTAUDIT_FORWARD_TARGET": ""}
    with open(workdir / "sidecar.log", "ab") as log:
        proc = subprocess.Popen(
            [*_CLI, "dev", "--dir", str(workdir), "--listen", address], env=env, cwd=ROOT, stdout=log, stderr=log
        )
    try:
        _wait((workdir / "gateway.sock").exists, proc, "the sidecar")
        yield address
    finally:
        proc.terminate()
        proc.wait(15)


async def _until_deciding(address: str) -> None:
    client = AsyncGatewayClient(address, timeout=10)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:  # the socket exists a moment before it answers
            try:
                await client.decide(run_id="warm", step_id=1, tenant_id="t_bench", action="mcp.bench.echo")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def _measure_sidecar(address: str, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    client = AsyncGatewayClient(address, timeout=10)
    steps = iter(range(1, 1 << 62))

    async def call() -> None:
        decision = await client.decide(
            run_id="run_bench_sidecar",
            step_id=next(steps),
            tenant_id="t_bench",
            agent_id="bench-agent",
            actor=("agent", "bench-agent"),
            action="mcp.bench.echo",
            args=ARGS,
            labels={"mcp.server": "bench"},
        )
        await client.report_result(decision.event_id, status="succeeded", output={"content": []}, duration=0.0)

    try:
        return await _closed_loop(call, concurrency, duration_s, warmup_s)
    finally:
        await client.aclose()


def _proxy_flags(sidecar: str, state_dir: Path) -> list[str]:
    return [
        "--sidecar",
        sidecar,
        "--server-name",
        "bench",
        "--tenant",
        "t_bench",
        "--agent",
        "bench-agent",
        "--state-dir",
        str(state_dir),
    ]


async def _measure_client(target: Any, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    async with Client(target, mode="legacy", cache=None) as client:
        await client.list_tools()
        return await _closed_loop(lambda: client.call_tool("echo", ARGS), concurrency, duration_s, warmup_s)


@contextmanager
def _http_pair(sidecar: str, workdir: Path) -> Iterator[tuple[str, str]]:
    """The echo server over HTTP and ``agentaudit mcp http`` in front of it: (direct URL, proxied URL)."""
    upstream, listen = _free_port(), _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with open(workdir / "http.log", "ab") as log:
        procs.append(subprocess.Popen([*_SERVER, "http", str(upstream)], cwd=ROOT, stderr=log))
        direct = f"http://127.0.0.1:{upstream}/mcp"
        flags = [*_proxy_flags(sidecar, workdir / "http-state"), "--listen", f"127.0.0.1:{listen}"]
        procs.append(subprocess.Popen([*_CLI, "mcp", "http", *flags, "--upstream", direct], cwd=ROOT, stderr=log))
    try:
        _wait(_listening(upstream), procs[0], "the echo server")
        _wait(_listening(listen), procs[1], "agentaudit mcp http")
        yield direct, f"http://127.0.0.1:{listen}/mcp"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)


@contextmanager
def _targets(transport: str, sidecar: str, workdir: Path) -> Iterator[tuple[Any, Any]]:
    """(direct, proxied) client targets for ``transport``."""
    if transport == "http":
        with _http_pair(sidecar, workdir) as pair:
            yield pair
        return
    direct = StdioServerParameters(command=_SERVER[0], args=[*_SERVER[1:], "stdio"], cwd=str(ROOT))
    flags = _proxy_flags(sidecar, workdir / "stdio-state")
    proxied = StdioServerParameters(
        command=_CLI[0], args=[*_CLI[1:], "mcp", "stdio", *flags, "--", *_SERVER, "stdio"], cwd=str(ROOT)
    )
    yield direct, proxied


async def _run(duration_s: float, warmup_s: float, concurrency: Sequence[int], progress: Callable[[str], None]) -> Any:
    result: dict[str, Any] = {"duration_s": duration_s, "concurrency": list(concurrency)}
    with tempfile.TemporaryDirectory(prefix="agentaudit-bench-mcp-") as tmp, _sidecar(Path(tmp) / "sidecar") as sidecar:
        await _until_deciding(sidecar)
        progress("mcp: the sidecar's own Decide + ReportResult")
        result["sidecar"] = {f"c{n}": await _measure_sidecar(sidecar, n, duration_s, warmup_s) for n in concurrency}
        for transport in ("stdio", "http"):
            with _targets(transport, sidecar, Path(tmp)) as (direct, proxied):
                for n in concurrency:
                    progress(f"mcp: {transport} c{n}, direct then proxied")
                    row: dict[str, Any] = {
                        "direct": await _measure_client(direct, n, duration_s, warmup_s),
                        "proxied": await _measure_client(proxied, n, duration_s, warmup_s),
                    }
                    row["added_p50_ms"] = _delta(row, "p50_ms")
                    row["added_p99_ms"] = _delta(row, "p99_ms")
                    result.setdefault(transport, {})[f"c{n}"] = row
    base = result["sidecar"].get("c1", {}).get("p50_ms")
    result["target_p50_ms"] = round(base + TARGET_SLACK_MS, 3) if base is not None else None
    result["target_met"] = {
        transport: _met(result[transport].get("c1", {}).get("added_p50_ms"), result["target_p50_ms"])
        for transport in ("stdio", "http")
    }
    return result


def _delta(row: dict[str, Any], key: str) -> float | None:
    a, b = row["proxied"][key], row["direct"][key]
    return round(a - b, 3) if a is not None and b is not None else None


def _met(added: float | None, target: float | None) -> bool | None:
    return None if added is None or target is None else added <= target


def run(
    duration_s: float = DEFAULT_DURATION_S,
    warmup_s: float = DEFAULT_WARMUP_S,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Measures everything above; never raises for a failed measurement (the result says ``error``)."""
    try:
        return asyncio.run(_run(duration_s, warmup_s, concurrency, progress))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def format_result(result: dict[str, Any]) -> str:
    """The table ``make bench`` prints."""
    if "error" in result:
        return f"MCP proxy per tools/call: skipped ({result['error']})"
    lines = ["MCP proxy per tools/call (proxied vs direct, same server, same run)"]
    lines.append(f"  {'':14}{'conc':>5}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}")
    for level in result["concurrency"]:
        key = f"c{level}"
        s = result["sidecar"][key]
        lines.append(f"  {'sidecar D+R':14}{level:>5}{s['calls_per_s']:>10.1f}{_f(s['p50_ms'])}{_f(s['p99_ms'])}")
    for transport in ("stdio", "http"):
        for level in result["concurrency"]:
            row = result[transport][f"c{level}"]
            for side in ("direct", "proxied"):
                r = row[side]
                added = (_f(row["added_p50_ms"], "+") + _f(row["added_p99_ms"], "+")) if side == "proxied" else ""
                name = f"{transport} {side}"
                lines.append(f"  {name:14}{level:>5}{r['calls_per_s']:>10.1f}{_f(r['p50_ms'])}{_f(r['p99_ms'])}{added}")
    target = result["target_p50_ms"]
    for transport in ("stdio", "http"):
        added = result[transport].get("c1", {}).get("added_p50_ms")
        met = result["target_met"][transport]
        verdict = "met" if met else ("NOT met" if met is False else "n/a")
        lines.append(
            f"  {transport}: p50 added at c1 {_f(added, '+').strip()} ms "
            f"(target <= sidecar Decide+ReportResult p50 + {TARGET_SLACK_MS:g} ms = {_f(target).strip()} ms): {verdict}"
        )
    return "\n".join(lines)


def _f(value: float | None, sign: str = "") -> str:
    return f"{'-' if value is None else format(value, sign + '.2f'):>9}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mcp_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S, help="discarded seconds before each point")
    parser.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)), help="e.g. 1,16")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    result = run(args.duration, args.warmup, levels, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_result(result))
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
