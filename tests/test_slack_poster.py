"""The poster: off the ingest path, retried with backoff, bounded, updating from any channel or replica, the
incoming webhook when there is no bot token, and no secret in any log line."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from starlette.applications import Starlette

from gateway.journal.entry import EventKind
from gateway.slack.api import SlackApi
from gateway.slack.poster import SlackPoster
from tests.fleet_helpers import ORIGIN, database, run
from tests.slack_helpers import ALICE, BOT_TOKEN, FakeSlack, rig, until
from tests.test_slack_messages import approval as pending_approval


def test_a_failing_slack_is_retried_with_backoff_and_honours_retry_after(tmp_path: Path) -> None:
    db = database("sqlite", tmp_path, "")
    fake = FakeSlack(
        fail={
            "chat.postMessage": [
                (500, {"ok": False, "error": "internal_error"}, {}),
                (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "0"}),
            ]
        }
    )

    async def scenario() -> None:
        async with rig(db, tmp_path, fake=fake) as r:
            await r.open("apr_1")
            await r.posted("apr_1")
            await until(lambda: r.bridge.store.message("apr_1"), "the message remembered")
            assert len(r.fake.of("chat.postMessage")) == 3
            row = await r.bridge.store.message("apr_1")
            assert row is not None and (row.channel, row.ts, row.rendered) == ("C0APPROVALS", "1700000000.000001",
                                                                               "pending:0")  # fmt: skip

    run(scenario(), 120)


def test_a_permanent_failure_is_not_retried_and_logs_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = database("sqlite", tmp_path, "")
    fake = FakeSlack(fail={"chat.postMessage": [(200, {"ok": False, "error": "invalid_auth"}, {})]})

    async def scenario() -> None:
        async with rig(db, tmp_path, fake=fake) as r:
            await r.open("apr_1")
            await until(lambda: "invalid_auth" in caplog.text, "the failure logged")
            assert len(r.fake.of("chat.postMessage")) == 1
            assert await r.bridge.store.message("apr_1") is None

    caplog.set_level(logging.DEBUG)
    run(scenario(), 120)
    assert "chat.postMessage of approval apr_1 failed after 1 attempt(s): chat.postMessage: HTTP 200 invalid_auth" in (
        caplog.text
    )
    assert BOT_TOKEN not in caplog.text


def test_without_a_bot_token_the_webhook_posts_and_an_answer_replaces_the_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = database("sqlite", tmp_path, "")
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with rig(db, tmp_path, bot=False, webhook=True) as r:
            await r.open("apr_1")
            [hooked] = await until(lambda: r.fake.of("webhook"), "the webhook post")
            assert "agentaudit_approve" in json.dumps(hooked.body["blocks"])
            assert r.fake.of("chat.postMessage") == []
            assert (await r.press(ALICE, "agentaudit_approve", "apr_1")).status_code == 200
            replaced = await until(
                lambda: [c for c in r.fake.of("respond") if c.body.get("replace_original")], "the replaced message"
            )
            assert "*Granted* by alice via slack" in json.dumps(replaced[0].body["blocks"])
            # Deny without a bot token: no modal can be opened, so the reply points to the console.
            await r.open("apr_2")
            assert (await r.press(ALICE, "agentaudit_deny", "apr_2")).status_code == 200
            text = await until(
                lambda: [c.body["text"] for c in r.fake.of("respond") if "justification" in c.body.get("text", "")],
                "the reply",
            )
            assert "https://console.example.test/approvals/apr_2" in text[0]

    run(scenario(), 120)
    assert "secretpath" not in caplog.text and "/respond/" not in caplog.text  # the webhook's and replies' URLs


def test_the_sweep_updates_a_message_the_sidecar_resolved_itself(tmp_path: Path) -> None:
    db = database("sqlite", tmp_path, "")

    async def scenario() -> None:
        async with rig(db, tmp_path) as r:
            await r.open("apr_1")
            await until(lambda: r.bridge.store.message("apr_1"), "the message remembered")
            r.journal.resolve(EventKind.APPROVAL_GRANTED, "apr_1", "sam", "granted on the sidecar")
            await r.fleet.record_entries(ORIGIN, r.journal.rows)  # no vote through the collector: no hook fires
            assert r.bridge.poster is not None
            assert await r.bridge.poster.sweep() == 1
            [update] = await until(lambda: r.fake.of("chat.update"), "chat.update")
            assert "*Granted* by sam via cli" in json.dumps(update.body["blocks"])
            await until(lambda: r.bridge.poster is not None and r.bridge.poster._queue.empty(), "the queue drained")
            assert await r.bridge.poster.sweep() == 0  # claimed: not sent twice
            r.journal.resume("apr_1")
            await r.fleet.record_entries(ORIGIN, r.journal.rows)
            assert await r.bridge.poster.sweep() == 1
            await until(lambda: len(r.fake.of("chat.update")) == 2, "the used update")
            row = await r.bridge.store.message("apr_1")
            assert row is not None and row.rendered == "used:1"
            assert await r.bridge.store.unsettled() == []  # settled: never swept again

    run(scenario(), 120)


def test_two_replicas_send_one_update_for_one_change(tmp_path: Path, postgres_database: str) -> None:
    db = database("postgres", tmp_path, postgres_database)

    async def scenario() -> None:
        async with rig(db, tmp_path, name="a") as a, rig(db, tmp_path, name="b", fake=a.fake) as b:
            await a.open("apr_1")
            await until(lambda: b.bridge.store.message("apr_1"), "the message, seen by replica B")
            a.journal.resolve(EventKind.APPROVAL_DENIED, "apr_1", "sam", "no")
            await a.fleet.record_entries(ORIGIN, a.journal.rows)
            assert a.bridge.poster is not None and b.bridge.poster is not None
            await asyncio.gather(a.bridge.poster.sweep(), b.bridge.poster.sweep())
            await until(lambda: a.fake.of("chat.update"), "chat.update")
            for poster in (a.bridge.poster, b.bridge.poster):
                await until(lambda p=poster: p._queue.empty(), "the queues drained")  # type: ignore[misc]
            await asyncio.sleep(0.2)  # a second update would have been sent by now
            assert len(a.fake.of("chat.update")) == 1

    run(scenario(), 120)


def test_the_queue_is_bounded_and_the_hook_never_waits(tmp_path: Path) -> None:
    async def scenario() -> None:
        from tests.slack_helpers import slack_config  # noqa: PLC0415

        config = slack_config(tmp_path, FakeSlack(port=9))
        api = SlackApi(config, bot_token="xoxb-x", webhook_url=None)
        poster = SlackPoster(None, None, api, config, queue_size=2)  # type: ignore[arg-type]  # never started
        approval = pending_approval()
        for _ in range(5):
            await asyncio.wait_for(poster.approval_opened(approval), 1)
        assert poster.dropped == 3
        poster.refresh("apr_x")
        assert poster.dropped == 4
        roomy = SlackPoster(None, None, api, config, queue_size=2)  # type: ignore[arg-type]
        for _ in range(3):
            roomy.refresh("apr_x")  # asked three times before it runs: queued once
        assert (roomy.dropped, roomy._queue.qsize()) == (0, 1)

    run(scenario(), 30)


def test_a_secret_readable_by_others_stops_the_bridge_from_starting(tmp_path: Path) -> None:
    from gateway.errors import ConfigError  # noqa: PLC0415
    from gateway.slack import SlackBridge  # noqa: PLC0415
    from tests.slack_helpers import replica, serve, slack_config  # noqa: PLC0415

    db = database("sqlite", tmp_path, "")

    async def scenario() -> None:
        config = slack_config(tmp_path, FakeSlack(port=9))
        assert config.bot_token_file is not None
        config.bot_token_file.chmod(0o640)
        async with replica(db, "a") as (store, fleet):
            bridge = SlackBridge(config)
            with pytest.raises(ConfigError, match=r"bot_token_file: .* is accessible by group or others"):
                await bridge.start(SimpleNamespace(fleet=fleet, store=store))
            assert fleet.on_approval_opened == [] and fleet.on_approval_voted == []
            await bridge.aclose()  # idempotent after a failed start
            async with serve(Starlette(routes=bridge.routes())) as port, httpx.AsyncClient() as client:
                answer = await client.post(f"http://127.0.0.1:{port}/slack/interactions", content=b"payload=%7B%7D")
            assert (answer.status_code, answer.text) == (503, "Slack approvals are not started")

    run(scenario(), 60)
