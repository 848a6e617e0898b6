"""KillSwitchBoard: engage, release and matching at each scope, persisted and journaled, on a real journal."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.errors import FailedPreconditionError, NotFoundError
from gateway.journal.store import JournalReader, iter_bodies
from gateway.journal.writer import JournalWriter
from gateway.redaction import Redactor
from gateway.sidecar.killswitch import KillSwitchBoard
from gateway.sidecar.recorder import AuditRecorder
from tests.journal_helpers import fixed_signer

REQUEST = ("t_42", "support-agent", "run_1")  # (tenant, agent, run) of the request the board is asked about


def run(tmp_path: Path, scenario: Callable[[KillSwitchBoard], Awaitable[None]]) -> None:
    """Runs ``scenario`` with a board loaded from the journal in ``tmp_path`` (as a restarted sidecar loads it)."""

    async def main() -> None:
        path = tmp_path / "journal.db"
        writer = JournalWriter(path, fixed_signer())
        await writer.start()
        reader = JournalReader(path)
        board = KillSwitchBoard(AuditRecorder(writer, reader, Redactor.create(os.urandom(32), [], True)))
        try:
            await board.load(reader)
            await scenario(board)
        finally:
            await writer.aclose()
            await reader.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("scope", "target"),
    [
        pytest.param("global", "", id="global"),
        pytest.param("tenant", "t_42", id="tenant"),
        pytest.param("agent", "support-agent", id="agent"),
        pytest.param("run", "run_1", id="run"),
    ],
)
def test_a_switch_stops_its_scope_until_released(tmp_path: Path, scope: str, target: str) -> None:
    async def scenario(board: KillSwitchBoard) -> None:
        assert board.find(*REQUEST) is None
        switch, _ = await board.engage(scope, target, "incident 7", "alice")
        assert board.find(*REQUEST) == switch
        await board.release(scope, target, "resolved", "alice")
        assert board.find(*REQUEST) is None

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("scope", "target"),
    [
        pytest.param("tenant", "t_7", id="other-tenant"),
        pytest.param("agent", "billing-agent", id="other-agent"),
        pytest.param("run", "run_2", id="other-run"),
        pytest.param("tenant", "support-agent", id="agent-id-as-tenant"),
    ],
)
def test_a_switch_leaves_requests_outside_its_scope_alone(tmp_path: Path, scope: str, target: str) -> None:
    async def scenario(board: KillSwitchBoard) -> None:
        await board.engage(scope, target, "incident 7", "alice")
        assert board.find(*REQUEST) is None

    run(tmp_path, scenario)


def test_the_widest_matching_switch_is_the_one_that_stops(tmp_path: Path) -> None:
    async def scenario(board: KillSwitchBoard) -> None:
        await board.engage("run", "run_1", "run", "alice")
        agent, _ = await board.engage("agent", "support-agent", "agent", "alice")
        assert board.find(*REQUEST) == agent
        everything, _ = await board.engage("global", "", "all", "alice")
        assert board.find(*REQUEST) == everything

    run(tmp_path, scenario)


def test_engaged_switches_survive_a_restart_and_released_ones_stay_released(tmp_path: Path) -> None:
    async def before(board: KillSwitchBoard) -> None:
        await board.engage("tenant", "t_42", "fraud", "alice")
        await board.engage("agent", "support-agent", "loop", "bob")
        await board.engage("run", "run_9", "stuck", "bob")
        await board.release("run", "run_9", "unstuck", "bob")

    async def after(board: KillSwitchBoard) -> None:
        assert [(s.scope, s.target, s.reason, s.engaged_by) for s in board.engaged()] == [
            ("tenant", "t_42", "fraud", "alice"),
            ("agent", "support-agent", "loop", "bob"),
        ]

    run(tmp_path, before)
    run(tmp_path, after)


def test_every_change_is_journaled_with_the_operator(tmp_path: Path) -> None:
    async def scenario(board: KillSwitchBoard) -> None:
        await board.engage("tenant", "t_42", "fraud", "alice")
        await board.engage("tenant", "t_42", "fraud, confirmed", "bob")  # re-engaged with a new reason
        await board.release("tenant", "t_42", "cleared", "carol")

    run(tmp_path, scenario)
    events = [b for _, b in iter_bodies(tmp_path / "journal.db", kind="kill_switch")]
    assert [(e["operation"], e["target"], e["comment"], e["actor"]["id"]) for e in events] == [
        ("engage", "t_42", "fraud", "alice"),
        ("engage", "t_42", "fraud, confirmed", "bob"),
        ("release", "t_42", "cleared", "carol"),
    ]


def test_engaging_an_engaged_switch_for_the_same_reason_is_refused(tmp_path: Path) -> None:
    async def scenario(board: KillSwitchBoard) -> None:
        await board.engage("global", "", "incident 7", "alice")
        with pytest.raises(FailedPreconditionError, match="already engaged"):
            await board.engage("global", "", "incident 7", "bob")

    run(tmp_path, scenario)


def test_releasing_a_switch_that_is_not_engaged_is_not_found(tmp_path: Path) -> None:
    async def scenario(board: KillSwitchBoard) -> None:
        with pytest.raises(NotFoundError, match="no kill switch engaged at tenant:t_42"):
            await board.release("tenant", "t_42", "", "alice")

    run(tmp_path, scenario)
