"""The fleet store on PostgreSQL with two collector replicas: how fast an act on one wakes the other, and what an
approval costs to record and to answer.

Run as ``python -m bench.fleet_store``. Two :class:`~gateway.collector.fleet.FleetControl` replicas (A and B) share
one fresh schema of ``$AGENTAUDIT_BENCH_POSTGRES_DSN`` (default the local ``test`` database), dropped afterwards:

* **wake**: B waits for the next act (``wait_for_act``) while A engages or releases a fleet kill switch; measured
  from A's commit returning to B's waiter returning. Two rounds that take turns: B woken by ``LISTEN/NOTIFY``, and
  the baseline, B with LISTEN turned off (its 1 s poll only), so the ratio shows what NOTIFY buys.
* **record**: A records one sidecar's ``approval_required`` entry (verified against the origin's key), then B
  lists it: the collector-side part of "approval opened to listed" (the transport before it is not included).
* **vote**: grants on distinct approvals, alternating between A and B (each one a serialised write transaction
  with its signed ``control_log`` row).

Figures are informational; nothing fails when PostgreSQL is missing (the result says ``skipped``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from gateway.collector.fleet import FleetControl
from gateway.collector.fleet_postgres import PostgresFleetDb
from gateway.collector.postgres_store import PostgresCollectorStore
from gateway.identity import Operator
from tests.fleet_helpers import CONTROL, ORIGIN, SidecarJournal, journal_key

DSN = os.environ.get("AGENTAUDIT_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN = Operator("bench-admin", frozenset({"admin"}))


class _PollOnlyDb(PostgresFleetDb):
    """The baseline: no LISTEN connection, so only the watcher's poll sees another replica's act."""

    async def listen(self, wake: Any) -> None:
        return None


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "n": len(ordered),
    }


async def _wake_round(a: FleetControl, b: FleetControl, acts: int) -> list[float]:
    samples = []
    for i in range(acts):
        head = await b.head_seq()
        waiter = asyncio.create_task(b.wait_for_act(head, timeout_s=10))
        await asyncio.sleep(0.01)  # B is waiting before A acts
        if i % 2 == 0:
            await a.engage_switch("global", "", "bench", ADMIN, "cli")
        else:
            await a.release_switch("global", "", "bench", ADMIN, "cli")
        committed = time.perf_counter()
        await waiter
        samples.append(time.perf_counter() - committed)
    return samples


async def _replica(schema: str, name: str, *, listen: bool) -> tuple[PostgresCollectorStore, FleetControl]:
    store = PostgresCollectorStore(DSN, schema=schema)
    await store.start()
    await store.register_origin(ORIGIN, [journal_key(ORIGIN).verifier])
    db = PostgresFleetDb(DSN, schema) if listen else _PollOnlyDb(DSN, schema)
    fleet = FleetControl(db, CONTROL, replica=name)
    await fleet.start()
    return store, fleet


async def measure(acts: int, approvals: int) -> dict[str, Any]:
    """Runs the three measurements on a fresh schema (dropped afterwards)."""
    schema = f"aa_bench_{uuid.uuid4().hex[:12]}"
    opened: list[Any] = []
    try:
        sa, a = await _replica(schema, "bench-a", listen=True)
        opened += [(sa, a)]
        sb, b = await _replica(schema, "bench-b", listen=True)
        opened += [(sb, b)]
        sp, poll_only = await _replica(schema, "bench-b-poll", listen=False)
        opened += [(sp, poll_only)]
        notify: list[float] = []
        poll: list[float] = []
        for _ in range(2):  # take turns, to damp a noisy machine
            notify += await _wake_round(a, b, acts // 4)
            poll += await _wake_round(a, poll_only, acts // 4)
        journal = SidecarJournal(journal_key())
        record, listed, votes = [], [], []
        for i in range(approvals):
            row = journal.open_approval(f"apr_bench_{i}")
            started = time.perf_counter()
            await a.record_entries(ORIGIN, [row])
            record.append(time.perf_counter() - started)
            ids = {x.approval_id for x in await b.list_approvals(limit=1000)}
            listed.append(time.perf_counter() - started)
            assert f"apr_bench_{i}" in ids
        for i in range(approvals):
            approver = Operator(f"approver-{i}", frozenset({"approver"}))
            started = time.perf_counter()
            await (a, b)[i % 2].vote(f"apr_bench_{i}", grant=True, operator=approver, comment="", channel="cli")
            votes.append(time.perf_counter() - started)
        wake_notify, wake_poll = _ms(notify), _ms(poll)
        return {
            "wake_notify": wake_notify,
            "wake_poll_only": wake_poll,
            "notify_over_poll_p50": round(wake_notify["p50_ms"] / wake_poll["p50_ms"], 3)
            if wake_poll["p50_ms"]
            else None,
            "record_entry": _ms(record),
            "recorded_to_listed_on_b": _ms(listed),
            "vote": {**_ms(votes), "votes_per_s": round(len(votes) / sum(votes), 1)},
        }
    finally:
        for store, fleet in opened:
            await fleet.aclose()
            await store.aclose()
        await _drop(schema)


async def _drop(schema: str) -> None:
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415

    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def run(acts: int = 40, approvals: int = 100) -> dict[str, Any]:
    """The result, or ``skipped`` with the reason when PostgreSQL is unreachable."""
    try:
        return asyncio.run(asyncio.wait_for(measure(acts, approvals), 300))
    except OSError as exc:
        return {"skipped": True, "reason": f"PostgreSQL at {DSN.rsplit('@', 1)[-1]} unreachable: {exc}"}


def format_result(result: dict[str, Any]) -> str:
    """The section of the bench table."""
    title = "fleet store on PostgreSQL, two replicas"
    if result.get("skipped"):
        return f"{title}\n  skipped: {result['reason']}"
    rows = [f"{title:<48} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8} {'n':>5}"]
    for key, label in (
        ("wake_notify", "act on A -> B's waiter returns (NOTIFY)"),
        ("wake_poll_only", "  the same, LISTEN off (1 s poll; baseline)"),
        ("record_entry", "record one approval entry on A"),
        ("recorded_to_listed_on_b", "record on A, then listed by B"),
        ("vote", "one vote (serialised, signed act)"),
    ):
        r = result[key]
        rows.append(f"  {label:<46} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['max_ms']:>8.2f} {r['n']:>5}")
    rows.append(
        f"  NOTIFY / poll-only wake p50: {result['notify_over_poll_p50']}x; {result['vote']['votes_per_s']} votes/s"
    )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table, then the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--acts", type=int, default=40, help="acts in the wake measurement (default 40)")
    parser.add_argument("--approvals", type=int, default=100, help="approvals recorded and voted (default 100)")
    args = parser.parse_args(argv)
    result = run(args.acts, args.approvals)
    print(format_result(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
