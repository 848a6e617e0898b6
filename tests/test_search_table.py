"""The search table (gateway/journal/search_table.py): copied in batches, never changing what a search returns.

Every search here runs against real journals written by the real writer, and is compared with the answer worked
out from the bodies that were appended: with the table as the writer left it, lagging behind the journal by any
amount, missing altogether (a journal written before it existed), and after a legacy journal is migrated.
Tampering with the table is what ``verify`` must report.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.canonical import canonical_json
from gateway.journal import writer as writer_module
from gateway.journal.bundle import _latest_cosigned as latest_cosigned
from gateway.journal.bundle import _policy_entries as policy_entries
from gateway.journal.entry import EventKind
from gateway.journal.query import EventFilter, _segments, select
from gateway.journal.replay import first_seq_since as replay_first_seq_since
from gateway.journal.schema import indexed_values
from gateway.journal.search_table import LEGACY_INDEXES, LEGACY_LAYOUT_SQL, SEARCH_BATCH, SEARCH_FIELDS
from gateway.journal.state import trusted_state
from gateway.journal.store import first_seq_since as store_first_seq_since
from gateway.journal.verify import _latest_prune_marker as latest_prune_marker
from gateway.journal.verify import verify_journal
from gateway.journal.writer import JournalWriter
from tests.journal_helpers import fixed_signer

TENANTS = ("t_a", "t_b", "t_c")
AGENTS = ("bot", "crawler")
ACTIONS = ("kb.search", "kb.read", "refund.create", "crm[1].lookup")
DECISIONS = ("allow", "stop", "approval_required")
REASONS = ("allowed", "rate_limited_tenant", "stopped_by_rule")


def entry_body(i: int, draw: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": f"evt_{i:06d}", "kind": draw.get("kind", "pre_exec"), "run_id": f"run_{i % 5}"}
    body.update({k: v for k, v in draw.items() if k != "kind" and v is not None})
    return body


T0 = 1_700_000_000_000_000_000
TICK = 1_000  # the n-th entry written is stamped T0 + n * TICK (by default)


async def write(path: Path, chunks: list[list[dict[str, Any]]], times: list[int] | None = None) -> None:
    """Appends each chunk concurrently (one group commit each), the chunks one after the other."""
    writer = JournalWriter(path, fixed_signer())
    await writer.start()
    n = writer.size
    try:
        for chunk in chunks:
            stamps = [T0 + (n + i) * TICK if times is None else times[n + i] for i in range(len(chunk))]
            n += len(chunk)
            await asyncio.gather(
                *(
                    writer.append(EventKind.PRE_EXEC, canonical_json(b), indexed_values(b), stamp)
                    for b, stamp in zip(chunk, stamps, strict=True)
                )
            )
    finally:
        await writer.aclose()


def found(path: Path, flt: EventFilter, after: int | None, limit: int | None, page_size: int) -> list[int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [seq for seq, _ in select(conn, flt, after_seq=after, limit=limit, page_size=page_size)]


def search_rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [seq for (seq,) in conn.execute("SELECT seq FROM journal_search ORDER BY seq")]


bodies_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["pre_exec", "post_exec"]),
            "tenant_id": st.none() | st.sampled_from(TENANTS),
            "agent_id": st.none() | st.sampled_from(AGENTS),
            "action": st.none() | st.sampled_from(ACTIONS),
            "decision": st.none() | st.sampled_from(DECISIONS),
            "reason": st.none() | st.sampled_from(REASONS),
        }
    ),
    min_size=1,
    max_size=24,
)
FILTER_VALUES: dict[str, tuple[str, ...]] = {
    "tenant_id": TENANTS,
    "agent_id": AGENTS,
    "action": (*ACTIONS, "kb.*", "*.create", "crm[[]1].*", "r?fund.*"),
    "decision": DECISIONS,
    "reason": REASONS,
    "kind": ("pre_exec", "post_exec"),
    "run_id": ("run_1", "run_9"),
}


TIME_BOUNDS = st.none() | st.integers(min_value=-3, max_value=3 * SEARCH_BATCH + 3).map(lambda n: T0 + n * TICK)


@st.composite
def filter_strategy(draw: st.DrawFn) -> EventFilter:
    """One or two filters (more rarely match anything in a short pattern), at least one on the search table, and
    a time window or none."""
    first = draw(st.sampled_from([*SEARCH_FIELDS, "kind"]))
    second = draw(st.none() | st.sampled_from(sorted(FILTER_VALUES)))
    fields = {f: draw(st.sampled_from(FILTER_VALUES[f])) for f in {first, second} if f is not None}
    return EventFilter(
        **fields, since_ns=draw(TIME_BOUNDS), until_ns=draw(TIME_BOUNDS), newest_first=draw(st.booleans())
    )


def matches_by_hand(body: dict[str, Any], flt: EventFilter, unix_nanos: int) -> bool:
    if flt.since_ns is not None and unix_nanos < flt.since_ns:
        return False
    if flt.until_ns is not None and unix_nanos >= flt.until_ns:
        return False
    for field in (*SEARCH_FIELDS, "run_id", "kind"):
        wanted = getattr(flt, field)
        if wanted is None:
            continue
        value = body.get(field)
        if field == "action":
            if not (isinstance(value, str) and fnmatch.fnmatchcase(value, wanted)):
                return False
        elif value != wanted:
            return False
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pattern=bodies_strategy,
    count=st.integers(min_value=0, max_value=3 * SEARCH_BATCH),
    chunk=st.integers(min_value=1, max_value=SEARCH_BATCH + 7),
    lag=st.integers(min_value=0, max_value=2 * SEARCH_BATCH),
    flt=filter_strategy(),
    after=st.none() | st.integers(min_value=-1, max_value=3 * SEARCH_BATCH),
    limit=st.none() | st.integers(min_value=1, max_value=50),
    page_size=st.sampled_from([1, 3, 512]),
)
def test_a_search_returns_the_same_whatever_the_search_table_holds(
    tmp_path_factory: pytest.TempPathFactory,
    pattern: list[dict[str, Any]],
    count: int,
    chunk: int,
    lag: int,
    flt: EventFilter,
    after: int | None,
    limit: int | None,
    page_size: int,
) -> None:
    path = tmp_path_factory.mktemp("search") / "journal.db"
    # The drawn pattern repeated to `count` entries: journals spanning up to three batches stay quick to draw.
    bodies = [entry_body(i, pattern[i % len(pattern)]) for i in range(count)]
    asyncio.run(write(path, [bodies[i : i + chunk] for i in range(0, len(bodies), chunk)]))
    want = [s for s in range(len(bodies)) if matches_by_hand(bodies[s], flt, T0 + s * TICK)]
    if flt.newest_first:
        want.reverse()
    if after is not None:
        want = [s for s in want if (s < after if flt.newest_first else s > after)]
    want = want if limit is None else want[:limit]

    assert found(path, flt, after, limit, page_size) == want, "as the writer left the table"
    assert len(search_rows(path)) == count - count % SEARCH_BATCH or chunk > 1, "full batches copied"
    with sqlite3.connect(path) as conn:  # the table behind the journal by `lag` more entries (not copied yet)
        (top,) = conn.execute("SELECT coalesce(max(seq), -1) FROM journal_search").fetchone()
        conn.execute("DELETE FROM journal_search WHERE seq > ?", (top - lag,))
    assert found(path, flt, after, limit, page_size) == want, f"with the table {lag} entries further behind"
    with sqlite3.connect(path) as conn:  # a journal written before the table existed
        conn.execute("DROP TABLE journal_search")
    assert found(path, flt, after, limit, page_size) == want, "without the table"


@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize("lag", [0, 1, 7, SEARCH_BATCH + 5])
def test_every_entry_is_found_once_either_side_of_the_high_water_seq(
    tmp_path: Path, lag: int, newest_first: bool
) -> None:
    path = tmp_path / "journal.db"
    count = 2 * SEARCH_BATCH + 5
    asyncio.run(write(path, [[entry_body(i, {"tenant_id": "t_a"}) for i in range(count)]]))
    assert search_rows(path) == list(range(count)), "one commit of more than a batch copies it all"
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM journal_search WHERE seq >= ?", (count - lag,))
    flt = EventFilter(tenant_id="t_a", newest_first=newest_first)
    want = list(range(count))[::-1] if newest_first else list(range(count))
    for page_size in (1, 4, 512):
        assert found(path, flt, None, None, page_size) == want, f"page size {page_size}"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        sql = " ".join(sql for sql, _ in _segments(conn, flt, None))
    assert "FROM journal_search" in sql, "a tenant search reads the search table"


def test_the_writer_copies_each_full_batch_in_the_commit_that_completes_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    bodies = [entry_body(i, {"tenant_id": TENANTS[i % 3]}) for i in range(SEARCH_BATCH + 10)]

    async def appended_one_by_one() -> list[int]:
        writer = JournalWriter(path, fixed_signer())
        await writer.start()
        try:
            seen: list[int] = []
            for b in bodies:
                await writer.append(EventKind.PRE_EXEC, canonical_json(b), indexed_values(b), 1)
                seen.append(len(search_rows(path)))
            return seen
        finally:
            await writer.aclose()

    seen = asyncio.run(appended_one_by_one())
    assert seen[: SEARCH_BATCH - 1] == [0] * (SEARCH_BATCH - 1), "fewer than a batch: nothing copied"
    assert seen[SEARCH_BATCH - 1] == SEARCH_BATCH, "the commit of the 128th entry copied all 128"
    assert seen[SEARCH_BATCH:] == [SEARCH_BATCH] * 10, "the next ten wait for their batch"
    asyncio.run(write(path, []))  # a writer opening the journal copies what the last one left
    assert search_rows(path) == list(range(SEARCH_BATCH + 10)), "the rest copied at the next open"


def test_a_commit_that_copies_a_batch_is_not_made_on_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "_COMMIT_HERE_MAX_S", 3600.0)  # a loaded machine's fsync may average > 1 ms
    threads: list[tuple[bool, int]] = []

    async def run() -> None:
        writer = JournalWriter(tmp_path / "journal.db", fixed_signer(), head_interval_s=3600.0)
        await writer.start()
        insert = writer._insert

        def recorded(rows: Any, state: Any, seal: Any = None) -> None:
            insert(rows, state, seal)
            threads.append((threading.current_thread() is threading.main_thread(), rows[-1][0]))

        writer._insert = recorded  # type: ignore[method-assign]
        try:
            for i in range(SEARCH_BATCH + 3):
                b = entry_body(i, {})
                await writer.append(EventKind.PRE_EXEC, canonical_json(b), indexed_values(b), 1)
        finally:
            await writer.aclose()

    asyncio.run(run())
    on_loop = {seq for here, seq in threads if here}
    assert SEARCH_BATCH - 1 not in on_loop, "the commit copying the batch ran on the writer thread"
    assert {SEARCH_BATCH - 2, SEARCH_BATCH, SEARCH_BATCH + 1} <= on_loop, "lone entries around it on the loop"


def legacy(path: Path) -> None:
    """Turns a journal into one written before the search table: no table, its seven indexes on the journal."""
    with sqlite3.connect(path) as conn:
        conn.executescript(LEGACY_LAYOUT_SQL)


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_a_legacy_journal_is_migrated_when_a_writer_opens_it_and_searches_the_same(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    bodies = [
        entry_body(i, {"tenant_id": TENANTS[i % 3], "decision": DECISIONS[i % 3]}) for i in range(3 * SEARCH_BATCH)
    ]
    asyncio.run(write(path, [bodies[i : i + 50] for i in range(0, len(bodies), 50)]))
    legacy(path)
    flt = EventFilter(tenant_id="t_b", decision="stop")
    want = [s for s, b in enumerate(bodies) if b["tenant_id"] == "t_b" and b["decision"] == "stop"]
    assert found(path, flt, None, None, 512) == want, "the legacy journal searched through its own indexes"
    assert set(LEGACY_INDEXES) <= indexes(path)

    asyncio.run(write(path, []))
    assert not set(LEGACY_INDEXES) & indexes(path), "the legacy indexes were dropped"
    assert search_rows(path) == list(range(len(bodies))), "every entry copied at the open"
    assert found(path, flt, None, None, 512) == want
    report = verify_journal(path, [fixed_signer().verifier])
    assert report.ok, report.findings


def tampered_findings(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> list[str]:
    with sqlite3.connect(path) as conn:
        for sql, args in statements:
            conn.execute(sql, args)
    report = verify_journal(path, [fixed_signer().verifier])
    assert not report.ok
    return [f"{f.code.value} {f.seq} {f.message}" for f in report.findings]


@pytest.mark.parametrize(
    ("statement", "args", "finding"),
    [
        pytest.param(
            "UPDATE journal_search SET decision = 'allow' WHERE seq = ?",
            (7,),
            "column_mismatch 7 journal_search.decision",
            id="value-changed",
        ),
        pytest.param(
            "DELETE FROM journal_search WHERE seq = ?", (7,), "column_mismatch 7 seq 7 is missing", id="row-removed"
        ),
        pytest.param(
            "INSERT INTO journal_search (seq, kind, unix_nanos, decision) VALUES (?, 'pre_exec', 1, 'stop')",
            (10_000,),
            "column_mismatch 10000 journal_search has a row for seq 10000",
            id="row-added",
        ),
    ],
)
def test_verify_reports_a_tampered_search_table(
    tmp_path: Path, statement: str, args: tuple[Any, ...], finding: str
) -> None:
    path = tmp_path / "journal.db"
    bodies = [entry_body(i, {"decision": "stop" if i == 7 else "allow"}) for i in range(SEARCH_BATCH)]
    asyncio.run(write(path, [bodies]))
    assert verify_journal(path, [fixed_signer().verifier]).ok
    assert found(path, EventFilter(decision="stop"), None, None, 512) == [7]
    findings = tampered_findings(path, (statement, args))
    assert any(f.startswith(finding) for f in findings), findings


@pytest.mark.parametrize("column", [*SEARCH_FIELDS, "kind"])
def test_a_search_on_a_search_column_reads_the_tables_index_not_a_scan(tmp_path: Path, column: str) -> None:
    path = tmp_path / "journal.db"
    asyncio.run(write(path, [[entry_body(0, {})]]))
    flt = EventFilter(**{column: "x"})
    with sqlite3.connect(path) as conn:
        sql, params = _segments(conn, flt, None)[0]
        plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (-1, *params, 9)))
    assert f"journal_search_{column.removesuffix('_id')}" in plan, plan


def sidecar_lookups(conn: sqlite3.Connection) -> None:
    """The sidecar's own reads by kind, decision and time (its start, bundles, verify)."""
    trusted_state(conn, fixed_signer().name, lambda _message, _signature: True)
    latest_prune_marker(conn)
    latest_cosigned(conn)
    policy_entries(conn, {"v1"}, 10)
    store_first_seq_since(conn, T0)
    replay_first_seq_since(conn, T0)


def test_the_sidecars_own_lookups_never_scan_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    asyncio.run(write(path, [[entry_body(i, {"decision": "allow"}) for i in range(2 * SEARCH_BATCH + 3)]]))
    statements: list[str] = []
    with sqlite3.connect(path) as conn:
        conn.set_trace_callback(statements.append)
        sidecar_lookups(conn)
        conn.set_trace_callback(None)
        reads = [sql for sql in statements if " FROM journal" in sql]
        assert len(reads) >= 6, statements
        for sql in reads:
            steps = [str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            reading = [step for step in steps if step.startswith(("SCAN", "SEARCH"))]
            assert reading, (sql, steps)
            if not re.fullmatch(r"SELECT max\(seq\) FROM \w+", sql):  # the last rowid, read directly
                assert all(" USING " in step and not step.startswith("SCAN") for step in reading), (sql, steps)


@pytest.mark.parametrize("lag", [0, 5, SEARCH_BATCH + 10, None])
def test_the_first_entry_since_a_time_is_found_whatever_the_order_of_times(tmp_path: Path, lag: int | None) -> None:
    """Times need not rise with seq (a clock stepped back): the answer is the smallest seq at or after the time."""
    path = tmp_path / "journal.db"
    count = 2 * SEARCH_BATCH + 20
    times = [T0 + ((i * 7919) % 997) * TICK for i in range(count)]  # a scramble of times, some repeated
    times[-1] = T0 + 2_000 * TICK  # the newest time of all on the last entry: beyond the table when it lags
    asyncio.run(write(path, [[entry_body(i, {}) for i in range(count)]], times))
    with sqlite3.connect(path) as conn:
        if lag is None:
            conn.execute("DROP TABLE journal_search")
        else:
            conn.execute("DELETE FROM journal_search WHERE seq >= ?", (count - lag,))
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        for since in (T0 - 1, T0, T0 + 500 * TICK, T0 + 996 * TICK, T0 + 997 * TICK, T0 + 2_000 * TICK):
            want = min((s for s in range(count) if times[s] >= since), default=None)
            assert store_first_seq_since(conn, since) == want, since


def test_a_writer_opening_the_journal_deletes_search_rows_for_no_entry_and_copies_on(tmp_path: Path) -> None:
    """A forged row beyond the tail would raise the high-water seq and leave the entries below it uncopied."""
    path = tmp_path / "journal.db"
    asyncio.run(write(path, [[entry_body(i, {"tenant_id": "t_a"}) for i in range(10)]]))
    with sqlite3.connect(path) as conn:
        for seq in (10_000, -5):
            conn.execute("INSERT INTO journal_search (seq, kind, unix_nanos) VALUES (?, 'pre_exec', 1)", (seq,))
    assert not verify_journal(path, [fixed_signer().verifier]).ok, "the forged rows are findings"
    asyncio.run(write(path, [[entry_body(i, {"tenant_id": "t_a"})] for i in range(10, 10 + SEARCH_BATCH)]))
    assert search_rows(path) == list(range(10 + SEARCH_BATCH)), "the strays gone, every entry copied"
    assert found(path, EventFilter(tenant_id="t_a"), None, None, 512) == list(range(10 + SEARCH_BATCH))
    report = verify_journal(path, [fixed_signer().verifier])
    assert report.ok, report.findings


@pytest.mark.parametrize("newest_first", [False, True])
def test_searches_running_while_the_writer_copies_find_every_entry_once(tmp_path: Path, newest_first: bool) -> None:
    """A writer appends (and copies a batch into the search table every 128 entries) while searches run on their
    own read-only connections, in keyset pages of 3 (a statement per page, so copies commit between the pages of
    one search). Each search must return, exactly once and in order, every matching entry up to some point no
    earlier than the journal's size when the search began: nothing skipped across the high-water seq, nothing
    found twice, whichever side of a copy each page ran on."""
    path = tmp_path / "journal.db"
    total = 12 * SEARCH_BATCH + 17
    chunk_sizes = [1, 3, 1, 9, 2, 27, 5, 1, 64]  # commits that cross the batch boundaries at varied points
    chunks: list[list[dict[str, Any]]] = []
    while sum(map(len, chunks)) < total:
        start = sum(map(len, chunks))
        size = min(chunk_sizes[len(chunks) % len(chunk_sizes)], total - start)
        chunks.append([entry_body(i, {"tenant_id": TENANTS[i % 3]}) for i in range(start, start + size)])
    asyncio.run(write(path, chunks[:1]))  # the journal exists before the first search opens it
    failures: list[BaseException] = []

    def append_the_rest() -> None:
        try:
            asyncio.run(write(path, chunks[1:]))
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    def size_now() -> int:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            (count,) = conn.execute("SELECT count(*) FROM journal").fetchone()
            return int(count)

    flt = EventFilter(tenant_id="t_b", newest_first=newest_first)
    writer = threading.Thread(target=append_the_rest, name="appender")
    writer.start()
    searches, high_waters = 0, set()
    try:
        while writer.is_alive() or searches < 3:
            before = size_now()
            seqs = found(path, flt, None, None, 3)
            after = size_now()
            oldest_first = seqs[::-1] if newest_first else seqs
            assert oldest_first == sorted(set(oldest_first)), "each entry once, in order"
            reached = (oldest_first[-1] + 1) if oldest_first else 0
            assert all(s % 3 == 1 for s in oldest_first), "only entries of the tenant searched for"
            assert oldest_first == [s for s in range(reached) if s % 3 == 1], "no entry skipped before the last"
            assert before - 3 <= reached <= after, "at least every match up to the size when the search began"
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                high_waters.add(conn.execute("SELECT max(seq) FROM journal_search").fetchone()[0])
            searches += 1
    finally:
        writer.join(timeout=120)
    assert not failures, failures
    assert searches >= 3 and len(high_waters) >= 3, "searches ran while the writer copied batch after batch"
    every_match = [s for s in range(total) if s % 3 == 1]
    assert found(path, flt, None, None, 3) == (every_match[::-1] if newest_first else every_match)


def test_a_batch_copied_between_the_two_parts_of_one_search_is_neither_skipped_nor_repeated(tmp_path: Path) -> None:
    """The interleaving the test above can only hit by chance, made on purpose: a search reads the whole indexed
    part (entries up to the high-water seq), then a writer appends and copies another batch, then the search
    reads its newer part. That part must start right after the high-water seq the search began with, not after
    the one the copy left, or the entries copied in between would be lost to the search."""
    path = tmp_path / "journal.db"
    first = 3 * SEARCH_BATCH + 5  # three batches copied (high-water seq 383), five entries not yet
    bodies = [entry_body(i, {"tenant_id": TENANTS[i % 3]}) for i in range(first)]
    asyncio.run(write(path, [bodies[: 3 * SEARCH_BATCH], bodies[3 * SEARCH_BATCH :]]))
    assert search_rows(path)[-1] == 3 * SEARCH_BATCH - 1
    flt = EventFilter(tenant_id="t_b")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        results = select(conn, flt, page_size=512)  # the indexed part is one page of 128 rows
        seqs = [next(results)[0] for _ in range(SEARCH_BATCH)]
        assert seqs[-1] < 3 * SEARCH_BATCH, "the whole indexed part has been read"
        more = 2 * SEARCH_BATCH
        asyncio.run(write(path, [[entry_body(i, {"tenant_id": TENANTS[i % 3]}) for i in range(first, first + more)]]))
        assert search_rows(path)[-1] >= 4 * SEARCH_BATCH - 1, "a batch was copied meanwhile"
        seqs += [seq for seq, *_ in results]
    assert seqs == [s for s in range(first + more) if s % 3 == 1]
