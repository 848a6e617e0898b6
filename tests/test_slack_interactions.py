"""POST /slack/interactions on a real collector database (SQLite; PostgreSQL where it matters), the real bridge
served by uvicorn, requests signed with slack_sdk's own code, and a local stand-in for Slack's Web API."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.slack.interactions import ANONYMOUS_JOURNAL_PER_MIN
from tests.fleet_helpers import Database, database, run
from tests.slack_helpers import (
    ALICE,
    AUDITOR,
    BOB,
    CAROL,
    SELF,
    SIGNING_SECRET,
    FakeSlack,
    button,
    form,
    rig,
    sign,
    submission,
    until,
)

APPROVE, DENY = "agentaudit_approve", "agentaudit_deny"


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    return database("sqlite", tmp_path, "")


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    dsn = request.getfixturevalue("postgres_database") if request.param == "postgres" else ""
    return database(request.param, tmp_path, dsn)


def replies(fake: FakeSlack, user: str) -> list[str]:
    """The ephemeral texts sent to ``user``'s response_url (``Rig.press`` names it after the user)."""
    return [
        c.body.get("text", "")
        for c in fake.of("respond")
        if c.body.get("response_type") == "ephemeral" and c.path == f"/respond/{user}"
    ]


def test_a_signed_approve_grants_once_as_the_mapped_identity_and_updates_the_message(
    any_db: Database, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with rig(any_db, tmp_path) as r:
            await r.open("apr_1")
            posted = await r.posted("apr_1")
            assert posted.authorization == "Bearer xoxb-test-1234567890-secret"
            assert posted.body["channel"] == "#approvals"
            body = form(button(ALICE, APPROVE, "apr_1", r.fake.response_url()))
            headers = sign(body)
            answer = await r.client.post(r.url, content=body, headers=headers)
            assert answer.status_code == 200
            approval = await until(lambda: _state(r, "apr_1", "granted"), "the grant")
            [vote] = approval.votes
            assert (vote.approver, vote.grant, vote.channel) == ("alice", True, "slack")
            [act] = await r.acts("approval_vote")
            assert (act["approver"], act["channel"], act["_operator"]) == ("alice", "slack", "alice")
            update = await until(lambda: r.fake.of("chat.update"), "chat.update")
            assert (update[0].body["channel"], update[0].body["ts"]) == ("C0APPROVALS", "1700000000.000001")
            outcome = json.dumps(update[0].body["blocks"])
            assert "*Granted* by alice via slack" in outcome
            assert "agentaudit_approve" not in outcome  # no buttons once resolved

            replayed = await r.client.post(r.url, content=body, headers=headers)
            assert replayed.status_code == 401
            assert "replayed" in replayed.text
            assert len((await r.fleet.get_approval("apr_1")).votes) == 1
            [denied] = await r.acts("operator_denied")
            assert denied["reason"] == "replayed" and denied["detail"].startswith("replayed request")
            assert (denied["identity"], denied["what"], denied["_channel"]) == ("", "POST /slack/interactions", "slack")
            assert await r.fleet.verify_log() == []

    run(scenario(), 120)


async def _state(r: object, approval_id: str, state: str) -> object:
    approval = await r.fleet.get_approval(approval_id)  # type: ignore[attr-defined]
    return approval if approval.state == state else None


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param(lambda body: {"Content-Type": "application/x-www-form-urlencoded"}, "unsigned", id="unsigned"),
        pytest.param(lambda body: sign(body, int(time.time()) - 301), "stale", id="stale"),
        pytest.param(lambda body: sign(body, int(time.time()) + 400), "stale", id="from-the-future"),
        pytest.param(lambda body: sign(body, secret="not-the-signing-secret"), "bad_signature", id="bad-signature"),
        pytest.param(
            lambda body: {**sign(body), "X-Slack-Request-Timestamp": str(int(time.time()) - 1)},
            "bad_signature",
            id="timestamp-changed-after-signing",
        ),
        pytest.param(lambda body: {**sign(body), "X-Slack-Request-Timestamp": "12ab"}, "bad_timestamp", id="bad-ts"),
    ],
)
def test_an_unauthenticated_request_is_refused_401_and_journaled(
    sqlite_db: Database, tmp_path: Path, headers: object, reason: str
) -> None:
    async def scenario() -> None:
        async with rig(sqlite_db, tmp_path) as r:
            await r.open("apr_1")
            await r.posted("apr_1")
            body = form(button(ALICE, APPROVE, "apr_1", r.fake.response_url()))
            answer = await r.client.post(r.url, content=body, headers=headers(body))  # type: ignore[operator]
            assert answer.status_code == 401
            assert (await r.fleet.get_approval("apr_1")).votes == ()
            [denied] = await r.acts("operator_denied")
            assert (denied["reason"], denied["identity"], denied["what"]) == (reason, "", "POST /slack/interactions")
            assert denied["detail"].endswith(", from 127.0.0.1")

    run(scenario(), 120)


def test_a_body_altered_after_signing_is_refused(sqlite_db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(sqlite_db, tmp_path) as r:
            await r.open("apr_1")
            signed = form(button(BOB, APPROVE, "apr_1", r.fake.response_url()))
            altered = form(button(ALICE, APPROVE, "apr_1", r.fake.response_url()))
            answer = await r.client.post(r.url, content=altered, headers=sign(signed))
            assert answer.status_code == 401
            assert (await r.fleet.get_approval("apr_1")).votes == ()

    run(scenario(), 120)


@pytest.mark.parametrize(
    ("user", "reason", "detail", "identity"),
    [
        pytest.param(
            "U0NOBODY", "unknown_slack_user", "is not in collector.slack.users", "slack:U0NOBODY", id="unknown-user"
        ),
        pytest.param(AUDITOR, "wrong_role", "needs one of the roles approver", "audrey", id="auditor"),
    ],
)
def test_a_slack_user_who_may_not_answer_is_refused_403_and_journaled(
    sqlite_db: Database, tmp_path: Path, user: str, reason: str, detail: str, identity: str
) -> None:
    async def scenario() -> None:
        async with rig(sqlite_db, tmp_path) as r:
            await r.open("apr_1")
            for action in (APPROVE, DENY):
                answer = await r.press(user, action, "apr_1")
                assert answer.status_code == 403
            assert (await r.fleet.get_approval("apr_1")).votes == ()
            assert r.fake.of("views.open") == []
            denied = await r.acts("operator_denied")
            assert [d["what"] for d in denied] == ["slack approve apr_1", "slack deny apr_1"]
            for d in denied:
                assert (d["reason"], d["identity"], d["_operator"]) == (reason, identity, identity)
                assert detail in d["detail"]
            await until(lambda: len(replies(r.fake, user)) == 2, "the ephemeral refusals")

    run(scenario(), 120)


def test_self_approval_is_refused_with_an_ephemeral_reply_and_journaled(sqlite_db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(sqlite_db, tmp_path) as r:
            await r.open("apr_1", actor="Agent-Runner")  # SELF maps to agent-runner: the same person, spelled otherwise
            assert (await r.press(SELF, APPROVE, "apr_1")).status_code == 200
            [text] = await until(lambda: replies(r.fake, SELF), "the ephemeral refusal")
            assert text.startswith("Refused:") and "cannot approve it" in text
            [denied] = await until(lambda: r.acts("operator_denied"), "the journaled refusal")
            assert (denied["reason"], denied["identity"], denied["what"]) == (
                "self_approval", "agent-runner", "slack approve apr_1",
            )  # fmt: skip
            assert (await r.fleet.get_approval("apr_1")).votes == ()

    run(scenario(), 120)


def test_deny_opens_a_modal_and_needs_a_justification(any_db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(any_db, tmp_path) as r:
            await r.open("apr_1")
            await r.posted("apr_1")
            assert (await r.press(BOB, DENY, "apr_1", trigger="trig-42")).status_code == 200
            [opened] = await until(lambda: r.fake.of("views.open"), "views.open")
            assert opened.body["trigger_id"] == "trig-42"
            view = opened.body["view"]
            assert view["callback_id"] == "agentaudit_deny" and view["blocks"][1]["block_id"] == "justification"
            metadata = view["private_metadata"]
            assert json.loads(metadata)["approval_id"] == "apr_1"
            assert (await r.fleet.get_approval("apr_1")).votes == ()  # opening the modal decides nothing

            for empty in (None, "", "   "):
                answer = await r.send(submission(BOB, metadata, empty))
                assert answer.status_code == 200
                assert answer.json() == {
                    "response_action": "errors",
                    "errors": {"justification": "A denial needs a justification: the agent and the investigators "
                               "read it."},
                }  # fmt: skip
            assert (await r.fleet.get_approval("apr_1")).state == "pending"

            answer = await r.send(submission(BOB, metadata, "  wrong customer  "))
            assert (answer.status_code, answer.content) == (200, b"")
            approval = await r.fleet.get_approval("apr_1")
            assert (approval.state, approval.resolved_by, approval.comment) == ("denied", "bob", "wrong customer")
            assert approval.votes[0].channel == "slack"
            update = await until(lambda: r.fake.of("chat.update"), "chat.update")
            assert "*Denied* by bob via slack" in json.dumps(update[-1].body["blocks"])
            assert "wrong customer" in json.dumps(update[-1].body["blocks"])

    run(scenario(), 120)


def test_a_refused_denial_is_shown_in_the_modal(sqlite_db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(sqlite_db, tmp_path) as r:
            await r.open("apr_1", actor="agent-runner")
            metadata = json.dumps({"approval_id": "apr_1", "response_url": r.fake.response_url()})
            answer = await r.send(submission(SELF, metadata, "my own run"))
            assert answer.json()["response_action"] == "errors"
            assert "cannot approve it" in answer.json()["errors"]["justification"]
            assert (await r.fleet.get_approval("apr_1")).votes == ()

    run(scenario(), 120)


def test_four_eyes_needs_two_slack_users(any_db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(any_db, tmp_path) as r:
            await r.open("apr_2", required=2)
            posted = await r.posted("apr_2")
            assert "0 of 2" in json.dumps(posted.body["blocks"])
            assert (await r.press(ALICE, APPROVE, "apr_2")).status_code == 200
            await until(lambda: replies(r.fake, ALICE), "alice's progress reply")
            assert "(1 of 2)" in replies(r.fake, ALICE)[0]
            assert (await r.fleet.get_approval("apr_2")).state == "pending"
            first = await until(lambda: r.fake.of("chat.update"), "the 1-of-2 update")
            assert "1 of 2: alice" in json.dumps(first[0].body["blocks"])
            assert "agentaudit_approve" in json.dumps(first[0].body["blocks"])  # still answerable

            assert (await r.press(ALICE, APPROVE, "apr_2")).status_code == 200  # the same person again
            await until(lambda: len(replies(r.fake, ALICE)) == 2, "alice's second reply")
            assert "already approved" in replies(r.fake, ALICE)[1]
            assert (await r.fleet.get_approval("apr_2")).state == "pending"

            assert (await r.press(BOB, APPROVE, "apr_2")).status_code == 200
            approval = await until(lambda: _state(r, "apr_2", "granted"), "the grant at the second approver")
            assert [(v.approver, v.channel) for v in approval.votes] == [("alice", "slack"), ("bob", "slack")]
            updates = await until(lambda: len(r.fake.of("chat.update")) >= 2 and r.fake.of("chat.update"), "update")
            assert "*Granted* by alice, bob via slack" in json.dumps(updates[-1].body["blocks"])

    run(scenario(), 120)


def test_an_answer_through_another_channel_updates_the_message_too(sqlite_db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        from gateway.identity import Operator  # noqa: PLC0415

        async with rig(sqlite_db, tmp_path) as r:
            await r.open("apr_1")
            await r.posted("apr_1")
            await r.fleet.vote("apr_1", grant=False, operator=Operator("dana", frozenset({"admin"})),
                               comment="from the console", channel="console")  # fmt: skip
            update = await until(lambda: r.fake.of("chat.update"), "chat.update")
            assert "*Denied* by dana via console" in json.dumps(update[0].body["blocks"])
            assert (await r.press(ALICE, APPROVE, "apr_1")).status_code == 200
            [text] = await until(lambda: replies(r.fake, ALICE), "the late answer's reply")
            assert "already denied by dana" in text

    run(scenario(), 120)


def test_a_request_accepted_by_one_replica_is_a_replay_for_another(tmp_path: Path, postgres_database: str) -> None:
    db = database("postgres", tmp_path, postgres_database)

    async def scenario() -> None:
        async with rig(db, tmp_path, name="replica-a") as a, rig(db, tmp_path, name="replica-b", fake=a.fake) as b:
            await a.open("apr_1")
            body = form(button(ALICE, APPROVE, "apr_1", a.fake.response_url()))
            headers = sign(body)
            assert (await a.client.post(a.url, content=body, headers=headers)).status_code == 200
            replayed = await b.client.post(b.url, content=body, headers=headers)
            assert (replayed.status_code, "replayed" in replayed.text) == (401, True)
            await until(lambda: _state(b, "apr_1", "granted"), "the grant, seen by replica B")
            assert len((await b.fleet.get_approval("apr_1")).votes) == 1

    run(scenario(), 120)


def test_a_flood_of_unsigned_requests_is_journaled_up_to_a_bound(sqlite_db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(sqlite_db, tmp_path) as r:
            for _ in range(ANONYMOUS_JOURNAL_PER_MIN + 5):
                answer = await r.client.post(r.url, content=b"payload=%7B%7D")
                assert answer.status_code == 401
            journaled = len(await r.acts("operator_denied"))
            # A minute boundary may fall inside the loop: then two windows' worth.
            assert ANONYMOUS_JOURNAL_PER_MIN <= journaled <= ANONYMOUS_JOURNAL_PER_MIN + 5
            assert r.bridge.interactions is not None
            assert r.bridge.interactions.unjournaled == ANONYMOUS_JOURNAL_PER_MIN + 5 - journaled

    run(scenario(), 120)


def test_a_payload_that_is_not_slacks_form_is_refused_400(sqlite_db: Database, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(sqlite_db, tmp_path) as r:
            for body in ("payload=not-json", "nothing=here", "payload=%5B1%5D"):
                answer = await r.client.post(r.url, content=body, headers=sign(body))
                assert answer.status_code == 400
            huge = "payload=" + "x" * (1 << 20)
            assert (await r.client.post(r.url, content=huge, headers=sign(huge))).status_code == 413

    run(scenario(), 120)


def test_the_signing_secret_is_never_logged(
    sqlite_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with rig(sqlite_db, tmp_path) as r:
            await r.open("apr_1")
            await r.posted("apr_1")
            await r.press(ALICE, APPROVE, "apr_1")
            body = form(button(ALICE, APPROVE, "apr_1", r.fake.response_url()))
            await r.client.post(r.url, content=body, headers=sign(body, secret="wrong"))
            await until(lambda: r.fake.of("chat.update"), "chat.update")

    caplog.set_level("DEBUG")
    run(scenario(), 120)
    assert SIGNING_SECRET not in caplog.text and "xoxb-test-1234567890-secret" not in caplog.text


def test_an_approver_not_among_the_rules_approvers_is_refused_and_journaled(
    sqlite_db: Database, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with rig(sqlite_db, tmp_path) as r:
            await r.open("apr_1", approvers=("carol", "role:admin"))
            assert (await r.press(ALICE, APPROVE, "apr_1")).status_code == 200
            [denied] = await until(lambda: r.acts("operator_denied"), "the journaled refusal")
            assert (denied["reason"], denied["identity"]) == ("not_an_approver", "alice")
            [text] = await until(lambda: replies(r.fake, ALICE), "the ephemeral refusal")
            assert "is not among the approvers of apr_1" in text
            assert (await r.press(CAROL, APPROVE, "apr_1")).status_code == 200  # admin: on the rule's list
            await until(lambda: _state(r, "apr_1", "granted"), "carol's grant")

    run(scenario(), 120)
