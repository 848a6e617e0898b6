"""The policy manager in-process, on a real journal: a change is journaled, then applied; a bad one changes nothing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.journal.store import JournalReader, iter_bodies
from gateway.journal.writer import JournalWriter
from gateway.policy.document import parse_policy
from gateway.redaction import Redactor
from gateway.sidecar.policy_manager import TRIGGER_FILE_CHANGE, TRIGGER_OPERATOR, PolicyManager
from gateway.sidecar.recorder import AuditRecorder
from gateway.signing import Ed25519Signer
from tests.helpers import eventually_async

SIGNER = Ed25519Signer("policy-manager-test/origin", bytes(range(32)))
ALLOW_ALL = "version: 1\naccess:\n  default: allow\n"
DENY_ALL = "version: 1\naccess:\n  default: deny\n"
BROKEN = "version: 1\naccess:\n  default: [\n"


def version_of(text: str) -> str:
    return parse_policy(text, "p.yaml").version


def policy_changes(journal: Path) -> list[dict[str, Any]]:
    return [body for _, body in iter_bodies(journal, kind="policy_changed")]


def run(tmp_path: Path, scenario: Callable[[PolicyManager, Path], Awaitable[None]], *, poll_s: float = 60.0) -> None:
    """Runs ``scenario`` with a manager over ``policy.yaml`` (ALLOW_ALL at first) and the journal it writes to."""
    policy, journal = tmp_path / "policy.yaml", tmp_path / "journal.db"
    policy.write_text(ALLOW_ALL)

    async def main() -> None:
        writer, reader = JournalWriter(journal, SIGNER), JournalReader(journal)
        recorder = AuditRecorder(writer, reader, Redactor.create(os.urandom(32), [], True))
        await writer.start()
        manager = PolicyManager(policy, recorder, poll_interval_s=poll_s)
        try:
            await scenario(manager, journal)
        finally:
            await manager.aclose()
            await writer.aclose()
            await reader.aclose()

    asyncio.run(main())


def test_an_accepted_reload_is_journaled_then_applied(tmp_path: Path) -> None:
    async def scenario(manager: PolicyManager, journal: Path) -> None:
        manager.path.write_text(DENY_ALL)
        outcome = await manager.reload(TRIGGER_FILE_CHANGE)
        assert (outcome.changed, outcome.old_version, outcome.new_version) == (
            True,
            version_of(ALLOW_ALL),
            version_of(DENY_ALL),
        )
        assert manager.engine.version == version_of(DENY_ALL)
        assert manager.document_text == DENY_ALL
        [change] = policy_changes(journal)
        assert change["event_id"] == outcome.event_id
        assert (change["old_version"], change["new_version"], change["trigger"]) == (
            version_of(ALLOW_ALL),
            version_of(DENY_ALL),
            TRIGGER_FILE_CHANGE,
        )
        assert change["actor"]["type"] == "process_user"

    run(tmp_path, scenario)


def test_a_rejected_reload_keeps_the_old_version_and_journals_nothing(tmp_path: Path) -> None:
    async def scenario(manager: PolicyManager, journal: Path) -> None:
        manager.path.write_text(BROKEN)
        outcome = await manager.reload(TRIGGER_FILE_CHANGE)
        assert not outcome.changed
        assert outcome.old_version == outcome.new_version == version_of(ALLOW_ALL)
        assert str(manager.path) in outcome.error, "the error names the file"
        assert manager.engine.version == version_of(ALLOW_ALL)
        assert manager.document_text == ALLOW_ALL
        assert policy_changes(journal) == []

    run(tmp_path, scenario)


def test_a_reload_of_the_same_policy_changes_nothing(tmp_path: Path) -> None:
    async def scenario(manager: PolicyManager, journal: Path) -> None:
        outcome = await manager.reload(TRIGGER_FILE_CHANGE)
        assert (outcome.changed, outcome.error) == (False, "")
        assert policy_changes(journal) == []

    run(tmp_path, scenario)


def test_a_submitted_document_is_written_to_the_file_and_credited_to_the_operator(tmp_path: Path) -> None:
    async def scenario(manager: PolicyManager, journal: Path) -> None:
        outcome = await manager.reload(TRIGGER_OPERATOR, "alice", document_text=DENY_ALL)
        assert outcome.changed
        assert manager.path.read_text() == DENY_ALL, "the change survives a restart"
        [change] = policy_changes(journal)
        assert change["actor"] == {"type": "operator", "id": "alice"}

    run(tmp_path, scenario)


def test_a_submitted_document_that_does_not_parse_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(manager: PolicyManager, journal: Path) -> None:
        with pytest.raises(ConfigError, match="<submitted policy>"):
            await manager.reload(TRIGGER_OPERATOR, "alice", document_text=BROKEN)
        assert manager.engine.version == version_of(ALLOW_ALL)
        assert manager.path.read_text() == ALLOW_ALL
        assert policy_changes(journal) == []

    run(tmp_path, scenario)


def test_an_edited_file_is_picked_up_by_the_watch(tmp_path: Path) -> None:
    async def scenario(manager: PolicyManager, journal: Path) -> None:
        await manager.start()
        manager.path.write_text(DENY_ALL)
        await eventually_async(lambda: manager.engine.version == version_of(DENY_ALL), message="the edit applied")
        [change] = policy_changes(journal)
        assert change["trigger"] == TRIGGER_FILE_CHANGE

    run(tmp_path, scenario, poll_s=0.01)
