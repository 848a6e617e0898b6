"""In-memory limit state: token buckets, fixed-window budgets and per-run step counters.

State is keyed by the rule's fingerprint (a hash of its definition) and the request's key values, and lives in a
:class:`LimitState` owned outside any one policy, so a reload keeps the state of every rule it did not change.
Every entry point takes ``now`` (monotonic seconds) so tests drive a fake clock instead of sleeping.

Checks and consumption are separate: the engine checks every applicable limit, and consumes only when the final
answer lets the action run, so denied or approval-pending attempts do not eat a tenant's quota.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_KEYS = 100_000  # bounded memory: least recently used keys are forgotten first


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

    def retain(self, fingerprints: Iterable[str]) -> None:
        """Forgets the state of rules that are no longer in the policy (called after a reload)."""
        keep = set(fingerprints)
        for table in (self._buckets, self._windows):
            for key in [k for k in table if k[0] not in keep]:
                del table[key]

    def _trim(self, table: OrderedDict[Any, Any]) -> None:
        while len(table) > self._max_keys:
            table.popitem(last=False)
