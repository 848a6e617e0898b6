"""agentaudit beside Tracekit, the closest peer: the same tool step through each side's own Python client.

``python -m bench.peers [--duration S] [--warmup S] [--concurrency 1,16,64]`` (``make bench-peers``)

The workload (issue 20): one tool step is a decide and a report of its result, for an allowed action with five
small arguments (``bench/step_load.py`` has both clients' steps), in a closed loop from a separate load-generator
process, at each concurrency. The sides run one after the other, never at once, in one run:

* **agentaudit**: ``agentaudit dev`` (its example policy, forwarding off as in ``bench.run``) on a unix socket,
  driven by ``agentaudit_client.AsyncGatewayClient``. Durability: every decision and result is a signed entry in
  the SQLite journal, WAL with ``synchronous=FULL``, group-committed; a call is answered after its fsync.
* **Tracekit**: ``tracekit-ai`` from PyPI (pinned below), installed by this bench into its own virtual
  environment, ``.bench-venvs/tracekit`` (git-ignored, never a project dependency), its signer (``tracekit
  signer serve``) on a unix socket with ``durability: ack-on-fsync`` (its signer.yaml setting: the default,
  ``ack-on-write``, acknowledges before the fsync; ``ack-on-fsync`` answers after the batch's fsync), driven by
  ``tracekit.sdk.client.Client`` in threads. Its event-rate quota (200/s per identity by default) is raised so
  the bench measures the signer, not its rate limiter; its background fsck is off.

Printed: steps/s, step p50 and p99 per side and concurrency, each server's peak RSS and bytes written to disk
per step, the ratios (agentaudit over Tracekit), and as the last line one JSON object with ``peers.*``. When
Tracekit cannot be installed or driven, the reason is printed and its figures are null; agentaudit is still
measured. Targets (issue 20: steps/s ratio >= 3 at every concurrency, our c1 p50 at most half of theirs) are
informational. Bounded: about 2 x 3 x (warm-up + duration) plus start-up, and a first install of ~30 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.run import RESULTS_DIR, ROOT, decide_spec, machine_info, progress, stop, wait_until_serving

TRACEKIT_PACKAGE = "tracekit-ai==1.4.2"
TRACEKIT_VENV = ROOT / ".bench-venvs" / "tracekit"
INSTALL_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 30.0
LOAD_SLACK_S = 60.0  # beyond warm-up and duration: connecting, registering 64 runs, the last slow step
DEFAULT_CONCURRENCY = (1, 16, 64)
TARGET_RATIO = 3.0  # ours over theirs, steps/s, every concurrency
TARGET_P50_SHARE = 0.5  # our c1 step p50 at most this share of theirs
STEP_LOAD = ROOT / "bench" / "step_load.py"
SIDES = ("agentaudit", "tracekit")
ROWS = ("agentaudit", "agentaudit_session_awaited", "agentaudit_unary", "tracekit")  # table rows

AGENTAUDIT_DURABILITY = (
    "SQLite journal, WAL, synchronous=FULL: each decision and result answered after its group commit's fsync"
)


class PeerUnavailableError(Exception):
    """Tracekit could not be installed, started or driven; the message says exactly why."""


# --- Tracekit: install, configure, run ----------------------------------------------------------------------


def tracekit_python(venv: Path = TRACEKIT_VENV) -> Path:
    """The interpreter of Tracekit's own virtual environment, created and installed on first use."""
    python = venv / "bin" / "python"
    if not _tracekit_importable(python):
        progress(f"installing {TRACEKIT_PACKAGE} into {venv} (its own venv, once)")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=60)
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TRACEKIT_PACKAGE],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PeerUnavailableError(f"cannot create {venv}: {exc}") from exc
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise PeerUnavailableError(f"pip install {TRACEKIT_PACKAGE} failed (status {done.returncode}): {tail}")
        if not _tracekit_importable(python):
            raise PeerUnavailableError(f"{TRACEKIT_PACKAGE} installed but tracekit.sdk.client does not import")
    return python


def _tracekit_importable(python: Path) -> bool:
    if not python.exists():
        return False
    probe = "import tracekit.sdk.client, tracekit.storage.base"
    return subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60, check=False).returncode == 0


def tracekit_facts(python: Path) -> dict[str, str]:
    """The installed version and the durability values its storage accepts, read from the package itself."""
    code = (
        "import json, tracekit, tracekit.storage.base as b; "
        "print(json.dumps({'version': tracekit.__version__, 'ack_on_write': b.ACK_ON_WRITE, "
        "'ack_on_fsync': b.ACK_ON_FSYNC}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise PeerUnavailableError(f"cannot read Tracekit's durability settings: {done.stderr.strip()[-300:]}")
    facts: dict[str, str] = json.loads(done.stdout)
    return facts


def write_signer_config(workdir: Path, durability: str) -> tuple[Path, Path]:
    """signer.yaml (JSON is YAML) for a signer on a unix socket in ``workdir``; returns (config, socket)."""
    socket_path = workdir / "signer.sock"
    config = {
        "data_dir": str(workdir / "data"),
        "socket": str(socket_path),
        "durability": durability,
        # Far above what two cores produce, so no step is refused by the quota (its default is 200 events/s).
        "limits": {"events_per_s": 1_000_000, "burst": 1_000_000, "open_runs": 1000},
        "fsck_every_s": 0,  # the full-chain background check would compete for the CPU being measured
    }
    path = workdir / "signer.yaml"
    path.write_text(json.dumps(config))
    return path, socket_path


@contextlib.contextmanager
def tracekit_signer(python: Path, config: Path, socket_path: Path, log_path: Path) -> Iterator[int]:
    """Runs ``tracekit signer serve`` until the block ends; yields its pid once the socket accepts."""
    argv = [str(python), "-m", "tracekit", "signer", "serve", "--config", str(config)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=config.parent, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_socket(process, socket_path, log_path)
            yield process.pid
        finally:
            stop(process)


def _wait_for_socket(process: subprocess.Popen[bytes], socket_path: Path, log_path: Path) -> None:
    import socket  # noqa: PLC0415

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerUnavailableError(f"the Tracekit signer exited ({process.returncode}): {_tail(log_path)}")
        if socket_path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(socket_path))
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    raise PeerUnavailableError(f"the Tracekit signer did not listen within {READY_TIMEOUT_S:.0f} s: {_tail(log_path)}")


def _tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-3:])
    except OSError:
        return "(no log)"


# --- measuring ----------------------------------------------------------------------------------------------


def load(python: Path, side: str, target: str, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """One load-generator process (``bench/step_load.py``) with ``python``; its JSON result or an error."""
    argv = [str(python), str(STEP_LOAD), "--side", side, "--target", target, "--concurrency", str(concurrency)]
    argv += ["--duration", str(duration_s), "--warmup", str(warmup_s)]
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=warmup_s + duration_s + LOAD_SLACK_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": "the load generator timed out"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"the load generator exited {done.returncode}: {' | '.join(done.stderr.splitlines()[-3:])}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def proc_figures(pid: int) -> dict[str, int]:
    """Peak RSS (VmHWM, KiB), CPU ticks used and bytes written to storage so far by process ``pid`` (/proc)."""
    figures: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                figures["rss_peak_kib"] = int(line.split()[1])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        figures["cpu_ticks"] = int(fields[11]) + int(fields[12])  # utime + stime, every thread of the process
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                figures["write_bytes"] = int(line.split()[1])
    return figures


def measure_side(
    python: Path,
    side: str,
    target: str,
    pid: int,
    levels: Sequence[int],
    duration_s: float,
    warmup_s: float,
    load_side: str = "",
) -> dict[str, Any]:
    """Every concurrency against one running server; adds its peak RSS and disk bytes written per step."""
    points: dict[str, Any] = {}
    load_side = load_side or ("agentaudit-session" if side == "agentaudit" else "tracekit")
    for level in levels:
        progress(f"{side}: concurrency {level} ({warmup_s:g} s warm-up, {duration_s:g} s)")
        before = proc_figures(pid)
        point = load(python, load_side, target, level, duration_s, warmup_s)
        after = proc_figures(pid)
        steps_run = point.get("steps", 0)
        if "write_bytes" in after and "write_bytes" in before and steps_run:
            # Includes warm-up steps' writes: an upper bound per measured step, the same for both sides.
            point["disk_write_bytes_per_step_max"] = round((after["write_bytes"] - before["write_bytes"]) / steps_run)
        if "cpu_ticks" in after and "cpu_ticks" in before and steps_run:
            # The server's CPU (all threads) per measured step, warm-up included: an upper bound, like the disk's.
            ticks = after["cpu_ticks"] - before["cpu_ticks"]
            point["server_cpu_us_per_step_max"] = round(ticks / os.sysconf("SC_CLK_TCK") * 1e6 / steps_run)
        points[f"c{level}"] = point
    peak = proc_figures(pid).get("rss_peak_kib")
    return {"points": points, "rss_peak_mib": round(peak / 1024, 1) if peak else None}


@contextlib.contextmanager
def agentaudit_sidecar(workdir: Path) -> Iterator[tuple[str, int]]:
    """Runs ``agentaudit dev`` (as ``bench.run`` does) until the block ends; yields (address, pid) once SERVING."""
    spec = decide_spec(workdir)
    log_path = RESULTS_DIR / "peers-agentaudit.log"
    with log_path.open("wb") as log:
        env = {**os.environ, **(spec.env or {})}
        process = subprocess.Popen(spec.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_serving(spec, process)
            yield spec.address, process.pid
        finally:
            stop(process)


AGENTAUDIT_VARIANTS = {
    # row: (load-generator side, client, durability of a step when the client's call returns)
    "agentaudit": (
        "agentaudit-session",
        "agentaudit_client.AsyncGatewayClient.session(), reports pipelined",
        AGENTAUDIT_DURABILITY + "; a pipelined report is acknowledged (durable) before the same worker's next "
        "decide is answered, and every report before the load generator exits; unacknowledged ones are resent",
    ),
    "agentaudit_session_awaited": (
        "agentaudit-session-awaited",
        "agentaudit_client.AsyncGatewayClient.session(), report awaited",
        AGENTAUDIT_DURABILITY + "; each report awaited until durable",
    ),
    "agentaudit_unary": (
        "agentaudit-async",
        "agentaudit_client.AsyncGatewayClient, unary calls",
        AGENTAUDIT_DURABILITY + "; each report awaited until durable",
    ),
}


def run_agentaudit(levels: Sequence[int], duration_s: float, warmup_s: float) -> dict[str, dict[str, Any]]:
    """The real sidecar (``agentaudit dev``: its example policy, forwarding off), each variant at each concurrency.

    The variants take turns at every concurrency (one sidecar), so load drifts touch them alike.
    """
    results: dict[str, dict[str, Any]] = {row: {"points": {}} for row in AGENTAUDIT_VARIANTS}
    with tempfile.TemporaryDirectory(prefix="aa-peers-") as tmp, agentaudit_sidecar(Path(tmp)) as (address, pid):
        for level in levels:
            for row, (load_side, _, _) in AGENTAUDIT_VARIANTS.items():
                point = measure_side(Path(sys.executable), row, address, pid, [level], duration_s, warmup_s, load_side)
                results[row]["points"].update(point["points"])
                results[row]["rss_peak_mib"] = point["rss_peak_mib"]
    return {
        row: {"durability": durability, "client": client, **results[row]}
        for row, (_, client, durability) in AGENTAUDIT_VARIANTS.items()
    }


def run_tracekit(levels: Sequence[int], duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Tracekit's signer measured at every concurrency; raises PeerUnavailableError saying why it cannot be."""
    python = tracekit_python()
    facts = tracekit_facts(python)
    with tempfile.TemporaryDirectory(prefix="tk-peers-") as tmp:
        config, socket_path = write_signer_config(Path(tmp), facts["ack_on_fsync"])
        with tracekit_signer(python, config, socket_path, RESULTS_DIR / "peers-tracekit.log") as pid:
            result = measure_side(python, "tracekit", str(socket_path), pid, levels, duration_s, warmup_s)
    failed = [k for k, p in result["points"].items() if "error" in p or not p.get("steps")]
    if len(failed) == len(levels):
        first = result["points"][failed[0]]
        raise PeerUnavailableError(f"Tracekit's client could not be driven: {first.get('error') or first}")
    durability = (
        f"signer durability: {facts['ack_on_fsync']} (default {facts['ack_on_write']}): each record answered "
        "after its batch's fsync"
    )
    return {"version": facts["version"], "durability": durability, "client": "tracekit.sdk.client.Client", **result}


# --- the comparison -----------------------------------------------------------------------------------------


def compare(sides: dict[str, Any], levels: Sequence[int]) -> dict[str, Any]:
    """The ``peers`` figures: per side steps/s, p50 and p99 by concurrency, and agentaudit over Tracekit."""
    out: dict[str, Any] = {}
    for side, result in sides.items():
        points = result.get("points", {})
        out[side] = {
            metric: {f"c{n}": points.get(f"c{n}", {}).get(key) for n in levels}
            for metric, key in (("steps_per_s", "steps_per_s"), ("step_p50_ms", "p50_ms"), ("step_p99_ms", "p99_ms"))
        }
        out[side].update(result)  # durability, client, peak RSS, and every point's full figures
    ours, theirs = out["agentaudit"], out["tracekit"]
    ratio: dict[str, float | None] = {}
    p50_share: dict[str, float | None] = {}
    for n in levels:
        key = f"c{n}"
        a, t = ours.get("steps_per_s", {}).get(key), theirs.get("steps_per_s", {}).get(key)
        ratio[key] = round(a / t, 3) if a and t else None
        a50, t50 = ours.get("step_p50_ms", {}).get(key), theirs.get("step_p50_ms", {}).get(key)
        p50_share[key] = round(a50 / t50, 3) if a50 and t50 else None
    out["ratio_steps_per_s"] = ratio
    out["ratio_step_p50_ms"] = p50_share
    low = f"c{min(levels)}"
    out["targets"] = {
        "ratio_steps_per_s": {
            "target": f">= {TARGET_RATIO:g} at every concurrency",
            "met": None if None in ratio.values() else all(r >= TARGET_RATIO for r in ratio.values() if r is not None),
        },
        f"step_p50_share_{low}": {
            "target": f"<= {TARGET_P50_SHARE:g}",
            "met": None if p50_share[low] is None else p50_share[low] <= TARGET_P50_SHARE,
        },
    }
    return out


def format_table(peers: dict[str, Any], levels: Sequence[int]) -> str:
    """Rows side x concurrency, then the ratios and each side's durability."""
    head = f"{'side':<27} {'conc':>5} {'steps/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}"
    lines = [f"{head} {'disk B/step':>12} {'srv cpu us/step':>16}"]
    for side in ROWS:
        figures = peers.get(side)
        if figures is None:
            continue
        if "unavailable" in figures:
            lines.append(f"{side:<27} not measured: {figures['unavailable']}")
            continue
        for n in levels:
            key = f"c{n}"
            rate, p50, p99 = (figures[m].get(key) for m in ("steps_per_s", "step_p50_ms", "step_p99_ms"))
            point = figures["points"].get(key, {})
            errors, disk = point.get("errors", point.get("error")), point.get("disk_write_bytes_per_step_max")
            cpu = point.get("server_cpu_us_per_step_max")
            lines.append(
                f"{side:<27} {n:>5} {_num(rate, '.1f'):>10} {_num(p50, '.3f'):>9} {_num(p99, '.3f'):>9} "
                f"{errors if errors is not None else '-':>7} {_num(disk, 'd'):>12} {_num(cpu, 'd'):>16}"
            )
    keys = [f"c{n}" for n in levels]
    lines += [
        "",
        "agentaudit / tracekit   " + "".join(f"{k:>9}" for k in keys),
        "steps/s ratio           " + "".join(f"{_num(peers['ratio_steps_per_s'][k], '.2f', 'x'):>9}" for k in keys),
        "step p50 ratio          " + "".join(f"{_num(peers['ratio_step_p50_ms'][k], '.2f', 'x'):>9}" for k in keys),
        "",
        "targets (informational, not pass/fail)",
    ]
    for name, target in peers["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "n/a"}[target["met"]]
        lines.append(f"  {name:<24} target {target['target']}: {verdict}")
    lines.append("")
    for side in ROWS:
        figures = peers.get(side)
        if figures is None:
            continue
        rss = figures.get("rss_peak_mib")
        lines.append(
            f"{side}: {figures.get('durability', '-')}; client {figures.get('client', '-')}; "
            f"server peak RSS {_num(rss, '.1f')} MiB"
        )
    return "\n".join(lines)


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, e.g. 1,16,64") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("every concurrency must be at least 1")
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    """Measures both sides, prints the table and the final JSON line; 1 only if agentaudit could not be measured."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded seconds per point (default 1)")
    parser.add_argument("--concurrency", type=_levels, default=DEFAULT_CONCURRENCY, help="default 1,16,64")
    parser.add_argument("--only", choices=SIDES, help="measure one side")
    args = parser.parse_args(argv)
    if not args.duration > 0 or not args.warmup >= 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    machine = machine_info()
    sides: dict[str, Any] = {}
    for side in SIDES:
        if args.only and side != args.only:
            sides[side] = {"unavailable": "not selected (--only)"}
            continue
        progress(f"measuring {side}")
        try:
            if side == "agentaudit":
                sides.update(run_agentaudit(args.concurrency, args.duration, args.warmup))
            else:
                sides[side] = run_tracekit(args.concurrency, args.duration, args.warmup)
        except (PeerUnavailableError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            progress(f"{side} not measured: {exc}")
            sides[side] = {"unavailable": str(exc)}
    peers = compare(sides, args.concurrency)
    summary = {
        "peers": peers,
        "concurrency": list(args.concurrency),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workload": "one step = decide + report result, allowed kb.search with five small args, closed loop",
        "machine": machine,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(format_table(peers, args.concurrency))
    (RESULTS_DIR / "peers.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 1 if "unavailable" in sides["agentaudit"] and not args.only else 0


if __name__ == "__main__":
    sys.exit(main())
