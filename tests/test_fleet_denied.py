"""FleetControl.record_denied on both engines: a refused attempt is a signed operator_denied act in control_log,
which verify_log checks and no control stream ever carries to a sidecar."""

from __future__ import annotations

import json

from gateway.collector.fleet_model import KIND_OPERATOR_DENIED
from gateway.identity import Operator
from tests.fleet_helpers import ORIGIN, Database, SidecarJournal, fleet_db, journal_key, run

__all__ = ["fleet_db"]


def test_a_refusal_is_a_signed_act_that_no_sidecar_receives(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            journal = SidecarJournal(journal_key(ORIGIN))
            journal.open_approval("apr_1")
            await fleet.record_entries(ORIGIN, journal.rows)
            denied = await fleet.record_denied(
                method="slack.block_actions", identity="", reason="unauthenticated", detail="bad signature",
                channel="slack",
            )  # fmt: skip
            alice = Operator("alice", frozenset({"approver"}))
            await fleet.vote("apr_1", grant=True, operator=alice, comment="", channel="slack")
            assert [a.kind for a in await fleet.acts_since(0, ORIGIN)] == ["approval_vote"]
            assert [a.kind for a in await fleet.acts_since(0, "")] == ["approval_vote"]
            assert await fleet.verify_log() == []
            async with fleet._db.read() as tx:
                rows = await tx.fetch("SELECT id, kind, fields, operator, channel FROM control_log ORDER BY id")
            assert (rows[0]["id"], rows[0]["kind"], rows[0]["channel"]) == (denied, KIND_OPERATOR_DENIED, "slack")
            assert json.loads(rows[0]["fields"]) == {
                "method": "slack.block_actions",
                "actor": {"type": "anonymous", "id": ""},
                "reason": "unauthenticated",
                "detail": "bad signature",
            }

    run(scenario())


def test_text_no_column_can_hold_is_replaced_not_refused(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            await fleet.record_denied(
                method="m\0", identity="U1\ud800", reason="permission_denied", detail="x" * 5000, channel="bogus"
            )
            assert await fleet.verify_log() == []
            async with fleet._db.read() as tx:
                [row] = await tx.fetch("SELECT fields, operator, channel FROM control_log")
            fields = json.loads(row["fields"])
            assert "\0" not in fields["method"] and len(fields["detail"]) == 1024
            assert (row["operator"], row["channel"]) == ("U1?", "cli")

    run(scenario())


def test_every_accepted_vote_is_told_to_the_voted_hooks_and_a_failing_hook_changes_nothing(fleet_db: Database) -> None:
    async def scenario() -> None:
        async with fleet_db.replica() as fleet:
            journal = SidecarJournal(journal_key(ORIGIN))
            journal.open_approval("apr_1", required=2)
            await fleet.record_entries(ORIGIN, journal.rows)
            seen: list[tuple[str, int]] = []

            def broken(_: object) -> None:
                raise RuntimeError("hook bug")

            fleet.on_approval_voted += [broken, lambda a: seen.append((a.state, len(a.votes)))]
            for who in ("alice", "bob"):
                await fleet.vote("apr_1", grant=True, operator=Operator(who, frozenset({"approver"})), comment="",
                                 channel="slack")  # fmt: skip
            assert seen == [("pending", 1), ("granted", 2)]

    run(scenario())
