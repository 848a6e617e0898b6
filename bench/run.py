"""Runs the benchmark: the real sidecar's Decide against a bare gRPC echo server, on this machine.

``python -m bench.run [--duration S] [--warmup S] [--concurrency 1,16,64] [--only echo|decide|observed]``

For each target in turn (never both at once, so they do not compete for the CPU) it starts the server as a
subprocess, waits for its gRPC health check to answer SERVING, runs ``bench.loadgen`` in a separate process
at each concurrency, then stops the server with SIGTERM (SIGKILL after 10 s). It prints a table and the
Decide/echo ratios, writes every figure to ``bench/results/latest.json`` and, as its very last line, prints
the same figures as one JSON object. Progress and diagnostics go to stderr. The exit status is 1 when a server
could not be started or a measurement produced no successful request.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import adapters, collector_ingest, console, fleet, mcp_proxy, policy_eval, redaction, shared_limits

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
RESULTS_PATH = RESULTS_DIR / "latest.json"

TARGETS = ("echo", "decide", "observed")
DEFAULT_CONCURRENCY = (1, 16, 64)
DEFAULT_DURATION_S = 5.0
DEFAULT_WARMUP_S = 1.0
DURATION_ENV = "BENCH_DURATION"

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# Beyond warm-up and duration, what a loadgen may spend connecting and on its last, slowest call.
LOADGEN_SLACK_S = 30.0

# Informational targets, shown next to the ratios; they never fail the run.
# Issue 20's targets (it supersedes issue 4's 0.75 and 1.5: the c64 ratio is a step towards 0.9, the c1 delta stricter).
THROUGHPUT_RATIO_TARGET = 0.5  # decide rps / echo rps at the highest concurrency
P50_DELTA_TARGET_MS = 0.8  # decide p50 - echo p50 at concurrency 1

_LOG_TAIL_LINES = 20


class ServerStartError(Exception):
    """A benchmarked server exited or did not answer SERVING in time."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one benchmarked server listening on a unix socket inside ``workdir``."""

    name: str
    argv: list[str]
    address: str
    log_path: Path
    env: dict[str, str] | None = None  # extra environment for the server
    helper_argv: list[str] | None = None  # a process the server needs (started first, stopped after)


def echo_spec(workdir: Path) -> ServerSpec:
    """The bare echo server (``bench.echo_server``), run with this interpreter."""
    address = f"unix://{workdir / 'echo.sock'}"
    argv = [sys.executable, "-m", "bench.echo_server", "--listen", address]
    return ServerSpec("echo", argv, address, RESULTS_DIR / "echo-server.log")


def decide_spec(workdir: Path) -> ServerSpec:
    """The real sidecar in dev mode: it creates its keys, example policy and journal in ``workdir``."""
    address = f"unix://{workdir / 'gateway.sock'}"
    # The CLI installed next to this interpreter, i.e. the project's venv, not whatever is first on PATH.
    cli = Path(sys.executable).parent / "agentaudit"
    argv = [str(cli), "dev", "--dir", str(workdir), "--listen", address]
    # Forwarding off: `dev` would otherwise run an embedded collector in the same process, competing for the
    # CPU being measured. In production the collector is elsewhere; its ingest is measured separately below.
    env = {"AGENTAUDIT_FORWARD_TARGET": ""}
    return ServerSpec("decide", argv, address, RESULTS_DIR / "decide-server.log", env)


def observed_spec(workdir: Path) -> ServerSpec:
    """``decide`` with every operations feature on: /metrics served, and a span per RPC exported over OTLP.

    The agent sends no traceparent, so each request starts a trace, sampled at ratio 1: the worst case. The
    spans go to ``bench.otlp_sink`` (a receiver that only counts), which runs beside the sidecar.
    """
    spec = decide_spec(workdir)
    sink = f"127.0.0.1:{_free_port()}"
    env = {
        **(spec.env or {}),
        "AGENTAUDIT_METRICS_LISTEN": "127.0.0.1:0",
        "AGENTAUDIT_TELEMETRY_OTLP_ENDPOINT": sink,
    }
    helper = [sys.executable, "-m", "bench.otlp_sink", "--listen", sink]
    return ServerSpec("observed", spec.argv, spec.address, RESULTS_DIR / "observed-server.log", env, helper)


def limits_local_spec(workdir: Path) -> ServerSpec:
    """``decide`` under a policy of three limits kept in the process (bench.shared_limits)."""
    spec = decide_spec(workdir)
    shared_limits.prepare(workdir)
    return ServerSpec("limits_local", spec.argv, spec.address, RESULTS_DIR / "limits-local-server.log", spec.env)


def limits_redis_spec(workdir: Path) -> ServerSpec:
    """The same policy with its limits in Redis: one reserve script per Decide."""
    spec = decide_spec(workdir)
    shared_limits.prepare(workdir)
    env = {**(spec.env or {}), **shared_limits.store_env()}
    return ServerSpec("limits_redis", spec.argv, spec.address, RESULTS_DIR / "limits-redis-server.log", env)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


SPECS = {
    "echo": echo_spec,
    "decide": decide_spec,
    "observed": observed_spec,
    "limits_local": limits_local_spec,
    "limits_redis": limits_redis_spec,
}


@dataclass
class ServerReport:
    """What happened to a server process, for the results."""

    startup_s: float | None = None
    exit_code: int | None = None
    killed: bool = False


@contextlib.contextmanager
def running_server(spec: ServerSpec, report: ServerReport) -> Iterator[None]:
    """Starts the server, yields once it is SERVING, and always stops it (SIGTERM, then SIGKILL)."""
    started = time.monotonic()
    with spec.log_path.open("wb") as log, contextlib.ExitStack() as helpers:
        if spec.helper_argv:
            helper = subprocess.Popen(spec.helper_argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            helpers.callback(stop, helper)
        try:
            # Output goes to a file, never a pipe nobody reads: a full pipe would stall the server mid-run.
            env = {**os.environ, **(spec.env or {})}
            process = subprocess.Popen(spec.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            raise ServerStartError(f"{spec.name}: cannot run {spec.argv[0]}: {exc}") from exc
        try:
            wait_until_serving(spec, process)
            report.startup_s = round(time.monotonic() - started, 3)
            yield
        finally:
            report.exit_code, report.killed = stop(process)


def wait_until_serving(spec: ServerSpec, process: subprocess.Popen[bytes]) -> None:
    """Polls ``grpc.health.v1.Health/Check`` (service "") until SERVING, the process exits, or 30 s pass."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    # Short reconnect backoff: the socket does not exist until the server binds it, and gRPC's default
    # backoff (1 s, growing) would add seconds to every start.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 250),
    ]
    last = "no answer"
    with grpc.insecure_channel(spec.address, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise ServerStartError(
                    f"{spec.name} exited with status {process.returncode} before serving\n{log_tail(spec)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerStartError(
                    f"{spec.name} not SERVING within {READY_TIMEOUT_S:.0f} s (last: {last})\n{log_tail(spec)}"
                )
            try:
                # wait_for_ready: block until connected (bounded by the timeout) instead of failing at once.
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=min(1.0, remaining),
                    wait_for_ready=True,
                )
            except grpc.RpcError as exc:
                last = exc.code().name
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            time.sleep(0.05)  # poll interval, so an immediate refusal does not spin


def stop(process: subprocess.Popen[bytes]) -> tuple[int, bool]:
    """Sends SIGTERM, waits up to 10 s, then SIGKILL; returns the exit status and whether it was killed."""
    if process.poll() is not None:
        return process.returncode, False
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S), False
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(), True


def log_tail(spec: ServerSpec) -> str:
    """The last lines of a server's log, to explain a failure."""
    try:
        lines = spec.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {spec.log_path})"
    tail = "\n".join(f"  | {line}" for line in lines[-_LOG_TAIL_LINES:])
    return f"last lines of {spec.log_path}:\n{tail}" if tail else f"({spec.log_path} is empty)"


def measure(address: str, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Runs one ``bench.loadgen`` process and returns its result (or ``{"error": ...}``)."""
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--target",
        address,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration_s),
        "--warmup",
        str(warmup_s),
    ]
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
            timeout=warmup_s + duration_s + LOADGEN_SLACK_S,
        )
    except subprocess.TimeoutExpired:
        return {"error": "load generator timed out"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        stderr_tail = "\n".join(done.stderr.strip().splitlines()[-_LOG_TAIL_LINES:])
        return {"error": f"load generator exited with status {done.returncode}: {stderr_tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    result.pop("target", None)  # a temporary socket path: noise in the results
    return result


def run_target(
    name: str, concurrency: Sequence[int], duration_s: float, warmup_s: float, report: ServerReport
) -> dict[str, Any]:
    """Starts one server in a fresh temporary directory and measures it at every concurrency."""
    results: dict[str, Any] = {}
    # Short path: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="agentaudit-bench-") as tmp:
        spec = SPECS[name](Path(tmp))
        progress(f"starting {name}: {' '.join(spec.argv)}")
        try:
            with running_server(spec, report):
                progress(f"{name} serving after {report.startup_s:.2f} s")
                for level in concurrency:
                    progress(f"measuring {name} at concurrency {level} ({warmup_s:g} s warm-up, {duration_s:g} s)")
                    results[f"c{level}"] = measure(spec.address, level, duration_s, warmup_s)
        except ServerStartError as exc:
            progress(f"error: {exc}")
            return {"error": str(exc).split("\n", 1)[0]}
        progress(f"{name} stopped (exit status {report.exit_code}{', killed' if report.killed else ''})")
    return results


def measure_shared_limits(duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Decide with limits in-process, then in Redis, one server at a time (bounded: see bench.shared_limits)."""
    problem = shared_limits.unavailable()
    if problem:
        progress(f"skipping shared limits: {problem}")
        return {"skipped": problem}
    duration_s = min(duration_s, shared_limits.MAX_DURATION_S)
    levels = shared_limits.CONCURRENCY
    result: dict[str, Any] = {"concurrency": list(levels), "duration_s": duration_s}
    try:
        for name in ("limits_local", "limits_redis"):
            result[name] = run_target(name, levels, duration_s, warmup_s, ServerReport())
    finally:
        progress(f"deleted {shared_limits.cleanup()} Redis keys of the run")
    result["redis_over_local"] = shared_limits.compare(result["limits_local"], result["limits_redis"], levels)
    return result


def compute_ratios(echo: dict[str, Any], decide: dict[str, Any], concurrency: Sequence[int]) -> dict[str, Any]:
    """Decide/echo throughput and p50 difference at each concurrency, and the two informational targets."""
    throughput: dict[str, float | None] = {}
    p50_delta: dict[str, float | None] = {}
    for level in concurrency:
        key = f"c{level}"
        e, d = echo.get(key, {}), decide.get(key, {})
        throughput[key] = round(d["rps"] / e["rps"], 3) if e.get("rps") and "rps" in d else None
        both = e.get("p50_ms") is not None and d.get("p50_ms") is not None
        p50_delta[key] = round(d["p50_ms"] - e["p50_ms"], 3) if both else None
    top, bottom = f"c{max(concurrency)}", f"c{min(concurrency)}"
    ratio, delta = throughput[top], p50_delta[bottom]
    return {
        "throughput_decide_over_echo": throughput,
        "p50_delta_ms": p50_delta,
        "targets": {
            f"throughput_ratio_{top}": {
                "target": f">= {THROUGHPUT_RATIO_TARGET}",
                "value": ratio,
                "met": None if ratio is None else ratio >= THROUGHPUT_RATIO_TARGET,
            },
            f"p50_delta_ms_{bottom}": {
                "target": f"<= {P50_DELTA_TARGET_MS}",
                "value": delta,
                "met": None if delta is None else delta <= P50_DELTA_TARGET_MS,
            },
        },
    }


def observed_ratios(decide: dict[str, Any], observed: dict[str, Any], concurrency: Sequence[int]) -> dict[str, Any]:
    """What turning on metrics and OTLP spans costs: observed/decide throughput and p50 difference per level."""
    rps: dict[str, float | None] = {}
    p50: dict[str, float | None] = {}
    for level in concurrency:
        key = f"c{level}"
        d, o = decide.get(key, {}), observed.get(key, {})
        rps[key] = round(o["rps"] / d["rps"], 3) if d.get("rps") and "rps" in o else None
        both = d.get("p50_ms") is not None and o.get("p50_ms") is not None
        p50[key] = round(o["p50_ms"] - d["p50_ms"], 3) if both else None
    return {"rps": rps, "p50_delta_ms": p50}


def format_table(results: dict[str, Any], targets: Sequence[str], concurrency: Sequence[int]) -> str:
    """Rows target x concurrency; columns rps, p50 ms, p99 ms, errors."""
    lines = [f"{'target':<8} {'conc':>5} {'rps':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}"]
    for target in targets:
        for level in concurrency:
            row = results[target].get(f"c{level}") or {}
            if "error" in row or "error" in results[target]:
                lines.append(f"{target:<8} {level:>5} {'failed':>10}")
                continue
            rps, p50, p99 = (
                _num(row.get("rps"), ".1f"),
                _num(row.get("p50_ms"), ".3f"),
                _num(row.get("p99_ms"), ".3f"),
            )
            lines.append(f"{target:<8} {level:>5} {rps:>10} {p50:>9} {p99:>9} {_num(row.get('errors'), 'd'):>7}")
    return "\n".join(lines)


def format_ratios(ratios: dict[str, Any], concurrency: Sequence[int]) -> str:
    """The Decide/echo comparison and the informational targets."""
    keys = [f"c{level}" for level in concurrency]
    throughput, delta = ratios["throughput_decide_over_echo"], ratios["p50_delta_ms"]
    lines = [
        "decide vs echo   " + "".join(f"{key:>10}" for key in keys),
        "rps ratio        " + "".join(f"{_num(throughput[k], '.2f', 'x'):>10}" for k in keys),
        "p50 delta (ms)   " + "".join(f"{_num(delta[k], '+.3f'):>10}" for k in keys),
        "",
        "targets (informational, not pass/fail)",
    ]
    for name, target in ratios["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "n/a"}[target["met"]]
        lines.append(f"  {name:<24} {_num(target['value'], '.3f'):>8}  (target {target['target']})  {verdict}")
    return "\n".join(lines)


def format_notes(results: dict[str, Any], targets: Sequence[str]) -> list[str]:
    """Anything a reader of the table should know: failures, RPC errors, decisions other than allow."""
    notes: list[str] = []
    for target in targets:
        if "error" in results[target]:
            notes.append(f"{target}: {results[target]['error']}")
            continue
        for key, row in results[target].items():
            if "error" in row:
                notes.append(f"{target} {key}: {row['error']}")
                continue
            if row.get("error_codes"):
                notes.append(f"{target} {key}: RPC errors {row['error_codes']}")
            if row.get("warmup_errors"):
                notes.append(f"{target} {key}: {row['warmup_errors']} RPC errors during warm-up")
            not_allowed = {k: v for k, v in row.get("decisions", {}).items() if k != "DECISION_ALLOW"}
            if not_allowed:
                notes.append(f"{target} {key}: decisions other than allow {not_allowed}, reasons {row['reasons']}")
            if row.get("stopped_by") == "max_requests":
                notes.append(f"{target} {key}: window closed by the request cap after {row['duration_s']} s")
    return notes


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def machine_info() -> dict[str, Any]:
    """Describes where the figures were measured; the load average says whether something else was running."""
    load_1m = os.getloadavg()[0]
    return {
        "cores": os.cpu_count(),
        "load_avg_1m_before": round(load_1m, 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run(
        [git, "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def progress(message: str) -> None:
    """Progress and diagnostics go to stderr; stdout carries the table and the final JSON line."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also rejects NaN
        raise argparse.ArgumentTypeError("must be a number > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be a number >= 0")
    return value


def _concurrency_list(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, e.g. 1,16,64") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("every concurrency must be at least 1")
    return levels


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; ``--duration`` defaults to $BENCH_DURATION, else 5 s."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="Sidecar Decide vs bare gRPC echo.")
    env_duration = os.environ.get(DURATION_ENV)
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=_positive_float(env_duration) if env_duration else DEFAULT_DURATION_S,
        help=f"measured seconds per point (default ${DURATION_ENV} or {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_float,
        default=DEFAULT_WARMUP_S,
        help=f"discarded seconds before each point (default {DEFAULT_WARMUP_S:g})",
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=DEFAULT_CONCURRENCY,
        help="comma-separated concurrency levels (default 1,16,64)",
    )
    parser.add_argument("--only", choices=TARGETS, help="measure one target (e.g. echo while developing)")
    parser.add_argument(
        "--policy-evaluations", type=int, default=50_000, help="timed policy evaluations per policy (default 50000)"
    )
    parser.add_argument(
        "--redaction-evaluations",
        type=int,
        default=20_000,
        help="timed redactions of the 1 KiB args per setting (default 20000; 16 KiB: a sixteenth)",
    )
    parser.add_argument(
        "--collector-events",
        type=int,
        default=collector_ingest.DEFAULT_EVENTS,
        help=f"journal entries for the collector ingest benchmark (default {collector_ingest.DEFAULT_EVENTS})",
    )
    parser.add_argument(
        "--adapter-calls", type=int, default=30, help="tool calls per framework-adapter run (default 30)"
    )
    parser.add_argument(
        "--adapter-runs", type=int, default=4, help="measured runs per adapter play, after a warm-up (default 4)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"results file (default {RESULTS_PATH})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measures the targets, prints the table, ratios and final JSON line; returns the exit status."""
    args = parse_args(argv)
    targets = (args.only,) if args.only else TARGETS
    concurrency: tuple[int, ...] = args.concurrency
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    machine = machine_info()
    cores = machine["cores"] or 1
    if machine["load_avg_1m_before"] > 0.5 * cores:
        progress(f"warning: load average {machine['load_avg_1m_before']} before start; figures may be noisy")

    results: dict[str, Any] = {}
    servers: dict[str, dict[str, Any]] = {}
    # One server at a time, echo first: on 2 cores a second server, even idle, would take CPU from the first.
    for target in targets:
        report = ServerReport()
        results[target] = run_target(target, concurrency, args.duration, args.warmup, report)
        servers[target] = vars(report)

    summary: dict[str, Any] = dict(results)
    if not args.only:
        # In-process and after the servers have stopped, so nothing else competes for the CPU.
        progress("measuring policy evaluation (50-rule policy vs a one-binding baseline)")
        summary["policy"] = policy_eval.run(args.policy_evaluations)
        progress("measuring redaction per Decide (1 KiB and 16 KiB args: off, names, names + detectors)")
        summary["redaction"] = redaction.run(args.redaction_evaluations)
        progress("measuring framework adapter overhead per tool call (LangChain, Pydantic AI) vs the client alone")
        summary["adapters"] = _adapters_section(args.adapter_calls, args.adapter_runs)
        progress(f"measuring collector ingest into PostgreSQL ({args.collector_events} events) vs raw COPY")
        summary["collector_ingest"] = collector_ingest.run(args.collector_events, progress=progress)
        progress(f"measuring the web console's pages with {console.DEFAULT_EVENTS:,} events in the store vs empty")
        summary["console"] = console.run(progress=progress)
        progress("measuring Decide with limits in-process vs shared in Redis")
        summary["shared_limits"] = measure_shared_limits(args.duration, args.warmup)
        progress(f"measuring the fleet control plane ({fleet.DEFAULT_SIDECARS} sidecars: kill switch, approvals)")
        summary["fleet"] = fleet.run(progress=progress)
        progress("measuring the MCP proxy per tools/call against direct calls (stdio and HTTP)")
        summary["mcp_proxy"] = mcp_proxy.run(min(args.duration, mcp_proxy.DEFAULT_DURATION_S), progress=progress)
        from bench import client_step  # noqa: PLC0415 -- it imports this module (the sidecar spec)

        progress("measuring the Python client per step (Decide + ReportResult) against the raw stubs")
        summary["client"] = client_step.run()
        from bench import footprint  # noqa: PLC0415 -- it imports this module (the sidecar spec)

        progress("measuring the sidecar's memory and disk bytes per step against the echo server and raw SQLite")
        summary["footprint"] = footprint.run(max(args.duration, footprint.DEFAULT_DURATION_S), args.warmup)
    if "echo" in results and "decide" in results:
        summary["ratios"] = compute_ratios(results["echo"], results["decide"], concurrency)
    if "decide" in results and "observed" in results:
        summary["observed_over_decide"] = observed_ratios(results["decide"], results["observed"], concurrency)
    summary.update(
        {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": list(concurrency),
            "servers": servers,
            "machine": machine,
            "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "wall_s": round(time.monotonic() - started, 1),
        }
    )

    print(format_table(results, targets, concurrency))
    if "ratios" in summary:
        print()
        print(format_ratios(summary["ratios"], concurrency))
    if "observed_over_decide" in summary:
        keys = [f"c{level}" for level in concurrency]
        ratio = summary["observed_over_decide"]
        print()
        print("observed (metrics + OTLP spans) vs decide" + "".join(f"{key:>10}" for key in keys))
        print("rps ratio" + " " * 32 + "".join(f"{_num(ratio['rps'][k], '.2f', 'x'):>10}" for k in keys))
        print("p50 delta (ms)" + " " * 27 + "".join(f"{_num(ratio['p50_delta_ms'][k], '+.3f'):>10}" for k in keys))
    if "policy" in summary:
        print()
        print(policy_eval.format_result(summary["policy"]))
    if "redaction" in summary:
        print()
        print(redaction.format_result(summary["redaction"]))
    if "adapters" in summary:
        print()
        print(
            summary["adapters"]["error"]
            if "error" in summary["adapters"]
            else adapters.format_result(summary["adapters"])
        )
    if "collector_ingest" in summary:
        print()
        print(collector_ingest.format_result(summary["collector_ingest"]))
    if "console" in summary:
        print()
        print(console.format_result(summary["console"]))
    if "shared_limits" in summary:
        print()
        print(shared_limits.format_result(summary["shared_limits"]))
    if "fleet" in summary:
        print()
        print(fleet.format_result(summary["fleet"]))
    if "mcp_proxy" in summary:
        print()
        print(mcp_proxy.format_result(summary["mcp_proxy"]))
    if "client" in summary:
        from bench import client_step  # noqa: PLC0415

        print()
        print(client_step.format_result(summary["client"]))
    if "footprint" in summary:
        from bench import footprint  # noqa: PLC0415

        print()
        print(footprint.format_result(summary["footprint"]))
    notes = format_notes(results, targets)
    if notes:
        print()
        print("notes")
        print("\n".join(f"  {note}" for note in notes))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwritten to {args.output} in {summary['wall_s']} s")
    print(json.dumps(summary), flush=True)
    return 1 if _failed(results) else 0


def _adapters_section(calls: int, runs: int) -> dict[str, Any]:
    """The adapters' figures; bounded (its own sidecar, a 30 s start and 15 s stop deadline), and an error note
    instead of the figures when a framework is not installed or the sidecar does not start."""
    try:
        return adapters.run(calls, runs)
    except (ImportError, RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": f"adapters not measured: {exc}"}


def _failed(results: dict[str, Any]) -> bool:
    """True when a server did not start, a loadgen failed, or a point had no successful request."""
    for per_target in results.values():
        if "error" in per_target:
            return True
        if any("error" in row or not row.get("requests") for row in per_target.values()):
            return True
    return False


if __name__ == "__main__":
    sys.exit(main())
