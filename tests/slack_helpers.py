"""For the Slack tests: a local stand-in for Slack's Web API (Slack is outside the project), the real bridge on a
real collector database served by uvicorn on loopback, and interaction requests signed with slack_sdk's own code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from slack_sdk.signature import SignatureVerifier
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.collector.fleet import FleetControl, open_fleet
from gateway.collector.store import CollectorStore
from gateway.config.slack import SlackConfig, parse_slack_config
from gateway.slack import SlackBridge, slack_routes
from tests.conftest import free_port
from tests.fleet_helpers import CONTROL, ORIGIN, Database, SidecarJournal, journal_key

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-test-1234567890-secret"
ALICE, BOB, CAROL, AUDITOR, SELF = "U0ALICE", "U0BOB", "U0CAROL", "U0AUDIT", "U0RUNNER"


@dataclass
class Call:
    """One request the stand-in received."""

    method: str  # chat.postMessage, chat.update, views.open, webhook, respond
    body: dict[str, Any]
    authorization: str
    path: str = ""


@dataclass
class FakeSlack:
    """A stand-in for Slack's Web API, incoming webhook and response_url, recording every call.

    ``fail`` maps a method to a list of (status, JSON answer, headers) answered before the normal one, in order.
    """

    calls: list[Call] = field(default_factory=list)
    fail: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = field(default_factory=dict)
    next_ts: int = 0
    port: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/T000/B000/secretpath"

    def response_url(self, name: str = "r1") -> str:
        return f"http://127.0.0.1:{self.port}/respond/{name}"

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            body = json.loads(raw or b"{}")
        else:
            body = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
        self.calls.append(Call(method, body, request.headers.get("authorization", "")))
        if self.fail.get(method):
            status, answer, headers = self.fail[method].pop(0)
            return JSONResponse(answer, status, headers=headers)
        if method == "chat.postMessage":
            self.next_ts += 1
            return JSONResponse({"ok": True, "channel": "C0APPROVALS", "ts": f"1700000000.{self.next_ts:06d}"})
        return JSONResponse({"ok": True})

    async def _hook(self, request: Request) -> Response:
        name = "webhook" if request.url.path.startswith("/hook/") else "respond"
        self.calls.append(Call(name, json.loads(await request.body()), "", request.url.path))
        if self.fail.get(name):
            status, _, _ = self.fail[name].pop(0)
            return PlainTextResponse("no", status)
        return PlainTextResponse("ok")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/{method}", self._api, methods=["POST"]),
                Route("/hook/{rest:path}", self._hook, methods=["POST"]),
                Route("/respond/{rest:path}", self._hook, methods=["POST"]),
            ]
        )


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[int]:
    """Serves an ASGI app with uvicorn on a free loopback port, in this event loop; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


def secret_file(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def slack_config(
    tmp_path: Path, fake: FakeSlack, *, bot: bool = True, webhook: bool = False, **extra: Any
) -> SlackConfig:
    """collector.slack as an operator writes it (parsed by the real parser), secrets in 0600 files."""
    raw: dict[str, Any] = {
        "signing_secret_file": str(secret_file(tmp_path / "slack-signing.secret", SIGNING_SECRET)),
        "channel": "#approvals",
        "console_url": "https://console.example.test/",
        "api_url": fake.api_url,
        "users": {
            ALICE: {"identity": "alice", "roles": ["approver"]},
            BOB: {"identity": "bob"},
            CAROL: {"identity": "carol", "roles": ["admin"]},
            AUDITOR: {"identity": "audrey", "roles": ["auditor"]},
            SELF: {"identity": "agent-runner", "roles": ["approver"]},
        },
        **extra,
    }
    if bot:
        raw["bot_token_file"] = str(secret_file(tmp_path / "slack-bot.token", BOT_TOKEN))
    if webhook:
        raw["webhook_url_file"] = str(secret_file(tmp_path / "slack-webhook.url", fake.webhook_url))
    config = parse_slack_config(raw, tmp_path)
    assert config is not None
    return config


def sign(body: str, timestamp: int | None = None, secret: str = SIGNING_SECRET) -> dict[str, str]:
    """The headers Slack sends: the signature made by slack_sdk's own code (what SignatureVerifier expects)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def form(payload: dict[str, Any]) -> str:
    """An interaction body as Slack encodes it: one form field ``payload`` holding the JSON."""
    return urllib.parse.urlencode({"payload": json.dumps(payload)})


def button(user: str, action_id: str, approval_id: str, response_url: str, trigger: str = "trig-1") -> dict[str, Any]:
    """A block_actions payload: ``user`` pressed the button ``action_id`` of the message of ``approval_id``."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T000"},
        "team": {"id": "T000"},
        "trigger_id": trigger,
        "response_url": response_url,
        "container": {"type": "message", "channel_id": "C0APPROVALS", "message_ts": "1700000000.000001"},
        "actions": [
            {"action_id": action_id, "block_id": "agentaudit_approval", "value": approval_id, "type": "button",
             "action_ts": str(time.time())}
        ],
    }  # fmt: skip


def submission(user: str, private_metadata: str, justification: str | None) -> dict[str, Any]:
    """A view_submission payload of the deny modal."""
    return {
        "type": "view_submission",
        "user": {"id": user},
        "view": {
            "id": "V000",
            "callback_id": "agentaudit_deny",
            "private_metadata": private_metadata,
            "state": {"values": {"justification": {"text": {"type": "plain_text_input", "value": justification}}}},
        },
    }


async def until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Polls ``check()`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Rig:
    """A collector replica (store + FleetControl) with the Slack bridge served on loopback, and the stand-in."""

    fleet: FleetControl
    bridge: SlackBridge
    fake: FakeSlack
    url: str
    client: httpx.AsyncClient
    journal: SidecarJournal

    async def open(self, approval_id: str, **kw: Any) -> None:
        """A sidecar journals an approval_required pre-event and the collector records it."""
        self.journal.open_approval(approval_id, **kw)
        await self.fleet.record_entries(ORIGIN, self.journal.rows)

    async def posted(self, approval_id: str) -> Call:
        def find() -> Call | None:
            return next(
                (c for c in self.fake.of("chat.postMessage") if approval_id in json.dumps(c.body)), None
            )  # fmt: skip

        found: Call = await until(find, f"chat.postMessage of {approval_id}")
        return found

    async def press(self, user: str, action_id: str, approval_id: str, **kw: Any) -> httpx.Response:
        body = form(button(user, action_id, approval_id, self.fake.response_url(user), **kw))
        return await self.client.post(self.url, content=body, headers=sign(body))

    async def send(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        body = form(payload)
        return await self.client.post(self.url, content=body, headers=headers if headers is not None else sign(body))

    async def acts(self, kind: str) -> list[dict[str, Any]]:
        async with self.fleet._db.read() as tx:
            rows = await tx.fetch("SELECT kind, fields, operator, channel FROM control_log WHERE kind = ? ORDER BY id",
                                  kind)  # fmt: skip
        return [{**json.loads(r["fields"]), "_operator": r["operator"], "_channel": r["channel"]} for r in rows]


@asynccontextmanager
async def rig(
    db: Database, tmp_path: Path, *, name: str = "replica-a", fake: FakeSlack | None = None, **config: Any
) -> AsyncIterator[Rig]:
    """The whole thing on ``db``: the stand-in served (unless ``fake`` already is), a replica with its bridge
    started and its route served by uvicorn."""
    async with contextlib.AsyncExitStack() as stack:
        if fake is None:
            fake = FakeSlack()
        if not fake.port:
            fake.port = await stack.enter_async_context(serve(fake.app()))
        cfg = slack_config(tmp_path, fake, **config)
        store, fleet = await stack.enter_async_context(replica(db, name))
        bridge = SlackBridge(cfg)
        await bridge.start_on(fleet, store)
        stack.push_async_callback(bridge.aclose)
        port = await stack.enter_async_context(serve(Starlette(routes=slack_routes(bridge))))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        yield Rig(fleet, bridge, fake, f"http://127.0.0.1:{port}/slack/interactions", client,
                  SidecarJournal(journal_key(ORIGIN)))  # fmt: skip


@asynccontextmanager
async def replica(db: Database, name: str) -> AsyncIterator[tuple[CollectorStore, FleetControl]]:
    """A collector replica on ``db`` (as ``Database.replica``), yielding its store too: the bridge needs it."""
    store = db.new_store()
    await store.start()
    fleet = open_fleet(store, CONTROL, replica=name)
    try:
        await store.register_origin(ORIGIN, [journal_key(ORIGIN).verifier])
        await fleet.start()
        yield store, fleet
    finally:
        await fleet.aclose()
        await store.aclose()
