"""Coding-agent hook wall time and framework adapter overhead, against a real `agentaudit dev` sidecar.

``python -m bench.integrations [--hook-calls N] [--tool-calls N] [--compare REF] [--skip-adapters]``

1. Hook: runs ``agentaudit hook claude-code`` as Claude Code does (a new process, the PreToolUse JSON on stdin),
   then the PostToolUse for the same tool-use id, N times; each is timed from process start to its answer. Then
   the PreToolUse with no sidecar listening (the fail-closed deny). Target: p50 under 100 ms. Timed alongside,
   in turn with every hook call: ``python -c pass`` (the floor of any Python hook), ``python -c "import grpc,
   agentaudit.v1.gateway_pb2_grpc"`` (the floor of any hook that calls the sidecar through gRPC and the
   generated code, as the hook did before docs/adr/0026) and ``python -c "import h2.connection,
   agentaudit_client.hooks.wire"`` (the floor of the hook's own transport). With ``--compare REF`` the hook
   as it was at that commit (``git archive``, run through ``PYTHONPATH``) takes turns with this checkout's, call
   by call. Python is made to find compiled bytecode for the hook's modules first (``compileall``, what ``pip
   install`` does for a wheel), since an environment with ``PYTHONDONTWRITEBYTECODE`` (this machine's) would
   otherwise compile them again in every hook process;
   ``--as-found`` measures without.
2. Adapter: the same OpenAI Agents SDK run (the SDK's ScriptedModel, N sequential tool calls) without and with
   ``AgentsGovernor``; the per-call difference is set against the client's own decide + report per call.
   Target: within 1 ms of it.

Prints a table on stderr and, as its last line, the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import devenv

ROOT = Path(__file__).resolve().parent.parent
ALLOW_ALL = {
    "version": 1,
    "access": {"roles": {"all": {"actions": ["*"]}}, "bindings": [{"name": "all", "roles": ["all"]}]},
}
HOOK_TARGET_P50_MS = 100.0
ADAPTER_TARGET_MS = 1.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _start_sidecar(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    devenv.prepare(directory, None, {})
    (directory / "policy.yaml").write_text(yaml.safe_dump(ALLOW_ALL))
    sock = f"unix://{directory / 'gateway.sock'}"
    env = {**os.environ, "AGENTAUDIT_FORWARD_TARGET": ""}
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "dev",
        "--dir",
        str(directory),
        "--listen",
        sock,
        "--operator-listen",
        f"unix://{directory / 'operator.sock'}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(sock) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, sock
        except grpc.RpcError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the sidecar did not start")


def _timed(cmd: list[str], stdin: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    return (time.perf_counter() - started) * 1000


def _export(ref: str, into: Path) -> Path:
    """The tree of ``ref`` in ``into`` (``git archive``), to run the hook as it was there."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as tar_file:
        tar_file.write(archive)
        tar_file.seek(0)
        with tarfile.open(fileobj=tar_file) as tar:
            tar.extractall(into, filter="data")
    return into


def _compile(root: Path) -> None:
    """Bytecode for the hook path's packages under ``root``, as ``pip install`` writes it for a wheel."""
    for package in (root / "gateway", root / "clients" / "python" / "src"):
        compileall.compile_dir(package, quiet=1)


def _hook_env(root: Path, sidecar: str) -> dict[str, str]:
    env = {**os.environ, "AGENTAUDIT_SIDECAR": sidecar, "AGENTAUDIT_TENANT_ID": "t_bench"}
    if root != ROOT:
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "clients" / "python" / "src")])
    return env


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values), 1), "p99_ms": round(_percentile(values, 0.99), 1)}


def bench_hook(
    sock: str, project: Path, calls: int, compare: str | None = None, as_found: bool = False
) -> dict[str, Any]:
    """Wall time per hook process in milliseconds: pre and post with the sidecar up, pre with it down."""
    agentaudit = Path(sys.executable).parent / "agentaudit"
    cmd = (
        [str(agentaudit), "hook", "claude-code"]
        if agentaudit.exists()
        else [sys.executable, "-m", "gateway.cli", "hook", "claude-code"]
    )
    with tempfile.TemporaryDirectory(prefix="aa-bench-hook-") as tmp:
        codes = {"hook": ROOT}
        if compare:
            codes[f"hook@{compare}"] = _export(compare, Path(tmp) / "compare")
        if not as_found:
            for root in codes.values():
                _compile(root)
        nowhere = f"unix://{Path(tmp) / 'no-sidecar.sock'}"
        times: dict[str, list[float]] = {}
        floors = {
            "python_floor": [sys.executable, "-c", "pass"],
            "grpc_stubs_floor": [sys.executable, "-c", "import grpc, agentaudit.v1.gateway_pb2_grpc"],
            "h2_wire_floor": [sys.executable, "-c", "import h2.connection, agentaudit_client.hooks.wire"],
        }
        for i in range(calls):
            base = {
                "session_id": "bench",
                "cwd": str(project),
                "tool_name": "Bash",
                "tool_input": {"command": f"echo {i}"},
            }
            # Each code's turn comes first in alternate iterations, so neither always follows the other.
            order = list(codes.items()) if i % 2 == 0 else list(codes.items())[::-1]
            for label, root in order:
                up, down = _hook_env(root, sock), _hook_env(root, nowhere)
                pre = {**base, "tool_use_id": f"toolu_{label}_{i}", "hook_event_name": "PreToolUse"}
                post = {**pre, "hook_event_name": "PostToolUse", "tool_response": {"stdout": str(i)}}
                times.setdefault(f"{label} pre", []).append(_timed(cmd, json.dumps(pre), up))
                times.setdefault(f"{label} post", []).append(_timed(cmd, json.dumps(post), up))
                times.setdefault(f"{label} pre, sidecar down", []).append(_timed(cmd, json.dumps(pre), down))
            for name, floor in floors.items():
                times.setdefault(name, []).append(_timed(floor, "", os.environ.copy()))
    summary: dict[str, Any] = {name: _summary(v) for name, v in times.items()}
    summary["bytecode"] = "as found" if as_found else "compiled first"
    summary["target_p50_ms"] = HOOK_TARGET_P50_MS
    summary["met"] = summary["hook pre"]["p50_ms"] < HOOK_TARGET_P50_MS
    return summary


async def _agents_run(sock: str, calls: int, governed: bool) -> float:
    from agents import Agent, RunConfig, Runner, function_tool  # noqa: PLC0415
    from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call  # noqa: PLC0415

    from agentaudit_client import AsyncGatewayClient  # noqa: PLC0415
    from agentaudit_client.integrations.openai_agents import AgentsGovernor  # noqa: PLC0415

    @function_tool
    def lookup(customer_id: str) -> dict[str, str]:
        """Looks a customer up."""
        return {"customer_id": customer_id}

    steps = [
        ModelStep(output=[function_call("lookup", {"customer_id": f"c{i}"}, call_id=f"c{i}")]) for i in range(calls)
    ]
    model = ScriptedModel([*steps, ModelStep(output=[assistant_message("done")])])
    agent = Agent(name="bench", model=model, tools=[lookup])
    async with AsyncGatewayClient(sock) as client:
        if governed:
            AgentsGovernor(client, "t_bench", "bench-agent").govern(agent)
        started = time.perf_counter()
        await Runner.run(agent, "go", max_turns=calls + 2, run_config=RunConfig(tracing_disabled=True))
        return (time.perf_counter() - started) * 1000


async def _client_cost(sock: str, calls: int) -> float:
    from agentaudit_client import AsyncGatewayClient  # noqa: PLC0415

    async with AsyncGatewayClient(sock) as client:
        run = client.run("bench_client", tenant_id="t_bench", agent_id="bench-agent")
        started = time.perf_counter()
        for i in range(calls):
            decision = await run.decide("lookup", {"customer_id": f"c{i}"})
            await client.report_result(decision.event_id, output={"customer_id": f"c{i}"})
        return (time.perf_counter() - started) * 1000 / calls


def bench_adapter(sock: str, calls: int) -> dict[str, Any]:
    """Per-call overhead of the OpenAI Agents SDK adapter against the client's own decide + report."""
    asyncio.run(_agents_run(sock, 5, governed=True))  # warm up imports and the channel
    bare = asyncio.run(_agents_run(sock, calls, governed=False))
    governed = asyncio.run(_agents_run(sock, calls, governed=True))
    client = asyncio.run(_client_cost(sock, calls))
    per_call = (governed - bare) / calls
    return {
        "openai_agents": {
            "per_call_overhead_ms": round(per_call, 3),
            "client_decide_report_ms": round(client, 3),
            "adapter_over_client_ms": round(per_call - client, 3),
            "target_ms": ADAPTER_TARGET_MS,
            "met": per_call - client <= ADAPTER_TARGET_MS,
        }
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hook-calls", type=int, default=50)
    parser.add_argument("--tool-calls", type=int, default=100)
    parser.add_argument("--compare", metavar="REF", help="also time the hook as it was at this git commit")
    parser.add_argument("--as-found", action="store_true", help="do not compile the hook's bytecode first")
    parser.add_argument("--skip-adapters", action="store_true", help="time the hook only")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="aa-bench-") as tmp:
        directory = Path(tmp)
        proc, sock = _start_sidecar(directory / "sidecar")
        project = directory / "project"
        (project / ".agentaudit").mkdir(parents=True)
        try:
            figures: dict[str, Any] = {
                "hook_claude_code": bench_hook(sock, project, args.hook_calls, args.compare, args.as_found)
            }
            if not args.skip_adapters:
                figures["adapters"] = bench_adapter(sock, args.tool_calls)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
    figures["load_average"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    hook = figures["hook_claude_code"]
    print(
        f"hook claude-code, {args.hook_calls} calls, bytecode {hook['bytecode']}, load average "
        f"{figures['load_average'][0]} -> {figures['load_average'][1]}",
        file=sys.stderr,
    )
    for name, row in hook.items():
        if isinstance(row, dict):
            print(f"  {name:40} p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms", file=sys.stderr)
    if "adapters" in figures:
        oa = figures["adapters"]["openai_agents"]
        print(
            f"openai-agents     {oa['per_call_overhead_ms']} ms/call vs client {oa['client_decide_report_ms']} ms/call",
            file=sys.stderr,
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
