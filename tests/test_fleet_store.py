"""FleetControl on both engines: the approval mirror from signed entries, votes and four-eyes, exactly one
resolution across two replicas, fleet kill switches, the signed control_log and the replicas' wake-up."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from gateway import reasons
from gateway.collector.fleet import FleetControl
from gateway.errors import FailedPreconditionError, InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway.identity import Operator
from gateway.journal.entry import EventKind
from tests.fleet_helpers import ORIGIN, OTHER, Database, SidecarJournal, database, fleet_db, journal_key, run

__all__ = ["fleet_db"]  # the fixture, imported so pytest finds it

ALICE = Operator("alice", frozenset({"approver"}))
BOB = Operator("bob", frozenset({"approver"}))
CAROL = Operator("carol", frozenset({"admin"}))


def sidecar(origin: str = ORIGIN) -> SidecarJournal:
    return SidecarJournal(journal_key(origin))


async def opened(fleet: FleetControl, approval_id: str = "apr_1", **kw: object) -> SidecarJournal:
    journal = sidecar()
    journal.open_approval(approval_id, **kw)  # type: ignore[arg-type]
    assert await fleet.record_entries(ORIGIN, journal.rows) == 1
    return journal


def test_an_approval_entry_is_listed_with_what_the_approver_must_see(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await opened(fleet, approvers=("role:approver",), required=2)
            [a] = await fleet.list_approvals()
            assert (a.origin, a.approval_id, a.state, a.tenant_id, a.action) == (
                ORIGIN, "apr_1", "pending", "t_42", "payments.refund",
            )  # fmt: skip
            assert a.args == {"amount": 1200, "card": "[REDACTED]"}
            assert a.redacted_paths == ("args.card",)
            assert (a.approvers, a.approvals_required, a.actor_id) == (("role:approver",), 2, "agent-runner")
            assert a.expires_ms is not None and a.expires_ms - a.created_ms == 600_000
            assert (a.policy_version, a.event_seq, a.reason) == ("sha256:abc", 0, "approval_required")

    run(scenario())


def test_filters_select_by_tenant_agent_action_rule_origin_and_age(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            one, two = sidecar(), sidecar(OTHER)
            one.open_approval("apr_a", tenant="t_1", agent="a1", action="x.one", rule="r1")
            two.open_approval("apr_b", tenant="t_2", agent="a2", action="x.two", rule="r2")
            await fleet.record_entries(ORIGIN, one.rows)
            await fleet.record_entries(OTHER, two.rows)

            async def ids(**kw: object) -> list[str]:
                return [a.approval_id for a in await fleet.list_approvals(**kw)]  # type: ignore[arg-type]

            assert sorted(await ids()) == ["apr_a", "apr_b"]
            assert await ids(tenant_id="t_2") == ["apr_b"]
            assert await ids(agent_id="a1") == ["apr_a"]
            assert await ids(action="x.two") == ["apr_b"]
            assert await ids(policy_rule="r1") == ["apr_a"]
            assert await ids(origin=OTHER) == ["apr_b"]
            assert await ids(min_age_s=3600) == []
            assert await ids(state="granted") == []

    run(scenario())


def test_a_forged_entry_never_reaches_the_fleet_tables(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            forged = sidecar()
            seq, entry, signature = forged.open_approval("apr_forged")
            bad_signature = (seq, entry, bytes(64))
            other_key = SidecarJournal(journal_key(OTHER))  # a real key, but another origin's
            other_key.open_approval("apr_other_key")
            edited = (seq, entry.replace(b'"amount":1200', b'"amount":9999'), signature)
            for rows in ([bad_signature], other_key.rows, [edited]):
                assert await fleet.record_entries(ORIGIN, rows) == 0
            assert await fleet.record_entries("fleet.test/unregistered", forged.rows) == 0
            assert await fleet.list_approvals(state="") == []
            assert fleet.refused_entries == 4
            with pytest.raises(NotFoundError):
                await fleet.get_approval("apr_forged")

    run(scenario())


def test_recording_the_same_entries_twice_changes_nothing(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            journal = await opened(fleet)
            journal.resolve(EventKind.APPROVAL_GRANTED, "apr_1", "alice", "ok")
            assert await fleet.record_entries(ORIGIN, journal.rows) == 2  # the grant, and alice's vote
            assert await fleet.record_entries(ORIGIN, journal.rows) == 0
            a = await fleet.get_approval("apr_1")
            assert (a.state, a.resolved_by, a.comment, len(a.votes)) == ("granted", "alice", "ok", 1)
            journal.resume("apr_1")
            await fleet.record_entries(ORIGIN, journal.rows)
            assert (await fleet.get_approval("apr_1")).state == "used"

    run(scenario())


def test_the_sidecars_signed_entries_win_over_the_collectors_view(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            journal = await opened(fleet)
            assert (await fleet.vote("apr_1", grant=True, operator=ALICE, comment="", channel="cli")).state == "granted"
            # The sidecar had expired it before the relayed vote arrived: its journal says so, and that counts.
            journal.resolve(EventKind.APPROVAL_EXPIRED, "apr_1", "agentaudit")
            await fleet.record_entries(ORIGIN, journal.rows)
            assert (await fleet.get_approval("apr_1")).state == "expired"

    run(scenario())


def test_an_entry_arriving_before_its_pre_event_is_completed_by_it(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            journal = sidecar()
            journal.open_approval("apr_1")
            journal.resolve(EventKind.APPROVAL_DENIED, "apr_1", "bob", "no")
            await fleet.record_entries(ORIGIN, journal.rows[1:])
            await fleet.record_entries(ORIGIN, journal.rows[:1])
            a = await fleet.get_approval("apr_1")
            assert (a.state, a.resolved_by, a.args["amount"], a.event_seq) == ("denied", "bob", 1200, 0)

    run(scenario())


def test_four_eyes_needs_two_distinct_approvers(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await opened(fleet, required=2)
            first = await fleet.vote("apr_1", grant=True, operator=ALICE, comment="looks right", channel="console")
            assert first.state == "pending" and [v.approver for v in first.votes] == ["alice"]
            for spelling in ("ALICE", " Alice ", "ａｌｉｃｅ"):  # noqa: RUF001 (full-width on purpose)
                with pytest.raises(FailedPreconditionError) as refused:
                    await fleet.vote(
                        "apr_1", grant=True, operator=Operator(spelling, ALICE.roles), comment="", channel="cli"
                    )
                assert refused.value.reason == reasons.APPROVAL_ALREADY_VOTED
            second = await fleet.vote("apr_1", grant=True, operator=BOB, comment="", channel="slack")
            assert (second.state, second.resolved_by) == ("granted", "bob")
            assert [(v.approver, v.channel) for v in second.votes] == [("alice", "console"), ("bob", "slack")]
            acts = await fleet.acts_since(0, ORIGIN)
            assert [(a.kind, a.fields["approver"], a.fields["act"]) for a in acts] == [
                ("approval_vote", "alice", acts[0].seq), ("approval_vote", "bob", acts[1].seq),
            ]  # fmt: skip

    run(scenario())


@pytest.mark.parametrize("who", ["agent-runner", "Agent-Runner", "ＡＧＥＮＴ-ＲＵＮＮＥＲ"])  # noqa: RUF001
def test_self_approval_is_refused_under_any_spelling(fleet_db: Database, who: str) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await opened(fleet, actor="agent-runner")
            with pytest.raises(PermissionDeniedError):
                await fleet.vote(
                    "apr_1", grant=True, operator=Operator(who, frozenset({"admin"})), comment="", channel="cli"
                )
            assert (await fleet.get_approval("apr_1")).votes == ()
            assert await fleet.head_seq() == 0

    run(scenario())


def test_approvers_list_and_denial_justification_are_enforced(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await opened(fleet, approvers=("bob",))
            with pytest.raises(PermissionDeniedError):
                await fleet.vote("apr_1", grant=True, operator=ALICE, comment="", channel="cli")
            with pytest.raises(InvalidRequestError) as bad:
                await fleet.vote("apr_1", grant=False, operator=BOB, comment="  ", channel="cli")
            assert [v.field for v in bad.value.violations] == ["comment"]
            with pytest.raises(InvalidRequestError):
                await fleet.vote("apr_1", grant=True, operator=BOB, comment="", channel="pager")
            denied = await fleet.vote("apr_1", grant=False, operator=BOB, comment="not this card", channel="cli")
            assert (denied.state, denied.comment) == ("denied", "not this card")
            with pytest.raises(FailedPreconditionError) as late:
                await fleet.vote("apr_1", grant=True, operator=CAROL, comment="", channel="cli")
            assert late.value.reason == reasons.APPROVAL_ALREADY_RESOLVED
            with pytest.raises(NotFoundError):
                await fleet.vote("apr_nope", grant=True, operator=CAROL, comment="", channel="cli")

    run(scenario())


def test_an_expired_pending_approval_takes_no_vote(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await opened(fleet, expires_in_s=60, nanos=time.time_ns() - 61 * 10**9)
            with pytest.raises(FailedPreconditionError) as refused:
                await fleet.vote("apr_1", grant=True, operator=ALICE, comment="", channel="cli")
            assert refused.value.reason == reasons.APPROVAL_EXPIRED

    run(scenario())


def test_twenty_concurrent_votes_on_two_replicas_resolve_once(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica("replica-a") as a, fleet_db.replica("replica-b") as b:
            await opened(a)
            operators = [Operator(f"approver-{i}", frozenset({"approver"})) for i in range(20)]

            async def attempt(i: int) -> str:
                replica = (a, b)[i % 2]
                try:
                    grant = i % 3 != 0
                    await replica.vote("apr_1", grant=grant, operator=operators[i], comment="why", channel="cli")
                except FailedPreconditionError as exc:
                    return str(exc.reason)
                return "accepted"

            outcomes = await asyncio.gather(*(attempt(i) for i in range(20)))
            assert outcomes.count("accepted") == 1
            assert outcomes.count(reasons.APPROVAL_ALREADY_RESOLVED) == 19
            final = await b.get_approval("apr_1")
            assert final.state in ("granted", "denied") and len(final.votes) == 1
            acts = await a.acts_since(0, "")
            assert len(acts) == 1 and acts[0].fields["approver"] == final.resolved_by

    run(scenario())


def test_kill_switches_are_engaged_once_listed_and_released(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica("replica-a") as a, fleet_db.replica("replica-b") as b:
            switch = await a.engage_switch("tenant", "t_42", "fraud wave", CAROL, "cli")
            assert (switch.scope, switch.target, switch.operator, switch.channel) == ("tenant", "t_42", "carol", "cli")
            with pytest.raises(FailedPreconditionError):
                await b.engage_switch("tenant", "t_42", "again", CAROL, "cli")
            for scope, target in (("global", "x"), ("tenant", ""), ("planet", "p")):
                with pytest.raises(InvalidRequestError):
                    await a.engage_switch(scope, target, "why", CAROL, "cli")
            with pytest.raises(InvalidRequestError):
                await a.engage_switch("global", "", "", CAROL, "cli")  # a reason is required
            head, switches = await b.switch_set()
            assert [(s.scope, s.target) for s in switches] == [("tenant", "t_42")] and head == 1
            await b.release_switch("tenant", "t_42", "contained", CAROL, "console")
            with pytest.raises(NotFoundError):
                await a.release_switch("tenant", "t_42", "", CAROL, "cli")
            assert await a.switches() == []
            acts = await a.acts_since(0, ORIGIN)  # fleet-wide acts reach every origin
            assert [(x.kind, x.origin, x.fields["action"], x.fields["act"]) for x in acts] == [
                ("kill_switch", "", "engage", 1), ("kill_switch", "", "release", 2),
            ]  # fmt: skip

    run(scenario())


def test_acts_are_filtered_by_origin(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await opened(fleet)
            other = sidecar(OTHER)
            other.open_approval("apr_2")
            await fleet.record_entries(OTHER, other.rows)
            await fleet.vote("apr_1", grant=True, operator=ALICE, comment="", channel="cli")
            await fleet.vote("apr_2", grant=True, operator=ALICE, comment="", channel="cli")
            await fleet.engage_switch("global", "", "stop", CAROL, "cli")
            assert [x.seq for x in await fleet.acts_since(0, ORIGIN)] == [1, 3]
            assert [x.seq for x in await fleet.acts_since(1, OTHER)] == [2, 3]
            assert [x.seq for x in await fleet.acts_since(0, "")] == [1, 2, 3]

    run(scenario())


def _edit_act(db: Database, sql: str) -> None:
    """An attacker with write access to the database edits a control_log row (the append-only trigger dropped)."""
    if db.name == "sqlite":
        path = db.new_store().path  # type: ignore[attr-defined]
        conn = sqlite3.connect(path)
        conn.execute("DROP TRIGGER control_log_no_update")
        conn.execute(sql)
        conn.commit()
        conn.close()
        return
    import asyncpg  # noqa: PLC0415

    async def edit() -> None:
        store = db.new_store()
        conn = await asyncpg.connect(store.dsn, server_settings={"search_path": "agentaudit"})  # type: ignore[attr-defined]
        try:
            await conn.execute("ALTER TABLE control_log DISABLE TRIGGER control_log_append_only")
            await conn.execute(sql)
        finally:
            await conn.close()

    run(edit())


def test_an_edited_control_log_row_is_detected_and_never_sent(fleet_db: Database) -> None:
    async def act() -> None:
        async with fleet_db.replica() as fleet:
            await opened(fleet)
            await fleet.vote("apr_1", grant=False, operator=ALICE, comment="no", channel="cli")
            await fleet.engage_switch("global", "", "stop", CAROL, "cli")
            assert await fleet.verify_log() == []

    run(act())
    _edit_act(
        fleet_db, "UPDATE control_log SET fields = replace(fields, '\"grant\":false', '\"grant\":true') WHERE id = 1"
    )

    async def check() -> None:
        async with fleet_db.replica() as fleet:
            assert await fleet.verify_log() == [1]
            assert [x.seq for x in await fleet.acts_since(0, ORIGIN)] == [2]
            assert fleet.tampered_acts >= 1

    run(check())


def test_the_append_only_trigger_refuses_an_edit(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await fleet.engage_switch("global", "", "stop", CAROL, "cli")
            with pytest.raises(Exception, match="append-only"):
                async with fleet._db.write() as tx:
                    await tx.execute("UPDATE control_log SET operator = 'mallory'")

    run(scenario())


def test_wait_for_act_on_replica_b_wakes_on_an_act_of_replica_a(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica("replica-a") as a, fleet_db.replica("replica-b") as b:
            head = await b.head_seq()
            waiter = asyncio.create_task(b.wait_for_act(head, timeout_s=30))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            await a.engage_switch("global", "", "stop", CAROL, "cli")
            # Woken by the act, not the 30 s timeout: the scenario's own bound (20 s) would fail first.
            await asyncio.wait_for(waiter, 20)
            assert await b.head_seq() == head + 1
            await b.wait_for_act(head + 1, timeout_s=0.05)  # nothing newer: returns at its timeout

    run(scenario())


def test_origins_record_which_replica_holds_a_stream(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica("replica-a") as a, fleet_db.replica("replica-b") as b:
            await a.set_connected(ORIGIN, True, 0)
            await b.set_connected(ORIGIN, True, 4)
            await b.set_connected(OTHER, False, 2)
            status = {s.origin: s for s in await a.origins()}
            assert (status[ORIGIN].replica, status[ORIGIN].applied_seq, status[ORIGIN].connected) == (
                "replica-b",
                4,
                True,
            )
            assert status[OTHER].connected is False and status[OTHER].last_contact_ms is not None

    run(scenario())


def test_approval_opened_hooks_run_once_per_approval(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            seen: list[str] = []

            async def hook(approval: object) -> None:
                seen.append(approval.approval_id)  # type: ignore[attr-defined]

            async def broken(approval: object) -> None:
                raise RuntimeError("slack is down")

            fleet.on_approval_opened += [broken, hook]
            journal = await opened(fleet)
            await fleet.record_entries(ORIGIN, journal.rows)
            assert seen == ["apr_1"]

    run(scenario())


def test_a_dropped_listen_connection_delays_a_wake_but_never_loses_it(tmp_path: Path, postgres_database: str) -> None:
    db = database("postgres", tmp_path, postgres_database)

    async def scenario() -> None:
        async with db.replica("replica-a") as a, db.replica("replica-b") as b:
            listener = b._db._listener  # type: ignore[attr-defined]
            await listener.close()  # the NOTIFY for the next act is lost on B
            head = await b.head_seq()
            waiter = asyncio.create_task(b.wait_for_act(head, timeout_s=30))
            await a.engage_switch("global", "", "stop", CAROL, "cli")
            await asyncio.wait_for(waiter, 20)  # the poll found it
            assert b._seen_head == head + 1
            for _ in range(50):  # and the watcher opened a new LISTEN connection
                if not b._db._listener.is_closed():  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.1)
            assert not b._db._listener.is_closed()  # type: ignore[attr-defined]

    run(scenario())


def test_another_origin_cannot_resolve_or_reopen_an_approval_it_does_not_own(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await opened(fleet)
            intruder = sidecar(OTHER)  # a registered sidecar, validly signing its own entries
            intruder.open_approval("apr_1", tenant="t_other")
            intruder.resolve(EventKind.APPROVAL_GRANTED, "apr_1", "mallory", "mine now")
            assert await fleet.record_entries(OTHER, intruder.rows) == 0
            a = await fleet.get_approval("apr_1")
            assert (a.origin, a.state, a.tenant_id, a.votes) == (ORIGIN, "pending", "t_42", ())

    run(scenario())


def test_origin_keys_are_the_registered_ones(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            assert await fleet.origin_keys(ORIGIN) == [journal_key(ORIGIN).verifier]
            assert await fleet.origin_keys("fleet.test/nobody") == []
            assert await fleet.origin_keys("bad\x00origin") == []

    run(scenario())


def test_a_refused_attempt_is_a_signed_act_never_sent_to_a_sidecar(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await fleet.engage_switch("global", "", "drill", CAROL, "console")
            act = await fleet.record_denied(
                identity="mallory", what="POST /approvals/apr_1/approve", reason="wrong_role", channel="console"
            )
            [denied] = await fleet.denied_acts()
            assert (denied.seq, denied.kind, denied.fields["identity"], denied.fields["reason"]) == (
                act, "operator_denied", "mallory", "wrong_role",
            )  # fmt: skip
            assert [a.kind for a in await fleet.acts_since(0, ORIGIN)] == ["kill_switch"]
            assert [a.kind for a in await fleet.acts_since(0, "")] == ["kill_switch"]
            assert await fleet.verify_log() == []  # signed like every act
            assert await fleet.head_seq() == act

    run(scenario())
