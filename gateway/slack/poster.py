"""Posts a Slack message when an approval opens anywhere in the fleet, and keeps it up to date until it settles.

1. ``FleetControl.on_approval_opened`` calls :meth:`SlackPoster.approval_opened`, which only enqueues
   (``put_nowait`` on a bounded queue; full: dropped, counted, logged once per burst), so ingest never waits for
   Slack. The hook runs on the replica that recorded the approval's pre-event, once per approval.
2. One worker posts in order: ``chat.postMessage`` with the bot token (then remembered in ``slack_messages`` so
   any replica can update it), else the incoming webhook (not updatable). Failures are retried with backoff
   (:func:`~gateway.slack.api.retrying`) and logged without a secret.
3. Updates: ``FleetControl.on_approval_voted`` (every accepted vote, whichever channel: console, CLI, Slack)
   enqueues a refresh at once; a sweep every :data:`SWEEP_S` finds the messages whose approval moved otherwise
   (the sidecar's own grant or expiry, a vote on another replica, a passed expiry). A refresh claims the new
   version in the table first (compare-and-set), so one change is one ``chat.update`` across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from gateway.collector.fleet import FleetApproval, FleetControl
from gateway.collector.store import CollectorUnavailableError
from gateway.config.slack import SlackConfig
from gateway.errors import NotFoundError
from gateway.slack.api import SlackApi, retrying
from gateway.slack.messages import approval_message, is_settled, version, version_of
from gateway.slack.store import PostedMessage, SlackStore, now_ms

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
SWEEP_S = 5.0
DRAIN_S = 5.0

Job = tuple[Literal["post"], FleetApproval] | tuple[Literal["refresh"], str]


class SlackPoster:
    """Owns the queue, the worker and the sweep (``start`` / ``aclose``)."""

    def __init__(
        self,
        fleet: FleetControl,
        store: SlackStore,
        api: SlackApi,
        config: SlackConfig,
        *,
        queue_size: int = QUEUE_SIZE,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self._fleet = fleet
        self._store = store
        self._api = api
        self._config = config
        self._sweep_s = sweep_s
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self._queued_refreshes: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._dropping = False
        self.dropped = 0
        """Jobs dropped because the queue was full, since start."""

    async def start(self) -> None:
        """Starts the worker and the sweep (the sweep only with a bot token: webhook messages cannot change)."""
        self._tasks.append(asyncio.create_task(self._work(), name="slack-poster"))
        if self._api.has_bot:
            self._tasks.append(asyncio.create_task(self._sweep_loop(), name="slack-sweep"))

    async def aclose(self) -> None:
        """Gives queued jobs up to :data:`DRAIN_S` to finish, then stops."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), DRAIN_S)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the hooks (never block, never raise) -----------------------------------------------------------------

    async def approval_opened(self, approval: FleetApproval) -> None:
        """``FleetControl.on_approval_opened``: queues the message."""
        self._enqueue(("post", approval))

    def approval_voted(self, approval: FleetApproval) -> None:
        """``FleetControl.on_approval_voted``: queues an update of its message."""
        self.refresh(approval.approval_id)

    def refresh(self, approval_id: str) -> None:
        """Queues an update of the approval's message (once, however often asked before it runs)."""
        if approval_id in self._queued_refreshes:
            return
        if self._enqueue(("refresh", approval_id)):
            self._queued_refreshes.add(approval_id)

    def _enqueue(self, job: Job) -> bool:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True  # once per burst: a storm of approvals must not become a storm of logs
                log.warning("slack: queue full (%d); dropping messages (counted) until it drains", self._queue.maxsize)
            return False
        self._dropping = False
        return True

    # --- the worker -------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                if job[0] == "post":
                    await self._post(job[1])
                else:
                    self._queued_refreshes.discard(job[1])
                    await self._refresh(job[1])
            except CollectorUnavailableError as exc:
                log.warning("slack: %s of %s skipped, the collector database failed: %s", job[0], _id(job), exc)
            except Exception:
                log.exception("slack: %s of %s failed", job[0], _id(job))
            finally:
                self._queue.task_done()

    async def _post(self, approval: FleetApproval) -> None:
        approval_id = approval.approval_id
        if await self._store.message(approval_id) is not None:
            return  # posted already (by this replica or another)
        now = now_ms()
        message = approval_message(approval, console_url=self._config.console_url, now_ms=now)
        if self._api.has_bot:
            posted = await retrying(lambda: self._api.post(message), f"chat.postMessage of approval {approval_id}")
            if posted is not None:
                channel, ts = posted
                row = PostedMessage(approval_id, channel, ts, version(approval, now))
                await self._store.remember(row, settled=is_settled(approval, now))
                log.info("slack: approval %s posted to %s (ts %s)", approval_id, channel, ts)
                self.refresh(approval_id)  # it may have been answered while the post was in flight
                return
            if not self._api.has_webhook:
                return
            log.warning("slack: approval %s falls back to the incoming webhook (its message cannot be updated)",
                        approval_id)  # fmt: skip
        if await retrying(lambda: self._api.post_webhook(message), f"webhook post of approval {approval_id}"):
            log.info("slack: approval %s posted through the incoming webhook", approval_id)

    async def _refresh(self, approval_id: str) -> None:
        row = await self._store.message(approval_id)
        if row is None:
            return
        try:
            approval = await self._fleet.get_approval(approval_id)
        except NotFoundError:
            return
        now = now_ms()
        new = version(approval, now)
        if new == row.rendered:
            return
        settled = is_settled(approval, now)
        if not await self._store.claim(approval_id, row.rendered, new, settled=settled):
            return  # another replica sends this update
        message = approval_message(approval, console_url=self._config.console_url, now_ms=now)
        done = await retrying(lambda: self._api.update(row.channel, row.ts, message), f"chat.update of {approval_id}")
        if not done:
            # Give the version back, so the next sweep tries again.
            await self._store.claim(approval_id, new, row.rendered, settled=False)

    # --- the sweep --------------------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Queues a refresh of every unsettled message whose approval moved; returns how many."""
        now = now_ms()
        moved = 0
        for item in await self._store.unsettled():
            if version_of(item.state, item.votes, item.expires_ms, now) != item.message.rendered:
                self.refresh(item.message.approval_id)
                moved += 1
        return moved

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_s)
            try:
                await self.sweep()
            except CollectorUnavailableError as exc:
                log.warning("slack: sweep skipped, the collector database failed: %s", exc)
            except Exception:
                log.exception("slack: sweep failed")


def _id(job: Job) -> str:
    return job[1].approval_id if job[0] == "post" else job[1]
