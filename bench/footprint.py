"""What one sidecar costs its pod in memory and in disk writes, next to baselines measured in the same run.

``python -m bench.footprint [--duration S] [--warmup S] [--source DIR]`` (also part of ``make bench``)

* **Memory.** ``agentaudit dev`` (its example policy, forwarding off, as ``bench.run``) is started in a fresh
  directory; 2 s after it answers SERVING its resident set (``VmRSS``, and ``/proc/PID/smaps_rollup``'s anonymous
  and file-backed shares) is the idle figure. After it has been driven at every concurrency, its ``VmHWM`` is the
  peak. Baseline: the bare echo server (``bench.echo_server``, the same gRPC stack doing nothing), idle and after
  ``bench.loadgen`` at the highest concurrency.
* **Disk.** At concurrency 1, 16 and 64 a separate load-generator process (``bench/step_load.py``, the
  ``AsyncGatewayClient`` side) runs whole tool steps (decide + report: two journal entries); the bytes the sidecar
  caused to be written (``write_bytes`` of ``/proc/PID/io``, which counts the file system's 4 KiB pages as they are
  dirtied) over the steps the point journaled (its entries, warm-up included, halved) are the bytes per step. The
  WAL is checkpointed every 4 MiB, so a short point may or may not include a checkpoint: use 10 s or more.
  Baseline: a raw SQLite table in WAL mode with ``synchronous=FULL`` (SQLite's default page size) receiving, per
  step, two rows holding a blob the size of the sidecar's average entry plus signature, each its own fsync'd
  commit (the sidecar's commits at concurrency 1), in a child process measured the same way.

* **Byte-compiled, as deployed.** The image installs wheels, which pip byte-compiles; a checkout run with
  ``PYTHONDONTWRITEBYTECODE=1`` (as on CI machines) would instead compile every project module from source at
  each start, and the compiler's transient memory stays in the resident set (~2 MiB of the sidecar's idle RSS on
  CPython 3.11). So the project's own sources (``gateway``, the client and its generated stubs, ``bench``) are
  compiled first, into their ``__pycache__`` directories (ignored by git), as an ordinary checkout has them.

``--source DIR`` runs the sidecar from another checkout of the project (``python -m gateway.cli`` with ``DIR``
first on the path), so a change can be measured against its base in turns, with the same commands.
The last line is one JSON object, ``{"footprint": {...}}``; the same is written to ``bench/results/footprint.json``.
Targets (issue 20: idle RSS < 48 MiB, peak < 80 MiB) are informational, never pass/fail.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import peers
from bench.run import (
    RESULTS_DIR,
    ROOT,
    ServerSpec,
    echo_spec,
    machine_info,
    measure,
    progress,
    stop,
    wait_until_serving,
)

LEVELS = (1, 16, 64)
DEFAULT_DURATION_S = 10.0  # long enough that a point's share of WAL checkpoints is near the average
SETTLE_S = 2.0
RAW_STEPS = 300
TARGET_RSS_IDLE_MIB = 48.0
TARGET_RSS_PEAK_MIB = 80.0
RESULTS_PATH = RESULTS_DIR / "footprint.json"

# Run in a child process, so its write_bytes are its own: two fsync'd single-row commits per step.
_RAW_SQLITE = """
import os, sqlite3, sys
path, steps, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def written():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
blob = os.urandom(size)
for seq in range(50):
    conn.execute("INSERT INTO t VALUES (?, ?)", (seq, blob))
before = written()
for seq in range(50, 50 + 2 * steps):
    conn.execute("INSERT INTO t VALUES (?, ?)", (seq, blob))
after = written()
print((after - before) / steps, conn.execute("PRAGMA page_size").fetchone()[0])
"""


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB), smaps_rollup's shares (KiB) and write_bytes of process ``pid``."""
    figures: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                figures[line.split(":")[0]] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            if name in ("Pss_Anon", "Pss_File", "Private_Dirty", "Anonymous"):
                figures[name] = int(rest.split()[0])
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                figures["write_bytes"] = int(line.split()[1])
    return figures


def journal_entries(path: Path) -> int:
    """How many entries the journal holds (read-only, beside the running sidecar)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT coalesce(max(seq) + 1, 0) FROM journal").fetchone()[0])


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def byte_compile(source: Path | None) -> None:
    """Compiles the project's sources (``source``'s gateway when given) into their ``__pycache__`` directories."""
    for root in ((source or ROOT) / "gateway", ROOT / "clients" / "python" / "src", ROOT / "bench"):
        compileall.compile_dir(root, quiet=1)


def sidecar_spec(workdir: Path, source: Path | None) -> tuple[ServerSpec, Path]:
    """``agentaudit dev`` as ``bench.run`` starts it (forwarding off); from ``source`` when given."""
    address = f"unix://{workdir / 'gateway.sock'}"
    log_path = RESULTS_DIR / "footprint-sidecar.log"
    if source is None:
        argv = [str(Path(sys.executable).parent / "agentaudit"), "dev", "--dir", str(workdir), "--listen", address]
        return ServerSpec("footprint", argv, address, log_path, {"AGENTAUDIT_FORWARD_TARGET": ""}), ROOT
    argv = [sys.executable, "-m", "gateway.cli", "dev", "--dir", str(workdir), "--listen", address]
    env = {"AGENTAUDIT_FORWARD_TARGET": "", "PYTHONPATH": str(source)}
    return ServerSpec("footprint", argv, address, log_path, env), source


@contextlib.contextmanager
def running(spec: ServerSpec, cwd: Path) -> Iterator[int]:
    """Runs the server until the block ends; yields its pid once it answers SERVING."""
    with spec.log_path.open("wb") as log:
        env = {**os.environ, **(spec.env or {})}
        process = subprocess.Popen(spec.argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_serving(spec, process)
            yield process.pid
        finally:
            stop(process)


def step_load(target: str, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """One ``bench/step_load.py`` process (the asyncio client side); its JSON result or an error."""
    return peers.load(Path(sys.executable), "agentaudit-async", target, concurrency, duration_s, warmup_s)


def measure_sidecar(source: Path | None, levels: Sequence[int], duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Idle and peak memory, and disk bytes per step at each concurrency, of one sidecar."""
    out: dict[str, Any] = {"disk_bytes_per_step": {}, "steps_per_s": {}}
    with tempfile.TemporaryDirectory(prefix="aa-fp-") as tmp:
        workdir = Path(tmp)
        spec, cwd = sidecar_spec(workdir, source)
        with running(spec, cwd) as pid:
            time.sleep(SETTLE_S)
            idle = proc_status(pid)
            out["rss_idle_mib"] = _mib(idle.get("VmRSS"))
            out["idle_smaps_mib"] = {k: _mib(idle.get(k)) for k in ("Pss_Anon", "Pss_File", "Private_Dirty")}
            for level in levels:
                progress(f"footprint: sidecar at concurrency {level} ({warmup_s:g} s warm-up, {duration_s:g} s)")
                before, entries_before = proc_status(pid), journal_entries(workdir / "journal.db")
                point = step_load(spec.address, level, duration_s, warmup_s)
                after, entries_after = proc_status(pid), journal_entries(workdir / "journal.db")
                # Every step of the point, warm-up included, is two entries: the writes of all of them, over them.
                steps = (entries_after - entries_before) / 2
                key = f"c{level}"
                if steps and "write_bytes" in before and "write_bytes" in after:
                    out["disk_bytes_per_step"][key] = round((after["write_bytes"] - before["write_bytes"]) / steps)
                else:
                    out["disk_bytes_per_step"][key] = None
                out["steps_per_s"][key] = point.get("steps_per_s")
                if "error" in point or point.get("errors"):
                    out.setdefault("errors", {})[key] = point.get("error") or point.get("errors")
            end = proc_status(pid)
            out["rss_peak_mib"] = _mib(end.get("VmHWM"))
            out["rss_after_load_mib"] = _mib(end.get("VmRSS"))
        journal = workdir / "journal.db"
        with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as conn:
            out["journal_page_size"] = conn.execute("PRAGMA page_size").fetchone()[0]
            avg = conn.execute("SELECT avg(length(entry) + length(signature)) FROM journal").fetchone()[0]
            out["entry_bytes_avg"] = round(avg) if avg else None
    return out


def measure_echo(concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """The bare echo server's idle RSS and its peak after ``bench.loadgen`` at ``concurrency``."""
    with tempfile.TemporaryDirectory(prefix="aa-fp-echo-") as tmp:
        spec = echo_spec(Path(tmp))
        with running(spec, ROOT) as pid:
            time.sleep(SETTLE_S)
            idle = proc_status(pid)
            progress(f"footprint: echo server at concurrency {concurrency}")
            point = measure(spec.address, concurrency, duration_s, warmup_s)
            end = proc_status(pid)
    return {
        "rss_idle_mib": _mib(idle.get("VmRSS")),
        "rss_peak_mib": _mib(end.get("VmHWM")),
        "rps": point.get("rps"),
    }


def measure_raw_sqlite(entry_bytes: int, steps: int = RAW_STEPS) -> dict[str, Any]:
    """Bytes written per step by a raw, fsync'd SQLite insert of two rows the size of the sidecar's entries."""
    with tempfile.TemporaryDirectory(prefix="aa-fp-raw-") as tmp:
        done = subprocess.run(
            [sys.executable, "-c", _RAW_SQLITE, str(Path(tmp) / "raw.db"), str(steps), str(entry_bytes)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    per_step, page_size = done.stdout.split()
    return {"bytes_per_step_c1": round(float(per_step)), "page_size": int(page_size), "row_bytes": entry_bytes}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def run(
    duration_s: float = DEFAULT_DURATION_S,
    warmup_s: float = 1.0,
    source: Path | None = None,
    levels: Sequence[int] = LEVELS,
) -> dict[str, Any]:
    """The ``footprint`` section: the sidecar, then the echo server, then raw SQLite, one after the other."""
    load_before = round(os.getloadavg()[0], 2)
    byte_compile(source)
    sidecar = measure_sidecar(source, levels, duration_s, warmup_s)
    echo = measure_echo(max(levels), duration_s, warmup_s)
    raw = measure_raw_sqlite(sidecar.get("entry_bytes_avg") or 1200)
    disk = sidecar["disk_bytes_per_step"]
    return {
        **sidecar,
        "source": str(source) if source else "this checkout",
        "byte_compiled": True,
        "baseline": {"echo": echo, "raw_sqlite": raw},
        "ratios": {
            "rss_idle_over_echo": _ratio(sidecar.get("rss_idle_mib"), echo["rss_idle_mib"]),
            "rss_peak_over_echo": _ratio(sidecar.get("rss_peak_mib"), echo["rss_peak_mib"]),
            "disk_c1_over_raw_sqlite": _ratio(disk.get("c1"), raw["bytes_per_step_c1"]),
        },
        "targets": {
            "rss_idle_mib": {"target": TARGET_RSS_IDLE_MIB, "met": _below(sidecar.get("rss_idle_mib"), 48.0)},
            "rss_peak_mib": {"target": TARGET_RSS_PEAK_MIB, "met": _below(sidecar.get("rss_peak_mib"), 80.0)},
        },
        "load_avg_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "duration_s": duration_s,
    }


def _below(value: float | None, target: float) -> bool | None:
    return None if value is None else value < target


def format_result(fp: dict[str, Any]) -> str:
    """The footprint table, for humans."""
    echo, raw = fp["baseline"]["echo"], fp["baseline"]["raw_sqlite"]
    disk = fp["disk_bytes_per_step"]
    lines = [
        f"footprint ({fp['source']}; load average {fp['load_avg_1m']['before']} -> {fp['load_avg_1m']['after']})",
        f"  sidecar RSS idle {fp.get('rss_idle_mib')} MiB, peak {fp.get('rss_peak_mib')} MiB "
        f"(after load {fp.get('rss_after_load_mib')} MiB); echo server idle {echo['rss_idle_mib']} MiB, "
        f"peak {echo['rss_peak_mib']} MiB",
        f"  idle smaps: {fp.get('idle_smaps_mib')}",
        "  disk bytes per step   " + "".join(f"{k:>10}" for k in disk),
        "    sidecar             " + "".join(f"{v if v is not None else '-':>10}" for v in disk.values()),
        f"    raw SQLite (c1, page {raw['page_size']}, {raw['row_bytes']} B rows): {raw['bytes_per_step_c1']}",
        f"  journal page size {fp.get('journal_page_size')}, entry + signature {fp.get('entry_bytes_avg')} B avg",
        f"  ratios: {fp['ratios']}",
        f"  targets (informational): idle < {TARGET_RSS_IDLE_MIB:g} MiB "
        f"{_met(fp['targets']['rss_idle_mib']['met'])}, peak < {TARGET_RSS_PEAK_MIB:g} MiB "
        f"{_met(fp['targets']['rss_peak_mib']['met'])}",
    ]
    return "\n".join(lines)


def _met(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "NOT met")


def main(argv: Sequence[str] | None = None) -> int:
    """Measures, prints the table and the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        help=f"measured seconds per point (default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded seconds before each point (default 1)")
    parser.add_argument("--source", type=Path, help="run the sidecar from this checkout instead")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"results file (default {RESULTS_PATH})")
    args = parser.parse_args(argv)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    result = {"footprint": run(args.duration, args.warmup, args.source), "machine": machine_info()}
    print(format_result(result["footprint"]))
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
