"""Limits shared across replicas: token buckets, budgets and step counts kept in Redis (ADR 0015).

With ``limits.store`` set, every sidecar replica of an agent draws from one tenant limit. Per Decide:

1. **Plan** (pure): the limits the request is subject to (``engine.limits_for``), each with its state key and
   amount; whether the policy counts steps; whether a limit is enforced (not shadow) and whether an enforced sum
   lacks its field (then the engine stops with ``policy_error`` and nothing may be consumed).
2. **Reserve**: one ``EVALSHA`` of :data:`RESERVE_LUA`, atomic on the server: count the run's step, check every
   limit against the same instant (the server's clock, one for the whole fleet), and consume all of them only if
   no enforced one is exceeded, exactly as the in-process engine would. No request without a limit or a steps
   budget goes to the store at all.
3. **Evaluate**: the engine gets the answer as a :class:`SharedAnswer` and decides purely; it never consumes a
   shared limit.
4. **Release**: when the final answer does not let the action run (a later layer refused, an approval is needed,
   or the pre-event could not be recorded), the decider calls :meth:`Reservation.release`: one ``EVALSHA`` of
   :data:`RELEASE_LUA` gives back what was taken. Steps are never given back (every Decide counts).

A store that does not answer within ``limits.timeout_ms`` (down, slow, refusing) gives ``available=False``, and
each limit then does what its ``on_store_error`` says. A reservation that timed out may have been applied on the
server all the same; that errs on the side of a tighter limit, never a wider one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError
from gateway.policy.document import Limit
from gateway.policy.limits import STEP_REPLAY_ACTIVE_S, SharedAnswer, limit_key, numeric_field
from gateway.policy.model import ActionRequest, PolicyEngine

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

UNAVAILABLE = SharedAnswer(available=False)
"""The answer when the store did not answer."""

# A run's step count lives as long as the in-process replay keeps one (gateway.policy.limits), from its last step.
STEPS_TTL_S = int(STEP_REPLAY_ACTIVE_S)

# Each quota is stored as a hash {v: tokens or window total, t: bucket update time or window start}, numbers as
# "%.17g" strings so they round-trip exactly. Keys expire once their state would be the default again (a full
# bucket, a new window), so the store holds only live state.
#
# KEYS: [steps key if ARGV[2] == "1"], then one key per quota.
# ARGV: consume (1|0), steps (1|0), steps TTL s, steps cap (-1: none), then per quota
#       kind (r: rate | w: window), rate or window_s, burst or max, amount, enforced (1|0).
# Returns: steps before this one (-1: not counted), consumed (1|0), then per quota retry_after ("" for room)
#          and the bucket time or window start the check used (the release needs the window start).
RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local consume = ARGV[1] == '1'
local first = 1
local steps_before = -1
if ARGV[2] == '1' then
  local n = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  steps_before = n - 1
  local cap = tonumber(ARGV[4])
  if cap >= 0 and n > cap then consume = false end
  first = 2
end
local out = {steps_before, 0}
local states = {}
for i = first, #KEYS do
  local j = 5 + (i - first) * 5
  local kind, a, b, amount = ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local h = redis.call('HMGET', KEYS[i], 'v', 't')
  local v, at = tonumber(h[1]), tonumber(h[2])
  local retry = nil
  if kind == 'r' then
    if v == nil then v, at = b, now end
    if now > at then v, at = math.min(b, v + (now - at) * a), now end
    if v < 1 then retry = (1 - v) / a end
  else
    local start = math.floor(now / a) * a
    if v == nil or at ~= start then v, at = 0, start end
    if v + amount > b then retry = at + a - now end
  end
  if retry ~= nil and ARGV[j + 4] == '1' then consume = false end
  states[#states + 1] = {v, at}
  out[#out + 1] = retry ~= nil and string.format('%.17g', retry) or ''
  out[#out + 1] = string.format('%.17g', at)
end
if consume then
  for i = first, #KEYS do
    local j = 5 + (i - first) * 5
    local a, b, amount = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
    local s = states[i - first + 1]
    if ARGV[j] == 'r' then
      local v = s[1] - 1
      redis.call('HSET', KEYS[i], 'v', string.format('%.17g', v), 't', string.format('%.17g', s[2]))
      redis.call('PEXPIRE', KEYS[i], math.ceil((b - v) / a * 1000) + 1000)
    else
      redis.call('HSET', KEYS[i], 'v', string.format('%.17g', s[1] + amount), 't', string.format('%.17g', s[2]))
      redis.call('PEXPIREAT', KEYS[i], math.ceil((s[2] + a) * 1000) + 1000)
    end
  end
  out[2] = 1
end
return out
"""

# KEYS: the consumed quotas. ARGV per quota: kind, burst or max, amount, the bucket time or window start used.
# A bucket gets its token back (at most full); a window its amount, unless it has rolled over since.
RELEASE_LUA = """
for i = 1, #KEYS do
  local j = (i - 1) * 4 + 1
  local h = redis.call('HMGET', KEYS[i], 'v', 't')
  local v, at = tonumber(h[1]), tonumber(h[2])
  if v ~= nil then
    if ARGV[j] == 'r' then
      redis.call('HSET', KEYS[i], 'v', string.format('%.17g', math.min(tonumber(ARGV[j + 1]), v + 1)))
    elseif at == tonumber(ARGV[j + 3]) then
      redis.call('HSET', KEYS[i], 'v', string.format('%.17g', math.max(0, v - tonumber(ARGV[j + 2]))))
    end
  end
end
return #KEYS
"""


@dataclass(frozen=True)
class _Quota:
    """One rate, count or sum limit a request is subject to, as the scripts see it."""

    limit: Limit
    key: str
    amount: float
    enforced: bool

    def reserve_args(self) -> list[Any]:
        if self.limit.kind == "rate":
            return ["r", self.limit.rate, self.limit.burst, 1, int(self.enforced)]
        return ["w", self.limit.window_s, self.limit.maximum, self.amount, int(self.enforced)]

    def release_args(self, at: str) -> list[Any]:
        kind, cap = ("r", self.limit.burst) if self.limit.kind == "rate" else ("w", self.limit.maximum)
        return [kind, cap, self.amount, at]


class Reservation:
    """What one Decide took from the store, and how to give it back."""

    def __init__(self, store: RedisLimits, answer: SharedAnswer, taken: Sequence[tuple[_Quota, str]] = ()) -> None:
        self.answer = answer
        self._store = store
        self._taken = list(taken)

    async def release(self) -> None:
        """Gives back what was consumed (the action will not run). Idempotent; a failure is logged, not raised:
        the tokens stay spent, which can only make the limit tighter."""
        taken, self._taken = self._taken, []
        if taken:
            await self._store.release(taken)


class RedisLimits:
    """The shared limit store on Redis: one script call per Decide that is subject to a limit."""

    def __init__(self, url: str, key_prefix: str, timeout_ms: int) -> None:
        self._url = url
        self._prefix = key_prefix
        self._timeout_s = timeout_ms / 1000
        self._client: Redis | None = None
        self._reserve: AsyncScript | None = None
        self._release: AsyncScript | None = None
        self._up = True  # last outcome, so a change is logged once rather than per Decide

    async def start(self) -> None:
        """Builds the client and registers the scripts; an unreachable store is logged, not fatal (the limits'
        ``on_store_error`` covers it, and the first Decide after it comes back reconnects)."""
        try:
            from redis.asyncio import Redis  # noqa: PLC0415 - an optional extra: agentaudit[redis]
            from redis.asyncio.retry import Retry  # noqa: PLC0415
            from redis.backoff import NoBackoff  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigError("limits.store needs the redis package: pip install 'agentaudit[redis]'") from exc
        try:
            self._client = Redis.from_url(
                self._url,
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                # No retries inside a Decide: the timeout is the whole budget, and on_store_error is the answer.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        except ValueError as exc:
            raise ConfigError(f"limits.store: not a Redis URL: {exc}") from None
        self._reserve = self._client.register_script(RESERVE_LUA)
        self._release = self._client.register_script(RELEASE_LUA)
        try:
            async with asyncio.timeout(max(self._timeout_s, 1.0)):
                await self._client.ping()
        except Exception as exc:  # any failure means "not answering"; logged for the operator
            self._mark(False, exc)
        else:
            log.info("shared limits in Redis (key prefix %s:)", self._prefix)

    async def aclose(self) -> None:
        """Closes the connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _plan(self, engine: PolicyEngine, action: ActionRequest) -> tuple[list[_Quota], int, bool]:
        """The quotas to check, the smallest enforced steps budget (-1: none), and whether consuming is allowed."""
        quotas: list[_Quota] = []
        steps_cap, consume = -1, True
        for limit in engine.limits_for(action):
            enforced = not (limit.shadow or engine.shadow)
            if limit.kind == "steps":
                if enforced:
                    cap = math.floor(limit.maximum)
                    steps_cap = cap if steps_cap < 0 else min(steps_cap, cap)
                continue
            amount = 1.0
            if limit.kind == "sum":
                found = numeric_field(action.args, limit.field)
                if found is None:  # the engine answers policy_error for it; an enforced one lets nothing run
                    consume = consume and not enforced
                    continue
                amount = found
            values = limit_key(limit, action.tenant_id, action.agent_id, action.action, action.run_id)
            key = f"{self._prefix}:limit:{limit.fingerprint}:{json.dumps(values, separators=(',', ':'))}"
            quotas.append(_Quota(limit, key, amount, enforced))
        return quotas, steps_cap, consume

    async def reserve(self, engine: PolicyEngine, action: ActionRequest) -> Reservation | None:
        """Checks, and if nothing enforced is exceeded consumes, every limit ``action`` is subject to.

        None when the request is subject to no limit and the policy counts no steps (nothing to ask the store).
        """
        quotas, steps_cap, consume = self._plan(engine, action)
        counts_steps = engine.counts_steps
        if not quotas and not counts_steps:
            return None
        keys = [f"{self._prefix}:steps:{action.run_id}"] if counts_steps else []
        keys += [q.key for q in quotas]
        args: list[Any] = [int(consume), int(counts_steps), STEPS_TTL_S, steps_cap]
        for quota in quotas:
            args += quota.reserve_args()
        try:
            assert self._reserve is not None, "start() first"
            async with asyncio.timeout(self._timeout_s):
                reply = await self._reserve(keys=keys, args=args)
        except Exception as exc:  # a store fault of any kind is "unavailable", never a Decide error
            self._mark(False, exc)
            return Reservation(self, UNAVAILABLE)
        self._mark(True)
        steps_before, consumed = int(reply[0]), int(reply[1]) == 1
        retry_after: dict[str, float | None] = {}
        taken: list[tuple[_Quota, str]] = []
        for i, quota in enumerate(quotas):
            retry, at = reply[2 + 2 * i], reply[3 + 2 * i]
            retry_after[quota.limit.name] = float(retry) if retry else None
            if consumed:
                taken.append((quota, at.decode() if isinstance(at, bytes) else str(at)))
        answer = SharedAnswer(True, steps_before if counts_steps else None, retry_after)
        return Reservation(self, answer, taken)

    async def release(self, taken: Sequence[tuple[_Quota, str]]) -> None:
        """Gives back consumed quotas (see :class:`Reservation`)."""
        args: list[Any] = []
        for quota, at in taken:
            args += quota.release_args(at)
        try:
            assert self._release is not None, "start() first"
            async with asyncio.timeout(self._timeout_s):
                await self._release(keys=[q.key for q, _ in taken], args=args)
        except Exception as exc:  # the tokens stay spent: tighter, never wider
            log.warning("shared limits: could not give back %d reserved quota(s): %s", len(taken), _describe(exc))

    def _mark(self, up: bool, exc: BaseException | None = None) -> None:
        if up != self._up:
            self._up = up
            if up:
                log.info("shared limit store answering again")
            else:
                log.error("shared limit store not answering (limits apply on_store_error): %s", _describe(exc))


def _describe(exc: BaseException | None) -> str:
    """A store error for the log: its type and message (never the URL, which may carry a password)."""
    if exc is None:
        return ""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
