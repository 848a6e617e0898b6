"""The state tables' one owner (gateway.journal.state): each statement, committed by the real writer, reads back."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from gateway.canonical import canonical_json
from gateway.journal import state
from gateway.journal.entry import EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.state import DENIED, GRANTED, PENDING, Approval, EngagedSwitch
from gateway.journal.writer import JournalWriter, StateChange, now_nanos
from gateway.sidecar.retention import RetentionJob
from tests.conftest import run_cli
from tests.helpers import eventually_async
from tests.journal_helpers import body, fixed_signer
from tests.test_retention import DAY_NS, Sidecar, run, signer
from tests.test_retention import journal as sidecar_journal


def commit(path: Path, *changes: StateChange) -> None:
    """Commits the changes with one signed event, as every caller of the writer does."""

    async def go() -> None:
        writer = JournalWriter(path, fixed_signer())
        await writer.start()
        try:
            event = body(writer.size, event_id=f"evt_{now_nanos()}")
            await writer.append(EventKind.PRE_EXEC, canonical_json(event), indexed_values(event), now_nanos(), changes)
        finally:
            await writer.aclose()

    asyncio.run(go())


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal.db"
    commit(path)  # creates the schema
    return path


def approval(approval_id: str, *, tenant_id: str = "t_42", created_ns: int = 1, **changes: object) -> Approval:
    fields: dict[str, object] = {
        "approval_id": approval_id,
        "state": PENDING,
        "used": False,
        "tenant_id": tenant_id,
        "run_id": "run_1",
        "step_id": 3,
        "agent_id": "support-agent",
        "actor_type": "user",
        "actor_id": "u_1",
        "action": "refund.create",
        "action_key": "ak_1",
        "policy_rule": "big-refunds",
        "approvers": ("role:finance", "alice"),
        "created_ns": created_ns,
        "expires_ns": created_ns + 10**12,
        "resolved_by": "",
        "resolved_ns": None,
        "comment": "",
        "event_id": "evt_pre",
        **changes,
    }
    return Approval(**fields)  # type: ignore[arg-type]


def test_an_inserted_approval_reads_back_equal(journal: Path) -> None:
    stored = approval("apr_1")
    commit(journal, state.insert_approval(stored))
    with sqlite3.connect(journal) as conn:
        assert state.approval(conn, "apr_1") == stored
        assert state.approval(conn, "apr_missing") is None
        (approvers,) = conn.execute("SELECT approvers FROM approvals").fetchone()
    assert json.loads(approvers) == ["role:finance", "alice"], "approvers are stored as a JSON list"


def test_open_approvals_are_pending_or_granted_and_unused(journal: Path) -> None:
    commit(journal, *(state.insert_approval(approval(f"apr_{n}")) for n in range(4)))
    commit(
        journal,
        state.resolve_approval("apr_1", GRANTED, "alice", 5, "ok"),
        state.resolve_approval("apr_2", GRANTED, "alice", 5, "ok"),
        state.mark_approval_used("apr_2"),
        state.resolve_approval("apr_3", DENIED, "alice", 6, "no"),
    )
    with sqlite3.connect(journal) as conn:
        assert sorted(a.approval_id for a in state.open_approvals(conn)) == ["apr_0", "apr_1"]
        granted = state.approval(conn, "apr_1")
        used = state.approval(conn, "apr_2")
    assert granted is not None and (granted.state, granted.resolved_by, granted.resolved_ns, granted.comment) == (
        GRANTED,
        "alice",
        5,
        "ok",
    )
    assert used is not None and used.used


def test_listed_approvals_are_newest_first_of_one_state_and_tenant(journal: Path) -> None:
    commit(
        journal,
        state.insert_approval(approval("apr_old", created_ns=1)),
        state.insert_approval(approval("apr_new", created_ns=3)),
        state.insert_approval(approval("apr_other", tenant_id="t_7", created_ns=2)),
        state.insert_approval(approval("apr_denied", created_ns=4, state=DENIED)),
    )
    with sqlite3.connect(journal) as conn:
        assert [a.approval_id for a in state.list_approvals(conn, PENDING, "", 10)] == [
            "apr_new",
            "apr_other",
            "apr_old",
        ]
        assert [a.approval_id for a in state.list_approvals(conn, PENDING, "t_42", 10)] == ["apr_new", "apr_old"]
        assert [a.approval_id for a in state.list_approvals(conn, PENDING, "", 1)] == ["apr_new"]
        assert [a.approval_id for a in state.list_approvals(conn, DENIED, "", 10)] == ["apr_denied"]


def test_switches_are_engaged_replaced_and_released(journal: Path) -> None:
    commit(
        journal,
        state.engage_switch(EngagedSwitch("tenant", "t_42", "fraud", "alice", 2)),
        state.engage_switch(EngagedSwitch("global", "", "incident", "bob", 1)),
    )
    commit(journal, state.engage_switch(EngagedSwitch("tenant", "t_42", "still fraud", "carol", 3)))
    with sqlite3.connect(journal) as conn:
        assert state.engaged_switches(conn) == [
            EngagedSwitch("global", "", "incident", "bob", 1),
            EngagedSwitch("tenant", "t_42", "still fraud", "carol", 3),
        ]
    commit(journal, state.release_switch("global", ""))
    with sqlite3.connect(journal) as conn:
        assert [s.scope for s in state.engaged_switches(conn)] == ["tenant"]


def test_the_forwarder_cursor_advances_per_origin(journal: Path) -> None:
    with sqlite3.connect(journal) as conn:
        assert state.forwarder_acked_size(conn, "test/origin") == 0
    commit(journal, state.advance_forwarder("test/origin", 1, "note 1"))
    commit(journal, state.advance_forwarder("test/origin", 2, "note 2"))
    with sqlite3.connect(journal) as conn:
        assert state.forwarder_acked_size(conn, "test/origin") == 2
        assert state.forwarder_acked_size(conn, "another/origin") == 0
        assert conn.execute("SELECT cosigned_note FROM forwarder_state").fetchall() == [("note 2",)]


def test_an_unpruned_journal_has_no_prune_state_and_its_size_is_its_rows(journal: Path) -> None:
    commit(journal)
    with sqlite3.connect(journal) as conn:
        assert state.prune_state(conn) is None
        assert state.journal_size(conn) == 2
        (first_written,) = conn.execute("SELECT unix_nanos FROM journal WHERE seq = 0").fetchone()
        assert state.forwarder_backlog(conn) == state.ForwarderBacklog(2, 0, first_written)


def test_an_empty_journal_has_size_zero(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"

    async def create() -> None:
        writer = JournalWriter(path, fixed_signer())
        await writer.start()
        await writer.aclose()

    asyncio.run(create())
    with sqlite3.connect(path) as conn:
        assert state.journal_size(conn) == 0
        assert state.forwarder_backlog(conn) == state.ForwarderBacklog(0, 0, None)


def test_forwarder_status_counts_the_entries_retention_pruned(tmp_path: Path) -> None:
    """The backlog is the journal's size (newest seq + 1) minus the cursor, not its remaining rows minus it."""
    seen: dict[str, int] = {}

    async def scenario(sidecar: Sidecar) -> None:
        fwd = sidecar.forwarder
        assert fwd is not None and sidecar.recorder is not None and sidecar.reader is not None
        for _ in range(30):
            await sidecar.recorder.record_heartbeat()
        await eventually_async(lambda: fwd.status.acked_size >= 30)
        job = RetentionJob(sidecar.reader, sidecar.recorder, fwd, retention_days=1, interval_s=3600)
        seen["pruned"] = await job.prune_once(now_nanos() + 2 * DAY_NS)
        pruned = await sidecar.reader.prune_state()
        assert pruned is not None and pruned.pruned_before == seen["pruned"]

    run(tmp_path, scenario)
    path = sidecar_journal(tmp_path)
    with sqlite3.connect(path) as conn:
        (top, rows) = conn.execute("SELECT max(seq), count(*) FROM journal").fetchone()
        acked = state.forwarder_acked_size(conn, signer(tmp_path).name)
    assert seen["pruned"] > 0 and rows == top + 1 - seen["pruned"], "retention removed a prefix"

    done = run_cli("forwarder", "status", str(path), "--json", check=True)
    report = json.loads(done.stdout)
    assert report["journal_size"] == top + 1
    assert report["acked_size"] == acked
    assert report["backlog"] == top + 1 - acked
    human = run_cli("forwarder", "status", str(path), check=True).stdout
    assert human.startswith(f"forwarded {acked} of {top + 1} entries; backlog {top + 1 - acked} ")
