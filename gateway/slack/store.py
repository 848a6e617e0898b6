"""The Slack bridge's two tables in the collector's database (migration ``0005_slack``, SQLite and PostgreSQL):
where each approval's message is, and which interaction requests were already accepted.

Both are shared by every collector replica on the database: a message posted by replica A is updated by replica B
when the approval is answered there, and a request accepted by A is refused as a replay by B. This module is the
only writer of these tables; it has its own connections (:func:`gateway.collector.fleet.open_fleet_db`), so a
Slack call never waits behind the fleet's. It reads ``fleet_approvals`` and ``fleet_votes`` (never writes them)
to find the messages whose approval moved, in one query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.collector.fleet_db import FleetDb

_SELECT = "SELECT approval_id, channel, ts, rendered FROM slack_messages"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class PostedMessage:
    """An approval's Slack message: where it is, and the version of what it shows (``messages.version``)."""

    approval_id: str
    channel: str
    ts: str
    rendered: str


@dataclass(frozen=True)
class Unsettled:
    """A message whose approval may still change, with what the fleet holds now (to compare with ``rendered``)."""

    message: PostedMessage
    state: str
    votes: int
    expires_ms: int | None


class SlackStore:
    """The ``slack_messages`` and ``slack_replays`` tables (``start`` after the collector store migrated)."""

    def __init__(self, db: FleetDb) -> None:
        self._db = db

    async def start(self) -> None:
        """Opens the connections."""
        await self._db.start()

    async def aclose(self) -> None:
        """Closes them."""
        await self._db.aclose()

    async def message(self, approval_id: str) -> PostedMessage | None:
        """Where the approval's message is (None: none was posted, or it was posted through a webhook)."""
        async with self._db.read() as tx:
            rows = await tx.fetch(f"{_SELECT} WHERE approval_id = ?", approval_id)
        if not rows:
            return None
        r = rows[0]
        return PostedMessage(str(r["approval_id"]), str(r["channel"]), str(r["ts"]), str(r["rendered"]))

    async def remember(self, message: PostedMessage, *, settled: bool) -> bool:
        """Records a posted message; False if the approval already had one (it is kept)."""
        async with self._db.write() as tx:
            inserted = await tx.execute(
                "INSERT INTO slack_messages (approval_id, channel, ts, posted_ms, rendered, settled) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                message.approval_id, message.channel, message.ts, now_ms(), message.rendered, settled,
            )  # fmt: skip
        return bool(inserted)

    async def claim(self, approval_id: str, seen: str, new: str, *, settled: bool) -> bool:
        """Moves the message's version from ``seen`` to ``new``; False if another replica moved it first.

        The replica that wins sends the ``chat.update``; the loser leaves it, so one change is one update.
        """
        async with self._db.write() as tx:
            moved = await tx.execute(
                "UPDATE slack_messages SET rendered = ?, settled = ? WHERE approval_id = ? AND rendered = ?",
                new, settled, approval_id, seen,
            )  # fmt: skip
        return bool(moved)

    async def unsettled(self, limit: int = 1000) -> list[Unsettled]:
        """Messages whose approval may still change, oldest first, with the approval's state and vote count."""
        async with self._db.read() as tx:
            rows = await tx.fetch(
                "SELECT m.approval_id, m.channel, m.ts, m.rendered, a.state, a.expires_ms, "
                "(SELECT COUNT(*) FROM fleet_votes v WHERE v.approval_id = m.approval_id) AS votes "
                "FROM slack_messages m JOIN fleet_approvals a ON a.approval_id = m.approval_id "
                "WHERE m.settled = ? ORDER BY m.posted_ms LIMIT ?",
                False, limit,
            )  # fmt: skip
        return [
            Unsettled(
                PostedMessage(str(r["approval_id"]), str(r["channel"]), str(r["ts"]), str(r["rendered"])),
                str(r["state"]),
                int(r["votes"]),
                None if r["expires_ms"] is None else int(r["expires_ms"]),
            )
            for r in rows
        ]

    async def first_use(self, signature: str, request_ts: int, window_s: int) -> bool:
        """Records an accepted request's signature; False if it was seen before (a replay), by any replica.

        Rows older than the window are deleted first: a request that old fails the timestamp check anyway.
        """
        now = now_ms()
        async with self._db.write() as tx:
            await tx.execute("DELETE FROM slack_replays WHERE expires_ms < ?", now)
            inserted = await tx.execute(
                "INSERT INTO slack_replays (signature, request_ts, expires_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                signature, request_ts, (request_ts + window_s) * 1000 + 60_000,
            )  # fmt: skip
        return bool(inserted)
