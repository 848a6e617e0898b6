"""Where a Decide's time goes: the sidecar's threads' CPU per request under load, split by py-spy samples.

``python -m bench.decide_profile [--concurrency 64] [--duration 8] [--warmup 1] [--rate 300] [--no-py-spy]
[--source DIR] [--rounds N]``

For the bare echo server and then the real sidecar (``agentaudit dev``, forwarding off, as ``bench.run`` starts
them), one at a time, it runs ``bench.loadgen`` at one concurrency and, over the measured window:

- reads every server thread's CPU time (``/proc/PID/task/TID/stat``, user + system) before and after, and divides
  by the requests answered in the window: µs of CPU per request, for the event-loop thread (the one that runs
  every handler and is the bottleneck) and for the others (the journal writer's thread, the readers);
- when py-spy is installed (``pip install py-spy`` into the venv; it is not a project dependency), attaches
  ``py-spy record --nonblocking`` to the server for the same window and sorts the loop thread's samples into the
  stages of a Decide by the innermost project frame they are in (validation, redaction, HMACs, policy, body
  build, canonical JSON, signing, journal hand-off, protobuf conversion, ...; anything else, the gRPC runtime,
  uvloop and asyncio, is "grpc/event loop"); each stage's share of the samples times the loop thread's CPU per
  request is its µs per request.

``--source DIR`` runs the sidecar from another checkout (``PYTHONPATH=DIR``), for a before/after in turns with
``--rounds``. It prints a table and, last, one JSON object. The load average before and after is part of it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.run import RESULTS_DIR, ROOT, ServerReport, ServerSpec, decide_spec, echo_spec, running_server

_TICKS = os.sysconf("SC_CLK_TCK")

# (stage, test on "file:function" of a frame). The innermost frame that matches any rule decides the stage; rules
# are tried in order, so more specific ones come first.
STAGES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "hmac / action_key / digests",
        re.compile(
            r"redaction/redactor\.py:(Redactor\.)?(_mac|action_key|approval_binding|digest|_hmac_states)\b|/hmac\.py:"
        ),
    ),
    ("canonical JSON (RFC 8785)", re.compile(r"gateway/canonical\.py:|/json/encoder\.py:|rfc8785")),
    ("redaction (names + detectors)", re.compile(r"gateway/redaction/")),
    ("validation (parse_decide)", re.compile(r"gateway/api/validation\.py:|gateway/tracecontext\.py:")),
    ("policy layers", re.compile(r"gateway/policy/")),
    ("signing (Ed25519, envelope, leaf hash)", re.compile(r"gateway/signing\.py:|/nacl/|journal/entry\.py:")),
    ("journal hand-off / commit wait", re.compile(r"journal/writer\.py:|journal/schema\.py:")),
    ("body build (recorder)", re.compile(r"sidecar/recorder\.py:|gateway/ids\.py:")),
    ("protobuf conversion (response)", re.compile(r"gateway/api/convert\.py:")),
    (
        "decider (approvals, gate, alerts)",
        re.compile(r"sidecar/decider\.py:|sidecar/approvals\.py:|gateway/alerts\.py:"),
    ),
    ("metrics (prometheus)", re.compile(r"prometheus_client/|gateway/metrics\.py:")),
    ("handler wrapper / servicer", re.compile(r"gateway/rpc/|gateway/api/gateway_service\.py:")),
    (
        "decision printer (dev)",
        re.compile(r"cli/serve\.py:(_print_decisions|new_lines)|gateway/cli/render\.py:|journal/query\.py:"),
    ),
)
OTHER = "grpc / event loop / other"
NATIVE = False  # --native: py-spy also walks native frames (the "other" time is split by library)
_LIBRARY = re.compile(r"\(([\w.+-]+?)(?:\.cpython[^)]*|-[\d.]+)?\.so[.\d]*\)")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Per thread of ``pid``: (name, CPU seconds so far)."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return out


def stage_of(stack: Sequence[str]) -> str:
    """The stage of one sample: the innermost frame that a rule names (frames outermost first)."""
    for frame in reversed(stack):
        found = _FRAME.match(frame)
        key = f"{found['file']}:{found['func']}" if found else frame
        for stage, rule in STAGES:
            if rule.search(key):
                return stage
    return OTHER


def thread_names(raw: str) -> dict[int, str]:
    """Thread id → Python thread name, from ``py-spy record --format raw --threads`` output."""
    return {int(m[1]): m[2] for m in re.finditer(r"^thread \((\d+)\): ([^;\n]+)", raw, re.MULTILINE)}


def split_samples(raw: str, loop_tid: int) -> tuple[collections.Counter[str], int]:
    """The loop thread's samples per stage, from ``py-spy record --format raw --threads`` output."""
    stages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        frames = stack_text.split(";")  # "thread (TID): NAME", then the frames, outermost first
        if not frames[0].startswith(f"thread ({loop_tid}):"):
            continue
        count = int(count_text)
        stage = stage_of(frames[1:])
        if stage == OTHER:  # with --native: which library the innermost native frame is in
            library = next((m[1] for f in reversed(frames[1:]) if (m := _LIBRARY.search(f))), "")
            if library:
                stage = f"{OTHER}: {library}"
        stages[stage] += count
        total += count
    return stages, total


def measure(
    spec: ServerSpec, concurrency: int, duration_s: float, warmup_s: float, rate: int, py_spy: str | None, cwd: Path
) -> dict[str, Any]:
    """One server under one load: CPU per request per thread and, with py-spy, the loop thread's stages."""
    report = ServerReport()
    result: dict[str, Any] = {}
    with running_server(spec, report), tempfile.TemporaryDirectory() as tmp:
        pid = _server_pid(spec)
        argv = [
            sys.executable, "-m", "bench.loadgen", "--target", spec.address, "--concurrency", str(concurrency),
            "--duration", str(duration_s), "--warmup", str(warmup_s),
        ]  # fmt: skip
        load = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(warmup_s + 0.5)  # the loadgen's connect and warm-up, then a margin
        window = duration_s - 1.0
        spy = None
        native = ["--native"] if NATIVE else ["--nonblocking"]  # native frames need the process paused
        raw_path = Path(tmp) / "raw.txt"
        if py_spy:
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(int(window)),
                 "--format", "raw", "--threads", "--output", str(raw_path), *native],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        before, started = thread_cpu(pid), time.monotonic()
        time.sleep(window if not py_spy else int(window))
        after, elapsed = thread_cpu(pid), time.monotonic() - started
        out, err = load.communicate(timeout=duration_s + 60)
        if spy is not None:
            spy.wait(timeout=60)
        lines = out.strip().splitlines()
        if load.returncode != 0 or not lines:
            return {"error": f"loadgen failed: {err.strip()[-500:]}"}
        loaded = json.loads(lines[-1])
        requests = loaded["rps"] * elapsed
        raw = raw_path.read_text() if spy is not None and raw_path.exists() else ""
        names = thread_names(raw)
        per_thread: dict[str, float] = collections.defaultdict(float)
        for tid, (name, cpu) in after.items():
            spent = cpu - before.get(tid, (name, 0.0))[1]
            label = "loop" if tid == pid else re.sub(r"_\d+$", "", names.get(tid, name))
            per_thread[label] += spent * 1e6 / requests
        result = {
            "rps": loaded["rps"],
            "p50_ms": loaded["p50_ms"],
            "p99_ms": loaded["p99_ms"],
            "cpu_us_per_request": {k: round(v, 1) for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1])},
            "window_s": round(elapsed, 2),
        }
        if raw:
            (RESULTS_DIR / f"profile-{spec.name}.raw").write_text(raw)  # for a flame graph or a closer look
            stages, total = split_samples(raw, pid)
            loop_us = per_thread["loop"]
            result["samples"] = total
            result["loop_stages_us"] = (
                {stage: round(loop_us * n / total, 1) for stage, n in stages.most_common()} if total else {}
            )
        elif spy is not None:
            result["py_spy_error"] = (spy.stderr.read().decode() if spy.stderr else "")[-500:]
    return result


def _server_pid(spec: ServerSpec) -> int:
    """The pid of the server process just started for ``spec`` (this process's newest child)."""
    done = subprocess.run(["pgrep", "-n", "-P", str(os.getpid())], capture_output=True, text=True, check=False)
    return int(done.stdout.split()[0])


def quiet_spec(workdir: Path) -> ServerSpec:
    """``agentaudit dev --quiet``: no line printed per decision (the printer reads every pre-event back)."""
    spec = decide_spec(workdir)
    return ServerSpec(
        "decide-quiet", [*spec.argv, "--quiet"], spec.address, RESULTS_DIR / "decide-quiet-server.log", spec.env
    )


def source_spec(workdir: Path, source: Path) -> ServerSpec:
    """``agentaudit dev`` run from another checkout (``python -m gateway.cli`` with ``PYTHONPATH``)."""
    spec = decide_spec(workdir)
    argv = [sys.executable, "-m", "gateway.cli", *spec.argv[1:]]
    return ServerSpec(spec.name, argv, spec.address, spec.log_path, {**(spec.env or {}), "PYTHONPATH": str(source)})


def format_result(result: dict[str, Any]) -> str:
    lines = [f"Decide vs echo at concurrency {result['concurrency']} (load average {result['load_avg_1m']})"]
    for name, r in result["runs"]:
        if "error" in r:
            lines.append(f"  {name}: {r['error']}")
            continue
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_request"].items() if v >= 1)
        lines.append(f"  {name:<14} {r['rps']:>8.1f} rps  p50 {r['p50_ms']:.2f} ms  CPU µs/request: {cpu}")
        for stage, us in r.get("loop_stages_us", {}).items():
            lines.append(f"      {stage:<42} {us:>7.1f} µs")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decide_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=int, default=300, help="py-spy samples per second")
    parser.add_argument("--no-py-spy", action="store_true", help="CPU per thread only")
    parser.add_argument("--source", type=Path, help="also run the sidecar from this checkout, in turns")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--native", action="store_true", help="py-spy --native: split the rest by library")
    parser.add_argument("--no-echo", action="store_true", help="leave out the echo server")
    parser.add_argument(
        "--quiet", action="store_true", help="also run the sidecar as `agentaudit dev --quiet` (no decision printer)"
    )
    args = parser.parse_args(argv)
    global NATIVE  # noqa: PLW0603 - one setting for the whole run
    NATIVE = args.native
    py_spy = None if args.no_py_spy else shutil.which("py-spy", path=str(Path(sys.executable).parent))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    runs: list[tuple[str, dict[str, Any]]] = []
    for _ in range(args.rounds):
        targets: list[tuple[str, Any]] = [] if args.no_echo else [("echo", echo_spec)]
        targets.append(("decide", decide_spec))
        if args.quiet:
            targets.append(("decide --quiet", quiet_spec))
        if args.source:
            targets.append((f"decide@{args.source.name}", lambda w: source_spec(w, args.source)))
        for name, make in targets:
            with tempfile.TemporaryDirectory(prefix="agentaudit-prof-") as tmp:
                spec = make(Path(tmp))
                print(f"[profile] {name} at c{args.concurrency}", file=sys.stderr, flush=True)
                runs.append(
                    (name, measure(spec, args.concurrency, args.duration, args.warmup, args.rate, py_spy, ROOT))
                )
    result = {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "runs": runs,
    }
    print(format_result(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
