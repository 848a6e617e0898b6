"""The check of a batch's new entries spread over worker processes: the collector's CPU, not one core's.

Ingest is bound by the per-entry check (:func:`gateway.journal.check.check_entry`): an Ed25519 verification
(~40 µs) and the canonical check of the body (~19 µs) per entry, measured on the 2-core bench machine.
Threads cannot share that out: PyNaCl releases the GIL while it verifies, but the body check holds it, and a
thread pool doing both ran no faster than one thread (measured: 65 µs per entry on one thread and on two).
Processes do: :class:`EntryCheckPool` sends each chunk of a large batch (its bytes, the leaf hash before it, the
origin's keys) to a worker, which runs exactly the inline check and answers per entry either the values the
store writes or the refusal of the first fault; the caller then reads the chunks in seq order, so the outcome
(accepted, or refused naming the first faulty entry) is the sequential one. A worker is this package's own code
run on the batch's bytes: its verdict is trusted as the calling thread's would be, and nothing else is taken from
it (the chain into the held tail, the Merkle root, the witness rules and the cosignature stay with the caller).

Batches with fewer than 32 new entries that carry a signature of their own stay inline: sending a chunk costs more
than checking a few entries, and it costs more than checking entries vouched for by their commit's seal (journal
format v2), which have no signature to verify: on the bench's 1.1 KB entries a chunk of 250 took 22.6 µs an entry
to go to a worker and back, checked there, against 18.0 µs checked here (``bench.collector_ingest --check-workers``:
v2 ingest 24,200-25,400 events/s with one worker against 29,100-29,900 without, v1 15,800-16,000 against
10,200-10,700; 2 cores, PostgreSQL on the same host, 2026-12-07). Larger batches of signed entries are cut into a
chunk per worker, at most 250 entries each. The workers start on the first such batch
(``spawn``: never a fork of a process that runs threads and an event loop) and stop with the store. A worker
that dies (killed, out of memory) breaks the pool: the batch is checked again inline, so it is
neither lost nor accepted unchecked, and new workers start for a batch 10 s later (not for every batch, should
they keep failing: a program whose entry point lacks the ``__main__`` guard ``spawn`` needs, for instance).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gateway.collector.ingest import (
    BatchEntry,
    IngestRejected,
    Keys,
    NewEntry,
    RejectCode,
    check_new_entries,
    check_new_entry,
)
from gateway.journal.entry import leaf_hash

log = logging.getLogger(__name__)

CHUNK_ENTRIES = 250
"""Most entries per chunk sent to a worker (250 of ~1 KB: fewer round trips than 125, measured 40 vs 48 µs/entry)."""
MIN_PARALLEL_ENTRIES = 32
"""Signed new entries below which a batch is checked inline (~2 ms of checking: about what sending it away costs)."""

RESPAWN_AFTER_S = 10.0
"""After the workers failed, batches are checked inline this long before new workers are started."""

Bounds = tuple[int, int]
"""(start, end) of a chunk within a batch's new entries."""

_Checked = tuple[bytes, int, tuple[Any, ...]] | tuple[str, str, int]
"""Per entry, from a worker: (leaf hash, unix_nanos, indexed values), or (reject code, detail, seq)."""


def _check_chunk(origin: str, keys: Keys, entries: Sequence[BatchEntry], prev: bytes) -> list[_Checked]:
    """In a worker: the inline check of each entry, up to and including the first refusal."""
    out: list[_Checked] = []
    for seq, raw, signature in entries:
        checked = check_new_entry(origin, keys, seq, raw, signature, prev)
        if isinstance(checked, IngestRejected):
            out.append((str(checked.code), checked.detail, seq))
            return out
        out.append((checked.leaf_hash, checked.unix_nanos, checked.indexed))
        prev = checked.leaf_hash
    return out


def _leaves_before(entries: Sequence[BatchEntry], starts: Sequence[int], prev_leaf_hash: bytes) -> list[bytes]:
    """The leaf hash before each chunk (``starts``: their first indices, the first 0): the batch's previous leaf for
    the first, then that of the entry before each (a hash of its bytes, trusted or not: its own chunk checks it)."""
    return [prev_leaf_hash, *(leaf_hash(entries[i - 1][1], entries[i - 1][2]) for i in starts[1:])]


def _new_entries(entries: Sequence[BatchEntry], start: int, part: Sequence[_Checked]) -> list[NewEntry]:
    """A worker's answer for the chunk of ``entries`` from ``start`` on, as the entries to store.

    Raises:
        IngestRejected: the refusal the worker answered for the chunk's first faulty entry.
    """
    new_entries: list[NewEntry] = []
    for offset, checked in enumerate(part):
        seq, raw, signature = entries[start + offset]
        if isinstance(checked[0], str):
            code, detail, fault_seq = checked
            raise IngestRejected(RejectCode(code), str(detail), seq=int(fault_seq))
        leaf, unix_nanos, indexed = checked
        new_entries.append(NewEntry(seq, raw, signature, bytes(leaf), int(unix_nanos), tuple(indexed)))
    return new_entries


def _settle(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Cancels the chunks no one will read; marks the errors of those already done as read (they are not news)."""
    for future in futures:
        if not future.cancel() and not future.cancelled():
            future.exception()


async def _check_here(
    origin: str,
    keys: Keys,
    chunks: Sequence[tuple[Sequence[BatchEntry], bytes]],
    here: dict[int, asyncio.Future[list[NewEntry]]],
) -> None:
    """Checks the chunks ``here`` names, in order, in a thread (off the event loop), resolving their futures. A
    refusal, or a check that fails, ends it: that chunk's future and every later one carry the exception, so the
    caller never waits for a chunk no one will check."""
    indices = sorted(here)
    for position, index in enumerate(indices):
        chunk, prev = chunks[index]
        try:
            part = await asyncio.to_thread(check_new_entries, origin, keys, chunk, prev)
        except Exception as exc:
            for later in indices[position:]:
                if not here[later].done():
                    here[later].set_exception(exc)
            return
        if not here[index].done():
            here[index].set_result(part)


class EntryCheckPool:
    """Worker processes that check the new entries of large batches (see the module docstring).

    Args:
        workers: worker processes besides the calling thread (default: one fewer than the cores); 0: all inline.
        min_parallel: signed new entries from which a batch goes to the workers.
    """

    def __init__(self, workers: int | None = None, *, min_parallel: int = MIN_PARALLEL_ENTRIES) -> None:
        self.workers = (os.cpu_count() or 1) - 1 if workers is None else workers  # the calling thread checks too
        self._min_parallel = min_parallel
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._inline_until = 0.0  # after workers failed: check inline until then, rather than respawn per batch

    def check(self, origin: str, keys: Keys, entries: Sequence[BatchEntry], prev_leaf_hash: bytes) -> list[NewEntry]:
        """:func:`gateway.collector.ingest.check_new_entries`, on the workers when the batch is large.

        Raises:
            IngestRejected: the first faulty entry, in seq order.
        """
        executor = self._executor_for(entries)
        if executor is None:
            return check_new_entries(origin, keys, entries, prev_leaf_hash)
        # A chunk for each worker and one for this thread, at most CHUNK_ENTRIES each: the forwarder's batches (up
        # to 500, or a second's worth from a quiet sidecar) spread over every core, this one included, so a batch
        # progresses even while the workers wait for a busy machine's CPU; several origins share the workers.
        chunk = min(CHUNK_ENTRIES, max(self._min_parallel, -(-len(entries) // (self.workers + 1))))
        starts = range(0, len(entries), chunk)
        before = _leaves_before(entries, starts, prev_leaf_hash)
        try:
            futures = [
                executor.submit(_check_chunk, origin, keys, entries[start : start + chunk], prev)
                for start, prev in zip(starts[:-1], before[:-1], strict=True)
            ]
            mine = _check_chunk(origin, keys, entries[starts[-1] :], before[-1])
            parts = [*(future.result() for future in futures), mine]
        except (BrokenProcessPool, RuntimeError) as exc:  # a worker died; or the pool was closed meanwhile
            self._broken(executor, exc)
            return check_new_entries(origin, keys, entries, prev_leaf_hash)
        return [
            entry for start, part in zip(starts, parts, strict=True) for entry in _new_entries(entries, start, part)
        ]

    async def check_chunks(
        self, origin: str, keys: Keys, entries: Sequence[BatchEntry], prev_leaf_hash: bytes, bounds: Sequence[Bounds]
    ) -> AsyncGenerator[list[NewEntry], None]:
        """Each chunk's checked entries (``bounds``: consecutive (start, end) over ``entries``), in seq order, as
        soon as that chunk is checked, so the caller can store one chunk while later ones are being checked.

        Every chunk's check starts at once: with workers, chunks go round-robin to each worker and to a thread of
        this process (as :meth:`check` shares a batch out); without (or for a small batch), the thread checks them
        all, one after another, ahead of the caller. A worker that dies costs speed, never a check: its chunks are
        checked in this process instead.

        Raises:
            IngestRejected: the first faulty entry, in seq order (chunks after it are not yielded).
        """
        loop = asyncio.get_running_loop()
        before = _leaves_before(entries, [start for start, _ in bounds], prev_leaf_hash)
        chunks = [(entries[start:end], prev) for (start, end), prev in zip(bounds, before, strict=True)]
        executor = self._executor_for(entries)
        checkers = 1 if executor is None else self.workers + 1
        sent: dict[int, asyncio.Future[list[_Checked]]] = {}  # chunk index: a worker's answer
        here: dict[int, asyncio.Future[list[NewEntry]]] = {}  # chunk index: this process's check
        for index, (chunk, prev) in enumerate(chunks):
            if executor is not None and index % checkers != checkers - 1:
                try:
                    sent[index] = asyncio.wrap_future(executor.submit(_check_chunk, origin, keys, chunk, prev))
                    continue
                except (BrokenProcessPool, RuntimeError) as exc:  # broken already, or closed meanwhile
                    self._broken(executor, exc)
                    executor, checkers = None, 1
            here[index] = loop.create_future()
        in_process = asyncio.ensure_future(_check_here(origin, keys, chunks, here))
        try:
            for index, ((start, _), (chunk, prev)) in enumerate(zip(bounds, chunks, strict=True)):
                if index in here:
                    yield await here[index]
                    continue
                try:
                    yield _new_entries(entries, start, await sent[index])
                except (BrokenProcessPool, RuntimeError) as exc:  # its worker died (or the pool was closed)
                    if executor is not None:
                        self._broken(executor, exc)
                        executor = None
                    yield await asyncio.to_thread(check_new_entries, origin, keys, chunk, prev)
        finally:
            in_process.cancel()
            _settle(sent.values())
            _settle(here.values())

    def _broken(self, executor: ProcessPoolExecutor, exc: BaseException) -> None:
        log.warning("collector: entry-check workers unavailable (%s); checking this batch in-process", exc)
        self._discard(executor)

    def _executor_for(self, entries: Sequence[BatchEntry]) -> ProcessPoolExecutor | None:
        """The workers, when the batch is worth sending them (see the module docstring): enough entries with a
        signature of their own to verify."""
        if self.workers < 1 or len(entries) < self._min_parallel:
            return None
        if sum(1 for _, _, signature in entries if signature) < self._min_parallel:
            return None
        with self._lock:
            if self._closed or time.monotonic() < self._inline_until:
                return None
            if self._executor is None:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(self.workers, mp_context=context)
            return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
                self._inline_until = time.monotonic() + RESPAWN_AFTER_S
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stops the workers (waiting for chunks in progress); later batches are checked inline."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
