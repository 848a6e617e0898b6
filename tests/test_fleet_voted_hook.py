"""FleetControl.on_approval_voted on both engines: every accepted vote is told to the hooks, whichever channel."""

from __future__ import annotations

from gateway.identity import Operator
from tests.fleet_helpers import ORIGIN, Database, SidecarJournal, fleet_db, journal_key, run

__all__ = ["fleet_db"]


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
            assert (await fleet.get_approval("apr_1")).state == "granted"

    run(scenario())
