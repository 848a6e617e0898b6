"""Decide with limits shared in Redis against the same limits in-process, measured in the same run (ADR 0015).

``bench.run`` starts two sidecars in turn with one policy (a rate limit, a count budget and a steps budget on the
load generator's ``kb.search``, all far too large to stop anything, so every Decide is subject to three limits):
``limits_local`` keeps them in the process, ``limits_redis`` in the Redis at ``$BENCH_REDIS_URL`` (default the
local one), under a key prefix of its own that is deleted afterwards. The section is bounded: a few seconds per
point at two concurrency levels, whatever ``--duration`` says. Without Redis it is skipped, saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CONCURRENCY = (1, 16)
MAX_DURATION_S = 3.0
PREFIX = f"aabench-{uuid.uuid4().hex[:8]}"

POLICY = """version: 1
access: {default: allow}
limits:
  - {name: tenant_rate, type: rate, actions: ["kb.*"], key: [tenant], rate: 1000000/s, burst: 1000000000}
  - {name: tenant_daily, type: count, actions: ["kb.*"], key: [tenant], max: 1000000000000, window: 24h}
  - {name: run_steps, type: steps, actions: ["*"], max: 1000000000}
"""


def prepare(workdir: Path) -> None:
    """Writes the benchmark's policy where ``agentaudit dev --dir workdir`` will find it."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policy.yaml").write_text(POLICY)


def store_env() -> dict[str, str]:
    """The environment that puts the sidecar's limits in Redis."""
    return {"AGENTAUDIT_LIMITS_STORE": REDIS_URL, "AGENTAUDIT_LIMITS_KEY_PREFIX": PREFIX}


def unavailable() -> str:
    """Why Redis cannot be benchmarked (empty: it answers)."""
    try:
        import redis  # noqa: PLC0415 - the optional extra
    except ImportError:
        return "the redis package is not installed (pip install 'agentaudit[redis]')"
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_URL} is not answering: {exc}"
    finally:
        client.close()
    return ""


def cleanup() -> int:
    """Deletes the keys this run left (step counts live a day otherwise); returns how many."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{PREFIX}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


def compare(local: dict[str, Any], shared: dict[str, Any], concurrency: Sequence[int]) -> dict[str, Any]:
    """Redis/in-process throughput and the p50 difference at each concurrency."""
    rps: dict[str, float | None] = {}
    p50: dict[str, float | None] = {}
    for level in concurrency:
        key = f"c{level}"
        lo, sh = local.get(key, {}), shared.get(key, {})
        rps[key] = round(sh["rps"] / lo["rps"], 3) if lo.get("rps") and "rps" in sh else None
        both = lo.get("p50_ms") is not None and sh.get("p50_ms") is not None
        p50[key] = round(sh["p50_ms"] - lo["p50_ms"], 3) if both else None
    return {"rps": rps, "p50_delta_ms": p50}


def format_result(result: dict[str, Any]) -> str:
    """The shared-limits section of the bench table."""
    if "skipped" in result:
        return f"Decide with limits in Redis: skipped ({result['skipped']})"
    keys = [f"c{level}" for level in result["concurrency"]]
    rows = ["Decide, 3 limits: in-process vs Redis" + "".join(f"{key:>18}" for key in keys)]
    for name in ("limits_local", "limits_redis"):
        per = result[name]
        cells = []
        for key in keys:
            row = per.get(key, {})
            cells.append(f"{row['rps']:>8.0f} rps {row['p50_ms']:>5.2f}ms" if "rps" in row else f"{'-':>18}")
        rows.append(f"  {name:<35}" + "".join(f"{c:>18}" for c in cells))
    ratio = result["redis_over_local"]
    rows.append(
        "  redis / in-process rps" + " " * 15 + "".join(f"{_num(ratio['rps'][k], '.2f', 'x'):>18}" for k in keys)
    )
    rows.append("  p50 delta (ms)" + " " * 23 + "".join(f"{_num(ratio['p50_delta_ms'][k], '+.3f'):>18}" for k in keys))
    return "\n".join(rows)


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"
