"""Forwards the journal, exactly as signed, to the collector, and keeps its cosignatures as receipts.

One task owns the forwarding loop. It reads entries after a durable cursor, sends them in batches (by count and
age) with a C2SP checkpoint signed by the journal's key (format v1: signed here over the recomputed root; format
v2: the stored seal at the batch's end, which the writer signed when it committed those entries: batches end at
commit boundaries and the forwarder never signs a checkpoint over entries it did not write and verify itself),
and, once the collector acknowledges, appends the collector's cosigned checkpoint to the journal as a
``cosignature`` receipt and advances the cursor in the same transaction. Failures back off exponentially with
full jitter; ``RESOURCE_EXHAUSTED`` waits at least the collector's ``retry-after``. It never blocks Decide: it
only reads through the reader thread and appends through the writer like any other event.

Receipts and heartbeats are journal entries too; so that they do not trigger an endless chain of batches, a batch
is only sent for other entries, or after ``idle_checkpoint_s`` (when a heartbeat is appended first, so a quiet
journal still gets a fresh witnessed checkpoint at least that often).

Restart handshake: on its first successful contact, the forwarder asks the collector for its latest cosigned
checkpoint. If the local journal is shorter, or has another root at that size (restored from an old backup,
truncated, rewritten), it journals a ``gap_recovery`` event citing the cosigned checkpoint, logs and alerts, and
(with ``on_rollback: stop``, the default) makes Decide refuse until an operator acknowledges.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from agentaudit.v1 import collector_pb2, collector_pb2_grpc
from gateway import metrics, reasons
from gateway.alerts import Alert, journal_alert
from gateway.config.sidecar import CollectorTlsClientConfig
from gateway.journal import state as state_tables
from gateway.journal.entry import FORMAT_V2
from gateway.journal.merkle import MerkleRoot, decode_state
from gateway.journal.note import Checkpoint, NoteError, SignedNote, sign_checkpoint
from gateway.journal.store import JournalReader
from gateway.journal.writer import JournalWriter
from gateway.rpc.net import collector_channel
from gateway.rpc.status import error_reason
from gateway.sidecar.recorder import AuditRecorder
from gateway.signing import Ed25519Signer

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """A batch was not acknowledged; ``retry_after_s`` is the collector's back-pressure hint, if any."""

    def __init__(
        self, message: str, *, code: str = "local", rejected: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code  # the gRPC status name, or "local" for a problem found on this side
        self.rejected = rejected  # the collector's rejection code (rollback, fork, bad_signature, ...), if refused
        self.retry_after_s = retry_after_s


class AlertSink(Protocol):
    """Takes alerts without blocking (the AlertDispatcher)."""

    def notify(self, alert: Alert) -> None:
        """Queues an alert."""
        ...


class Upstream(Protocol):
    """Where batches go (the collector)."""

    async def ingest(
        self, origin: str, entries: Sequence[tuple[int, bytes, bytes]], checkpoint: str
    ) -> tuple[int, str]:
        """Sends a batch; returns the collector's size and cosigned checkpoint. Raises UpstreamError."""
        ...

    async def checkpoint(self, origin: str) -> tuple[int, str]:
        """The collector's latest cosigned size and note for this origin. Raises UpstreamError."""
        ...

    async def aclose(self) -> None:
        """Releases the connection."""
        ...


class GrpcUpstream:
    """The CollectorService over gRPC."""

    def __init__(self, target: str, tls: CollectorTlsClientConfig | None = None, timeout_s: float = 30.0) -> None:
        self._channel = collector_channel(target, tls, options=[("grpc.max_send_message_length", 64 << 20)])
        self._stub = collector_pb2_grpc.CollectorServiceStub(self._channel)
        self._timeout_s = timeout_s

    async def ingest(
        self, origin: str, entries: Sequence[tuple[int, bytes, bytes]], checkpoint: str
    ) -> tuple[int, str]:
        request = collector_pb2.IngestRequest(
            origin=origin,
            entries=[collector_pb2.JournalEntry(seq=s, entry=e, signature=g) for s, e, g in entries],
            checkpoint=checkpoint,
        )
        try:
            reply = await self._stub.Ingest(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc) from None
        return reply.size, reply.cosigned_checkpoint

    async def checkpoint(self, origin: str) -> tuple[int, str]:
        try:
            reply = await self._stub.GetCheckpoint(
                collector_pb2.GetCheckpointRequest(origin=origin), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc) from None
        return reply.size, reply.cosigned_checkpoint

    async def aclose(self) -> None:
        await self._channel.close(None)


def _upstream_error(exc: grpc.aio.AioRpcError) -> UpstreamError:
    code, details = exc.code(), exc.details() or ""
    retry_after = None
    metadata: Any = exc.trailing_metadata() or ()
    for key, value in metadata:
        if key == "retry-after-ms":
            with contextlib.suppress(ValueError):
                retry_after = int(value) / 1000
    rejected = error_reason(metadata) if code == grpc.StatusCode.FAILED_PRECONDITION else ""
    return UpstreamError(f"{code.name}: {details}", code=code.name, rejected=rejected, retry_after_s=retry_after)


def _failure_reason(exc: Exception) -> str:
    """A low-cardinality label for a failed forwarding attempt."""
    if isinstance(exc, UpstreamError):
        return f"rejected_{exc.rejected}" if exc.rejected else exc.code.lower()
    return "note" if isinstance(exc, NoteError) else "io"


@dataclass
class ForwarderStatus:
    """Backlog and health, for the CLI and (later) metrics."""

    acked_size: int = 0
    journal_size: int = 0
    oldest_unsent_s: float = 0.0
    last_error: str = ""
    consecutive_failures: int = 0
    recovery_required: str = ""  # non-empty: why Decide is refused until an operator acknowledges

    @property
    def backlog(self) -> int:
        return max(0, self.journal_size - self.acked_size)


class Forwarder:
    """Owns the forwarding task (``start`` / ``aclose``)."""

    def __init__(
        self,
        writer: JournalWriter,
        reader: JournalReader,
        recorder: AuditRecorder,
        signer: Ed25519Signer,
        upstream: Upstream,
        *,
        batch_max_entries: int = 500,
        batch_max_age_s: float = 1.0,
        idle_checkpoint_s: float = 60.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        fail_closed_on_rollback: bool = True,
        alerts: AlertSink | None = None,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._recorder = recorder
        self._signer = signer
        self._upstream = upstream
        self._batch = batch_max_entries
        self._max_age = batch_max_age_s
        self._idle = idle_checkpoint_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._fail_closed = fail_closed_on_rollback
        self._alerts = alerts
        self._tree = MerkleRoot()
        self._receipt_seqs: set[int] = set()
        self._handshake_done = False
        self._acknowledged = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._last_send = time.monotonic()
        self._pending_since: float | None = None
        self.status = ForwarderStatus()

    def backlog_entries(self) -> int:
        """Entries not yet acknowledged by the collector (read at scrape time, from another thread)."""
        return max(0, self._writer.size - self.status.acked_size)

    def backlog_age_s(self) -> float:
        """Seconds the oldest unacknowledged entry has waited, 0 without a backlog (read at scrape time)."""
        since = self._pending_since
        return 0.0 if since is None or self.backlog_entries() == 0 else time.monotonic() - since

    @property
    def witnessed_size(self) -> int:
        """Entries the collector has cosigned (what retention may prune)."""
        return self.status.acked_size

    async def _pruned_tree(self) -> MerkleRoot:
        """The tree over the pruned prefix (from the prune marker's state), or an empty tree."""
        pruned = await self._reader.prune_state()
        return MerkleRoot() if pruned is None else decode_state(pruned.tree_state)

    @property
    def blocked(self) -> str:
        """Why Decide must refuse (a detected rollback awaiting acknowledgement), or ''."""
        return self.status.recovery_required if self._fail_closed else ""

    async def start(self, trusted_acked: int | None = None) -> None:
        """Loads the cursor and the tree up to it, then starts the loop.

        ``trusted_acked`` is the cursor checked against the newest signed cosignature receipt
        (``state.reconcile_cursor``): a cursor raised in the table beyond what was witnessed is not believed.
        """
        acked = await self._reader.forwarder_acked_size(self._signer.name)
        if trusted_acked is not None:
            acked = min(acked, trusted_acked)
        self._tree = await self._pruned_tree()  # entries before a prune are gone; their tree frontier is kept
        await self._extend_tree(acked)
        self.status.acked_size = acked
        self._task = asyncio.create_task(self._run(), name="forwarder")

    async def _extend_tree(self, size: int) -> None:
        """Extends the local Merkle tree with the stored leaf hashes up to ``size``."""
        before = self._tree.size
        await self._append_leaves(self._tree, size)
        if self._tree.size != max(before, size):
            raise UpstreamError(f"journal is missing entries between {before} and {size}")

    async def _append_leaves(self, tree: MerkleRoot, size: int) -> None:
        """Appends to ``tree`` the stored leaf hashes from its size up to ``size``, in pages; stops at a gap."""
        start = tree.size
        while start < size:
            end = min(size, start + 10_000)
            leaves = await self._reader.leaf_hashes(start, end)
            for leaf in leaves:
                tree.append(leaf)
            if len(leaves) != end - start:
                return
            start = end

    async def aclose(self, flush_timeout_s: float = 5.0) -> None:
        """Flushes what is unsent (within the timeout), then stops."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), flush_timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        await self._upstream.aclose()

    async def acknowledge_recovery(self) -> None:
        """An operator accepted the detected rollback: Decide answers again.

        The collector will keep refusing this journal's batches (they contradict what it cosigned), which stays
        visible in the forwarder status and the logs; it is not journaled as a new detection each time.
        """
        self.status.recovery_required = ""
        self._acknowledged = True

    async def _run(self) -> None:
        delay = 0.0
        while True:
            stopping = self._stopping.is_set()
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set() and not stopping:
                    delay = 0.0  # one final attempt to flush
                    continue
            try:
                if not self._handshake_done:
                    await self._handshake()
                sent = await self._maybe_send(flush=stopping)
                self.status.consecutive_failures = 0
                self.status.last_error = ""
                delay = 0.0 if sent else min(0.05, self._max_age)
            except (UpstreamError, NoteError, OSError) as exc:
                metrics.FORWARD_UPLOAD_FAILURES.labels(_failure_reason(exc)).inc()
                if self._pending_since is None and self._writer.size > self.status.acked_size:
                    self._pending_since = time.monotonic()  # the backlog ages while the collector is unreachable
                self.status.consecutive_failures += 1
                self.status.last_error = str(exc)
                if isinstance(exc, UpstreamError) and exc.rejected in ("rollback", "fork"):
                    await self._rollback_detected(f"collector refused the batch: {exc}", "")
                log.warning("forwarding failed (%d in a row): %s", self.status.consecutive_failures, exc)
                base, cap = self._backoff
                # Full jitter (not security-relevant randomness): spreads many sidecars' retries apart.
                delay = random.uniform(0, min(cap, base * 2 ** (self.status.consecutive_failures - 1)))  # noqa: S311
                if isinstance(exc, UpstreamError) and exc.retry_after_s is not None:
                    delay = max(delay, exc.retry_after_s)
                if stopping:
                    return
                continue
            if stopping and self.status.backlog == 0:
                return
            if stopping and not sent:
                return

    async def _handshake(self) -> None:
        size, note_text = await self._upstream.checkpoint(self._signer.name)
        self._handshake_done = True
        if size == 0:
            return
        local = self._writer.size
        if size > local:
            await self._rollback_detected(
                f"the collector cosigned {size} entries but the local journal has only {local}", note_text
            )
            return
        checkpoint = Checkpoint.parse(SignedNote.parse(note_text).text)
        probe = await self._pruned_tree()
        await self._append_leaves(probe, size)  # a gap leaves the probe short, so its root differs below
        if probe.root() != checkpoint.root:
            await self._rollback_detected(
                f"the local journal's first {size} entries differ from what was cosigned", note_text
            )
            return
        if size > self.status.acked_size:
            # The acknowledgement of the last batch was lost: the collector holds more than our cursor says.
            await self._extend_tree(size)
            await self._record_receipt(size, note_text)

    async def _rollback_detected(self, why: str, note_text: str) -> None:
        if self.status.recovery_required or self._acknowledged:
            return
        self.status.recovery_required = why
        log.error("journal rollback or fork detected: %s", why)
        event = await self._recorder.record_gap_recovery(
            why, note_text, self._writer.size, fail_closed=self._fail_closed
        )
        if self._alerts is not None:
            self._alerts.notify(
                journal_alert(
                    reason=reasons.JOURNAL_RECOVERY_REQUIRED, rule="", origin=self._signer.name, event_id=event.event_id
                )
            )

    async def _maybe_send(self, *, flush: bool) -> bool:
        tail = self._writer.size
        self.status.journal_size = tail
        acked = self.status.acked_size
        if tail <= acked:
            self._pending_since = None
            if not flush and time.monotonic() - self._last_send >= self._idle:
                await self._recorder.record_heartbeat()
            return False
        real = (tail - acked) - len([s for s in self._receipt_seqs if s >= acked])
        now = time.monotonic()
        if real > 0 and self._pending_since is None:
            self._pending_since = now
        self.status.oldest_unsent_s = 0.0 if self._pending_since is None else now - self._pending_since
        due = flush or (real >= self._batch) or (real > 0 and now - (self._pending_since or now) >= self._max_age)
        if not due and now - self._last_send < self._idle:
            return False
        end = min(tail, acked + self._batch)
        seal = await self._seal_for(acked, end, tail)
        if seal is not None:
            end = seal[0]
        rows = await self._reader.signed_entries(acked, end)
        if len(rows) != end - acked:
            raise UpstreamError(f"journal is missing entries between {acked} and {end}")
        tree = copy.deepcopy(self._tree)
        for row in rows:
            tree.append(row.leaf_hash)
        if seal is not None:
            checkpoint = seal[1]
        else:
            checkpoint = sign_checkpoint(Checkpoint(self._signer.name, end, tree.root()), self._signer).encode()
        entries = [(r.seq, r.entry, r.signature) for r in rows]
        size, cosigned = await self._upstream.ingest(self._signer.name, entries, checkpoint)
        if size < end:
            raise UpstreamError(f"the collector acknowledged {size} entries, expected {end}")
        self._tree = tree
        self._last_send = time.monotonic()
        metrics.FORWARD_UPLOADED_ENTRIES.inc(end - acked)
        await self._record_receipt(end, cosigned)
        self._pending_since = None if end >= tail else self._pending_since
        return True

    async def _seal_for(self, acked: int, end: int, tail: int) -> tuple[int, str] | None:
        """Format v2: the stored seal the batch ends at: the last one within ``end``, else (one commit larger than
        a batch) the first one after it. None for a v1 journal, which has no seals."""
        if self._writer.format != FORMAT_V2:
            return None
        seals = await self._reader.seals(acked, tail)
        if not seals:
            raise UpstreamError(f"no commit seal covers the entries from seq {acked} (journal format v2)")
        within = [seal for seal in seals if seal[0] <= end]
        return within[-1] if within else seals[0]

    async def _record_receipt(self, size: int, cosigned: str) -> None:
        receipt = await self._recorder.record_cosignature(
            size,
            self._tree.root().hex(),
            cosigned,
            state=[state_tables.advance_forwarder(self._signer.name, size, cosigned)],
        )
        self._receipt_seqs = {s for s in self._receipt_seqs if s >= size}
        self._receipt_seqs.add(receipt.receipt.seq)
        self.status.acked_size = size
