"""The journal's single writer: group commit of signed, hash-chained entries to SQLite.

Format v1 (``signing="per_entry"``) signs every entry; format v2 (``"per_commit"``, what ``audit.signing`` defaults
to) signs one seal per commit, stored in the commit's own transaction (:mod:`gateway.journal.seal`). A journal
keeps the format it was created with.

Handlers call :meth:`JournalWriter.append` and await a :class:`Receipt`. One asyncio task owns the write path:
it takes every append that is waiting (up to ``max_batch``), assigns seq numbers, builds and signs each
envelope and chains the leaf hashes on the loop, then hands the whole batch to one dedicated thread, which
commits it in one transaction (WAL, ``synchronous=FULL``: durable on return), then resolves every receipt. There
is at most one thread hand-off per batch, never per entry, and no deliberate wait to grow a batch: whatever
queued while the previous commit ran is the next batch.

A batch of one entry, with the thread idle, commits on the loop itself (``_commit_here``): a lone entry means
nothing else is waiting for the loop, and the two wake-ups of a hand-off (thread, then loop) cost more than the
fsync on a virtual machine whose idle vCPU must be woken (ADR 0029). It never waits there for SQLite's lock: one
held by someone else sends the batch to the thread, which waits as before.

If a commit fails, every append of that batch fails with :class:`JournalUnavailableError` (callers fail closed),
the writer re-reads the journal tail so seq and chain stay exact, and later appends are tried afresh.

The files themselves are watched too (docs/journal.md, "Journal files removed or replaced"). SQLite keeps writing
happily into a ``journal.db``, ``-wal`` or ``-shm`` that was unlinked or replaced under it, and every entry it
commits there is gone at the next start. So before and after every commit, and on every idle probe, the writer
compares each path's ``st_dev``/``st_ino`` with what it opened: a commit that landed in a file the path no longer
names is not durable, so its receipts fail, and the writer stays failed closed until restarted (it never reopens a
replaced file silently). It then copies what its open files still hold to ``journal.db.salvaged-<time>``, so the
acknowledged entries survive, and tells ``on_lost``.

Before every transaction (commit, probe, tail read) the writer also refuses to touch a file it may not write (an
immutable, append-only or read-only ``-shm``, :mod:`gateway.journal.fileguard`): SQLite maps that file, and a
store into a page the kernel refuses kills the process with SIGBUS, so checking first is how the writer fails
closed instead. That state is transient: it is logged once, health turns NOT_SERVING, and the first commit or
probe after the file is writable again clears it. A file made unwritable *during* a commit, after the check, can
still raise SIGBUS in SQLite (docs/adr/0014-shm-faults.md).

After commits, at most every ``head_interval_s``, and at close, the writer records the last acknowledged entry in
the high-water mark beside the journal (:mod:`gateway.journal.head`); :meth:`JournalWriter.start` refuses a
journal younger than that mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway import metrics
from gateway.errors import ConfigError, JournalUnavailableError
from gateway.ids import now_nanos as now_nanos  # noqa: PLC0414 - re-exported until every caller imports gateway.ids
from gateway.journal.entry import (
    FORMAT_V1,
    FORMAT_V2,
    ZERO_HASH,
    encode_entry,
    leaf_hash,
    signature_payload,
    travels_alone,
)
from gateway.journal.fileguard import abandon, why_unwritable
from gateway.journal.head import HeadMark, read_head, rollback_error, write_head
from gateway.journal.merkle import MerkleRoot, decode_state, encode_state
from gateway.journal.schema import DDL, SCHEMA_VERSION, STATE_DDL, insert_sql
from gateway.journal.seal import FORMAT_META_KEY, make_seal
from gateway.journal.search_table import COPY_SQL, copy_due, open_for_writing
from gateway.signing import Ed25519Signer

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# A lone entry commits on the loop only while commits take less than this on average: longer, and the loop's
# stall (every other request waits for the fsync) would cost more than the thread hand-off saves (ADR 0029).
_COMMIT_HERE_MAX_S = 0.001


@dataclass(frozen=True)
class Receipt:
    """Proof that an entry is durably committed: its seq and leaf hash."""

    seq: int
    leaf_hash: bytes


SIGNING_MODES = ("per_commit", "per_entry")
"""``audit.signing``: a new journal is format v2 (one seal per commit) or v1 (one signature per entry)."""

SealRow = tuple[int, str, bytes]  # (size, seal note, tree state) for journal_seals


class _JournalLostError(JournalUnavailableError):
    """A journal file the writer has open is no longer the one its path names (removed or replaced): permanent."""


class _JournalUnwritableError(JournalUnavailableError):
    """A journal file may not be written now, so nothing was attempted: transient, cleared once it is writable."""


StateChange = tuple[str, tuple[Any, ...]]  # an SQL statement on the state tables and its parameters


@dataclass
class _Append:
    kind: int
    body: bytes
    unix_nanos: int
    columns: tuple[Any, ...]
    future: asyncio.Future[Receipt] = field(repr=False)
    state: Sequence[StateChange] = ()


# Page size of a journal created from now on (ADR 0021, footprint: journal pages and caches). A commit writes one WAL
# frame (page + 24 bytes) per page it changes: the table's last leaf and one leaf per index, about 12 pages for one
# entry whatever the page size, so at 4,096 bytes a step (two commits at concurrency 1) wrote ~115 KB; at 1,024 it
# writes ~50 KB. An entry (~1.2 KB) spills into one overflow page, which only costs a read one more page.
NEW_JOURNAL_PAGE_SIZE = 1024
# The WAL is copied into the database once it holds this many bytes of frames, whatever the page size: SQLite's
# default, 1,000 pages, was 4 MiB at the old page size, so the -wal stays the size it was, and the wider window
# copies each hot last page (rewritten by every commit) back less often.
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
# The writer's page cache (SQLite's default is 2 MiB a connection). A commit reads and changes only the last path of
# each B-tree (~12 trees, 3-4 levels: ~50 pages), so 512 KiB keeps all of them; measured: ~3 MiB less RSS under load.
WRITER_CACHE_KIB = 512


def open_connection(path: Path, *, busy_timeout_ms: int) -> sqlite3.Connection:
    """Opens the journal database for writing with the durability settings the invariants require.

    A new (empty) file gets ``NEW_JOURNAL_PAGE_SIZE``; SQLite fixes the page size at the first write, so an existing
    journal keeps the one it was created with (set before WAL mode: a WAL database cannot change it).
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    if path.stat().st_size == 0:
        conn.execute(f"PRAGMA page_size={NEW_JOURNAL_PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.execute(f"PRAGMA wal_autocheckpoint={max(1000, WAL_CHECKPOINT_BYTES // page_size)}")
    conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


class JournalWriter:
    """Owns the journal database's write connection and the single writer task."""

    def __init__(
        self,
        path: Path,
        signer: Ed25519Signer,
        *,
        max_batch: int = 512,
        busy_timeout_ms: int = 5000,
        on_health: Callable[[str], None] | None = None,
        probe_interval_s: float = 0.0,
        on_lost: Callable[[str], None] | None = None,
        head_interval_s: float = 1.0,
        signing: str = "per_entry",
        commit_here: bool = True,
    ) -> None:
        if signing not in SIGNING_MODES:
            raise ConfigError(f"audit.signing: expected one of {', '.join(SIGNING_MODES)}, got {signing!r}")
        self.path = path
        # The format of a journal created now; an existing journal keeps the one it was created with.
        self._new_format = FORMAT_V2 if signing == "per_commit" else FORMAT_V1
        self.format = self._new_format
        self._tree = MerkleRoot()  # v2: the tree over every committed leaf (its root is what each seal signs)
        self._seal_size = 0  # v2: the size of the last seal
        # Told once, on the loop, why the journal files were lost (the writer stays failed closed): alerts.
        self._on_lost = on_lost
        self._lost = ""
        self._unwritable = ""  # why a journal file may not be written, while that lasts (logged on change only)
        self._files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        self._identity: dict[Path, tuple[int, int]] = {}  # (st_dev, st_ino) of each file as opened
        # The high-water mark is rewritten (two fsyncs) at most this often, not per commit: see _maybe_write_head.
        self._head_interval_s = head_interval_s
        self._head_written_at = 0.0
        self._head_seq = -1
        # Told "" after a commit succeeds and the error after one fails (only on a change): health and readiness.
        self._on_health = on_health
        self._problem = ""
        # While idle, check this often that the journal can still be written (0: only commits tell).
        self._probe_interval_s = probe_interval_s
        self._probe_task: asyncio.Task[None] | None = None
        self._last_commit = time.monotonic()
        self.origin = signer.name
        self._signer = signer
        self._max_batch = max_batch
        self._busy_timeout_ms = busy_timeout_ms
        # One thread for the connection's blocking work. The connection is used by this thread or, for a lone
        # entry while the thread is idle (_commit_here), by the loop: never by both at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-writer")
        self._thread_job: Future[Any] | None = None  # the last job given to the thread (jobs run in order)
        self._commit_here = commit_here
        self._waits_for_lock = True  # whether the connection's busy timeout is on (off only for _commit_here)
        self._last_lone = False  # whether the last batch was a lone entry (load is low: see _committed_here)
        self._commit_s = 0.0  # moving average of a commit's duration, from SQLite's call to its return
        self._conn: sqlite3.Connection | None = None
        self._next_seq = 0
        self._prev_hash = ZERO_HASH
        self._search_next = 0  # the first seq not yet copied into the search table (search_table.py)
        self._pending: list[_Append] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.batches_committed = 0
        self.entries_committed = 0
        self.last_batch_size = 0

    @property
    def size(self) -> int:
        """Number of committed entries (the next seq)."""
        return self._next_seq

    async def start(self) -> None:
        """Opens (creating if needed) the journal, checks its identity and starts the writer task."""
        # Cached: on Python 3.11 every asyncio.get_running_loop() call costs a getpid() system call.
        self._loop = asyncio.get_running_loop()
        await self._on_thread(self._open)
        self._task = asyncio.create_task(self._run(), name="journal-writer")
        if self._probe_interval_s > 0 and self._on_health is not None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name="journal-probe")

    def _open(self) -> None:
        mark = read_head(self.path)
        if mark is not None and not self.path.exists():
            raise rollback_error(self.path, mark, "does not exist")
        if not self.path.exists():
            # Create it private: the journal holds redacted, but still sensitive, business facts.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            conn = open_connection(self.path, busy_timeout_ms=self._busy_timeout_ms)
            conn.executescript(DDL)
            conn.executescript(STATE_DDL)
            conn.execute("BEGIN IMMEDIATE")
            meta = dict(conn.execute("SELECT key, value FROM journal_meta").fetchall())
            if not meta:
                meta = {
                    "schema_version": SCHEMA_VERSION,
                    "origin": self.origin,
                    FORMAT_META_KEY: str(self._new_format),
                }
                conn.executemany("INSERT INTO journal_meta (key, value) VALUES (?, ?)", list(meta.items()))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalUnavailableError(f"cannot open journal {self.path}: {exc}") from exc
        if meta.get("origin") != self.origin:
            conn.close()
            raise ConfigError(
                f"journal {self.path} belongs to origin {meta.get('origin')!r} but the signing key is for "
                f"{self.origin!r}; use that journal's key or a new journal file"
            )
        if meta.get("schema_version") != SCHEMA_VERSION:
            conn.close()
            raise ConfigError(f"journal {self.path} has schema version {meta.get('schema_version')!r}")
        self._conn = conn
        # Absent: a journal created before format v2 existed, so v1. A journal never changes format.
        self.format = FORMAT_V2 if meta.get(FORMAT_META_KEY) == str(FORMAT_V2) else FORMAT_V1
        if self.format != self._new_format:
            log.info("journal %s is format v%d and stays so (audit.signing: new journals)", self.path, self.format)
        if mark is not None:
            self._check_mark(mark)
        self._next_seq, self._prev_hash = self._read_tail()
        try:
            self._search_next = open_for_writing(conn)
        except sqlite3.Error as exc:
            raise JournalUnavailableError(f"cannot open journal {self.path}: search table: {exc}") from exc
        self._tree, self._seal_size = self._read_tree()
        self._head_seq = self._next_seq - 1 if mark is None else mark.seq
        for file in self._files:
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(file)
                self._identity[file] = (stat.st_dev, stat.st_ino)

    def _check_mark(self, mark: HeadMark) -> None:
        """Refuses a journal younger than the high-water mark: shorter, or another entry at the mark's seq."""
        assert self._conn is not None
        row = self._conn.execute("SELECT leaf_hash FROM journal WHERE seq = ?", (mark.seq,)).fetchone()
        found = ""
        if mark.origin != self.origin:
            found = f"is for origin {self.origin!r} while the mark is for {mark.origin!r}"
        elif row is None:
            count = self._conn.execute("SELECT coalesce(max(seq) + 1, 0) FROM journal").fetchone()[0]
            found = f"holds only {count} entries"
        elif bytes(row[0]) != mark.leaf_hash:
            found = f"has another entry at seq {mark.seq}"
        if found:
            self._conn.close()
            self._conn = None
            raise rollback_error(self.path, mark, found)

    def _check_files(self) -> None:
        """Before a transaction (on the thread holding the connection): each journal file is the one opened, writable.

        Raises:
            _JournalLostError: a file was removed or replaced (permanent).
            _JournalUnwritableError: a file may not be written now (immutable, append-only, read-only volume):
                SQLite would take SIGBUS storing into its mapped ``-shm``, so the transaction is not attempted.

        A file made unwritable *during* a transaction, after this check, can still raise SIGBUS in SQLite: the
        check narrows that window to one transaction, it cannot close it (docs/adr/0014-shm-faults.md).
        """
        self._check_identity()
        for file in self._identity:
            why = why_unwritable(file)
            if why:
                raise _JournalUnwritableError(
                    f"journal file {file} is {why}: nothing is recorded (SQLite maps it and would crash storing "
                    "into it); make it writable again (chattr -i, or remount the volume read-write) and recording "
                    "resumes"
                )

    def _check_identity(self) -> None:
        """Each journal file is still the one opened (after a commit: one into an unlinked file is not durable)."""
        for file, identity in self._identity.items():
            try:
                stat = os.stat(file)
            except FileNotFoundError:
                raise _JournalLostError(f"journal file {file} was removed while open") from None
            if (stat.st_dev, stat.st_ino) != identity:
                raise _JournalLostError(f"journal file {file} was replaced while open")

    def _read_tail(self) -> tuple[int, bytes]:
        if self._conn is None:
            raise JournalUnavailableError("journal is closed")
        row = self._conn.execute("SELECT seq, leaf_hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, ZERO_HASH) if row is None else (row[0] + 1, bytes(row[1]))

    def _read_tree(self) -> tuple[MerkleRoot, int]:
        """v2: the tree at the tail and the last seal's size, from the last seal's stored state when it matches
        the tail (always, as entries and seal commit together), else rebuilt from the stored leaf hashes."""
        if self.format != FORMAT_V2 or self._conn is None:
            return MerkleRoot(), 0
        row = self._conn.execute("SELECT size, tree_state FROM journal_seals ORDER BY size DESC LIMIT 1").fetchone()
        seal_size = 0 if row is None else int(row[0])
        if row is None and self._next_seq == 0:
            return MerkleRoot(), 0
        if row is not None and seal_size == self._next_seq:
            with contextlib.suppress(ValueError):
                tree = decode_state(bytes(row[1]))
                if tree.size == seal_size:
                    return tree, seal_size
        log.warning("journal %s: the last seal does not end at the tail; rebuilding the tree", self.path)
        pruned = self._conn.execute("SELECT tree_state FROM prune_state WHERE id = 1").fetchone()
        tree = MerkleRoot() if pruned is None else decode_state(bytes(pruned[0]))
        for (leaf,) in self._conn.execute("SELECT leaf_hash FROM journal WHERE seq >= ? ORDER BY seq", (tree.size,)):
            tree.append(bytes(leaf))
        return tree, seal_size

    async def append(
        self, kind: int, body: bytes, columns: tuple[Any, ...], unix_nanos: int, state: Sequence[StateChange] = ()
    ) -> Receipt:
        """Queues one entry and returns once it is durably committed.

        ``state`` lists statements on the operational state tables (approvals, kill switches) that must commit
        together with this entry: both or neither.

        Raises:
            JournalUnavailableError: the entry could not be committed (the caller must fail closed).
        """
        # If the caller goes away (client hung up), cancelling it cancels only this future: the append stays
        # queued and is committed regardless (the writer never drops an item whose future is done).
        return await self.queue(kind, body, columns, unix_nanos, state)

    def queue(
        self, kind: int, body: bytes, columns: tuple[Any, ...], unix_nanos: int, state: Sequence[StateChange] = ()
    ) -> asyncio.Future[Receipt]:
        """``append`` in two halves: queues the entry now (its place in the journal is fixed when this returns) and
        returns the future of its commit. For a caller that must order something else after this entry.

        Raises:
            JournalUnavailableError: as ``append``.
        """
        if self._closing or self._loop is None:
            raise JournalUnavailableError("journal writer is not running")
        if self._lost:
            raise JournalUnavailableError(self._lost)
        future: asyncio.Future[Receipt] = self._loop.create_future()
        self._pending.append(_Append(kind, body, unix_nanos, columns, future, state))
        self._wake.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                rows, receipts, seal, tree = self._seal(batch)
                state = [change for item in batch for change in item.state]
                try:
                    if not self._committed_here(rows, state, seal):
                        await self._on_thread(self._insert, rows, state, seal)
                except _JournalLostError as exc:
                    await self._lose(str(exc), [*batch, *self._pending])
                    self._pending.clear()
                    continue
                except _JournalUnwritableError as exc:
                    self._refuse_unwritable(str(exc), batch)  # nothing was attempted: no tail to re-read
                    continue
                except Exception as exc:
                    log.error("journal commit of %d entries failed: %s", len(batch), exc)
                    metrics.JOURNAL_COMMIT_FAILURES.inc()
                    self._set_problem(f"commit failed: {exc}")
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(JournalUnavailableError(str(exc)))
                    await self._resync()
                    continue
                self._writable_again()
                if self._problem:
                    self._set_problem("")
                self._last_commit = time.monotonic()
                self._next_seq, self._prev_hash = receipts[-1].seq + 1, receipts[-1].leaf_hash
                if seal is not None:
                    self._tree, self._seal_size = tree, seal[0]
                self.batches_committed += 1
                self.entries_committed += len(rows)
                self.last_batch_size = len(rows)
                for item, receipt in zip(batch, receipts, strict=True):
                    if not item.future.done():
                        item.future.set_result(receipt)
            if self._closing:
                return

    async def _lose(self, why: str, failed: Sequence[_Append]) -> None:
        """The journal files are gone: fail ``failed`` and every later append, salvage, tell health and alerts."""
        first = not self._lost
        if first:
            self._lost = f"journal lost: {why}; restart the sidecar after checking the journal directory"
        metrics.JOURNAL_COMMIT_FAILURES.inc()
        for item in failed:
            if not item.future.done():
                item.future.set_exception(JournalUnavailableError(self._lost))
        if not first:
            return  # the probe and a commit both found it: say it once
        log.error("%s (no entry is acknowledged from now on)", self._lost)
        self._set_problem(self._lost)
        try:
            salvaged = await self._on_thread(self._salvage)
        except (sqlite3.Error, OSError, JournalUnavailableError) as exc:
            log.error("cannot salvage the open journal: %s", exc)
        else:
            log.error("the journal as this sidecar holds it is saved in %s (verify it, keep it)", salvaged)
        if self._on_lost is not None:
            self._on_lost(self._lost)

    def _salvage(self) -> Path:
        """On the writer thread: records the last acknowledged entry in the mark, copies the open journal aside."""
        conn = self._conn
        if conn is None:
            raise JournalUnavailableError("journal is closed")
        if self._next_seq > 0:
            write_head(self.path, HeadMark(self.origin, self._next_seq - 1, self._prev_hash))
        target = self.path.with_name(f"{self.path.name}.salvaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        copy = sqlite3.connect(target)
        try:
            conn.backup(copy)
        finally:
            copy.close()
        return target

    def _refuse_unwritable(self, why: str, failed: Sequence[_Append]) -> None:
        """Fails ``failed`` closed while a journal file may not be written: one log line per change, not per commit."""
        metrics.JOURNAL_COMMIT_FAILURES.inc()
        if why != self._unwritable:
            self._unwritable = why
            log.error("%s", why)
        self._set_problem(why)
        for item in failed:
            if not item.future.done():
                item.future.set_exception(JournalUnavailableError(why))

    def _writable_again(self) -> None:
        if self._unwritable:
            log.warning("the journal files are writable again; recording resumes (was: %s)", self._unwritable)
            self._unwritable = ""

    def _set_problem(self, problem: str) -> None:
        if self._lost and problem != self._lost:
            return  # lost is final: neither a later probe nor a commit clears it
        if problem != self._problem:
            self._problem = problem
            if self._on_health is not None:
                self._on_health(problem)

    def _seal(
        self, batch: Sequence[_Append]
    ) -> tuple[list[tuple[Any, ...]], list[Receipt], SealRow | None, MerkleRoot]:
        """Assigns seq, builds each envelope, signs it and chains the leaf hashes (on the event loop thread).

        Format v1 signs every entry. Format v2 signs only the entries that travel alone (approval events,
        :func:`~gateway.journal.entry.travels_alone`) and then, once, the seal over the tree head at the batch's
        end (:mod:`gateway.journal.seal`), returned with the tree after the batch (kept only if the commit lands).

        Signing here rather than on the writer thread matters: PyNaCl releases the GIL for every signature, and a
        thread that must re-take the GIL once per entry while the loop thread is busy waits for the loop's switch
        interval each time (measured: 4.3 ms per 15-entry commit). The writer thread now takes the GIL twice per
        batch, whatever its size.
        """
        seq, prev = self._next_seq, self._prev_hash
        key_id, origin, sign = self._signer.key_id, self.origin, self._signer.sign
        rows = []
        receipts = []
        if self.format == FORMAT_V1:
            for item in batch:
                entry = encode_entry(item.kind, seq, item.unix_nanos, prev, key_id, item.body)
                signature = sign(signature_payload(origin, entry))
                digest = leaf_hash(entry, signature)
                rows.append((seq, entry, signature, digest, item.unix_nanos, *item.columns))
                receipts.append(Receipt(seq, digest))
                prev = digest
                seq += 1
            return rows, receipts, None, self._tree
        tree = MerkleRoot.restore(self._tree.size, self._tree.state())
        for item in batch:
            entry = encode_entry(item.kind, seq, item.unix_nanos, prev, key_id, item.body, FORMAT_V2)
            signature = sign(signature_payload(origin, entry)) if travels_alone(item.kind, item.body) else b""
            digest = leaf_hash(entry, signature)
            tree.append(digest)
            rows.append((seq, entry, signature, digest, item.unix_nanos, *item.columns))
            receipts.append(Receipt(seq, digest))
            prev = digest
            seq += 1
        note = make_seal(self._signer, seq, tree.root(), self._seal_size, prev)
        return rows, receipts, (seq, note, encode_state(tree)), tree

    async def _on_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Runs ``fn`` on the writer thread. The job is remembered, so ``_committed_here`` knows the thread's busy
        even after a caller stopped waiting (a cancelled await does not stop the job)."""
        job = self._executor.submit(self._threaded, fn, *args)
        self._thread_job = job
        return await asyncio.wrap_future(job)

    def _committed_here(
        self, rows: Sequence[tuple[Any, ...]], state: Sequence[StateChange], seal: SealRow | None
    ) -> bool:
        """Commits a lone entry on the loop thread when that is safe and cheaper; False: the thread must commit it.

        Safe: the thread is idle, so the connection is the loop's alone for this call. Cheaper: one entry, after
        a batch that was also one entry, means the load is low, so little else waits for the loop while it syncs
        (a lone entry amid heavier load goes to the thread: the loop serves others during that fsync). Not here:
        a commit that moves the high-water mark (two more fsyncs) or copies a batch into the search table, a disk
        whose commits lately took longer than ``_COMMIT_HERE_MAX_S`` on average (the loop would stall for them),
        and a database locked by someone else (SQLite is told not to wait; ``SQLITE_BUSY`` means nothing was
        committed, so the thread then commits the same rows, waiting its busy timeout).
        """
        low_load, self._last_lone = self._last_lone, len(rows) == 1
        if (
            not self._commit_here
            or len(rows) != 1
            or not low_load
            or (self._thread_job is not None and not self._thread_job.done())
            or self._head_due(time.monotonic())
            or copy_due(self._search_next, rows[-1][0] + 1)
            or self._commit_s > _COMMIT_HERE_MAX_S
        ):
            return False
        self._wait_for_lock(False)
        try:
            self._insert(rows, state, seal)
        except JournalUnavailableError as exc:
            cause = exc.__cause__
            if isinstance(cause, sqlite3.Error) and cause.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:  # any BUSY_*
                return False
            raise
        return True

    def _threaded(self, fn: Callable[..., _T], *args: Any) -> _T:
        self._wait_for_lock(True)
        return fn(*args)

    def _wait_for_lock(self, wait: bool) -> None:
        """Turns SQLite's busy timeout on (the thread waits for a lock) or off (the loop never does)."""
        if wait != self._waits_for_lock and self._conn is not None:
            self._conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms if wait else 0}")
            self._waits_for_lock = wait

    def _insert(
        self, rows: Sequence[tuple[Any, ...]], state: Sequence[StateChange], seal: SealRow | None = None
    ) -> None:
        """On the writer thread (or the loop, _committed_here): one multi-row INSERT, in autocommit its own transaction.

        One statement means one ``sqlite3_step`` (the GIL is released once for the insert and the fsync'd commit)
        and all-or-nothing: a failed batch leaves no row behind. A batch that carries state changes, or a seal
        (format v2), or completes a batch for the search table, runs in an explicit transaction with them instead:
        entries and their seal are durable together or not at all, so no entry is ever answered, or survives a
        crash, without its seal; the search table's copy is durable exactly when the rows it copies are.
        """
        conn = self._conn
        if conn is None:
            raise JournalUnavailableError("journal is closed")
        params = [value for row in rows for value in row]
        next_seq = rows[-1][0] + 1
        copy_from = self._search_next if copy_due(self._search_next, next_seq) else None
        self._check_files()
        started = time.perf_counter()
        try:
            if not state and seal is None and copy_from is None:
                conn.execute(insert_sql(len(rows)), params)
            else:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(insert_sql(len(rows)), params)
                    if seal is not None:
                        conn.execute("INSERT INTO journal_seals (size, note, tree_state) VALUES (?, ?, ?)", seal)
                    for sql, args in state:
                        conn.execute(sql, args)
                    if copy_from is not None:  # after the state changes: a prune's deleted rows are not copied
                        conn.execute(COPY_SQL, (copy_from,))
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise JournalUnavailableError(f"commit failed: {exc}") from exc
        if copy_from is not None:
            self._search_next = next_seq
        # After the fsync, before any receipt resolves: a commit into an unlinked file is not durable. (Whether
        # the files are still writable does not matter here: what SQLite returned from is already durable.)
        self._check_identity()
        took = self._observe(rows, started)
        self._commit_s += (took - self._commit_s) * 0.25
        self._maybe_write_head(rows[-1][0], rows[-1][3])

    def _head_due(self, now: float) -> bool:
        """Whether the high-water mark's last move is ``head_interval_s`` old (the next commit moves it)."""
        return now - self._head_written_at >= self._head_interval_s

    def _maybe_write_head(self, seq: int, digest: bytes) -> None:
        """Moves the high-water mark to this commit if the last move is ``head_interval_s`` old.

        Not on every commit: the mark costs two fsyncs (file and directory), which per commit would roughly halve
        throughput on a disk where one fsync dominates a commit. The mark may therefore lag the journal by up to
        the interval after a crash; after a clean stop or a lost journal it is exact.
        """
        now = time.monotonic()
        if not self._head_due(now):
            return
        try:
            write_head(self.path, HeadMark(self.origin, seq, digest))
        except OSError as exc:
            log.warning("cannot update the journal's high-water mark: %s", exc)
            return
        self._head_written_at, self._head_seq = now, seq

    @staticmethod
    def _observe(rows: Sequence[tuple[Any, ...]], started: float) -> float:
        """Commit metrics, on whichever thread committed (prometheus_client is thread-safe); the commit's seconds."""
        took = time.perf_counter() - started
        metrics.JOURNAL_COMMIT_SECONDS.observe(took)
        metrics.JOURNAL_BATCH_ENTRIES.observe(len(rows))
        metrics.JOURNAL_ENTRIES.inc(len(rows))
        # Row layout (seq, entry, signature, ...): the stored bytes of each entry and its signature.
        metrics.JOURNAL_BYTES.inc(sum(len(row[1]) + len(row[2]) for row in rows))
        return took

    async def _probe_loop(self) -> None:
        """While no commit has happened for an interval, probes writability so health sees an idle breakage."""
        while not self._closing:
            await asyncio.sleep(self._probe_interval_s)
            if self._closing or self._pending or time.monotonic() - self._last_commit < self._probe_interval_s:
                continue
            try:
                await self._on_thread(self._probe)
            except _JournalLostError as exc:
                await self._lose(str(exc), self._pending)
                self._pending.clear()
                return
            except _JournalUnwritableError as exc:
                self._refuse_unwritable(str(exc), ())
            except (sqlite3.Error, OSError, JournalUnavailableError) as exc:
                self._set_problem(f"write probe failed: {exc}")
            except RuntimeError:
                return  # the executor shut down: closing
            else:
                self._writable_again()
                if self._problem:
                    self._set_problem("")

    def _probe(self) -> None:
        """On the writer thread: takes and releases the write lock, and writes and syncs a file beside the journal.

        Nothing is written to the journal. The lock catches another process holding the database; the file catches
        a volume that went read-only or fails its I/O (a full disk shows only when a commit needs the space).
        """
        conn = self._conn
        if conn is None:
            raise JournalUnavailableError("journal is closed")
        self._check_files()  # first: taking the lock touches the mapped -shm
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        fd = os.open(self.path.with_name(self.path.name + ".probe"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    async def _resync(self) -> None:
        """After a failed commit, re-reads the tail so seq and chain continue from what is really stored."""
        try:
            self._next_seq, self._prev_hash = await self._on_thread(self._checked_tail)
        except (sqlite3.Error, JournalUnavailableError) as exc:
            log.error("cannot re-read the journal tail: %s", exc)

    def _checked_tail(self) -> tuple[int, bytes]:
        self._check_files()  # reading takes a read mark in the mapped -shm
        tail = self._read_tail()
        self._next_seq = tail[0]
        self._tree, self._seal_size = self._read_tree()
        return tail

    async def aclose(self) -> None:
        """Stops accepting appends, commits everything already queued, then closes the database."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self._task is not None:
            await self._task
        await self._on_thread(self._close)
        self._executor.shutdown(wait=True)
        if self.batches_committed:
            log.info(
                "journal writer closed: %d entries in %d transactions this run (%.1f per commit)",
                self.entries_committed,
                self.batches_committed,
                self.entries_committed / self.batches_committed,
            )

    def _close(self) -> None:
        if self._conn is not None and not self._lost and self._next_seq - 1 > self._head_seq:
            try:
                self._check_identity()
                write_head(self.path, HeadMark(self.origin, self._next_seq - 1, self._prev_hash))
            except (OSError, JournalUnavailableError) as exc:
                log.warning("cannot update the journal's high-water mark at close: %s", exc)
        if self._conn is None:
            return
        try:
            self._check_files()
        except _JournalUnwritableError as exc:
            # Closing the last connection checkpoints through the mapped -shm: SIGBUS. The process is ending, and its
            # exit releases the connection without storing anything; every acknowledged entry is already durable.
            log.warning("journal connection left open for the process exit to release: %s", exc)
            abandon(self._conn)
            self._conn = None
            return
        except _JournalLostError:
            pass  # the files are unlinked or replaced, not unwritable: closing stores into our own mapping only
        self._conn.close()
        self._conn = None
