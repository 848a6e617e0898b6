"""SearchEvents on the collector: every filter on both stores, time order across origins, keyset pages that stay
stable while batches arrive, and the RPC and ``agentaudit search --collector`` against a real collector."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentaudit.v1 import collector_pb2, collector_pb2_grpc, operator_pb2
from gateway.canonical import canonical_json
from gateway.collector.app import Collector
from gateway.collector.sqlite_store import SqliteCollectorStore
from gateway.collector.store import CollectorEventFilter, CollectorStore, SearchHit
from gateway.config import CollectorConfig
from gateway.journal.entry import HEADER_SIZE, EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.writer import JournalWriter
from gateway.signing import Ed25519Signer, write_secret_file
from tests.conftest import run_cli
from tests.test_collector_store import (
    ORIGIN,
    OTHER_ORIGIN,
    POSTGRES_DSN,
    REQUIRE_POSTGRES,
    WITNESS,
    Backend,
    checkpoint,
    drop_schema,
    ingest,
    postgres_unreachable,
    run,
    signer,
)

BASE_NS = 1_800_000_000_000_000_000
SEARCH_TOKEN = "search-token-0123456789"
N = 30
ACTIONS = ("crm.lookup", "crm.search", "kb.read_all", "refund.create", "x[1].y")
DECISIONS = ("allow", "stop", "approval_required")
REASONS = {"allow": "allowed", "stop": "rate_limited_tenant", "approval_required": "approval_required"}

Row = tuple[int, bytes, bytes]
Key = tuple[int, str, int]


class Event:
    """One written event: its keyset position and body."""

    def __init__(self, origin: str, seq: int, nanos: int, body: dict[str, Any]) -> None:
        self.origin, self.seq, self.nanos, self.body = origin, seq, nanos, body

    @property
    def key(self) -> Key:
        return (self.nanos, self.origin, self.seq)


def event_body(tag: str, i: int) -> tuple[EventKind, dict[str, Any]]:
    decision = DECISIONS[(i // 2) % 3]
    kind = EventKind.VIOLATION if i % 6 == 5 else EventKind.PRE_EXEC
    body: dict[str, Any] = {
        "event_id": f"evt_{tag}_{i:04d}",
        "kind": kind.label,
        "run_id": f"run_{i % 3}",
        "step_id": i,
        "tenant_id": f"t_{i % 2}",
        "agent_id": f"agent_{i % 4}",
        "action": ACTIONS[i % 5],
        "decision": decision,
        "reason": REASONS[decision],
        "timestamp": "2027-01-15T08:00:00.000000000Z",
    }
    if i % 4 == 1:
        body["policy_layer"] = "limits"
        body["policy_rule"] = f"rule_{i % 3}"
    if i % 5 == 2:
        body["actor"] = {"type": "user" if i % 2 else "service", "id": f"u_{i % 3}"}
    body["trace_id"] = f"{i % 7:032x}" if i % 7 else ""
    return kind, body


def nanos_of(origin: str, i: int) -> int:
    # Beta's even events share alpha's nanoseconds (ties break on origin), its odd ones fall in between.
    return BASE_NS + i * 10 + (5 if origin == OTHER_ORIGIN and i % 2 else 0)


def write(path: Path, key: Ed25519Signer, tag: str) -> tuple[list[Row], list[Event]]:
    """A real journal of N varied events; returns its rows (as the forwarder sends them) and the events."""

    async def append() -> None:
        writer = JournalWriter(path, key)
        await writer.start()
        try:
            for i in range(N):  # one at a time: seq order is time order
                kind, body = event_body(tag, i)
                await writer.append(kind, canonical_json(body), indexed_values(body), nanos_of(key.name, i))
        finally:
            await writer.aclose()

    asyncio.run(append())
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT seq, entry, signature, unix_nanos FROM journal ORDER BY seq").fetchall()
    finally:
        conn.close()
    events = [Event(key.name, seq, nanos, json.loads(bytes(e)[HEADER_SIZE:])) for seq, e, _, nanos in rows]
    return [(seq, bytes(e), bytes(s)) for seq, e, s, _ in rows], events


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The two stores, as in tests/test_collector_store.py (a fresh PostgreSQL schema per test)."""
    if request.param == "sqlite":
        yield Backend("sqlite", lambda: SqliteCollectorStore(tmp_path / "collector.db"))
        return
    reason = postgres_unreachable()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"AGENTAUDIT_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    from gateway.collector.postgres_store import PostgresCollectorStore  # noqa: PLC0415

    schema = f"aa_search_{uuid.uuid4().hex[:16]}"
    try:
        yield Backend("postgres", lambda: PostgresCollectorStore(POSTGRES_DSN, schema=schema))
    finally:
        drop_schema(schema)


@pytest.fixture
def journals(tmp_path: Path) -> dict[str, tuple[list[Row], list[Event]]]:
    return {
        ORIGIN: write(tmp_path / "alpha.db", signer(), "a"),
        OTHER_ORIGIN: write(tmp_path / "beta.db", signer(OTHER_ORIGIN), "b"),
    }


async def ingest_range(
    s: CollectorStore, journals: dict[str, tuple[list[Row], list[Event]]], start: int, end: int
) -> None:
    for origin, (rows, _) in journals.items():
        await ingest(s, rows[start:end], checkpoint(rows[:end], signer(origin)), origin)


def expected(
    journals: dict[str, tuple[list[Row], list[Event]]], keep: Callable[[Event], bool], *, upto: int = N
) -> list[Key]:
    return sorted(e.key for _, events in journals.values() for e in events[:upto] if keep(e))


def keys(hits: list[SearchHit]) -> list[Key]:
    return [(h.unix_nanos, h.origin, h.seq) for h in hits]


def actor_is(body: dict[str, Any], actor_type: str | None, actor_id: str) -> bool:
    actor = body.get("actor")
    return isinstance(actor, dict) and actor["id"] == actor_id and actor_type in (None, actor["type"])


CASES: list[tuple[dict[str, Any], Callable[[Event], bool]]] = [
    ({"run_id": "run_1"}, lambda e: e.body["run_id"] == "run_1"),
    ({"tenant_id": "t_0"}, lambda e: e.body["tenant_id"] == "t_0"),
    ({"agent_id": "agent_3"}, lambda e: e.body["agent_id"] == "agent_3"),
    ({"decision": "stop"}, lambda e: e.body["decision"] == "stop"),
    ({"reason": "approval_required"}, lambda e: e.body["reason"] == "approval_required"),
    ({"kind": "violation"}, lambda e: e.body["kind"] == "violation"),
    ({"origin": OTHER_ORIGIN}, lambda e: e.origin == OTHER_ORIGIN),
    ({"action": "crm.search"}, lambda e: e.body["action"] == "crm.search"),
    ({"action": "crm.*"}, lambda e: e.body["action"].startswith("crm.")),
    ({"action": "crm.[ls]*"}, lambda e: e.body["action"] in ("crm.lookup", "crm.search")),
    ({"action": "kb.read?all"}, lambda e: e.body["action"] == "kb.read_all"),
    ({"action": "kb%"}, lambda e: False),  # % and _ are literal, not LIKE wildcards
    ({"action": "x[[]1].y"}, lambda e: e.body["action"] == "x[1].y"),
    ({"since_ns": BASE_NS + 100, "until_ns": BASE_NS + 200}, lambda e: BASE_NS + 100 <= e.nanos < BASE_NS + 200),
    ({"policy_layer": "limits"}, lambda e: e.body.get("policy_layer") == "limits"),
    ({"policy_rule": "rule_2"}, lambda e: e.body.get("policy_rule") == "rule_2"),
    ({"actor": "user:u_1"}, lambda e: actor_is(e.body, "user", "u_1")),
    ({"actor": "u_0"}, lambda e: actor_is(e.body, None, "u_0")),
    ({"trace_id": f"{3:032x}"}, lambda e: e.body["trace_id"] == f"{3:032x}"),
    (
        {"tenant_id": "t_1", "decision": "allow", "origin": ORIGIN},
        lambda e: e.body["tenant_id"] == "t_1" and e.body["decision"] == "allow" and e.origin == ORIGIN,
    ),
    (
        {"run_id": "run_1", "policy_layer": "limits", "action": "crm.*"},
        lambda e: (
            e.body["run_id"] == "run_1"
            and e.body.get("policy_layer") == "limits"
            and e.body["action"].startswith("crm.")
        ),
    ),
]


def test_filters_match_the_sidecar_semantics_in_time_order_across_origins(
    store: Backend, journals: dict[str, tuple[list[Row], list[Event]]]
) -> None:
    async def scenario() -> None:
        async with store.open() as s:
            await ingest_range(s, journals, 0, N)
            everything = await s.search(CollectorEventFilter(), newest_first=False, after=None, limit=1000)
            assert keys(everything) == expected(journals, lambda e: True)
            assert {h.origin for h in everything[:4]} == {ORIGIN, OTHER_ORIGIN}, "origins interleave by time"
            first = everything[0]
            assert (first.entry, first.signature) == journals[first.origin][0][first.seq][1:]
            assert first.body == journals[first.origin][1][first.seq].body
            newest = await s.search(CollectorEventFilter(), newest_first=True, after=None, limit=1000)
            assert keys(newest) == keys(everything)[::-1]
            for filters, keep in CASES:
                hits = await s.search(CollectorEventFilter(**filters), newest_first=False, after=None, limit=1000)
                want = expected(journals, keep)
                assert keys(hits) == want, filters
                assert want or filters == {"action": "kb%"}, f"{filters} selects something"
                limited = await s.search(CollectorEventFilter(**filters), newest_first=True, after=None, limit=2)
                assert keys(limited) == want[::-1][:2], filters

    run(scenario())


def test_keyset_pages_are_stable_while_batches_arrive(
    store: Backend, journals: dict[str, tuple[list[Row], list[Event]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small scans, so body-side filters read several statements per page.
    monkeypatch.setattr("gateway.collector.sqlite_store.SEARCH_SCAN_ROWS", 3)
    monkeypatch.setattr("gateway.collector.postgres_store.SEARCH_SCAN_ROWS", 3)

    async def page_through(
        s: CollectorStore, flt: CollectorEventFilter, *, newest_first: bool, grow: bool
    ) -> list[Key]:
        seen: list[Key] = []
        after = None
        held = 10
        while True:
            page = await s.search(flt, newest_first=newest_first, after=after, limit=4)
            seen += keys(page)
            if grow and held < N:  # more batches of both origins between pages
                await ingest_range(s, journals, held, held + 5)
                held += 5
            if len(page) < 4:
                return seen
            after = keys(page)[-1]

    async def scenario() -> None:
        async with store.open() as s:
            await ingest_range(s, journals, 0, 10)
            seen = await page_through(s, CollectorEventFilter(), newest_first=False, grow=True)
            assert seen == expected(journals, lambda e: True), "every event once, in time order"
            layer = CollectorEventFilter(policy_layer="limits", tenant_id="t_1")
            seen = await page_through(s, layer, newest_first=True, grow=False)
            want = expected(journals, lambda e: e.body.get("policy_layer") == "limits" and e.body["tenant_id"] == "t_1")
            assert seen == want[::-1] and len(want) > 4

    run(scenario())


# --- the RPC and the CLI against a real collector -------------------------------------------------------------


@contextmanager
def running_collector(directory: Path) -> Iterator[str]:
    """A real :class:`Collector` (SQLite store) serving on a free port from its own event loop thread."""
    write_secret_file(directory / "witness.key", WITNESS.encode_private() + "\n")
    origins = []
    for origin in (ORIGIN, OTHER_ORIGIN):
        pub = directory / f"{origin.rsplit('/', 1)[-1]}.pub"
        pub.write_text(signer(origin).verifier.encode() + "\n")
        origins.append((origin, (pub,)))
    config = CollectorConfig(
        listen=("127.0.0.1:0",),
        store=f"sqlite:///{directory / 'collector.db'}",
        witness_key=directory / "witness.key",
        origins=tuple(origins),
        search_tokens=(hashlib.sha256(SEARCH_TOKEN.encode()).hexdigest(),),
    )
    (directory / "search.token").write_text(SEARCH_TOKEN + "\n")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    collector = Collector(config)
    try:
        asyncio.run_coroutine_threadsafe(collector.start(), loop).result(30)
        yield collector.bound[0]
    finally:
        asyncio.run_coroutine_threadsafe(collector.aclose(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_search_rpc_and_cli_against_a_real_collector(
    tmp_path: Path, journals: dict[str, tuple[list[Row], list[Event]]]
) -> None:
    (tmp_path / "c").mkdir()
    with running_collector(tmp_path / "c") as target, grpc.insecure_channel(target) as channel:
        collector = collector_pb2_grpc.CollectorServiceStub(channel)
        for origin, (rows, _) in journals.items():
            collector.Ingest(
                collector_pb2.IngestRequest(
                    origin=origin,
                    entries=[collector_pb2.JournalEntry(seq=q, entry=e, signature=sg) for q, e, sg in rows],
                    checkpoint=checkpoint(rows, signer(origin)),
                ),
                timeout=30,
            )

        def search(token: str = "", page_size: int = 0, **filters: Any) -> operator_pb2.SearchEventsResponse:
            return collector.SearchEvents(
                operator_pb2.SearchEventsRequest(
                    filter=operator_pb2.EventFilter(**filters), page_size=page_size, page_token=token
                ),
                metadata=[("authorization", f"Bearer {SEARCH_TOKEN}")],
                timeout=30,
            )

        want = expected(journals, lambda e: e.body["tenant_id"] == "t_1")
        seen: list[tuple[str, int]] = []
        token = ""
        while True:
            reply = search(token, page_size=7, tenant_id="t_1")
            seen += [(ev.origin, ev.seq) for ev in reply.events]
            for ev in reply.events:
                assert ev.body["tenant_id"] == "t_1" and len(ev.signature) == 64
            token = reply.next_page_token
            if not token:
                break
        assert seen == [(o, q) for _, o, q in want]
        beta = search(origin=OTHER_ORIGIN, kind="violation")
        assert [(e.origin, e.seq) for e in beta.events] == [
            (o, q)
            for _, o, q in expected(journals, lambda e: e.origin == OTHER_ORIGIN and e.body["kind"] == "violation")
        ]
        assert len(search().events) == 2 * N  # default page size 100
        for bad in ("not-a-token!", base64.urlsafe_b64encode(b"12:no-seq").decode()):
            with pytest.raises(grpc.RpcError) as info:
                search(bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            search(run_id="x" * 300)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Searching every journal needs a search token: none, or a wrong one, is refused.
        for metadata in ([], [("authorization", "Bearer wrong")]):
            with pytest.raises(grpc.RpcError) as info:
                collector.SearchEvents(operator_pb2.SearchEventsRequest(), metadata=metadata, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # The CLI: JSON lines with origin and seq, and the table with an ORIGIN column and a page token.
        token_file = str(tmp_path / "c" / "search.token")
        cli = run_cli(
            "search", "--collector", target, "--token-file", token_file, "--tenant", "t_1", "--json", "--limit", "1000"
        )
        assert cli.returncode == 0, cli.stderr
        lines = [json.loads(line) for line in cli.stdout.splitlines()]
        assert [(line["origin"], line["seq"]) for line in lines] == [(o, q) for _, o, q in want]
        assert lines[0]["step_id"] == journals[lines[0]["origin"]][1][lines[0]["seq"]].body["step_id"]
        table = run_cli(
            "search",
            "--collector",
            target,
            "--token-file",
            token_file,
            "--origin",
            ORIGIN,
            "--decision",
            "stop",
            "--limit",
            "3",
        )
        assert table.returncode == 0, table.stderr
        out = table.stdout.splitlines()
        assert out[0].split()[:3] == ["TIME", "ORIGIN", "SEQ"]
        assert all(ORIGIN in line for line in out[1:4])
        assert out[-1].startswith("3 events (more: --page-token ")
        next_token = out[-1].rsplit(" ", 1)[-1].rstrip(")")
        rest = run_cli(
            "search",
            "--collector",
            target,
            "--token-file",
            token_file,
            "--origin",
            ORIGIN,
            "--decision",
            "stop",
            "--json",
            "--page-token",
            next_token,
        )
        stops = [q for _, o, q in expected(journals, lambda e: e.origin == ORIGIN and e.body["decision"] == "stop")]
        assert [json.loads(line)["seq"] for line in rest.stdout.splitlines()] == stops[3:]
        neither = run_cli("search", "--tenant", "t_1")
        assert neither.returncode == 2 and "--collector" in neither.stderr
