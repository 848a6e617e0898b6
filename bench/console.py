"""The web console's server time with a million events in the collector's store, against an empty store.

Run as ``python -m bench.console`` (``make bench`` runs it too). Two SQLite collector stores, each holding the
same measured fixtures: 20 pending approvals and one 200-step run (400 signed events); the *full* one also holds
``--events`` (default 1,000,000) background events of 50 tenants, 10,000 runs and a mix of decisions, every one a
valid signed, chained entry of one origin inserted in bulk (signing is the slow part: the store is kept in
``bench/results/console-store-N.db`` and reused by later runs).

For each store the console app (the real one: guard, session, read model, template) answers in-process requests
through httpx's ASGI transport, so what is timed is the server's work alone: the approvals inbox, a search page
(tenant filter, newest first, 50 rows), a search page's second page, and the 200-step run timeline (every event's
signature checked again). ``--requests`` (default 40) per page after 3 warm-ups; p50 and p95 in ms, and the
full/empty ratio. Figures are informational, never a pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sqlite3
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from gateway.canonical import canonical_json
from gateway.collector.fleet import open_fleet
from gateway.collector.sqlite_store import SqliteCollectorStore
from gateway.collector.store import EVENT_COLUMNS
from gateway.config import OperatorConfig
from gateway.config.sidecar import OperatorTokenConfig
from gateway.console import pages
from gateway.console.auth import COOKIE, Sessions
from gateway.console.web import Console, console_app
from gateway.identity import Operator
from gateway.journal.entry import ZERO_HASH, EventKind, encode_entry, leaf_hash, signature_payload
from gateway.journal.schema import indexed_values
from gateway.signing import Ed25519Signer

RESULTS = Path(__file__).parent / "results"
ORIGIN = "bench.console/sidecar-1"
KEY = Ed25519Signer(ORIGIN, bytes([3]) * 32)
CONTROL = Ed25519Signer("bench.console/control", bytes([4]) * 32)
DEFAULT_EVENTS = 1_000_000
DEFAULT_REQUESTS = 40
RUN_STEPS = 200
APPROVALS = 20
_BATCH = 20_000


class _Journal:
    """Signed, chained entries of one origin, written straight into a collector store's ``events`` table."""

    def __init__(self, conn: sqlite3.Connection, start_ns: int) -> None:
        self.conn = conn
        self.seq = 0
        self.prev = ZERO_HASH
        self.nanos = start_ns
        self.rows: list[tuple[Any, ...]] = []
        self.fleet_rows: list[tuple[int, bytes, bytes]] = []

    def append(self, kind: EventKind, fields: dict[str, Any], *, keep: bool = False) -> None:
        self.nanos += 1_000
        body = {"event_id": f"evt_{uuid.uuid4().hex}", "kind": kind.label, **fields}
        raw = canonical_json(body)
        entry = encode_entry(kind, self.seq, self.nanos, self.prev, KEY.key_id, raw)
        signature = KEY.sign(signature_payload(ORIGIN, entry))
        self.prev = leaf_hash(entry, signature)
        self.rows.append((ORIGIN, self.seq, entry, signature, self.prev, self.nanos, *indexed_values(body)))
        if keep:
            self.fleet_rows.append((self.seq, entry, signature))
        self.seq += 1
        if len(self.rows) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            marks = ", ".join("?" * len(EVENT_COLUMNS))
            self.conn.executemany(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({marks})", self.rows)
            self.conn.commit()
            self.rows = []


def _background(journal: _Journal, i: int) -> None:
    run = i // 100
    decision = ("allow", "allow", "allow", "stop", "approval_required")[i % 5]
    journal.append(
        EventKind.PRE_EXEC,
        {
            "run_id": f"bg-{run}",
            "step_id": i % 100 + 1,
            "tenant_id": f"t_{run % 50}",
            "agent_id": f"agent-{run % 7}",
            "actor": {"type": "user", "id": "u_1"},
            "action": ("kb.search", "crm.lookup", "refund.create")[i % 3],
            "args": {"q": "text", "n": i},
            "redacted_paths": [],
            "decision": decision,
            "reason": "allowed" if decision == "allow" else ("rate_limited_tenant" if decision == "stop" else decision),
            "approval_id": "",
            "resumed_approval_id": "",
            "policy_version": "sha256:abc",
            "trace_id": f"{i:032x}",
        },
    )


def _fixtures(journal: _Journal) -> None:
    for step in range(1, RUN_STEPS + 1):
        base = {
            "run_id": "run-200",
            "step_id": step,
            "tenant_id": "t_42",
            "agent_id": "support-bot",
            "actor": {"type": "user", "id": "u_1"},
            "action": "crm.lookup",
        }
        event_id = f"evt_{uuid.uuid4().hex}"
        journal.append(
            EventKind.PRE_EXEC,
            {
                **base,
                "event_id": event_id,
                "decision": "allow",
                "reason": "allowed",
                "args": {"n": step},
                "redacted_paths": [],
                "approval_id": "",
                "resumed_approval_id": "",
                "policy_version": "sha256:abc",
            },
        )
        journal.append(
            EventKind.POST_EXEC,
            {**base, "pre_event_id": event_id, "status": "succeeded", "duration_ns": 1_000_000 + step * 1000},
        )
    for n in range(APPROVALS):
        journal.append(
            EventKind.PRE_EXEC,
            {
                "run_id": f"run-apr-{n}",
                "step_id": 1,
                "tenant_id": "t_42",
                "agent_id": "billing-bot",
                "actor": {"type": "user", "id": "agent-runner"},
                "action": "refund.create",
                "args": {"order_id": f"o_{n}", "amount": 250, "customer": {}},
                "redacted_paths": ["args.customer.email"],
                "decision": "approval_required",
                "reason": "approval_required",
                "policy_rule": "big-refunds",
                "policy_version": "sha256:abc",
                "approvers": [],
                "approvals_required": 1,
                "approval_expires_in_s": "never",
                "approval_id": f"apr_bench_{n}",
                "resumed_approval_id": "",
            },
            keep=True,
        )


async def _build(path: Path, events: int) -> None:
    """A store with ``events`` background events (0: empty) and the fixtures, the fixtures last (newest)."""
    store = SqliteCollectorStore(path)
    await store.start()
    await store.register_origin(ORIGIN, [KEY.verifier])
    await store.aclose()
    conn = sqlite3.connect(path)
    journal = _Journal(conn, time.time_ns() - 3600 * 10**9)
    step_ns = max(1, (3600 * 10**9 - 10**9) // max(events, 1))
    for i in range(events):
        _background(journal, i)
        journal.nanos += step_ns - 1_000
    _fixtures(journal)
    journal.flush()
    conn.execute("UPDATE origins SET size = ? WHERE origin = ?", (journal.seq, ORIGIN))
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    (path.with_suffix(".fleet.json")).write_text(json.dumps([[s, e.hex(), g.hex()] for s, e, g in journal.fleet_rows]))


def _store_path(events: int, progress: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"console-store-{events}.db"
    if path.exists() and path.with_suffix(".fleet.json").exists():
        return path
    progress(f"console bench: building a store of {events:,} signed events (once; kept in {path.name})")
    partial = path.with_suffix(".partial")
    for leftover in (partial, partial.with_suffix(".fleet.json")):
        leftover.unlink(missing_ok=True)
    started = time.monotonic()
    asyncio.run(_build(partial, events))
    partial.with_suffix(".fleet.json").rename(path.with_suffix(".fleet.json"))
    partial.rename(path)
    progress(f"console bench: built in {time.monotonic() - started:.0f} s")
    return path


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def _measure(path: Path, requests: int) -> dict[str, Any]:
    # The fleet rows it records are idempotent: the kept store is used in place.
    store = SqliteCollectorStore(path)
    await store.start()
    fleet = open_fleet(store, CONTROL, replica="bench")
    await fleet.start()
    try:
        rows = [
            (s, bytes.fromhex(e), bytes.fromhex(g))
            for s, e, g in json.loads(path.with_suffix(".fleet.json").read_text())
        ]
        await fleet.record_entries(ORIGIN, rows)
        token = "bench-token"
        ops = OperatorConfig(
            tokens=(OperatorTokenConfig("bench", ("auditor",), hashlib.sha256(token.encode()).hexdigest()),)
        )
        sessions = Sessions(fleet.db, ops, 3600, {})
        console = Console(fleet, store, sessions, secure=False)
        sid, _ = await sessions.open(Operator("bench", frozenset({"auditor"})), "token")
        app = console_app(console)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console", cookies={COOKIE: sid}) as c:
            first = await c.get("/runs", params={"tenant_id": "t_42"})
            second_page = (
                first.text.split('rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
                if ('rel="next"' in first.text)
                else "/runs?tenant_id=t_42"
            )
            urls = {
                "inbox": "/approvals",
                "search": "/runs?tenant_id=t_42",
                "search_page_2": second_page,
                "search_unfiltered": "/runs",
                "timeline_200_steps": "/runs/run-200",
            }
            out: dict[str, Any] = {}
            for name, url in urls.items():
                for _ in range(3):
                    answer = await c.get(url)
                    assert answer.status_code == 200, (name, answer.status_code)
                samples = []
                for _ in range(requests):
                    started = time.perf_counter()
                    answer = await c.get(url)
                    samples.append(time.perf_counter() - started)
                    assert answer.status_code == 200
                out[name] = _ms(samples)
            samples = []  # the first view of a run: every signature verified (nothing remembered)
            for _ in range(requests):
                pages.forget_verified()
                started = time.perf_counter()
                answer = await c.get("/runs/run-200")
                samples.append(time.perf_counter() - started)
                assert answer.status_code == 200
            out["timeline_200_first_view"] = _ms(samples)
        return out
    finally:
        await fleet.aclose()
        await store.aclose()


def run(events: int = DEFAULT_EVENTS, requests: int = DEFAULT_REQUESTS, progress: Any = print) -> dict[str, Any]:
    """Both stores, in this process, in the order full, empty, full, empty: the first two rounds are a warm-up
    (imports, caches, the machine's clock) and discarded, so neither store gains from going second."""
    empty = _store_path(0, progress)
    full = _store_path(events, progress)
    progress("console bench: measuring the pages (a warm-up round on each store, then a measured one)")
    asyncio.run(_measure(full, max(3, requests // 4)))
    asyncio.run(_measure(empty, max(3, requests // 4)))
    result: dict[str, Any] = {"events": events, "requests": requests, "full": asyncio.run(_measure(full, requests))}
    result["empty"] = asyncio.run(_measure(empty, requests))
    result["p95_ratio"] = {
        k: round(result["full"][k]["p95_ms"] / max(result["empty"][k]["p95_ms"], 0.001), 2) for k in result["empty"]
    }
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


def format_result(result: dict[str, Any]) -> str:
    """The figures as a table."""
    lines = [
        f"console server time (ms; {result['requests']} requests per page; empty store vs {result['events']:,} "
        f"events; load {result['load_avg_1m']})",
        f"{'page':<22}{'empty p50':>11}{'empty p95':>11}{'full p50':>10}{'full p95':>10}{'p95 ratio':>11}",
    ]
    for page, empty in result["empty"].items():
        full = result["full"][page]
        lines.append(
            f"{page:<22}{empty['p50_ms']:>11}{empty['p95_ms']:>11}{full['p50_ms']:>10}{full['p95_ms']:>10}"
            f"{result['p95_ratio'][page]:>10}x"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    args = parser.parse_args(argv)
    result = run(args.events, args.requests)
    print(format_result(result))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
