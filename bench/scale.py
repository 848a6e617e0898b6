"""Scale: ``search --run-id`` and ``trace`` on a journal of 1,000,000 events, and append cost against journal size.

``python -m bench.scale [--events N] [--dir DIR] [--keep] [--repeat R]`` (``make bench-scale``)

1. **Generator.** A journal of N events (default 1,000,000) is written by the real
   :class:`~gateway.journal.writer.JournalWriter` (signed with a fixed seed, hash-chained), as a busy sidecar
   would fill it: 2,000 runs in flight, each adding its next event in every wave of 2,000 concurrent appends
   (which the writer group-commits). Bodies have every field :mod:`gateway.sidecar.recorder` writes: ``pre_exec`` /
   ``post_exec`` pairs, about 10 steps per run (so about N/20 runs), five tenants, four agents, some stops, some
   approval chains (asked, granted or denied or expired, resumed), and now and then a ``policy_changed`` or a
   tenant/agent ``kill_switch`` engaged then released (runs it covers are stopped meanwhile). The journal is
   cached as ``DIR/scale-N.db`` (default DIR ``bench/results``, git-ignored) with ``scale-N.json`` (how it was
   generated) and ``scale-N.pub`` (its verifier key, for ``agentaudit verify``); a later run reuses it when its
   row count is N and the generator version matches.
2. **Queries** on that journal, each for ``--repeat`` (20) random existing runs, p50/p95 in ms; the first query
   of each kind runs *cold* (the journal file evicted from the OS page cache with ``posix_fadvise``) and is
   reported apart:

   * ``search --run-id``: what ``agentaudit search JOURNAL --run-id RUN`` does without printing: open the
     journal read-only, ``query.select(conn, EventFilter(run_id=RUN), limit=100)`` materialised, close.
   * ``trace``: what ``agentaudit trace RUN`` does without verification (no ``--public-key``): the run's events
     from ``iter_bodies(path, run_id=RUN)``, the ``kill_switch`` and ``policy_changed`` context events from
     ``iter_operator_context(path)``, ``build_trace``, ``format_trace``; timed in parts as well.
   * for reference, ``agentaudit trace`` and ``agentaudit search`` as subprocesses, end to end (Python start-up
     and imports included, so not the target), beside ``agentaudit --version`` (start-up alone).
3. **Append rate**: the same workload (``--sequential`` appends awaited one by one, then ``--concurrent`` appends
   gathered at once; realistic bodies with fresh, time-ordered ids) on a fresh empty journal and on a copy of
   the N-event journal (copied and fsync'd first, so the cache stays pristine and no write-back competes),
   alternating empty, N, empty, N; the better run of each is kept. The ratio N/empty should be at least 0.9.

Prints a table and, as its very last line, one JSON object with every figure. Targets are informational.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.canonical import canonical_json
from gateway.cli.render import format_trace
from gateway.ids import rfc3339_nanos
from gateway.journal import query
from gateway.journal.entry import EventKind
from gateway.journal.schema import DDL, OPERATOR_CONTEXT_WHERE, indexed_values
from gateway.journal.search_table import open_for_writing
from gateway.journal.store import connect_readonly, iter_bodies, iter_operator_context
from gateway.journal.trace import CONTEXT_KINDS, build_trace
from gateway.journal.writer import JournalWriter, Receipt, StateChange
from gateway.signing import Ed25519Signer

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"

DEFAULT_EVENTS = 1_000_000
DEFAULT_REPEAT = 20
DEFAULT_SEQUENTIAL = 5_000
DEFAULT_CONCURRENT = 20_000
APPEND_ROUNDS = 2
SEARCH_LIMIT = 100  # agentaudit search's default --limit
SUBPROCESS_RUNS = 3

QUERY_TARGET_MS = 100.0  # search --run-id and trace, warm p95
APPEND_RATIO_TARGET = 0.9  # appends/s on the N-event journal over appends/s on an empty one

GENERATOR_VERSION = 2  # bump when the generated journal changes: a cached one of another version is rebuilt
WAVE = 2_000  # runs in flight while generating = appends per gather = rows per commit (MAX_ROWS_PER_INSERT)
WORKLOAD_RUNS = 200  # runs in flight in the append workload
ORIGIN = "bench.agentaudit/scale"
SIGNER = Ed25519Signer(ORIGIN, bytes([7]) * 32)
GENERATOR_SEED = 1_000_003
WORKLOAD_SEED = 2
SAMPLE_SEED = 3
BASE_NANOS = 1_748_736_000 * 10**9  # 2025-06-01T00:00:00Z: generated ids sort before any id made now
EVENT_SPACING_NS = 20_000_000  # 20 ms between events on average: 1 M events cover about 5.6 hours
POLICY_CHANGE_EVERY = 25_000  # events between policy changes
KILL_SWITCH_EVERY = 40_000  # events between kill switches engaged
KILL_SWITCH_WAVES = 5  # waves a kill switch stays engaged

_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")
_T = TypeVar("_T")

# --- realistic traffic ----------------------------------------------------------------------------------------

TENANTS = ("t_acme", "t_globex", "t_initech", "t_umbrella", "t_42")
TENANT_WEIGHTS = (40, 25, 15, 12, 8)
AGENT_ACTIONS = {
    "support-agent": ("kb.search", "crm.lookup", "crm.update", "email.send", "ticket.comment"),
    "billing-agent": ("invoice.get", "payment.lookup", "refund.create", "crm.lookup"),
    "research-agent": ("web.search", "doc.read", "kb.search", "doc.summarise"),
    "ops-agent": ("ticket.create", "deploy.status", "metrics.query", "pager.ack"),
}
AGENTS = tuple(AGENT_ACTIONS)
STOPS = (  # (reason, layer, rule, retry_after_ms)
    ("rate_limited_tenant", "limits", "tenant_rate", 1000),
    ("stopped_by_rule", "rules", "no_bulk_export", None),
    ("access_denied", "access", "", None),
    ("budget_exceeded", "limits", "daily_refunds", 3_600_000),
)
QUERIES = ("refund status", "reset password", "invoice overdue", "plan upgrade", "api rate limits", "sso setup")
OPERATORS = ("alice", "bob", "carol")
STOP_SHARE = 0.04
APPROVAL_SHARE = 0.02
FAILED_SHARE = 0.03


@dataclass
class Item:
    """One event to append: its kind, body, signed time and state changes (kill switches), and its run."""

    kind: EventKind
    body: dict[str, Any]
    nanos: int
    run: Run | None = None
    state: Sequence[StateChange] = ()


@dataclass
class Run:
    """An agent run in flight: who runs it, how far it is, and what it does next."""

    run_id: str
    tenant: str
    agent: str
    actor: dict[str, str]
    steps: int
    step: int = 0
    next: str = "decide"  # decide | approve | resume | result | done
    pre: dict[str, Any] = field(default_factory=dict)  # the last pre-event body
    pre_seq: int = -1
    pre_leaf_hash: str = ""


class Traffic:
    """Deterministic, realistic journal traffic: ``runs`` runs in flight, each adding one event per wave.

    Call :meth:`wave` for the next events (at most one per run, operator events first), append them, then
    :meth:`committed` with their receipts: a result names its pre-event's seq and leaf hash, so it is only made
    once that pre-event is committed (in an earlier wave).
    """

    def __init__(self, seed: int, base_nanos: int, runs: int, *, ordered_run_ids: bool = False) -> None:
        self._rng = random.Random(seed)
        self._ordered_run_ids = ordered_run_ids
        self._nanos = base_nanos
        self.policy_version = self._version()
        self._runs = [self._new_run() for _ in range(runs)]
        self.events = 0
        self.runs_started = runs
        self.kinds: Counter[str] = Counter()
        self._next_policy_change = POLICY_CHANGE_EVERY
        self._next_kill_switch = KILL_SWITCH_EVERY
        self._switch: tuple[str, str] | None = None  # (scope, target) engaged now
        self._release_in = 0  # waves left before the switch is released

    # ids and values

    def _ulid(self, prefix: str) -> str:
        raw = (self._nanos // 1_000_000).to_bytes(6, "big") + self._rng.getrandbits(80).to_bytes(10, "big")
        return prefix + base64.b32encode(raw)[:26].translate(_TO_CROCKFORD).decode("ascii")

    def _hex(self, bits: int) -> str:
        return f"{self._rng.getrandbits(bits):0{bits // 4}x}"

    def _version(self) -> str:
        return "sha256:" + self._hex(256)

    def _tick(self) -> int:
        self._nanos += self._rng.randrange(2 * EVENT_SPACING_NS)
        return self._nanos

    def _new_run(self) -> Run:
        rng = self._rng
        actor = (
            {"type": "user", "id": f"u_{rng.randrange(1, 5000)}"}
            if rng.random() < 0.8
            else {"type": "service", "id": "svc_nightly"}
        )
        return Run(
            # Client-chosen; often random (a UUID, or run_<token_hex> as in examples/support_agent.py), which puts
            # each new run somewhere else in the (run_id, step_id) index. Ordered: ULID-like, time-ordered.
            run_id=self._ulid("run_") if self._ordered_run_ids else f"run_{self._hex(128)}",
            tenant=rng.choices(TENANTS, TENANT_WEIGHTS)[0],
            agent=rng.choice(AGENTS),
            actor=actor,
            steps=rng.randint(5, 15),
        )

    def _args(self, action: str) -> tuple[dict[str, Any], list[str]]:
        """Arguments after redaction (``email`` removed) and the removed paths."""
        rng = self._rng
        if action.startswith(("kb.", "web.", "doc.")):
            return {"query": rng.choice(QUERIES), "limit": rng.choice((5, 10, 20)), "lang": "en"}, []
        args: dict[str, Any] = {
            "customer_id": f"cus_{rng.randrange(100_000, 999_999)}",
            "fields": ["name", "plan", "open_tickets"],
            "include_history": rng.random() < 0.5,
        }
        if action in ("refund.create", "payment.lookup", "invoice.get"):
            args["amount_cents"] = rng.randrange(500, 250_000)
            args["currency"] = "EUR"
        if action in ("email.send", "crm.update", "ticket.comment"):
            return {**args, "template": "follow_up_v3"}, ["args.email"]
        return args, []

    # events

    def wave(self, limit: int) -> list[Item]:
        """The next events: due operator events, then one event per run in a shuffled order (at most ``limit``)."""
        items = self._operator_events()
        self._rng.shuffle(self._runs)
        for index, run in enumerate(self._runs):
            if len(items) >= limit:
                break
            items.append(self._next_event(run))
            if run.next == "done":
                self._runs[index] = self._new_run()
                self.runs_started += 1
        items = items[:limit]
        self.events += len(items)
        self.kinds.update(item.body["kind"] for item in items)
        return items

    def committed(self, items: Sequence[Item], receipts: Sequence[Receipt]) -> None:
        """Remembers where each pre-event was committed, for its result."""
        for item, receipt in zip(items, receipts, strict=True):
            if item.run is not None and item.kind is EventKind.PRE_EXEC:
                item.run.pre_seq, item.run.pre_leaf_hash = receipt.seq, receipt.leaf_hash.hex()

    def _operator_events(self) -> list[Item]:
        items: list[Item] = []
        if self._switch is not None:
            self._release_in -= 1
            if self._release_in <= 0:
                items.append(self._kill_switch("release", *self._switch))
                self._switch = None
        if self.events >= self._next_kill_switch and self._switch is None:
            self._next_kill_switch += KILL_SWITCH_EVERY
            scope = "tenant" if self._rng.random() < 0.7 else "agent"
            target = self._rng.choices(TENANTS, TENANT_WEIGHTS)[0] if scope == "tenant" else self._rng.choice(AGENTS)
            self._switch, self._release_in = (scope, target), KILL_SWITCH_WAVES
            items.append(self._kill_switch("engage", scope, target))
        if self.events >= self._next_policy_change:
            self._next_policy_change += POLICY_CHANGE_EVERY
            items.append(self._policy_changed())
        return items

    def _kill_switch(self, operation: str, scope: str, target: str) -> Item:
        nanos = self._tick()
        operator = self._rng.choice(OPERATORS)
        comment = f"incident {self._rng.randrange(100, 999)}" if operation == "engage" else "resolved"
        body = {
            "event_id": self._ulid("evt_"),
            "kind": "kill_switch",
            "timestamp": rfc3339_nanos(nanos),
            "operation": operation,
            "scope": scope,
            "target": target,
            "tenant_id": target if scope == "tenant" else "",
            "agent_id": target if scope == "agent" else "",
            "run_id": "",
            "comment": comment,
            "actor": {"type": "operator", "id": operator},
        }
        state: list[StateChange] = [
            (
                "INSERT OR REPLACE INTO kill_switches (scope, target, reason, engaged_by, engaged_ns) "
                "VALUES (?, ?, ?, ?, ?)",
                (scope, target, comment, operator, nanos),
            )
            if operation == "engage"
            else ("DELETE FROM kill_switches WHERE scope = ? AND target = ?", (scope, target))
        ]
        return Item(EventKind.KILL_SWITCH, body, nanos, state=state)

    def _policy_changed(self) -> Item:
        nanos = self._tick()
        old, self.policy_version = self.policy_version, self._version()
        body = {
            "event_id": self._ulid("evt_"),
            "kind": "policy_changed",
            "timestamp": rfc3339_nanos(nanos),
            "actor": {"type": "operator", "id": self._rng.choice(OPERATORS)},
            "old_version": old,
            "new_version": self.policy_version,
            "policy_version": self.policy_version,
            "trigger": "operator_api",
            "source": "/etc/agentaudit/policy.yaml",
        }
        return Item(EventKind.POLICY_CHANGED, body, nanos)

    def _covered(self, run: Run) -> bool:
        return self._switch is not None and self._switch[1] == (
            run.tenant if self._switch[0] == "tenant" else run.agent
        )

    def _next_event(self, run: Run) -> Item:
        rng = self._rng
        if run.next == "result":
            return self._result(run)
        if run.next == "approve":
            return self._approval(run)
        if run.next == "resume":
            rule = run.agent.removesuffix("-agent")
            item = self._pre(run, "allow", "allowed", "access", rule, resumed=run.pre["approval_id"])
            run.next = "result"
            return item
        run.step += 1
        action = rng.choice(AGENT_ACTIONS[run.agent])
        run.pre = {"action": action, "args": self._args(action), "action_key": "ak_" + self._hex(128)}
        if self._covered(run):
            assert self._switch is not None
            rule = f"operator:{self._switch[0]}"
            item = self._pre(run, "stop", "kill_switch_engaged", "kill_switch", rule)
            run.next = "done"  # the agent gives up the run
            return item
        draw = rng.random()
        if draw < APPROVAL_SHARE:
            item = self._pre(run, "approval_required", "approval_required", "approval", "needs_approval")
            run.next = "approve"
        elif draw < APPROVAL_SHARE + STOP_SHARE:
            reason, layer, rule, retry = rng.choice(STOPS)
            item = self._pre(run, "stop", reason, layer, rule, retry_after_ms=retry)
            run.next = "decide" if run.step < run.steps else "done"
        else:
            item = self._pre(run, "allow", "allowed", "access", run.agent.removesuffix("-agent"))
            run.next = "result"
        return item

    def _pre(
        self,
        run: Run,
        decision: str,
        reason: str,
        layer: str,
        rule: str,
        *,
        retry_after_ms: int | None = None,
        resumed: str = "",
    ) -> Item:
        """A pre_exec body with every field gateway.sidecar.recorder.record_decision writes."""
        nanos = self._tick()
        args, redacted = run.pre["args"]
        asking = decision == "approval_required"
        body = {
            "event_id": self._ulid("evt_"),
            "kind": "pre_exec",
            "timestamp": rfc3339_nanos(nanos),
            "run_id": run.run_id,
            "step_id": run.step,
            "attempt": 2 if resumed else 1,  # a resume repeats the step that asked for the approval
            "tenant_id": run.tenant,
            "actor": run.actor,
            "agent_id": run.agent,
            "action": run.pre["action"],
            "args": args,
            "args_digest": "hmac-sha256:" + self._hex(256),
            "redacted_paths": redacted,
            "action_key": run.pre["action_key"],
            "scope": "tenant",
            "decision": decision,
            "reason": reason,
            "policy_layer": layer,
            "policy_rule": rule,
            "policy_version": self.policy_version,
            "retry_after_ms": retry_after_ms,
            "shadow_decision": "",
            "shadow_reason": "",
            "shadow_layer": "",
            "shadow_rule": "",
            "approval_id": self._ulid("apr_") if asking else "",
            "approvers": ["finance-leads"] if asking else [],
            "approval_expires_in_s": 3600 if asking else 0,
            "resumed_approval_id": resumed,
            "trace_id": self._hex(128),
            "span_id": self._hex(64),
            "labels": {"env": "prod", "team": run.agent.removesuffix("-agent")},
        }
        run.pre = {**run.pre, **body, "args": run.pre["args"]}
        return Item(EventKind.PRE_EXEC, body, nanos, run)

    def _approval(self, run: Run) -> Item:
        """The asked approval granted (85%), denied (10%) or expired (5%), as AuditRecorder.record_approval."""
        nanos = self._tick()
        draw = self._rng.random()
        kind = EventKind.APPROVAL_GRANTED if draw < 0.85 else EventKind.APPROVAL_DENIED
        actor = {"type": "operator", "id": self._rng.choice(OPERATORS)}
        if draw >= 0.95:
            kind, actor = EventKind.APPROVAL_EXPIRED, {"type": "system", "id": "agentaudit"}
        pre = run.pre
        body = {
            "event_id": self._ulid("evt_"),
            "kind": kind.label,
            "timestamp": rfc3339_nanos(nanos),
            "approval_id": pre["approval_id"],
            "pre_event_id": pre["event_id"],
            "run_id": run.run_id,
            "step_id": run.step,
            "tenant_id": run.tenant,
            "agent_id": run.agent,
            "action": pre["action"],
            "action_key": pre["action_key"],
            "policy_rule": pre["policy_rule"],
            "actor": actor,
            "comment": "ok" if kind is EventKind.APPROVAL_GRANTED else "",
        }
        if kind is EventKind.APPROVAL_GRANTED:
            run.next = "resume"
        else:
            run.next = "decide" if run.step < run.steps else "done"
        return Item(kind, body, nanos, run)

    def _result(self, run: Run) -> Item:
        """The post_exec of the run's last pre-event, with every field gateway.sidecar.recorder writes."""
        nanos = self._tick()
        rng = self._rng
        pre = run.pre
        failed = rng.random() < FAILED_SHARE
        count = rng.randrange(0, 6)
        body = {
            "event_id": self._ulid("evt_"),
            "kind": "post_exec",
            "timestamp": rfc3339_nanos(nanos),
            "pre_event_id": pre["event_id"],
            "pre_event_seq": run.pre_seq,
            "pre_leaf_hash": run.pre_leaf_hash,
            "run_id": run.run_id,
            "step_id": run.step,
            "tenant_id": run.tenant,
            "agent_id": run.agent,
            "action": pre["action"],
            "action_key": pre["action_key"],
            "decision": pre["decision"],
            "reason": pre["reason"],
            "status": "failed" if failed else "succeeded",
            "error": "upstream timeout after 30000 ms" if failed else "",
            "output": {} if failed else {"count": count, "ids": [f"doc_{rng.randrange(10**6)}" for _ in range(count)]},
            "output_digest": "hmac-sha256:" + self._hex(256),
            "redacted_paths": [],
            "duration_ns": rng.randrange(2_000_000, 2_000_000_000),
        }
        run.next = "decide" if run.step < run.steps else "done"
        return Item(EventKind.POST_EXEC, body, nanos, run)


# --- the journal ----------------------------------------------------------------------------------------------


def _run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Runs on uvloop when installed, as the sidecar does, without touching the global policy."""
    try:
        import uvloop  # noqa: PLC0415 -- optional, as in gateway.app
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _append(writer: JournalWriter, item: Item) -> Coroutine[Any, Any, Receipt]:
    return writer.append(item.kind, canonical_json(item.body), indexed_values(item.body), item.nanos, item.state)


async def _generate(path: Path, events: int, progress: Callable[[str], None]) -> dict[str, Any]:
    writer = JournalWriter(path, SIGNER, max_batch=WAVE)
    await writer.start()
    traffic = Traffic(GENERATOR_SEED, BASE_NANOS, WAVE)
    step = max(events // 10, 1)
    next_report = step
    started = time.perf_counter()
    try:
        while traffic.events < events:
            items = traffic.wave(events - traffic.events)
            receipts = await asyncio.gather(*(_append(writer, item) for item in items))
            traffic.committed(items, receipts)
            if traffic.events >= next_report or traffic.events == events:
                elapsed = time.perf_counter() - started
                progress(
                    f"generated {traffic.events:,}/{events:,} events ({100 * traffic.events // events}%) "
                    f"in {elapsed:.0f} s, {traffic.events / elapsed:,.0f} events/s"
                )
                next_report += step
    finally:
        await writer.aclose()
    elapsed = time.perf_counter() - started
    return {
        "generator_version": GENERATOR_VERSION,
        "events": traffic.events,
        "runs": traffic.runs_started,
        "kinds": dict(sorted(traffic.kinds.items())),
        "generation_s": round(elapsed, 1),
        "generation_events_per_s": round(traffic.events / elapsed),
        "commits": writer.batches_committed,
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.platform()}",
    }


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def row_count(path: Path) -> int | None:
    """Rows in the journal, or None when it is missing or unreadable."""
    if not path.exists():
        return None
    # Read-write (nothing is written): closing the last connection removes the -wal and -shm files, which a
    # read-only connection would leave behind.
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM journal").fetchone()[0])
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _apply_schema(path: Path) -> None:
    """Brings a cached journal's indexes up to the current schema, as a sidecar start would."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(DDL)
        open_for_writing(conn)  # the search table filled and the indexes it replaced dropped


def ensure_journal(directory: Path, events: int, progress: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The cached journal of ``events`` events in ``directory``, generated first when missing or stale."""
    path = directory / f"scale-{events}.db"
    info_path = path.with_suffix(".json")
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(info_path.read_text())
    if info.get("generator_version") == GENERATOR_VERSION and row_count(path) == events:
        progress(f"reusing {path} ({events:,} events, generated in {info.get('generation_s')} s)")
        _apply_schema(path)
        return path, {**info, "cached": True}
    progress(f"generating {path} ({events:,} events; about {events / 9_000 / 60:.1f} min at 9,000 events/s)")
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".db.partial")
    _remove_database(partial)
    _remove_database(path)
    info = _run_async(_generate(partial, events, progress))
    count = row_count(partial)
    if count != events:
        raise RuntimeError(f"generated journal has {count} rows, expected {events}")
    _fsync(partial)
    partial.replace(path)
    _remove_database(partial)
    path.with_suffix(".pub").write_text(SIGNER.verifier.encode() + "\n")
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return path, {**info, "cached": False}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def evict(path: Path) -> bool:
    """Drops the journal's pages from the OS page cache (Linux), so the next read is cold; False if unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for suffix in ("", "-wal"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            fd = os.open(candidate, os.O_RDONLY)
            try:
                os.fsync(fd)  # only clean pages can be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def describe(path: Path) -> dict[str, Any]:
    """Size, runs and kinds of the journal as stored."""
    conn = connect_readonly(path)
    try:
        runs = conn.execute("SELECT count(DISTINCT run_id) FROM journal WHERE run_id IS NOT NULL").fetchone()[0]
        kinds = dict(conn.execute("SELECT kind, count(*) FROM journal GROUP BY kind ORDER BY kind").fetchall())
        entry_bytes = conn.execute("SELECT avg(length(entry)) FROM journal").fetchone()[0]
        indexes = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]
    finally:
        conn.close()
    return {
        "bytes": path.stat().st_size,
        "runs": runs,
        "kinds": kinds,
        "avg_entry_bytes": round(entry_bytes or 0),
        "indexes": indexes,
    }


# --- queries --------------------------------------------------------------------------------------------------

# The statements the measured code runs (gateway.journal.query.select and gateway.journal.store.iter_bodies).
SEARCH_SQL = "SELECT seq, entry FROM journal WHERE seq > ? AND run_id = ? ORDER BY seq ASC LIMIT ?"
RUN_SQL = "SELECT seq, entry FROM journal WHERE seq > ? AND run_id = ? ORDER BY seq"
CONTEXT_SQL = f"SELECT seq, entry FROM journal WHERE {OPERATOR_CONTEXT_WHERE} ORDER BY seq"  # as iter_operator_context


def sample_runs(path: Path, count: int) -> list[str]:
    """``count`` distinct runs, each the run of a random entry (so longer runs are a little likelier)."""
    conn = connect_readonly(path)
    rng = random.Random(SAMPLE_SEED)
    try:
        size = query.last_seq(conn) + 1
        runs: list[str] = []
        for _ in range(count * 100):
            row = conn.execute(
                "SELECT run_id FROM journal WHERE seq = ? AND kind NOT IN ('kill_switch', 'policy_changed')",
                (rng.randrange(size),),
            ).fetchone()
            if row and row[0] and row[0] not in runs:
                runs.append(row[0])
                if len(runs) == count:
                    break
        return runs
    finally:
        conn.close()


def query_plans(path: Path) -> dict[str, str]:
    """SQLite's plan for each statement (``SCAN journal`` means every row is read)."""
    conn = connect_readonly(path)
    try:
        plans = {}
        for name, sql, params in (
            ("search", SEARCH_SQL, (-1, "run_x", SEARCH_LIMIT)),
            ("trace_run", RUN_SQL, (-1, "run_x")),
            ("trace_context", CONTEXT_SQL, ()),
        ):
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            plans[name] = "; ".join(str(row[-1]) for row in rows)
        return plans
    finally:
        conn.close()


def search_once(path: Path, run_id: str) -> dict[str, Any]:
    """``agentaudit search JOURNAL --run-id RUN`` without printing: open, select (materialised), close."""
    started = time.perf_counter()
    conn = connect_readonly(path)
    try:
        found = list(query.select(conn, query.EventFilter(run_id=run_id), limit=SEARCH_LIMIT))
    finally:
        conn.close()
    return {"ms": (time.perf_counter() - started) * 1000, "events": len(found)}


def trace_once(path: Path, run_id: str) -> dict[str, Any]:
    """``agentaudit trace RUN`` without verification (``cmd_trace`` without --public-key), timed in parts."""
    started = time.perf_counter()
    events = [{"seq": seq, **body} for seq, body in iter_bodies(path, run_id=run_id)]
    if all(event.get("kind") in CONTEXT_KINDS for event in events):
        raise ValueError(f"no events for run {run_id!r}")
    run_read = time.perf_counter()
    last = events[-1]["seq"]
    context = [{"seq": seq, **body} for seq, body in iter_operator_context(path) if seq <= last]
    context_read = time.perf_counter()
    trace = build_trace(
        events, run_id=run_id, context_events=context, journal_status="not checked (no --public-key given)"
    )
    text = format_trace(trace)
    done = time.perf_counter()
    return {
        "ms": (done - started) * 1000,
        "run_events_ms": (run_read - started) * 1000,
        "context_ms": (context_read - run_read) * 1000,
        "build_format_ms": (done - context_read) * 1000,
        "events": len(events),
        "context_events": len(context),
        "lines": text.count("\n") + 1,
        "anomalies": len(trace.anomalies),
    }


def _summary(samples: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(samples)}
    for key in keys:
        values = sorted(s[key] for s in samples)
        out[key] = {
            "p50": round(statistics.median(values), 2),
            "p95": round(values[min(len(values) - 1, round(0.95 * (len(values) - 1)))], 2),
            "max": round(values[-1], 2),
        }
    return out


def _rounded(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in sample.items()}


def measure_queries(path: Path, repeat: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Cold first query of each kind (file evicted), then ``repeat`` warm ones over other random runs."""
    runs = sample_runs(path, repeat + 2)
    cold_runs, warm_runs = runs[:2], runs[2:]
    evicted = evict(path)
    search_cold = search_once(path, cold_runs[0])
    progress(f"search cold: {search_cold['ms']:.1f} ms ({'file evicted' if evicted else 'not evicted'})")
    search_warm = [search_once(path, run) for run in warm_runs]
    evict(path)
    trace_cold = trace_once(path, cold_runs[1])
    progress(f"trace cold: {trace_cold['ms']:.1f} ms")
    trace_once(path, warm_runs[0])  # the cold trace read part of the file; this one warms the rest
    trace_warm = [trace_once(path, run) for run in warm_runs]
    trace_keys = ("ms", "run_events_ms", "context_ms", "build_format_ms")
    return {
        "runs_sampled": len(warm_runs),
        "cold_method": "posix_fadvise(DONTNEED) on the journal file" if evicted else "none (first query only)",
        "search": {
            "cold": _rounded(search_cold),
            "warm": _summary(search_warm, ("ms",)),
            "events_per_run": _summary(search_warm, ("events",))["events"],
        },
        "trace": {
            "cold": _rounded(trace_cold),
            "warm": _summary(trace_warm, trace_keys),
            "events_per_run": _summary(trace_warm, ("events",))["events"],
            "context_events": trace_warm[0]["context_events"],
        },
        "plans": query_plans(path),
    }


def measure_subprocesses(path: Path, run_id: str) -> dict[str, Any]:
    """``agentaudit trace`` and ``search`` end to end (start-up included), beside ``agentaudit --version``."""
    cli = str(Path(sys.executable).parent / "agentaudit")
    commands = {
        "version": [cli, "--version"],
        "trace": [cli, "trace", run_id, "--journal", str(path)],
        "search": [cli, "search", str(path), "--run-id", run_id],
    }
    out: dict[str, Any] = {"run_id": run_id}
    for name, argv in commands.items():
        samples = []
        status = None
        for _ in range(SUBPROCESS_RUNS):
            started = time.perf_counter()
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
            samples.append((time.perf_counter() - started) * 1000)
            status = done.returncode
        out[name] = {"ms_each": [round(s, 1) for s in samples], "ms_median": round(statistics.median(samples), 1)}
        out[name]["exit_status"] = status
    return out


# --- append rate ----------------------------------------------------------------------------------------------


def build_workload(count: int, *, ordered_run_ids: bool = False) -> list[Item]:
    """``count`` realistic events with fresh, time-ordered ids (never in the generated journal).

    Results need their pre-event's seq and leaf hash; here those are made up (the journal does not check them).
    """
    traffic = Traffic(WORKLOAD_SEED, time.time_ns(), WORKLOAD_RUNS, ordered_run_ids=ordered_run_ids)
    items: list[Item] = []
    while len(items) < count:
        wave = traffic.wave(count - len(items))
        base = len(items)
        traffic.committed(
            wave, [Receipt(base + i, hashlib.sha256(str(base + i).encode()).digest()) for i in range(len(wave))]
        )
        items += wave
    return items


@dataclass(frozen=True)
class Encoded:
    kind: int
    body: bytes
    columns: tuple[Any, ...]
    nanos: int
    state: Sequence[StateChange]


async def _append_rates(path: Path, sequential: Sequence[Encoded], concurrent: Sequence[Encoded]) -> dict[str, Any]:
    started = time.perf_counter()
    writer = JournalWriter(path, SIGNER)  # the sidecar's default max_batch (512)
    await writer.start()
    opened = time.perf_counter()
    size_before = writer.size
    try:
        t0 = time.perf_counter()
        for e in sequential:
            await writer.append(e.kind, e.body, e.columns, e.nanos, e.state)
        t1 = time.perf_counter()
        await asyncio.gather(*(writer.append(e.kind, e.body, e.columns, e.nanos, e.state) for e in concurrent))
        t2 = time.perf_counter()
    finally:
        await writer.aclose()
    return {
        "size_before": size_before,
        "open_ms": round((opened - started) * 1000, 1),
        "sequential_per_s": round(len(sequential) / (t1 - t0), 1),
        "concurrent_per_s": round(len(concurrent) / (t2 - t1), 1),
        "commits": writer.batches_committed,
    }


def measure_appends(
    journal: Path,
    scratch: Path,
    sequential: int,
    concurrent: int,
    keep: bool,
    progress: Callable[[str], None],
    run_ids: str = "random",
) -> dict[str, Any]:
    """The same workload on an empty journal and on a copy of ``journal``, alternating; best of each kept."""
    encoded = [
        Encoded(i.kind, canonical_json(i.body), indexed_values(i.body), i.nanos, i.state)
        for i in build_workload(sequential + concurrent, ordered_run_ids=run_ids == "ordered")
    ]
    seq_part, conc_part = encoded[:sequential], encoded[sequential:]
    runs: dict[str, list[dict[str, Any]]] = {"empty": [], "full": []}
    for round_ in range(1, APPEND_ROUNDS + 1):
        for label in ("empty", "full"):
            path = scratch / f"append-{label}-{round_}.db"
            _remove_database(path)
            copy_s = None
            if label == "full":
                started = time.perf_counter()
                shutil.copyfile(journal, path)
                _fsync(path)  # no write-back of the copy may compete with the fsyncs being measured
                copy_s = round(time.perf_counter() - started, 1)
            result = _run_async(_append_rates(path, seq_part, conc_part))
            result["copy_s"] = copy_s
            runs[label].append(result)
            progress(
                f"append round {round_} {label} ({result['size_before']:,} events): "
                f"{result['sequential_per_s']:,.0f}/s sequential, {result['concurrent_per_s']:,.0f}/s concurrent"
                + (f" (copied in {copy_s} s)" if copy_s is not None else "")
            )
            if not keep:
                _remove_database(path)
    out: dict[str, Any] = {
        "sequential_appends": sequential,
        "concurrent_appends": concurrent,
        "run_ids": run_ids,
        "rounds": runs,
    }
    for workload in ("sequential_per_s", "concurrent_per_s"):
        empty = max(r[workload] for r in runs["empty"])
        full = max(r[workload] for r in runs["full"])
        ratio = round(full / empty, 3)
        out[workload.removesuffix("_per_s")] = {
            "empty_per_s": empty,
            "full_per_s": full,
            "ratio": ratio,
            "target": f">= {APPEND_RATIO_TARGET}",
            "met": ratio >= APPEND_RATIO_TARGET,
        }
    return out


# --- report ---------------------------------------------------------------------------------------------------


_LABEL = 50


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def format_report(summary: dict[str, Any]) -> str:
    """The table: journal, queries (cold, p50, p95), subprocess reference, append rates."""
    j, g = summary["journal"], summary["generation"]
    events = summary["events"]
    how = (
        f"reused cache (generated earlier in {g['generation_s']} s, {g['generation_events_per_s']:,} events/s)"
        if g["cached"]
        else f"generated in {g['generation_s']} s ({g['generation_events_per_s']:,} events/s)"
    )
    lines = [
        f"journal: {events:,} events, {j['runs']:,} runs, {j['bytes'] / 2**30:.2f} GiB "
        f"(entries {j['avg_entry_bytes']} B on average): {summary['path']}",
        f"  {how}",
        "  kinds: " + ", ".join(f"{k} {v:,}" for k, v in j["kinds"].items()),
        "",
    ]
    q = summary["queries"]
    s, t = q["search"], q["trace"]
    lines.append(
        f"{'queries (in-process, ' + str(q['runs_sampled']) + ' runs)':<{_LABEL}}"
        f"{'cold ms':>10}{'p50 ms':>10}{'p95 ms':>10}   target"
    )

    def row(label: str, cold: float, warm: dict[str, Any], target: bool = False) -> str:
        text = f"  {label:<{_LABEL - 2}}{cold:>10.2f}{warm['p50']:>10.2f}{warm['p95']:>10.2f}"
        if target:
            text += f"   p95 < {QUERY_TARGET_MS:g} ms: {_verdict(warm['p95'] < QUERY_TARGET_MS)}"
        return text

    per_run = f"{s['events_per_run']['p50']:g} events/run"
    lines.append(row(f"search --run-id ({per_run})", s["cold"]["ms"], s["warm"]["ms"], True))
    lines.append(row(f"trace, no verification ({per_run})", t["cold"]["ms"], t["warm"]["ms"], True))
    lines.append(row("  run's events: iter_bodies(run_id=)", t["cold"]["run_events_ms"], t["warm"]["run_events_ms"]))
    context = f"  context: iter_operator_context ({t['context_events']} events)"
    lines.append(row(context, t["cold"]["context_ms"], t["warm"]["context_ms"]))
    lines.append(row("  build_trace + format_trace", t["cold"]["build_format_ms"], t["warm"]["build_format_ms"]))
    lines.append(f"  cold: {q['cold_method']}")
    lines += [f"  plan {name}: {plan}" for name, plan in q["plans"].items()]
    sub = summary.get("subprocess")
    if sub:
        lines += [
            "",
            f"reference, end to end as subprocesses (start-up included; not the target), median of {SUBPROCESS_RUNS}:",
            f"  agentaudit trace {sub['trace']['ms_median']:.0f} ms, agentaudit search --run-id "
            f"{sub['search']['ms_median']:.0f} ms, agentaudit --version {sub['version']['ms_median']:.0f} ms",
        ]
    a = summary["appends"]
    title = f"append rate ({a['run_ids']} run ids, best of {APPEND_ROUNDS})"
    full = f"{events:,}/s"
    lines += ["", f"{title:<42}{'empty/s':>10}{full:>13}{'ratio':>8}   target"]
    for workload, label in (
        ("sequential", f"{a['sequential_appends']:,} sequential, each awaited"),
        ("concurrent", f"{a['concurrent_appends']:,} concurrent (gather)"),
    ):
        r = a[workload]
        lines.append(
            f"  {label:<40}{r['empty_per_s']:>10,.0f}{r['full_per_s']:>13,.0f}{r['ratio']:>7.2f}x   "
            f"{r['target']}: {_verdict(r['met'])}"
        )
    opens = [r["open_ms"] for r in a["rounds"]["full"]]
    lines.append(f"  writer start on the {events:,}-event journal: {', '.join(f'{o:g}' for o in opens)} ms")
    return "\n".join(lines)


def format_notes(summary: dict[str, Any]) -> list[str]:
    """What a reader should know about the figures: a query reading every row, appends slowing with size."""
    notes: list[str] = []
    q, events = summary["queries"], summary["events"]
    trace, plan = q["trace"], q["plans"]["trace_context"]
    if "INDEX" not in plan:
        warm = trace["warm"]
        notes.append(
            f"trace: the kill_switch/policy_changed context query does not use its partial index "
            f"({plan}), so every trace reads all {events:,} rows: {warm['context_ms']['p50']:.0f} ms of the "
            f"{warm['ms']['p50']:.0f} ms p50, {trace['cold']['context_ms']:.0f} ms cold"
        )
    a_ids = summary["appends"]["run_ids"]
    for workload in ("sequential", "concurrent"):
        r = summary["appends"][workload]
        if not r["met"]:
            notes.append(
                f"appends, {workload}: {r['full_per_s']:,.0f}/s at {events:,} events vs {r['empty_per_s']:,.0f}/s "
                f"empty ({r['ratio']:.2f}x)"
                + (
                    "; random run ids put each insert on a different page of the (run_id, step_id) index "
                    "(bench/README.md; compare --workload-run-ids ordered)"
                    if a_ids == "random"
                    else ""
                )
            )
    return notes


def progress(message: str) -> None:
    """Progress goes to stderr; stdout carries the table and the final JSON line."""
    print(f"[bench.scale] {message}", file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=_positive_int, default=DEFAULT_EVENTS, help="journal size (default 1000000)")
    parser.add_argument("--dir", type=Path, default=RESULTS_DIR, help=f"cache and scratch directory ({RESULTS_DIR})")
    parser.add_argument("--keep", action="store_true", help="keep the append-rate journals (scratch) afterwards")
    parser.add_argument("--repeat", type=_positive_int, default=DEFAULT_REPEAT, help="warm queries (default 20)")
    parser.add_argument("--sequential", type=_positive_int, default=DEFAULT_SEQUENTIAL, help="awaited appends")
    parser.add_argument("--concurrent", type=_positive_int, default=DEFAULT_CONCURRENT, help="gathered appends")
    parser.add_argument(
        "--workload-run-ids",
        choices=("random", "ordered"),
        default="random",
        help="run ids of the append workload: random like the generated journal's (default) or time-ordered",
    )
    parser.add_argument("--generate-only", action="store_true", help="build (or check) the cached journal and stop")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Generates or reuses the journal, measures, prints the table and the JSON line."""
    args = parse_args(argv)
    directory: Path = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = round(os.getloadavg()[0], 2)
    path, generation = ensure_journal(directory, args.events, progress)
    if args.generate_only:
        print(json.dumps({"path": str(path), "generation": generation}))
        return 0
    progress("describing the journal")
    journal = describe(path)
    progress(f"measuring search and trace ({args.repeat} runs each, cold first)")
    queries = measure_queries(path, args.repeat, progress)
    progress("measuring agentaudit trace/search as subprocesses (reference)")
    subprocesses = measure_subprocesses(path, sample_runs(path, 1)[0])
    scratch = Path(tempfile.mkdtemp(prefix="scale-append-", dir=directory))
    try:
        progress(f"measuring appends: empty journal vs a copy of the {args.events:,}-event one, in {scratch}")
        appends = measure_appends(
            path, scratch, args.sequential, args.concurrent, args.keep, progress, args.workload_run_ids
        )
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    row_count(path)  # closes the last connection read-write: the read-only ones leave -wal and -shm files behind
    s_p95, t_p95 = queries["search"]["warm"]["ms"]["p95"], queries["trace"]["warm"]["ms"]["p95"]
    summary: dict[str, Any] = {
        "events": args.events,
        "path": str(path),
        "generation": generation,
        "journal": journal,
        "queries": queries,
        "subprocess": subprocesses,
        "appends": appends,
        "targets": {
            "search_p95_ms": {"value": s_p95, "target": f"< {QUERY_TARGET_MS:g}", "met": s_p95 < QUERY_TARGET_MS},
            "trace_p95_ms": {"value": t_p95, "target": f"< {QUERY_TARGET_MS:g}", "met": t_p95 < QUERY_TARGET_MS},
            **{
                f"append_ratio_{workload}": {
                    "value": appends[workload]["ratio"],
                    "target": appends[workload]["target"],
                    "met": appends[workload]["met"],
                }
                for workload in ("sequential", "concurrent")
            },
        },
        "machine": {
            "cores": os.cpu_count(),
            "load_avg_1m_before": load_before,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - started, 1),
    }
    summary["notes"] = format_notes(summary)
    print(format_report(summary))
    print()
    print("targets (informational, not pass/fail)")
    for name, target in summary["targets"].items():
        print(f"  {name:<26} {target['value']:>9}  (target {target['target']})  {_verdict(target['met'])}")
    if summary["notes"]:
        print()
        print("notes")
        print("\n".join(f"  {note}" for note in summary["notes"]))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
