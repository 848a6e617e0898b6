"""Limits shared across replicas in Redis (ADR 0015): one reserve per Decide, the engine pure on its answer.

Everything runs against a real Redis: the shared server on 127.0.0.1:6379 (a fresh key prefix per test), or, where
a test stops Redis, a ``redis-server`` of its own on a free port. Without Redis these tests skip, or fail when
``AGENTAUDIT_REQUIRE_REDIS=1`` (as ``.ci/run`` sets). The replicas are real ``agentaudit dev`` processes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from agentaudit.v1 import types_pb2
from gateway import config
from gateway.errors import ConfigError
from gateway.journal.store import iter_bodies
from gateway.policy.document import parse_policy
from gateway.policy.engine import LayeredPolicy
from gateway.policy.limits import LimitState
from gateway.policy.model import ActionRequest, Decision, Verdict
from gateway.sidecar.shared_limits import RedisLimits
from tests.conftest import RunningGateway, free_port, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.helpers import eventually
from tests.test_policy_engine import ACCESS_ALL, request

pytestmark = pytest.mark.anyio  # the anyio plugin (the MCP SDK's own dependency) runs the async tests
REDIS_URL = os.environ.get("AGENTAUDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Generous: the machine is shared and loaded; a timeout here would read as "store unavailable" and flake.
TIMEOUT_MS = 2000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the shared Redis, its keys deleted afterwards; skipped (or, with
    AGENTAUDIT_REQUIRE_REDIS=1, failed) when Redis is unreachable."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = f"Redis at {REDIS_URL} unavailable: {exc}"
        if os.environ.get("AGENTAUDIT_REQUIRE_REDIS") == "1":
            pytest.fail(f"AGENTAUDIT_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    prefix = f"aatest-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


class OwnRedis:
    """A ``redis-server`` of this test's own on a free port (no persistence), so it can be stopped and restarted."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("AGENTAUDIT_REQUIRE_REDIS") == "1":
                pytest.fail("AGENTAUDIT_REQUIRE_REDIS=1 but redis-server is not installed")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [*args, "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        eventually(self.answering, message=f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def answering(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


@pytest.fixture
def own_redis(tmp_path: Path, redis_prefix: str) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def policy(limits: str, extra: str = "") -> str:
    return f"version: 1\n{ACCESS_ALL}limits:\n{limits}{extra}"


class Replica:
    """One sidecar's policy engine (its own in-process state) over a shared store: what a Decide does with it."""

    def __init__(self, text: str, store: RedisLimits) -> None:
        self.engine = LayeredPolicy(parse_policy(text, "p.yaml"), LimitState())
        self.store = store

    async def decide(self, req: ActionRequest) -> Decision:
        reservation = await self.store.reserve(self.engine, req)
        decision = self.engine.evaluate(req, reservation.answer if reservation else None)
        if reservation is not None and decision.verdict is not Verdict.ALLOW:
            await reservation.release()
        return decision


async def stores(prefix: str, n: int, url: str = REDIS_URL, timeout_ms: int = TIMEOUT_MS) -> list[RedisLimits]:
    out = [RedisLimits(url, prefix, timeout_ms) for _ in range(n)]
    for store in out:
        await store.start()
    return out


async def close(items: list[RedisLimits]) -> None:
    for store in items:
        await store.aclose()


RATE = '  - {name: tenant_calls, type: rate, actions: ["crm.*"], key: [tenant], rate: 1/h, burst: 5}\n'


async def test_two_replicas_draw_from_one_token_bucket(redis_prefix: str) -> None:
    pair = await stores(redis_prefix, 2)
    try:
        replicas = [Replica(policy(RATE), store) for store in pair]
        decisions = [await replicas[i % 2].decide(request("crm.search")) for i in range(8)]
    finally:
        await close(pair)
    assert [d.verdict for d in decisions] == [Verdict.ALLOW] * 5 + [Verdict.STOP] * 3
    stopped = decisions[-1]
    assert (stopped.reason, stopped.layer, stopped.rule) == ("rate_limited_tenant", "limits", "tenant_calls")
    assert stopped.retry_after_s is not None and 3500 < stopped.retry_after_s <= 3600


async def test_a_later_layer_refusing_gives_the_reservation_back(redis_prefix: str) -> None:
    approval = '\napproval:\n  - {name: big_search, actions: ["crm.search"], when: "args.rows > 100"}\n'
    (store,) = await stores(redis_prefix, 1)
    try:
        replica = Replica(policy(RATE, approval), store)
        refused = [await replica.decide(request("crm.search", args={"rows": 500})) for _ in range(10)]
        allowed = [await replica.decide(request("crm.search", args={"rows": 1})) for _ in range(6)]
    finally:
        await close([store])
    assert {d.verdict for d in refused} == {Verdict.APPROVAL_REQUIRED}
    assert [d.verdict for d in allowed] == [Verdict.ALLOW] * 5 + [Verdict.STOP], "refusals must not eat quota"


async def test_an_exceeded_limit_consumes_nothing_of_the_others(redis_prefix: str) -> None:
    limits = RATE + '  - {name: refunds, type: sum, actions: ["crm.refund"], field: amount, max: 100, window: 7d}\n'
    (store,) = await stores(redis_prefix, 1)
    try:
        replica = Replica(policy(limits), store)
        too_big = await replica.decide(request("crm.refund", args={"amount": 101}))
        fits = [await replica.decide(request("crm.refund", args={"amount": 20})) for _ in range(5)]
    finally:
        await close([store])
    assert (too_big.verdict, too_big.rule) == (Verdict.STOP, "refunds")
    assert [d.verdict for d in fits] == [Verdict.ALLOW] * 5, "the refused refund took no token of tenant_calls"


async def test_a_sum_without_its_field_stops_and_consumes_nothing(redis_prefix: str) -> None:
    limits = RATE + '  - {name: refunds, type: sum, actions: ["crm.refund"], field: amount, max: 100, window: 7d}\n'
    (store,) = await stores(redis_prefix, 1)
    try:
        replica = Replica(policy(limits), store)
        missing = [await replica.decide(request("crm.refund")) for _ in range(7)]
        calls = [await replica.decide(request("crm.search")) for _ in range(6)]
    finally:
        await close([store])
    assert {(d.verdict, d.reason) for d in missing} == {(Verdict.STOP, "policy_error")}
    assert [d.verdict for d in calls] == [Verdict.ALLOW] * 5 + [Verdict.STOP]


async def test_a_runs_steps_are_counted_across_replicas(redis_prefix: str) -> None:
    limits = '  - {name: run_steps, type: steps, actions: ["*"], max: 4}\n'
    pair = await stores(redis_prefix, 2)
    try:
        replicas = [Replica(policy(limits), store) for store in pair]
        decisions = [await replicas[i % 2].decide(request("crm.lookup")) for i in range(6)]
    finally:
        await close(pair)
    assert [d.verdict for d in decisions] == [Verdict.ALLOW] * 4 + [Verdict.STOP] * 2
    assert decisions[-1].reason == "step_budget_exceeded"


async def test_a_shadow_limit_over_its_max_allows_and_records_what_it_would_do(redis_prefix: str) -> None:
    limits = '  - {name: tenant_calls, type: count, actions: ["crm.*"], max: 2, window: 7d, shadow: true}\n'
    (store,) = await stores(redis_prefix, 1)
    try:
        replica = Replica(policy(limits), store)
        decisions = [await replica.decide(request("crm.search")) for _ in range(3)]
    finally:
        await close([store])
    assert [d.verdict for d in decisions] == [Verdict.ALLOW] * 3
    assert [d.shadow.reason if d.shadow else None for d in decisions] == [None, None, "budget_exceeded"]


async def test_an_unreachable_store_stops_or_falls_back_as_each_limit_says(redis_prefix: str) -> None:
    limits = (
        '  - {name: strict, type: count, actions: ["crm.search"], max: 1, window: 7d}\n'
        '  - {name: lenient, type: count, actions: ["crm.lookup"], max: 1, window: 7d, on_store_error: local}\n'
    )
    (store,) = await stores(redis_prefix, 1, url=f"redis://127.0.0.1:{free_port()}/0", timeout_ms=200)
    try:
        replica = Replica(policy(limits), store)
        strict = await replica.decide(request("crm.search"))
        lenient = [await replica.decide(request("crm.lookup")) for _ in range(2)]
    finally:
        await close([store])
    assert (strict.verdict, strict.reason, strict.layer, strict.rule) == (
        Verdict.STOP,
        "limits_unavailable",
        "limits",
        "strict",
    )
    assert [(d.verdict, d.reason) for d in lenient] == [(Verdict.ALLOW, "allowed"), (Verdict.STOP, "budget_exceeded")]


# --- Real sidecar processes sharing one Redis ---------------------------------------------------------------

FLEET_POLICY = """version: 1
access: {default: allow}
limits:
  - {name: tenant_searches, type: rate, actions: ["crm.search"], key: [tenant], rate: 1/h, burst: 40}
  - {name: refund_total, type: sum, actions: ["refund.create"], key: [tenant], field: amount, max: 1000, window: 7d}
"""


def fleet(
    base: Path, prefix: str, url: str, text: str, n: int = 2, timeout_ms: int = TIMEOUT_MS
) -> list[RunningGateway]:
    """``n`` sidecars with their own journals and the same policy, all on the limit store at ``url``."""
    env = {
        "AGENTAUDIT_LIMITS_STORE": url,
        "AGENTAUDIT_LIMITS_KEY_PREFIX": prefix,
        "AGENTAUDIT_LIMITS_TIMEOUT_MS": str(timeout_ms),
    }
    out = []
    for i in range(n):
        directory = base / f"s{i}"
        directory.mkdir(parents=True)
        (directory / "policy.yaml").write_text(text)
        out.append(start_gateway(directory, env))
    return out


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("sl"))  # short: unix socket paths are limited to 107 bytes


def pre_events(gw: RunningGateway) -> list[dict[str, Any]]:
    return [body for _, body in iter_bodies(gw.journal_path, kind="pre_exec")]


def load(gateways: list[RunningGateway], requests: list[Any], workers: int = 8) -> list[Any]:
    """Sends the requests concurrently, spread over the sidecars; returns the replies in order."""
    channels = [stub(gw.unix_target) for gw in gateways]
    try:
        with ThreadPoolExecutor(workers) as pool:
            futures = [
                pool.submit(channels[i % len(channels)][1].Decide, req, timeout=30) for i, req in enumerate(requests)
            ]
            return [f.result() for f in futures]
    finally:
        for channel, _ in channels:
            channel.close()


def test_two_sidecars_hold_the_tenants_total_within_one_token(redis_prefix: str, short_tmp: Path) -> None:
    gateways = fleet(short_tmp, redis_prefix, REDIS_URL, FLEET_POLICY)
    try:
        requests = [decide_request(run_id=f"run_{i % 7}", action="crm.search", step_id=i) for i in range(120)]
        replies = load(gateways, requests)
    finally:
        for gw in gateways:
            gw.stop()
    answered = sum(r.decision == types_pb2.DECISION_ALLOW for r in replies)
    journaled = [sum(e["decision"] == "allow" for e in pre_events(gw)) for gw in gateways]
    assert abs(sum(journaled) - 40) <= 1, f"allowed per sidecar: {journaled}"
    assert sum(journaled) == answered
    assert all(n > 0 for n in journaled), "both replicas drew from the one limit"
    stops = {(r.reason, r.policy_rule) for r in replies if r.decision != types_pb2.DECISION_ALLOW}
    assert stops == {("rate_limited_tenant", "tenant_searches")}


def test_a_sum_budget_is_shared_by_two_sidecars(redis_prefix: str, short_tmp: Path) -> None:
    gateways = fleet(short_tmp, redis_prefix, REDIS_URL, FLEET_POLICY)
    try:
        requests = [
            decide_request(run_id=f"run_{i}", action="refund.create", args={"amount": 30}, step_id=1) for i in range(60)
        ]
        replies = load(gateways, requests)
    finally:
        for gw in gateways:
            gw.stop()
    refunded = [
        sum(e["args"]["amount"] for e in pre_events(gw) if e["decision"] == "allow" and e["action"] == "refund.create")
        for gw in gateways
    ]
    assert sum(refunded) == 990, f"refunded per sidecar: {refunded} (33 x 30 fits in 1000)"
    assert sum(r.decision == types_pb2.DECISION_ALLOW for r in replies) == 33
    assert all(n > 0 for n in refunded)


STORE_ERROR_POLICY = """version: 1
access: {default: allow}
limits:
  - {name: strict_searches, type: count, actions: ["crm.search"], key: [tenant], max: 100000, window: 7d}
  - {name: lenient_lookups, type: count, actions: ["crm.lookup"], key: [tenant], max: 100000, window: 7d,
     on_store_error: local}
"""


def test_redis_stopped_mid_run_stops_or_falls_back_and_recovers(own_redis: OwnRedis, short_tmp: Path) -> None:
    (gw,) = fleet(short_tmp, "aatest", own_redis.url, STORE_ERROR_POLICY, n=1, timeout_ms=200)
    answers: list[tuple[str, str, int, str]] = []  # (action, event_id, decision, reason) of every reply
    stop = threading.Event()

    def drive() -> None:
        channel, client = stub(gw.unix_target)
        with channel:
            i = 0
            while not stop.is_set():
                action = ("crm.search", "crm.lookup")[i % 2]
                reply = client.Decide(decide_request(action=action, step_id=i), timeout=30)
                answers.append((action, reply.event_id, reply.decision, reply.reason))
                i += 1

    def seen(action: str, decision: int, reason: str, since: int = 0) -> bool:
        return any(a[0] == action and a[2:] == (decision, reason) for a in answers[since:])

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        eventually(lambda: seen("crm.search", types_pb2.DECISION_ALLOW, "allowed"), message="allows via Redis")
        own_redis.kill()
        down = len(answers)
        eventually(
            lambda: seen("crm.search", types_pb2.DECISION_STOP, "limits_unavailable", down),
            message="limits_unavailable while Redis is down",
        )
        marker = len(answers)
        eventually(lambda: len(answers) > marker + 10, message="more answers while Redis is down")
        during = answers[down:]
        own_redis.start()
        up = len(answers)
        eventually(
            lambda: seen("crm.search", types_pb2.DECISION_ALLOW, "allowed", up), message="allows once Redis is back"
        )
    finally:
        stop.set()
        driver.join()
        gw.stop()
    assert not seen("crm.lookup", types_pb2.DECISION_STOP, "limits_unavailable"), "on_store_error: local never stops"
    assert seen("crm.lookup", types_pb2.DECISION_ALLOW, "allowed", down), "the local fallback answered meanwhile"
    assert {a[3] for a in answers} <= {"allowed", "limits_unavailable"}
    recorded = {e["event_id"]: e for e in pre_events(gw)}
    assert all(a[1] in recorded for a in answers), "every acknowledged decision is in the journal"
    unavailable = [recorded[a[1]] for a in during if a[3] == "limits_unavailable"]
    assert unavailable and {(e["decision"], e["policy_rule"]) for e in unavailable} == {("stop", "strict_searches")}
    assert "shared limit store not answering" in gw.log()
    assert "shared limit store answering again" in gw.log()


def test_without_a_store_limits_stay_in_process(short_tmp: Path) -> None:
    directory = short_tmp / "solo"
    directory.mkdir()
    (directory / "policy.yaml").write_text(FLEET_POLICY)
    gw = start_gateway(directory)
    try:
        replies = load([gw], [decide_request(action="crm.search", step_id=i) for i in range(45)], workers=4)
    finally:
        gw.stop()
    assert sum(r.decision == types_pb2.DECISION_ALLOW for r in replies) == 40
    assert "shared limit" not in gw.log()


def test_the_redis_client_is_imported_only_when_a_store_is_configured() -> None:
    code = "import sys, gateway.app; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_event_loop_runs_the_reserve_script(redis_prefix: str) -> None:
    """The reserve is a coroutine on the loop (no thread, no blocking call): two run concurrently on one store."""

    async def both() -> list[Decision]:
        (store,) = await stores(redis_prefix, 1)
        try:
            replica = Replica(policy(RATE), store)
            return list(await asyncio.gather(*(replica.decide(request("crm.search")) for _ in range(7))))
        finally:
            await close([store])

    decisions = asyncio.run(both())
    assert sorted(d.verdict.value for d in decisions) == ["allow"] * 5 + ["stop"] * 2


def test_on_store_error_must_be_stop_or_local() -> None:
    bad = '  - {name: calls, type: count, actions: ["*"], max: 1, window: 1h, on_store_error: allow}\n'
    with pytest.raises(ConfigError, match="'on_store_error' must be stop or local"):
        parse_policy(policy(bad), "p.yaml")


def test_on_store_error_does_not_change_the_limits_state_key() -> None:
    stop = parse_policy(policy('  - {name: c, type: count, actions: ["*"], max: 1, window: 1h}\n'), "p.yaml")
    local = parse_policy(
        policy('  - {name: c, type: count, actions: ["*"], max: 1, window: 1h, on_store_error: local}\n'), "p.yaml"
    )
    assert stop.limits[0].fingerprint == local.limits[0].fingerprint
    assert (stop.limits[0].on_store_error, local.limits[0].on_store_error) == ("stop", "local")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"AGENTAUDIT_LIMITS_STORE": "http://redis:6379"}, "limits.store: expected a URL", id="scheme"),
        pytest.param({"AGENTAUDIT_LIMITS_KEY_PREFIX": "a b"}, "limits.key_prefix", id="prefix"),
        pytest.param({"AGENTAUDIT_LIMITS_TIMEOUT_MS": "0"}, "limits.timeout_ms: 0 is outside", id="timeout"),
    ],
)
def test_a_bad_limits_section_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(None, env=env)


def test_a_store_url_with_a_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as raised:
        config.load(None, env={"AGENTAUDIT_LIMITS_STORE": "redis-ish://:hunter2@redis"})
    assert "hunter2" not in str(raised.value)
