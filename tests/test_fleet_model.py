"""The fleet's pure decisions: what a sidecar's entries say about approvals, and the cheap pre-filter on their bytes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.canonical import canonical_json
from gateway.collector.fleet_model import Moved, Opened, Voted, changes_of, might_concern_approvals, plan_vote
from gateway.errors import FailedPreconditionError
from gateway.identity import Operator
from gateway.journal.entry import EventKind
from gateway.journal.state import DEFAULT_EXPIRES_S

AT_NS = 1_800_000_000_000_000_000


def pre_event(**fields: object) -> dict[str, object]:
    return {"kind": "pre_exec", "decision": "approval_required", "approval_id": "apr_1", "resumed_approval_id": "",
            "actor": {"type": "user", "id": "u_1"}, **fields}  # fmt: skip


@pytest.mark.parametrize(
    ("expires_in", "expected_ms"),
    [
        pytest.param(90, AT_NS // 10**6 + 90_000, id="seconds"),
        pytest.param("never", None, id="parks"),
        pytest.param(None, AT_NS // 10**6 + DEFAULT_EXPIRES_S * 1000, id="default"),
    ],
)
def test_expiry_is_derived_as_the_sidecar_derives_it(expires_in: object, expected_ms: int | None) -> None:
    [change] = changes_of("o", 4, AT_NS, pre_event(approval_expires_in_s=expires_in))
    assert isinstance(change, Opened) and change.approval.expires_ms == expected_ms and change.seq == 4


def test_a_resume_is_a_use_only_when_allowed() -> None:
    allowed = changes_of("o", 5, AT_NS, {"kind": "pre_exec", "decision": "allow", "resumed_approval_id": "apr_1"})
    assert [type(c) for c in allowed] == [Moved] and allowed[0].state == "used"  # type: ignore[union-attr]
    refused = {"kind": "pre_exec", "decision": "stop", "resumed_approval_id": "apr_1", "approval_id": ""}
    assert changes_of("o", 6, AT_NS, refused) == []


def test_a_grant_is_a_resolution_and_a_vote_an_expiry_only_a_resolution() -> None:
    body = {"kind": "approval_granted", "approval_id": "apr_1", "actor": {"id": "alice"}, "comment": "ok"}
    moved, voted = changes_of("o", 7, AT_NS, body)
    assert isinstance(moved, Moved) and moved.resolution == ("alice", "ok")
    assert isinstance(voted, Voted) and voted.vote.approver == "alice" and voted.vote.grant
    [expired] = changes_of("o", 8, AT_NS, {**body, "kind": "approval_expired", "actor": {"id": "agentaudit"}})
    assert isinstance(expired, Moved) and expired.resolution == ("", "ok")
    [abandoned] = changes_of("o", 9, AT_NS, {**body, "kind": "approval_abandoned"})
    assert isinstance(abandoned, Moved) and abandoned.resolution is None
    still, vote = changes_of("o", 10, AT_NS, {**body, "kind": "approval_voted", "channel": "slack"})
    assert isinstance(still, Moved) and still.state == "pending" and still.resolution is None
    assert isinstance(vote, Voted) and vote.vote.channel == "slack"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(pre_event(), id="asks"),
        pytest.param({"kind": "pre_exec", "decision": "allow", "resumed_approval_id": "apr_9"}, id="resumes"),
        pytest.param({"kind": "approval_denied", "approval_id": "apr_1"}, id="denied"),
    ],
)
def test_the_byte_filter_never_drops_an_entry_that_concerns_an_approval(body: dict[str, object]) -> None:
    kind = EventKind[str(body["kind"]).upper()]
    assert changes_of("o", 1, AT_NS, body)
    assert might_concern_approvals(kind, canonical_json(body))


def test_the_byte_filter_skips_ordinary_decisions_and_results() -> None:
    plain = canonical_json({"kind": "pre_exec", "decision": "allow", "approval_id": "", "resumed_approval_id": ""})
    assert not might_concern_approvals(EventKind.PRE_EXEC, plain)
    assert not might_concern_approvals(EventKind.POST_EXEC, b"{}")
    assert might_concern_approvals(99, b"{}")  # a kind added later is parsed, not assumed irrelevant


def test_a_pending_approval_known_only_from_a_later_entry_takes_no_answer() -> None:
    [opened] = changes_of("o", 4, AT_NS, pre_event())
    assert isinstance(opened, Opened)
    unknown = replace(opened.approval, event_seq=-1, actor_id="", approvers=())
    alice = Operator("alice", frozenset({"approver"}))
    with pytest.raises(FailedPreconditionError, match="has not reached the collector"):
        plan_vote(unknown, grant=True, operator=alice, comment="", channel="cli", now_ms=AT_NS // 10**6)
    plan = plan_vote(opened.approval, grant=True, operator=alice, comment="", channel="cli", now_ms=AT_NS // 10**6)
    assert plan.state == "granted" and plan.act.fields["approver"] == "alice" and plan.act.origin == "o"
