"""Where the MCP proxy's CPU per ``tools/call`` goes: ``agentaudit mcp`` profiled with yappi's CPU clock.

Run as ``python -m bench.mcp_profile [--calls N] [--transport stdio|http|both]`` (needs ``pip install yappi``;
not part of ``make bench``). In one run: a real sidecar (as ``bench.mcp_proxy``), then per transport the same SDK
client making N sequential ``tools/call`` directly to ``bench.mcp_echo_server`` and N through ``agentaudit mcp``
run under ``bench.mcp_yappi``. After a warm-up the proxy's profile is cleared (SIGUSR1), so it covers the measured
calls only. It prints, per transport: the direct and proxied p50, the proxy's CPU per call from ``/proc``
(user + system over the measured calls, profiler included, so higher than in ``bench.mcp_proxy``), and yappi's
own CPU time of every function grouped by the component its file belongs to, as a share and as ms per call scaled
to the unprofiled CPU per call measured by ``bench.mcp_proxy`` when ``--unprofiled-cpu-ms`` is given.

A sampling profiler (py-spy) is the wrong tool on a loaded machine: it counts a thread that is runnable but not
running (waiting for a core) as busy, so under a load average of 10 its "CPU" is mostly the run queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from bench.mcp_proxy import (
    _SERVER,
    ARGS,
    ROOT,
    _cpu_s,
    _free_port,
    _listening,
    _pid_with,
    _proxy_flags,
    _sidecar,
    _until_deciding,
    _wait,
)

WARMUP_CALLS = 100
_WRAPPERS = {"yappi": [sys.executable, "-m", "bench.mcp_yappi"], "spans": [sys.executable, "-m", "bench.mcp_spans"]}
# A function's own CPU goes to the first component whose pattern its file path contains.
COMPONENTS = (
    ("sidecar client: grpc.aio, protobuf, agentaudit_client", ("grpc/", "grpc\\", "agentaudit_client", "protobuf")),
    ("proxy logic (gateway/mcp, gateway/canonical)", ("gateway/",)),
    ("MCP types: pydantic parse, validate, dump", ("mcp_types", "pydantic")),  # pydantic_core builtins too
    ("SDK client session and transports (upstream side)", ("mcp/client/",)),
    ("SDK server runner, session, dispatcher", ("mcp/server/", "mcp/shared/")),
    ("HTTP server: uvicorn, h11, starlette, SSE", ("uvicorn/", "h11/", "starlette/", "sse_starlette/")),
    ("HTTP client: httpx2, httpcore2", ("httpx2/", "httpcore2/")),
    ("anyio: memory streams, task groups, cancel scopes", ("anyio/", "sniffio/")),
    ("asyncio: event loop, transports, syscalls", ("asyncio/", "selectors.py", "socket.py", "~")),
    ("OpenTelemetry (no-op spans)", ("opentelemetry/",)),
    ("Python builtins and stdlib, called from all of the above", ("builtins", "python3.", "<frozen", "_asyncio")),
)


async def _calls(target: Any, calls: int, marker: str = "") -> tuple[list[float], float | None]:
    async with Client(target, mode="legacy", cache=None) as client:
        await client.list_tools()
        for _ in range(WARMUP_CALLS):
            await client.call_tool("echo", ARGS)
        pid = _pid_with(marker) if marker else None
        if pid is not None:
            os.kill(pid, signal.SIGUSR1)  # clear the warm-up from the profile
            await asyncio.sleep(0.2)
        cpu0 = _cpu_s(pid) if pid is not None else None
        latencies = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await client.call_tool("echo", ARGS)
            latencies.append(time.perf_counter() - t0)
        cpu1 = _cpu_s(pid) if pid is not None else None
    cpu = (cpu1 - cpu0) / calls if cpu0 is not None and cpu1 is not None else None
    return latencies, cpu


def components(stats_file: Path) -> list[tuple[str, float]]:
    """yappi's per-function own CPU → seconds per component."""
    totals: Counter[str] = Counter()
    for line in stats_file.read_text().splitlines():
        module, name, _calls, own, _total = line.split("\t")
        path = module.replace("\\", "/") + " " + name  # a builtin's name says whose it is (pydantic_core...)
        group = next((name for name, needles in COMPONENTS if any(n in path for n in needles)), "other")
        totals[group] += float(own)
    return [(name, totals[name]) for name in [*(n for n, _ in COMPONENTS), "other"]]


@contextmanager
def _http(sidecar: str, workdir: Path, stats: Path, wrapper: list[str]) -> Iterator[tuple[str, str, str]]:
    upstream, listen = _free_port(), _free_port()
    state = workdir / "http-profile-state"
    with open(workdir / "http.log", "ab") as log:
        server = subprocess.Popen([*_SERVER, "http", str(upstream)], cwd=ROOT, stderr=log)
        direct = f"http://127.0.0.1:{upstream}/mcp"
        flags = [*_proxy_flags(sidecar, state), "--listen", f"127.0.0.1:{listen}"]
        proxy = subprocess.Popen(
            [*wrapper, str(stats), "-m", "gateway.cli", "mcp", "http", *flags, "--upstream", direct],
            cwd=ROOT,
            stderr=log,
        )
    try:
        _wait(_listening(upstream), server, "the echo server")
        _wait(_listening(listen), proxy, "agentaudit mcp http")
        yield direct, f"http://127.0.0.1:{listen}/mcp", str(state)
    finally:
        proxy.terminate()
        proxy.wait(30)
        server.terminate()
        server.wait(15)


async def _profile(transport: str, sidecar: str, workdir: Path, calls: int, out: Path, mode: str) -> dict[str, Any]:
    wrapper = _WRAPPERS[mode]
    stats = out / f"mcp-proxy-{transport}.{mode}.{'json' if mode == 'spans' else 'tsv'}"
    stats.unlink(missing_ok=True)
    if transport == "stdio":
        state = workdir / "stdio-profile-state"
        direct: Any = StdioServerParameters(command=_SERVER[0], args=[*_SERVER[1:], "stdio"], cwd=str(ROOT))
        flags = _proxy_flags(sidecar, state)
        proxied: Any = StdioServerParameters(
            command=wrapper[0],
            args=[*wrapper[1:], str(stats), "-m", "gateway.cli", "mcp", "stdio", *flags, "--", *_SERVER, "stdio"],
            cwd=str(ROOT),
        )
        d, _ = await _calls(direct, calls)
        p, cpu = await _calls(proxied, calls, str(state))
    else:
        with _http(sidecar, workdir, stats, wrapper) as (direct_url, proxied_url, marker):
            d, _ = await _calls(direct_url, calls)
            p, cpu = await _calls(proxied_url, calls, marker)
    deadline = time.monotonic() + 30
    while not stats.exists() and time.monotonic() < deadline:  # noqa: ASYNC110 - written at the proxy's exit
        await asyncio.sleep(0.1)
    return {
        "direct_p50_ms": statistics.median(d) * 1000,
        "proxied_p50_ms": statistics.median(p) * 1000,
        "proxy_cpu_ms_per_call": cpu * 1000 if cpu is not None else None,
        "components": components(stats) if stats.exists() and mode == "yappi" else [],
        "spans": _spans(stats, statistics.median(d), statistics.median(p))
        if stats.exists() and mode == "spans"
        else [],
    }


def _spans(stats: Path, direct_s: float, proxied_s: float) -> list[tuple[str, float]]:
    """The proxy's stage medians and what the client saw → where the added p50 goes, in ms."""
    spans = {k: statistics.median(v) if v else 0.0 for k, v in json.loads(stats.read_text()).items()}
    handler, decide, upstream, report = (spans[k] for k in ("handler", "decide", "upstream", "report"))
    # The ReportResult is queued on the Session stream beside the answer: it is timed (until queued), in the handler.
    own = handler - decide - upstream - report
    rows = [
        ("client -> proxy -> client: hop, transport, SDK server (outside the handler)", proxied_s - handler),
        ("  handler: Decide (sidecar round trip on the Session stream)", decide),
        ("  handler: upstream tools/call (second MCP hop and the server)", upstream),
        ("  handler: the proxy's own work (identity, labels, digest, mapping, waits)", own),
        ("  handler: ReportResult queued on the stream (its round trip is beside the answer)", report),
        ("proxied p50 as the client saw it", proxied_s),
        ("direct p50 (client -> server -> client)", direct_s),
        ("added p50 = proxied - direct", proxied_s - direct_s),
        ("  of which the Decide", decide),
        ("  of which the second hop (upstream call - direct call)", upstream - direct_s),
        ("  of which the proxy (outside the handler + its own work)", proxied_s - handler + own),
    ]
    return [(name, seconds * 1000) for name, seconds in rows]


async def _main(calls: int, transports: list[str], out: Path, unprofiled: dict[str, float], mode: str) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="agentaudit-prof-mcp-") as tmp, _sidecar(Path(tmp) / "sidecar") as sc:
        await _until_deciding(sc)
        for transport in transports:
            r = await _profile(transport, sc, Path(tmp), calls, out, mode)
            cpu = r["proxy_cpu_ms_per_call"]
            print(
                f"{transport}: direct p50 {r['direct_p50_ms']:.2f} ms, proxied p50 {r['proxied_p50_ms']:.2f} ms "
                f"(profiled), proxy CPU {cpu:.2f} ms/call profiled"
                if cpu is not None
                else f"{transport}: proxy CPU n/a"
            )
            for name, ms in r["spans"]:
                print(f"  {name:72}{ms:8.2f} ms")
            total = sum(seconds for _, seconds in r["components"]) or 1.0
            scale = unprofiled.get(transport)
            for name, seconds in r["components"]:
                share = seconds / total
                scaled = f"{share * scale:8.3f} ms/call" if scale else ""
                print(f"  {name:54}{share * 100:6.1f} %{scaled}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mcp_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--transport", choices=["stdio", "http", "both"], default="both")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--mode", choices=["yappi", "spans"], default="yappi", help="CPU by component, or wall time by stage"
    )
    parser.add_argument(
        "--unprofiled-cpu-ms",
        default="",
        metavar="stdio=MS,http=MS",
        help="the proxy CPU per call bench.mcp_proxy measured, to express shares in ms",
    )
    args = parser.parse_args()
    transports = ["stdio", "http"] if args.transport == "both" else [args.transport]
    unprofiled = {k: float(v) for k, v in (item.split("=") for item in args.unprofiled_cpu_ms.split(",") if item)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    asyncio.run(_main(args.calls, transports, Path(args.out), unprofiled, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
