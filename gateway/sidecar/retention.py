"""Retention: removes journal entries older than ``audit.retention_days``, but only ones already witnessed.

Pruning goes through a signed ``prune`` marker (DESIGN §4), so what remains still verifies:

1. Only a prefix is removed, and only entries the collector has cosigned (the forwarder's acknowledged size):
   nothing that was never witnessed centrally is ever deleted. Without forwarding nothing is pruned.
2. The prefix ends at the first entry newer than the cutoff (or at the witnessed size, if smaller).
3. The marker records where the prefix ends, the leaf hash of its last entry and the RFC 6962 frontier of the
   tree over it, so ``verify`` continues the hash chain and the tree from there.
4. The marker, the ``prune_state`` row that authorises the deletion (the DELETE trigger refuses anything else)
   and the DELETE commit in one transaction.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Protocol

from gateway.journal.merkle import MerkleRoot, decode_state, encode_state
from gateway.journal.store import JournalReader
from gateway.journal.writer import now_nanos
from gateway.sidecar.recorder import AuditRecorder

log = logging.getLogger(__name__)

_CHUNK = 10_000


class WitnessedSize(Protocol):
    """How many entries the collector has cosigned (the forwarder)."""

    @property
    def witnessed_size(self) -> int: ...


class RetentionJob:
    """Owns the periodic prune task (``start`` / ``aclose``)."""

    def __init__(
        self,
        reader: JournalReader,
        recorder: AuditRecorder,
        witnessed: WitnessedSize | None,
        *,
        retention_days: int,
        interval_s: float,
    ) -> None:
        self._reader = reader
        self._recorder = recorder
        self._witnessed = witnessed
        self._retention_ns = retention_days * 86_400 * 1_000_000_000
        self._retention_days = retention_days
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts pruning every ``interval_s``."""
        if self._witnessed is None:
            log.warning("retention: forwarding is off, so nothing is ever witnessed and nothing is pruned")
        self._task = asyncio.create_task(self._run(), name="retention")

    async def aclose(self) -> None:
        """Stops the task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                pruned = await self.prune_once(now_nanos())
            except Exception:  # the journal may be briefly unavailable; try again next time
                log.exception("retention: pruning failed")
                continue
            if pruned:
                log.info("retention: pruned %d entries older than %d days", pruned, self._retention_days)

    async def prune_once(self, now_ns: int) -> int:
        """Prunes what is due; returns how many entries were removed."""
        if self._witnessed is None:
            return 0
        witnessed = self._witnessed.witnessed_size
        cutoff = now_ns - self._retention_ns
        rows = await self._reader.rows("SELECT seq FROM journal WHERE unix_nanos >= ? ORDER BY seq LIMIT 1", (cutoff,))
        state = await self._reader.rows("SELECT pruned_before, tree_state, last_leaf_hash FROM prune_state")
        start = int(state[0]["pruned_before"]) if state else 0
        tail = await self._reader.rows("SELECT max(seq) AS top FROM journal")
        newest = tail[0]["top"]
        first_recent = int(rows[0]["seq"]) if rows else (int(newest) + 1 if newest is not None else 0)
        before = min(first_recent, witnessed)
        if before <= start:
            return 0
        tree = decode_state(bytes(state[0]["tree_state"])) if state else MerkleRoot()
        last_leaf = bytes(state[0]["last_leaf_hash"]) if state else bytes(32)
        seq = start
        while seq < before:
            end = min(before, seq + _CHUNK)
            chunk = await self._reader.rows(
                "SELECT seq, leaf_hash FROM journal WHERE seq >= ? AND seq < ? ORDER BY seq", (seq, end)
            )
            if len(chunk) != end - seq:
                raise RuntimeError(f"retention: entries between {seq} and {end} are missing")
            for row in chunk:
                last_leaf = bytes(row["leaf_hash"])
                tree.append(last_leaf)
            seq = end
        tree_state = encode_state(tree)
        await self._recorder.record_prune(
            before,
            last_leaf.hex(),
            base64.b64encode(tree_state).decode(),
            self._retention_days,
            cutoff,
            state=[
                (
                    "INSERT OR REPLACE INTO prune_state (id, pruned_before, tree_state, last_leaf_hash) "
                    "VALUES (1, ?, ?, ?)",
                    (before, tree_state, last_leaf),
                ),
                ("DELETE FROM journal WHERE seq < ?", (before,)),
            ],
        )
        return before - start
