"""Slack's side, through ``slack_sdk``: the Web API with the bot token (``chat.postMessage``, ``chat.update``,
``views.open``), the incoming webhook, and replies to an interaction's ``response_url``, on one aiohttp session.

Every failure is translated here into :class:`SlackCallError`, whose text is safe to log: the method and Slack's
error code, or the exception's type. Never the token, the webhook URL (its path is its secret) or a
``response_url`` (it carries a token of its own). ``slack_sdk``'s own retries are off: :func:`retrying` is the one
retry policy (full-jitter backoff, ``Retry-After`` honoured), and its DEBUG logging, which prints the webhook URL
and the message bodies, is held at WARNING unless the operator set a level for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from gateway.config.slack import SlackConfig

log = logging.getLogger(__name__)

TIMEOUT_S = 10
MAX_ATTEMPTS = 5
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
SLACK_HOOKS = "https://hooks.slack.com/"
# Slack's error codes worth another attempt (the others, such as invalid_auth or channel_not_found, are not).
_TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_T = TypeVar("_T")


class SlackCallError(Exception):
    """A Slack call failed; the message is safe to log. ``transient``: worth another attempt."""

    def __init__(self, why: str, *, transient: bool, retry_after_s: float | None = None) -> None:
        super().__init__(why)
        self.transient = transient
        self.retry_after_s = retry_after_s


def _api_failure(method: str, exc: SlackApiError) -> SlackCallError:
    response = exc.response
    status = int(getattr(response, "status_code", 0) or 0)
    data = getattr(response, "data", None)
    code = str(data.get("error", "")) if isinstance(data, dict) else ""
    retry_after: float | None = None
    headers = getattr(response, "headers", None) or {}
    value = next((v for k, v in dict(headers).items() if str(k).lower() == "retry-after"), None)
    if value is not None:
        try:
            retry_after = float(value[0] if isinstance(value, list) else value)
        except ValueError:
            retry_after = None
    transient = status == 429 or status >= 500 or code in _TRANSIENT_ERRORS
    return SlackCallError(f"{method}: HTTP {status} {code or 'error'}", transient=transient, retry_after_s=retry_after)


async def _guarded(method: str, call: Awaitable[_T]) -> _T:
    try:
        return await asyncio.wait_for(call, TIMEOUT_S + 5)
    except SlackApiError as exc:
        raise _api_failure(method, exc) from None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        # Only the type: aiohttp's messages can carry the URL.
        raise SlackCallError(f"{method}: {type(exc).__name__}", transient=True) from None
    except SlackClientError as exc:
        raise SlackCallError(f"{method}: {type(exc).__name__}", transient=False) from None


class SlackApi:
    """The Slack clients (``start`` / ``aclose`` own the HTTP session)."""

    def __init__(self, config: SlackConfig, *, bot_token: str | None, webhook_url: str | None) -> None:
        self._config = config
        self._bot_token = bot_token
        self._webhook_url = webhook_url
        self._session: aiohttp.ClientSession | None = None
        self._web: AsyncWebClient | None = None
        self._webhook: AsyncWebhookClient | None = None
        api = urlsplit(config.api_url)
        self._reply_prefixes = (SLACK_HOOKS, f"{api.scheme}://{api.netloc}/")

    @property
    def has_bot(self) -> bool:
        """A bot token is configured: messages can be updated and modals opened."""
        return self._bot_token is not None

    @property
    def has_webhook(self) -> bool:
        """An incoming webhook is configured."""
        return self._webhook_url is not None

    async def start(self) -> None:
        """Creates the session and the clients."""
        for name in ("slack_sdk", "aiohttp"):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        if self._bot_token is not None:
            self._web = AsyncWebClient(
                token=self._bot_token,
                base_url=self._config.api_url,
                timeout=TIMEOUT_S,
                session=self._session,
                retry_handlers=[],
            )
        if self._webhook_url is not None:
            self._webhook = AsyncWebhookClient(
                self._webhook_url, timeout=TIMEOUT_S, session=self._session, retry_handlers=[]
            )

    async def aclose(self) -> None:
        """Closes the session."""
        session, self._session = self._session, None
        self._web = self._webhook = None
        if session is not None:
            await session.close()

    async def post(self, message: dict[str, Any]) -> tuple[str, str]:
        """``chat.postMessage`` to the configured channel; returns (channel id, ts)."""
        if self._web is None:
            raise SlackCallError("chat.postMessage: no bot token", transient=False)
        response = await _guarded(
            "chat.postMessage",
            self._web.chat_postMessage(
                channel=self._config.channel, text=message["text"], blocks=message["blocks"], unfurl_links=False
            ),
        )
        channel, ts = response.get("channel"), response.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            raise SlackCallError("chat.postMessage: answer without channel and ts", transient=False)
        return channel, ts

    async def update(self, channel: str, ts: str, message: dict[str, Any]) -> bool:
        """``chat.update`` of a posted message (True: done)."""
        if self._web is None:
            raise SlackCallError("chat.update: no bot token", transient=False)
        await _guarded(
            "chat.update", self._web.chat_update(channel=channel, ts=ts, text=message["text"], blocks=message["blocks"])
        )
        return True

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> bool:
        """``views.open``: a modal for the person whose interaction carried ``trigger_id`` (valid 3 s; True: done)."""
        if self._web is None:
            raise SlackCallError("views.open: no bot token", transient=False)
        await _guarded("views.open", self._web.views_open(trigger_id=trigger_id, view=view))
        return True

    async def post_webhook(self, message: dict[str, Any]) -> bool:
        """The incoming webhook (posting only: Slack answers ``ok``, no ts, so it cannot be updated; True: done)."""
        if self._webhook is None:
            raise SlackCallError("webhook: none configured", transient=False)
        response = await _guarded("webhook", self._webhook.send(text=message["text"], blocks=message["blocks"]))
        if response.status_code != 200:
            transient = response.status_code == 429 or response.status_code >= 500
            raise SlackCallError(f"webhook: HTTP {response.status_code}", transient=transient)
        return True

    def reply_allowed(self, response_url: str) -> bool:
        """Whether ``response_url`` is Slack's (or the configured API host's): never post to anywhere else."""
        return isinstance(response_url, str) and response_url.startswith(self._reply_prefixes)

    async def respond(self, response_url: str, payload: dict[str, Any]) -> bool:
        """Answers an interaction through its ``response_url`` (ephemeral text, or the original replaced)."""
        if self._session is None:
            raise SlackCallError("response_url: not started", transient=False)
        if not self.reply_allowed(response_url):
            raise SlackCallError("response_url: not a Slack URL, refused", transient=False)
        client = AsyncWebhookClient(response_url, timeout=TIMEOUT_S, session=self._session, retry_handlers=[])
        response = await _guarded(
            "response_url",
            client.send(
                text=payload.get("text"),
                blocks=payload.get("blocks"),
                response_type=payload.get("response_type"),
                replace_original=payload.get("replace_original"),
            ),
        )
        if response.status_code != 200:
            raise SlackCallError(f"response_url: HTTP {response.status_code}", transient=response.status_code >= 500)
        return True


_random = random.Random()  # noqa: S311 (jitter, not secrets)


async def retrying(call: Callable[[], Awaitable[_T]], what: str, *, attempts: int = MAX_ATTEMPTS) -> _T | None:
    """``call()`` until it succeeds, a permanent failure, or ``attempts``; None (logged at WARNING) if it failed.

    Full-jitter backoff from :data:`BACKOFF_INITIAL_S` to :data:`BACKOFF_MAX_S`, or Slack's ``Retry-After``.
    """
    why = ""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except SlackCallError as exc:
            why = str(exc)
            if not exc.transient or attempt == attempts:
                break
            cap = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (attempt - 1))
            delay = exc.retry_after_s if exc.retry_after_s is not None else _random.uniform(0.0, cap)
            log.debug("slack: %s failed (%s), retry in %.2f s", what, why, delay)
            await asyncio.sleep(min(delay, BACKOFF_MAX_S))
    log.warning("slack: %s failed after %d attempt(s): %s", what, attempt, why)
    return None
