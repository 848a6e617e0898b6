"""The Slack bridge: one object that reads ``collector.slack``'s secrets, owns the Slack clients, the poster and the
interaction endpoint, and hooks them to the fleet.

It is a collector surface (``start(collector)`` / ``aclose()``, as the console's server): built from the config
alone, so its :meth:`SlackBridge.routes` can be handed to the console's listener before anything starts (they
answer 503 until the bridge has started). Give it to the collector before the console, so it starts first and
stops last.

Start order (after ``FleetControl.start``): secrets read (mode 0600, else a ConfigError naming the key) → the
bridge's database connections → Slack's HTTP session → poster (worker, sweep) → interaction handler → hooks
registered on the fleet (``on_approval_opened``, ``on_approval_voted``). Stop: hooks removed → interaction work in
flight finished (5 s) → poster drained (5 s) → HTTP session → connections; all before ``FleetControl.aclose``.
"""

from __future__ import annotations

import logging
from typing import Protocol

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.collector.fleet import FleetControl, open_fleet_db
from gateway.collector.store import CollectorStore
from gateway.config.slack import SlackConfig, read_secret
from gateway.errors import ConfigError
from gateway.slack.api import SlackApi
from gateway.slack.interactions import PATH, SlackInteractions
from gateway.slack.poster import SlackPoster
from gateway.slack.store import SlackStore

log = logging.getLogger(__name__)


class OpenCollector(Protocol):
    """What the bridge reads of a started ``gateway.collector.app.Collector`` (duck-typed)."""

    @property
    def fleet(self) -> FleetControl | None: ...
    @property
    def store(self) -> CollectorStore | None: ...


class SlackBridge:
    """Approvals posted to Slack and answered there (``start`` / ``aclose``; :meth:`routes` to serve)."""

    def __init__(self, config: SlackConfig) -> None:
        self.config = config
        self._fleet: FleetControl | None = None
        self.store: SlackStore | None = None
        self._api: SlackApi | None = None
        self.poster: SlackPoster | None = None
        self.interactions: SlackInteractions | None = None

    def routes(self) -> list[Route]:
        """``POST /slack/interactions``, for the console's listener (503 until :meth:`start`)."""
        return [Route(PATH, self._handle, methods=["POST"], name="slack_interactions")]

    async def _handle(self, request: Request) -> Response:
        interactions = self.interactions
        if interactions is None:
            return PlainTextResponse("Slack approvals are not started", 503)
        return await interactions.handle(request)

    async def start(self, collector: OpenCollector) -> None:
        """Starts on a started collector's fleet and store (the collector surface protocol)."""
        if collector.fleet is None or collector.store is None:
            raise RuntimeError("SlackBridge.start: the collector's fleet and store are not open")
        await self.start_on(collector.fleet, collector.store)

    async def start_on(self, fleet: FleetControl, store: CollectorStore) -> None:
        """Starts in the documented order on ``fleet`` and ``store``; on failure stops what started.

        Raises:
            ConfigError: a secret file is missing, unreadable, or readable by group or others.
        """
        try:
            await self._start(fleet, store)
        except BaseException:
            await self.aclose()
            raise

    async def _start(self, fleet: FleetControl, store: CollectorStore) -> None:
        cfg = self.config
        signing_secret = read_secret("collector.slack.signing_secret_file", cfg.signing_secret_file)
        token = webhook = None
        if cfg.bot_token_file is not None:
            token = read_secret("collector.slack.bot_token_file", cfg.bot_token_file)
        if cfg.webhook_url_file is not None:
            webhook = read_secret("collector.slack.webhook_url_file", cfg.webhook_url_file)
        if webhook is not None and not webhook.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ConfigError(f"collector.slack.webhook_url_file: {cfg.webhook_url_file} does not hold an https URL")
        self._fleet = fleet
        self.store = SlackStore(open_fleet_db(store, max_connections=2))
        await self.store.start()
        self._api = SlackApi(cfg, bot_token=token, webhook_url=webhook)
        await self._api.start()
        self.poster = SlackPoster(fleet, self.store, self._api, cfg)
        await self.poster.start()
        self.interactions = SlackInteractions(fleet, self.store, self._api, cfg, signing_secret)
        fleet.on_approval_opened.append(self.poster.approval_opened)
        fleet.on_approval_voted.append(self.poster.approval_voted)
        log.info(
            "slack: approvals posted %s; %d Slack user(s) may answer at %s",
            f"to {cfg.channel} with the bot token" if token else "through the incoming webhook",
            len(cfg.users),
            PATH,
        )

    async def aclose(self) -> None:
        """Stops in the documented order (safe to call again, or after a failed start)."""
        fleet, poster = self._fleet, self.poster
        if fleet is not None and poster is not None:
            if poster.approval_opened in fleet.on_approval_opened:
                fleet.on_approval_opened.remove(poster.approval_opened)
            if poster.approval_voted in fleet.on_approval_voted:
                fleet.on_approval_voted.remove(poster.approval_voted)
        interactions, self.interactions = self.interactions, None
        if interactions is not None:
            await interactions.aclose()
        self.poster = None
        if poster is not None:
            await poster.aclose()
        api, self._api = self._api, None
        if api is not None:
            await api.aclose()
        store, self.store = self.store, None
        if store is not None:
            await store.aclose()
        self._fleet = None


def slack_routes(bridge: SlackBridge) -> list[Route]:
    """``POST /slack/interactions``, to mount on the console's listener (``ConsoleServer(extra_routes=...)``)."""
    return bridge.routes()
