"""The Slack bridge: one object that reads ``collector.slack``'s secrets, owns the Slack clients, the poster and the
interaction endpoint, and hooks them to the fleet.

Start order (after ``FleetControl.start``): secrets read (mode 0600, else a ConfigError naming the key) → the
bridge's database connections → Slack's HTTP session → poster (worker, sweep) → hooks registered on the fleet
(``on_approval_opened``, ``on_approval_voted``). Stop: hooks removed → interaction work in flight finished (5 s)
→ poster drained (5 s) → HTTP session → connections; all before ``FleetControl.aclose``. Serve
:meth:`SlackBridge.routes` on an HTTP listener Slack can reach (the console's, ``collector.console_listen``).
"""

from __future__ import annotations

import logging

from starlette.routing import Route

from gateway.collector.fleet import FleetControl, open_fleet_db
from gateway.collector.store import CollectorStore
from gateway.config.slack import SlackConfig, read_secret
from gateway.errors import ConfigError
from gateway.slack.api import SlackApi
from gateway.slack.interactions import SlackInteractions
from gateway.slack.poster import SlackPoster
from gateway.slack.store import SlackStore

log = logging.getLogger(__name__)


class SlackBridge:
    """Approvals posted to Slack and answered there (``start`` / ``aclose``; :meth:`routes` to serve)."""

    def __init__(self, fleet: FleetControl, store: CollectorStore, config: SlackConfig) -> None:
        self.config = config
        self._fleet = fleet
        self.store = SlackStore(open_fleet_db(store, max_connections=2))
        self._api: SlackApi | None = None
        self.poster: SlackPoster | None = None
        self.interactions: SlackInteractions | None = None
        self._started = False

    async def start(self) -> None:
        """Starts in the documented order; on failure stops what started.

        Raises:
            ConfigError: a secret file is missing, unreadable, or readable by group or others.
        """
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        cfg = self.config
        signing_secret = read_secret("collector.slack.signing_secret_file", cfg.signing_secret_file)
        token = webhook = None
        if cfg.bot_token_file is not None:
            token = read_secret("collector.slack.bot_token_file", cfg.bot_token_file)
        if cfg.webhook_url_file is not None:
            webhook = read_secret("collector.slack.webhook_url_file", cfg.webhook_url_file)
        if webhook is not None and not webhook.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ConfigError(f"collector.slack.webhook_url_file: {cfg.webhook_url_file} does not hold an https URL")
        await self.store.start()
        self._started = True
        self._api = SlackApi(cfg, bot_token=token, webhook_url=webhook)
        await self._api.start()
        self.poster = SlackPoster(self._fleet, self.store, self._api, cfg)
        await self.poster.start()
        self.interactions = SlackInteractions(self._fleet, self.store, self._api, cfg, signing_secret)
        self._fleet.on_approval_opened.append(self.poster.approval_opened)
        self._fleet.on_approval_voted.append(self.poster.approval_voted)
        log.info(
            "slack: approvals posted %s; %d Slack user(s) may answer at /slack/interactions",
            f"to {cfg.channel} with the bot token" if token else "through the incoming webhook",
            len(cfg.users),
        )

    def routes(self) -> list[Route]:
        """``POST /slack/interactions`` (after :meth:`start`)."""
        if self.interactions is None:
            raise RuntimeError("SlackBridge.routes() before start()")
        return self.interactions.routes()

    async def aclose(self) -> None:
        """Stops in the documented order."""
        if self.poster is not None:
            for hooks, hook in (
                (self._fleet.on_approval_opened, self.poster.approval_opened),
                (self._fleet.on_approval_voted, self.poster.approval_voted),
            ):
                if hook in hooks:
                    hooks.remove(hook)  # type: ignore[arg-type]
        if self.interactions is not None:
            await self.interactions.aclose()
        if self.poster is not None:
            await self.poster.aclose()
            self.poster = None
        if self._api is not None:
            await self._api.aclose()
            self._api = None
        if self._started:
            await self.store.aclose()
            self._started = False
