"""The MCP proxy's cost per ``tools/call``: through ``agentaudit mcp`` against the same call made directly.

Run as ``python -m bench.mcp_proxy [--duration S] [--concurrency 1,16] [--rounds N] [--compare REF]``
(``make bench`` runs it too). In one run, on this machine:

1. A real sidecar (``agentaudit dev``, forwarding off) with a policy that allows ``mcp.bench.*`` and limits
   nothing, so every call takes the allow path: Decide, forward, ReportResult.
2. **sidecar D+R**: Decide + ReportResult for the same action and arguments, straight through
   ``agentaudit_client``: what the proxy cannot avoid paying, and the base of the target.
3. For stdio and for Streamable HTTP: **direct** (an SDK client calling ``bench.mcp_echo_server``) and
   **proxied** (the same kind of client calling ``agentaudit mcp`` in front of the same server), and with
   ``--compare REF`` also **proxied@REF**: the proxy as it was at that git commit (exported with ``git archive``
   and run from there), so a change is measured against what it replaces, in the same run.
4. **passthrough**: ``bench.mcp_passthrough``, the proxy with its governing taken out (the same SDK server,
   transports and upstream connection, no Decide or ReportResult): passthrough minus direct is what a second MCP
   hop through the SDK costs, proxied minus passthrough what governing (ours and the sidecar's) costs.

Every variant keeps its session open for the whole run, and the variants take turns: the measured time is split
into ``--rounds`` windows per variant, in a rotating order, each after a short warm-up, so a change in the
machine's load touches every variant alike. At each concurrency N, N workers share one client session, each
sending its next ``tools/call`` when the last is answered. Added latency is proxied minus direct at p50 and p99;
the proxy's CPU time per call (``/proc``: user + system of the proxy process over its windows, divided by its
calls) is printed too, being much steadier than latency on a shared machine. The target is a p50 added at
concurrency 1 no more than the sidecar's own Decide + ReportResult p50 plus 1 ms. The load average is printed at
the start and the end.
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
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from agentaudit_client import AsyncGatewayClient

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DURATION_S = 3.0
DEFAULT_WARMUP_S = 0.5
DEFAULT_ROUNDS = 3
DEFAULT_CONCURRENCY = (1, 16)
TARGET_SLACK_MS = 1.0  # proxy p50 added at c1 <= sidecar Decide+ReportResult p50 + this
READY_TIMEOUT_S = 30.0
ARGS = {"query": "quarterly revenue by region", "limit": 10}
POLICY = """version: 1
access: {default: allow}
"""

_CLI = [sys.executable, "-m", "gateway.cli"]
_SERVER = [sys.executable, "-m", "bench.mcp_echo_server"]
_PASSTHROUGH = [sys.executable, "-m", "bench.mcp_passthrough"]
PASSTHROUGH_MARKER = "bench.mcp_passthrough"


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


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid_with(marker: str) -> int | None:
    """The process whose command line contains ``marker`` (a variant's unique state directory)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


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


async def _closed_loop(call: Callable[[], Awaitable[Any]], concurrency: int, duration_s: float, warmup_s: float) -> Any:
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
    return latencies, errors


@dataclass
class _Variant:
    """One thing measured: a way of making one call, and the proxy process whose CPU it costs (if any)."""

    name: str
    call: Callable[[], Awaitable[Any]]
    proxy_marker: str = ""
    latencies: list[float] = field(default_factory=list)
    window_s: float = 0.0
    errors: int = 0
    cpu_s: float = 0.0
    cpu_calls: int = 0

    def result(self) -> dict[str, Any]:
        out = {**_stats(self.latencies, self.window_s), "errors": self.errors}
        if self.proxy_marker:
            out["proxy_cpu_ms_per_call"] = round(self.cpu_s * 1000 / self.cpu_calls, 3) if self.cpu_calls else None
        return out


async def _interleaved(
    variants: list[_Variant], concurrency: int, duration_s: float, warmup_s: float, rounds: int
) -> None:
    """Each variant gets ``rounds`` windows of ``duration_s / rounds``, taking turns in a rotating order."""
    window = duration_s / rounds
    for r in range(rounds):
        for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
            pid = _pid_with(variant.proxy_marker) if variant.proxy_marker else None
            before = _cpu_s(pid) if pid is not None else None
            # The CPU window includes the warm-up, so it counts the warm-up's calls too (all of them).
            counted = [0]

            async def counting_call(call: Callable[[], Awaitable[Any]] = variant.call, n: list[int] = counted) -> Any:
                n[0] += 1
                return await call()

            latencies, errors = await _closed_loop(counting_call, concurrency, window, warmup_s / rounds)
            after = _cpu_s(pid) if pid is not None else None
            variant.latencies += latencies
            variant.window_s += window
            variant.errors += errors
            if before is not None and after is not None:
                variant.cpu_s += after - before
                variant.cpu_calls += counted[0]


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


def _sidecar_call(client: AsyncGatewayClient) -> Callable[[], Awaitable[None]]:
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

    return call


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


@dataclass(frozen=True)
class _Code:
    """Where a proxy's code comes from: this checkout, or a ``git archive`` of an earlier commit."""

    label: str
    root: Path

    def env(self) -> dict[str, str]:
        if self.root == ROOT:
            return dict(os.environ)
        path = os.pathsep.join([str(self.root), str(self.root / "clients" / "python" / "src")])
        return {**os.environ, "PYTHONPATH": path}


def _export(ref: str, into: Path) -> _Code:
    """The tree of ``ref`` in ``into`` (``git archive``), to run the proxy as it was there."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as tar_file:
        tar_file.write(archive)
        tar_file.seek(0)
        with tarfile.open(fileobj=tar_file) as tar:
            tar.extractall(into, filter="data")
    return _Code(f"proxied@{ref}", into)


@contextmanager
def _http_servers(sidecar: str, workdir: Path, codes: Sequence[_Code]) -> Iterator[tuple[str, list[str]]]:
    """The echo server over HTTP, the pass-through and one ``agentaudit mcp http`` per code in front of it:
    (direct URL, [pass-through URL, proxied URLs...])."""
    upstream = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack:
        log = stack.enter_context(open(workdir / "http.log", "ab"))
        procs.append(subprocess.Popen([*_SERVER, "http", str(upstream)], cwd=ROOT, stderr=log))
        direct = f"http://127.0.0.1:{upstream}/mcp"
        urls = []
        try:
            _wait(_listening(upstream), procs[0], "the echo server")
            passthrough = _free_port()
            procs.append(subprocess.Popen([*_PASSTHROUGH, "http", str(passthrough), direct], cwd=ROOT, stderr=log))
            _wait(_listening(passthrough), procs[-1], "the pass-through")
            urls.append(f"http://127.0.0.1:{passthrough}/mcp")
            for i, code in enumerate(codes):
                listen = _free_port()
                flags = [*_proxy_flags(sidecar, workdir / f"http-state-{i}"), "--listen", f"127.0.0.1:{listen}"]
                procs.append(
                    subprocess.Popen(
                        [*_CLI, "mcp", "http", *flags, "--upstream", direct],
                        cwd=code.root,
                        env=code.env(),
                        stderr=log,
                    )
                )
                _wait(_listening(listen), procs[-1], f"agentaudit mcp http ({code.label})")
                urls.append(f"http://127.0.0.1:{listen}/mcp")
            yield direct, urls
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(15)


def _stdio_targets(sidecar: str, workdir: Path, codes: Sequence[_Code]) -> tuple[Any, list[Any]]:
    direct = StdioServerParameters(command=_SERVER[0], args=[*_SERVER[1:], "stdio"], cwd=str(ROOT))
    passthrough = [*_PASSTHROUGH[1:], "stdio", "--", *_SERVER, "stdio"]
    proxied = [StdioServerParameters(command=_PASSTHROUGH[0], args=passthrough, cwd=str(ROOT))]
    for i, code in enumerate(codes):
        flags = _proxy_flags(sidecar, workdir / f"stdio-state-{i}")
        proxied.append(
            StdioServerParameters(
                command=_CLI[0],
                args=[*_CLI[1:], "mcp", "stdio", *flags, "--", *_SERVER, "stdio"],
                cwd=str(code.root),
                env=code.env(),
            )
        )
    return direct, proxied


async def _client_call(stack: AsyncExitStack, target: Any) -> Callable[[], Awaitable[Any]]:
    client = await stack.enter_async_context(Client(target, mode="legacy", cache=None))
    await client.list_tools()
    return lambda: client.call_tool("echo", ARGS)


async def _run(
    duration_s: float,
    warmup_s: float,
    concurrency: Sequence[int],
    progress: Callable[[str], None],
    rounds: int = DEFAULT_ROUNDS,
    compare: str | None = None,
) -> Any:
    result: dict[str, Any] = {
        "duration_s": duration_s,
        "concurrency": list(concurrency),
        "rounds": rounds,
        "load_average_start": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory(prefix="agentaudit-bench-mcp-") as tmp_name:
        tmp = Path(tmp_name)
        codes = [_Code("proxied", ROOT)]
        if compare:
            codes.append(_export(compare, tmp / "compare"))
            result["compare"] = compare
        result["variants"] = [c.label for c in codes]
        with _sidecar(tmp / "sidecar") as sidecar:
            await _until_deciding(sidecar)
            gateway = AsyncGatewayClient(sidecar, timeout=10)
            try:
                for transport in ("stdio", "http"):
                    with ExitStack() as processes:
                        if transport == "http":
                            direct, proxied = processes.enter_context(_http_servers(sidecar, tmp, codes))
                            markers = [str(tmp / f"http-state-{i}") for i in range(len(codes))]
                        else:
                            direct, proxied = _stdio_targets(sidecar, tmp, codes)
                            markers = [str(tmp / f"stdio-state-{i}") for i in range(len(codes))]
                        async with AsyncExitStack() as sessions:
                            calls = [await _client_call(sessions, t) for t in (direct, *proxied)]
                            for n in concurrency:
                                progress(f"mcp: {transport} c{n}: sidecar D+R, direct, {', '.join(result['variants'])}")
                                variants = [_Variant("sidecar", _sidecar_call(gateway)), _Variant("direct", calls[0])]
                                variants.append(_Variant("passthrough", calls[1], PASSTHROUGH_MARKER))
                                variants += [
                                    _Variant(c.label, call, marker)
                                    for c, call, marker in zip(codes, calls[2:], markers, strict=True)
                                ]
                                await _interleaved(variants, n, duration_s, warmup_s, rounds)
                                row = {v.name: v.result() for v in variants}
                                for label in ("passthrough", *(c.label for c in codes)):
                                    row[label]["added_p50_ms"] = _delta(row[label], row["direct"], "p50_ms")
                                    row[label]["added_p99_ms"] = _delta(row[label], row["direct"], "p99_ms")
                                for c in codes:
                                    row[c.label]["over_passthrough_p50_ms"] = _delta(
                                        row[c.label], row["passthrough"], "p50_ms"
                                    )
                                result.setdefault(transport, {})[f"c{n}"] = row
            finally:
                await gateway.aclose()
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    result["target_met"] = {}
    for transport in ("stdio", "http"):
        c1 = result[transport].get("c1")
        if c1 is None:
            continue
        base = c1["sidecar"]["p50_ms"]
        target = round(base + TARGET_SLACK_MS, 3) if base is not None else None
        c1["target_p50_ms"] = target
        result["target_met"][transport] = _met(c1["proxied"]["added_p50_ms"], target)
    return result


def _delta(row: dict[str, Any], base: dict[str, Any], key: str) -> float | None:
    a, b = row[key], base[key]
    return round(a - b, 3) if a is not None and b is not None else None


def _met(added: float | None, target: float | None) -> bool | None:
    return None if added is None or target is None else added <= target


def run(
    duration_s: float = DEFAULT_DURATION_S,
    warmup_s: float = DEFAULT_WARMUP_S,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    progress: Callable[[str], None] = lambda message: None,
    rounds: int = DEFAULT_ROUNDS,
    compare: str | None = None,
) -> dict[str, Any]:
    """Measures everything above; never raises for a failed measurement (the result says ``error``)."""
    try:
        return asyncio.run(_run(duration_s, warmup_s, concurrency, progress, rounds, compare))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def format_result(result: dict[str, Any]) -> str:
    """The table ``make bench`` prints."""
    if "error" in result:
        return f"MCP proxy per tools/call: skipped ({result['error']})"
    lines = [
        "MCP proxy per tools/call (proxied vs direct, same server, same run, interleaved "
        f"{result['rounds']} rounds; load average {result['load_average_start']:.1f} -> "
        f"{result['load_average_end']:.1f})"
    ]
    head = f"  {'':22}{'conc':>5}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}{'CPU ms':>8}"
    lines.append(head)
    for transport in ("stdio", "http"):
        for level in result["concurrency"]:
            row = result[transport][f"c{level}"]
            for side in ("sidecar", "direct", "passthrough", *result["variants"]):
                r = row[side]
                added = (_f(r["added_p50_ms"], "+") + _f(r["added_p99_ms"], "+")) if "added_p50_ms" in r else " " * 18
                cpu = r.get("proxy_cpu_ms_per_call")
                cpu_text = f"{cpu:>8.2f}" if cpu is not None else ""
                name = "sidecar D+R" if side == "sidecar" else f"{transport} {side}"
                lines.append(
                    f"  {name:22}{level:>5}{r['calls_per_s']:>10.1f}{_f(r['p50_ms'])}{_f(r['p99_ms'])}{added}{cpu_text}"
                )
    for transport in ("stdio", "http"):
        c1 = result[transport].get("c1")
        if c1 is None:
            continue
        met = result["target_met"][transport]
        verdict = "met" if met else ("NOT met" if met is False else "n/a")
        through = c1["passthrough"]
        lines.append(
            f"  {transport} passthrough (an SDK hop, no governing): added at c1 p50 "
            f"{_f(through['added_p50_ms'], '+').strip()} ms, p99 {_f(through['added_p99_ms'], '+').strip()} ms"
        )
        for side in result["variants"]:
            lines.append(
                f"  {transport} {side}: added at c1 p50 {_f(c1[side]['added_p50_ms'], '+').strip()} ms, "
                f"p99 {_f(c1[side]['added_p99_ms'], '+').strip()} ms; over the pass-through p50 "
                f"{_f(c1[side]['over_passthrough_p50_ms'], '+').strip()} ms"
            )
        lines.append(
            f"  {transport}: target p50 added <= sidecar D+R p50 + {TARGET_SLACK_MS:g} ms = "
            f"{_f(c1['target_p50_ms']).strip()} ms: {verdict}"
        )
    return "\n".join(lines)


def _f(value: float | None, sign: str = "") -> str:
    return f"{'-' if value is None else format(value, sign + '.2f'):>9}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mcp_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S, help="discarded seconds per point")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="windows per variant, interleaved")
    parser.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)), help="e.g. 1,16")
    parser.add_argument("--compare", metavar="REF", help="also measure the proxy as it was at this git commit")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    result = run(
        args.duration,
        args.warmup,
        levels,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
        rounds=args.rounds,
        compare=args.compare,
    )
    print(format_result(result))
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
