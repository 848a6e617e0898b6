"""ApprovalBook.check_resume: every refusal reason and the reservation, on a real journal in tmp_path."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway import reasons
from gateway.canonical import canonical_json
from gateway.identity import Operator
from gateway.ids import new_event_id
from gateway.journal import state as state_tables
from gateway.journal.entry import HEADER_SIZE, EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.store import JournalReader
from gateway.journal.writer import JournalWriter, StateChange, now_nanos
from gateway.policy.model import ActionRequest, Decision, Verdict
from gateway.redaction import Redactor
from gateway.sidecar.approvals import Approval, ApprovalBook
from gateway.sidecar.recorder import AuditRecorder
from tests.journal_helpers import body, fixed_signer

ACTION_KEY = "ak_refund_100"
REQUEST = ActionRequest(
    run_id="run_1",
    step_id=1,
    tenant_id="t_42",
    actor_type="user",
    actor_id="u_1",
    agent_id="support-agent",
    action="refund.create",
    args={"amount": 100},
    scope="tenant",
)
DECISION = Decision(Verdict.APPROVAL_REQUIRED, reasons.APPROVAL_REQUIRED, "approval", "big-refunds", "v1")
APPROVER = Operator("alice", frozenset({"approver"}))


class Sidecar:
    """The real writer, reader and recorder on one journal, with an ApprovalBook over them."""

    def __init__(self, path: Path) -> None:
        self.writer = JournalWriter(path, fixed_signer())
        self.reader = JournalReader(path)
        self.recorder = AuditRecorder(self.writer, self.reader, Redactor.create(os.urandom(32), [], True))
        self.book = ApprovalBook(self.recorder, self.reader, expiry_check_s=3600)

    async def commit(self, state: list[StateChange]) -> None:
        """Commits state changes with a signed event, as the Decide use case does with its pre-event."""
        event = body(0, event_id=new_event_id())
        await self.writer.append(EventKind.PRE_EXEC, canonical_json(event), indexed_values(event), now_nanos(), state)

    async def ask(self, approval_id: str = "apr_1") -> Approval:
        """A pending approval, created and committed as an ``approval_required`` decision creates it."""
        approval, state = self.book.create(REQUEST, ACTION_KEY, DECISION, approval_id, f"evt_{approval_id}")
        await self.commit(state)
        self.book.opened(approval)
        return approval


def run(tmp_path: Path, scenario: Callable[[Sidecar], Awaitable[None]]) -> None:
    async def main() -> None:
        sidecar = Sidecar(tmp_path / "journal.db")
        await sidecar.writer.start()
        await sidecar.book.start()
        try:
            await scenario(sidecar)
        finally:
            await sidecar.book.aclose()
            await sidecar.writer.aclose()
            await sidecar.reader.aclose()

    asyncio.run(main())


def resuming(**changes: object) -> ActionRequest:
    return dataclasses.replace(REQUEST, **{"approval_id": "apr_1", **changes})  # type: ignore[arg-type]


def test_an_unknown_approval_is_not_found(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        assert sidecar.book.check_resume(resuming(), ACTION_KEY) == (reasons.APPROVAL_NOT_FOUND, None)

    run(tmp_path, scenario)


def test_a_pending_approval_does_not_resume_yet(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        approval = await sidecar.ask()
        assert sidecar.book.check_resume(resuming(), ACTION_KEY) == (reasons.APPROVAL_PENDING, approval)

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("changes", "action_key"),
    [
        pytest.param({}, "ak_refund_9999", id="other-args"),
        pytest.param({"run_id": "run_2"}, ACTION_KEY, id="other-run"),
        pytest.param({"tenant_id": "t_7"}, ACTION_KEY, id="other-tenant"),
    ],
)
def test_a_resume_that_differs_from_the_approved_request_is_a_mismatch(
    tmp_path: Path, changes: dict[str, object], action_key: str
) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        approval = await sidecar.ask()
        await sidecar.book.resolve("apr_1", True, APPROVER, "ok")
        assert sidecar.book.check_resume(resuming(**changes), action_key) == (reasons.APPROVAL_MISMATCH, approval)
        assert not approval.used, "a refused resume reserves nothing"

    run(tmp_path, scenario)


def test_a_denied_approval_is_refused_as_denied(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        await sidecar.ask()
        await sidecar.book.resolve("apr_1", False, APPROVER, "no")
        reason, approval = sidecar.book.check_resume(resuming(), ACTION_KEY)
        assert reason == reasons.APPROVAL_DENIED
        assert approval is not None and approval.resolved_by == "alice"

    run(tmp_path, scenario)


def test_a_pending_approval_past_its_expiry_is_expired_before_and_after_it_is_journaled(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        approval = await sidecar.ask()
        approval.expires_ns = now_nanos() - 1  # as if its rule's expires_in had passed
        assert sidecar.book.check_resume(resuming(), ACTION_KEY) == (reasons.APPROVAL_EXPIRED, approval)
        assert await sidecar.book.expire_due() == 1
        assert sidecar.book.check_resume(resuming(), ACTION_KEY) == (reasons.APPROVAL_EXPIRED, approval)

    run(tmp_path, scenario)


def test_a_granted_matching_approval_resumes_once(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        approval = await sidecar.ask()
        await sidecar.book.resolve("apr_1", True, APPROVER, "ok")
        assert sidecar.book.check_resume(resuming(), ACTION_KEY) == ("", approval)
        assert approval.used, "the approval is reserved before the resuming pre-event is committed"
        assert sidecar.book.check_resume(resuming(), ACTION_KEY) == (reasons.APPROVAL_USED, approval)
        await sidecar.commit(sidecar.book.use_statement(approval))
        sidecar.book.used(approval)
        assert sidecar.book.check_resume(resuming(), ACTION_KEY) == (reasons.APPROVAL_USED, approval)
        stored = await sidecar.reader.approval("apr_1")
        assert stored is not None and stored.used, "used once, in the state table too"

    run(tmp_path, scenario)


def test_an_unreserved_approval_may_resume_again(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        approval = await sidecar.ask()
        await sidecar.book.resolve("apr_1", True, APPROVER, "ok")
        assert sidecar.book.check_resume(resuming(), ACTION_KEY) == ("", approval)
        sidecar.book.unreserve(approval)  # the resuming pre-event was not committed
        assert sidecar.book.check_resume(resuming(), ACTION_KEY) == ("", approval)

    run(tmp_path, scenario)


def test_open_approvals_survive_a_restart_and_closed_ones_do_not_reopen(tmp_path: Path) -> None:
    async def before(sidecar: Sidecar) -> None:
        for approval_id in ("apr_1", "apr_2", "apr_3"):
            await sidecar.ask(approval_id)
        await sidecar.book.resolve("apr_2", True, APPROVER, "ok")
        await sidecar.book.resolve("apr_3", False, APPROVER, "no")

    async def after(sidecar: Sidecar) -> None:
        assert sidecar.book.pending_count() == 1
        assert sidecar.book.check_resume(resuming(), ACTION_KEY)[0] == reasons.APPROVAL_PENDING
        assert sidecar.book.check_resume(resuming(approval_id="apr_2"), ACTION_KEY)[0] == ""
        assert (await sidecar.book.get("apr_3")).state == state_tables.DENIED, "a closed approval is still readable"

    run(tmp_path, before)
    run(tmp_path, after)


def test_the_answer_event_records_its_channel_and_the_collector_that_relayed_it(tmp_path: Path) -> None:
    async def scenario(sidecar: Sidecar) -> None:
        await sidecar.ask("apr_1")
        await sidecar.ask("apr_2")
        _, own = await sidecar.book.resolve("apr_1", True, APPROVER, "ok")
        _, relayed = await sidecar.book.resolve(
            "apr_2", False, APPROVER, "no", channel="slack", via="collector-1", control_seq=42
        )
        bodies = {b["event_id"]: b for b in await journal_bodies(sidecar)}
        assert bodies[own]["channel"] == "cli"
        assert "via" not in bodies[own] and "control_seq" not in bodies[own]
        assert (bodies[relayed]["channel"], bodies[relayed]["via"], bodies[relayed]["control_seq"]) == (
            "slack",
            "collector-1",
            42,
        )

    run(tmp_path, scenario)


async def journal_bodies(sidecar: Sidecar) -> list[dict[str, object]]:
    entries = await sidecar.reader.signed_entries(0, 1000)
    return [json.loads(e.entry[HEADER_SIZE:]) for e in entries]
