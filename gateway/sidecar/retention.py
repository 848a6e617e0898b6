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

from gateway.journal import state as state_tables
from gateway.journal.merkle import MerkleRoot, decode_state, encode_state
from gateway.journal.state import PruneState
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
        first_recent = await self._reader.first_seq_since(cutoff)
        if first_recent is None:  # nothing is recent: the whole journal is old
            first_recent = await self._reader.last_seq() + 1
        previous = await self._reader.prune_state()
        start = 0 if previous is None else previous.pruned_before
        before = min(first_recent, witnessed)
        if before <= start:
            return 0
        tree = MerkleRoot() if previous is None else decode_state(previous.tree_state)
        last_leaf = bytes(32) if previous is None else previous.last_leaf_hash
        seq = start
        while seq < before:
            end = min(before, seq + _CHUNK)
            leaves = await self._reader.leaf_hashes(seq, end)
            if len(leaves) != end - seq:
                raise RuntimeError(f"retention: entries between {seq} and {end} are missing")
            for leaf in leaves:
                tree.append(leaf)
            last_leaf = leaves[-1]
            seq = end
        pruned = PruneState(before, encode_state(tree), last_leaf)
        await self._recorder.record_prune(
            before,
            last_leaf.hex(),
            base64.b64encode(pruned.tree_state).decode(),
            self._retention_days,
            cutoff,
            state=state_tables.prune(pruned),
        )
        return before - start
