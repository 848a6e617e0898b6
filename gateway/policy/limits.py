"""In-memory limit state: token buckets, fixed-window budgets and per-run step counters.

State is keyed by the rule's fingerprint (a hash of its definition) and the request's key values, and lives in a
:class:`LimitState` owned outside any one policy, so a reload keeps the state of every rule it did not change.
Every entry point takes ``now`` in wall-clock seconds since the epoch (``time.time()``), so fixed windows align to
the epoch as documented (a ``24h`` window resets at 00:00 UTC) and journaled timestamps can be replayed onto the
same time line; tests drive a fake clock instead of sleeping. A bucket never refills while the clock steps back.

Checks and consumption are separate: the engine checks every applicable limit, and consumes only when the final
answer lets the action run, so denied or approval-pending attempts do not eat a tenant's quota.

With ``limits.store`` configured, the sidecar's shared limit layer (:mod:`gateway.sidecar.shared_limits`) checks
and consumes in the store before evaluation and hands the engine a :class:`SharedAnswer`; this state then serves
only limits that fall back to it (``on_store_error: local``) while the store is unreachable (ADR 0015).

The state is in memory, so on start :meth:`LimitState.replay` rebuilds it from the journaled pre-events (ADR 0011):
a restart never widens a limit. Replay is pure like evaluation; the caller reads the journal.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.policy.document import Limit

MAX_KEYS = 100_000  # bounded memory: least recently used keys are forgotten first
# A steps budget has no window: replay gives its complete count to every run that proposed a step this recently.
STEP_REPLAY_ACTIVE_S = 86_400.0
ALLOW = "allow"  # the journaled ``decision`` of a pre-event that let the action run (shadow allows included)


@dataclass
class TokenBucket:
    """``burst`` tokens refilled at ``rate`` per second."""

    tokens: float
    updated: float

    def refill(self, now: float, rate: float, burst: float) -> None:
        """Adds the tokens earned since the last update."""
        if now > self.updated:
            self.tokens = min(burst, self.tokens + (now - self.updated) * rate)
            self.updated = now

    def retry_after(self, now: float, rate: float, burst: float) -> float | None:
        """Seconds until one token is available, or None if one is available now."""
        self.refill(now, rate, burst)
        return None if self.tokens >= 1 else (1 - self.tokens) / rate

    def take(self, now: float, rate: float, burst: float) -> None:
        """Consumes one token."""
        self.refill(now, rate, burst)
        self.tokens -= 1


@dataclass
class WindowTotal:
    """A count or sum within a fixed window aligned to multiples of the window length."""

    window_start: float
    total: float

    def roll(self, now: float, window: float) -> None:
        """Starts a new window when ``now`` has left the current one."""
        start = now - (now % window)
        if start != self.window_start:
            self.window_start, self.total = start, 0.0

    def retry_after(self, now: float, window: float, limit: float, amount: float) -> float | None:
        """Seconds until the window resets if adding ``amount`` would exceed ``limit``, else None."""
        self.roll(now, window)
        return None if self.total + amount <= limit else self.window_start + window - now

    def add(self, now: float, window: float, amount: float) -> None:
        """Adds ``amount`` to the current window."""
        self.roll(now, window)
        self.total += amount


StateKey = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class SharedAnswer:
    """What the shared limit store answered for one request, computed before evaluation (ADR 0015).

    ``available`` False: the store did not answer; each limit then stops (``limits_unavailable``) or uses the
    in-process state, as its ``on_store_error`` says. Otherwise ``steps`` is how many steps the run proposed
    before this one, fleet-wide (None when the policy has no steps budget: the in-process count serves), and
    ``retry_after`` holds, by limit name, the store's check of every rate, count and sum limit the request is
    subject to (None: room). The store has already consumed them if the answer lets the action run; the caller
    releases them if it does not, so the engine never consumes a shared limit.
    """

    available: bool
    steps: int | None = None
    retry_after: Mapping[str, float | None] = field(default_factory=dict)


def numeric_field(args: Any, path: tuple[str, ...]) -> float | None:
    """A numeric value at a dotted path of args, or None when absent or not a number."""
    node = args
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return float(node)


def limit_key(limit: Limit, tenant: str, agent: str, action: str, run: str) -> tuple[str, ...]:
    """The request's values for the limit's ``key`` (the state is kept per distinct value)."""
    values = {"tenant": tenant, "agent": agent, "action": action, "run": run}
    return tuple(values[k] for k in limit.key)


def replay_since(limits: Sequence[Limit], now: float) -> float | None:
    """The earliest wall-clock time whose decisions still bear on ``limits`` at ``now`` (None: no limits).

    A count or sum depends on its current window; a token bucket on its last ``burst / rate`` seconds (a bucket
    untouched that long is full); a steps budget on the runs active in the last ``STEP_REPLAY_ACTIVE_S``.
    """
    starts = []
    for limit in limits:
        if limit.kind == "rate":
            starts.append(now - limit.burst / limit.rate)
        elif limit.kind == "steps":
            starts.append(now - STEP_REPLAY_ACTIVE_S)
        else:
            starts.append(now - (now % limit.window_s))
    return min(starts) if starts else None


class PastDecision(Protocol):
    """A journaled pre-event: its signed body and the wall-clock time in its envelope."""

    @property
    def unix_nanos(self) -> int: ...

    @property
    def body(self) -> Mapping[str, Any]: ...


@dataclass
class ReplaySummary:
    """What a replay rebuilt: events read, allowed ones, sums counted as exhausted, and the runs seen."""

    events: int = 0
    allowed: int = 0
    unknown_amounts: int = 0
    runs: set[str] = field(default_factory=set)


class LimitState:
    """Limit state for all policies of one sidecar (survives reloads; bounded)."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._buckets: OrderedDict[StateKey, TokenBucket] = OrderedDict()
        self._windows: OrderedDict[StateKey, WindowTotal] = OrderedDict()
        self._steps: OrderedDict[str, int] = OrderedDict()

    def bucket(self, key: StateKey, now: float, burst: float) -> TokenBucket:
        """The bucket for ``key``, created full."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(burst, now)
            self._trim(self._buckets)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def window(self, key: StateKey, now: float, window: float) -> WindowTotal:
        """The window total for ``key``."""
        total = self._windows.get(key)
        if total is None:
            total = self._windows[key] = WindowTotal(now - (now % window), 0.0)
            self._trim(self._windows)
        else:
            self._windows.move_to_end(key)
        return total

    def steps(self, run_id: str) -> int:
        """Steps proposed so far in a run."""
        return self._steps.get(run_id, 0)

    def count_step(self, run_id: str) -> None:
        """Counts one proposed step of a run."""
        self._steps[run_id] = self._steps.get(run_id, 0) + 1
        self._steps.move_to_end(run_id)
        self._trim(self._steps)

    def add_steps(self, counts: Mapping[str, int]) -> None:
        """Adds steps a run proposed before the replayed span (see :func:`replay_since`)."""
        for run_id, count in counts.items():
            if count:
                self._steps[run_id] = self._steps.get(run_id, 0) + count
                self._trim(self._steps)

    def replay(self, events: Iterable[PastDecision], limits: Sequence[Limit], now: float) -> ReplaySummary:
        """Rebuilds the state of ``limits`` at ``now`` from journaled pre-events (in journal order).

        Never fuller than the state before the restart could have been:

        1. **Steps**: every pre-event of a run counts, whatever its decision (every Decide counts live).
        2. Only pre-events whose decision is ``allow`` consumed quota (a shadow allow did too: the engine
           consumes whenever the answer lets the action run), for every limit of ``limits`` whose selector
           matches the event: the current policy's limits, applied to every event of the span.
        3. **Count / sum**: events of the current window are added. A sum whose field is absent from the
           journaled args because it was redacted is unknown, so it is counted as the limit's whole ``max``
           (fail safe); one absent because the request lacked it consumed nothing live either.
        4. **Rate**: a bucket with allowed events in the last ``burst / rate`` seconds is started *empty* at
           ``now - burst / rate`` and each event takes its token; a real bucket held at least that much.
        """
        summary = ReplaySummary()
        has_steps = any(limit.kind == "steps" for limit in limits)
        quotas = [limit for limit in limits if limit.kind != "steps"]
        by_action: dict[str, list[Limit]] = {}  # action globs matched once per action name, as the engine does
        for event in events:
            body = event.body
            summary.events += 1
            run, tenant = str(body.get("run_id", "")), str(body.get("tenant_id", ""))
            if has_steps and run:
                self.count_step(run)
                summary.runs.add(run)
            if body.get("decision") != ALLOW:
                continue
            summary.allowed += 1
            at = min(event.unix_nanos / 1e9, now)  # a clock that stepped back since cannot put an event ahead
            agent, action = str(body.get("agent_id", "")), str(body.get("action", ""))
            matching = by_action.get(action)
            if matching is None:
                matching = by_action[action] = [x for x in quotas if x.selector.actions.match(action)]
            for limit in matching:
                if limit.selector.tenants.match(tenant) and limit.selector.agents.match(agent):
                    state_key = (limit.fingerprint, limit_key(limit, tenant, agent, action, run))
                    summary.unknown_amounts += self._replay_one(limit, state_key, body, at, now)
        return summary

    def _replay_one(self, limit: Limit, state_key: StateKey, body: Mapping[str, Any], at: float, now: float) -> int:
        """Replays one allowed event into one limit; returns 1 when a sum's amount was unknown."""
        if limit.kind == "rate":
            since = now - limit.burst / limit.rate
            if at > since:
                if state_key not in self._buckets:
                    self._buckets[state_key] = TokenBucket(0.0, since)
                    self._trim(self._buckets)
                self.bucket(state_key, at, limit.burst).take(at, limit.rate, limit.burst)
            return 0
        if at < now - (now % limit.window_s):
            return 0
        amount, unknown = 1.0, 0
        if limit.kind == "sum":
            found = numeric_field(body.get("args"), limit.field)
            if found is None and not _redacted(body, limit.field):
                return 0
            amount, unknown = (limit.maximum, 1) if found is None else (found, 0)
        self.window(state_key, now, limit.window_s).add(now, limit.window_s, amount)
        return unknown

    def retain(self, fingerprints: Iterable[str]) -> None:
        """Forgets the state of rules that are no longer in the policy (called after a reload)."""
        keep = set(fingerprints)
        for table in (self._buckets, self._windows):
            for key in [k for k in table if k[0] not in keep]:
                del table[key]

    def _trim(self, table: OrderedDict[Any, Any]) -> None:
        while len(table) > self._max_keys:
            table.popitem(last=False)


def _redacted(body: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    """Whether redaction removed the value at ``args.<path>`` (or an object holding it) from the journaled args."""
    paths = body.get("redacted_paths")
    if not isinstance(paths, list):
        return False
    removed = set(paths)
    return any("args." + ".".join(path[:i]) in removed for i in range(1, len(path) + 1))
