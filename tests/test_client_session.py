"""``AsyncGatewayClient.session()`` against a real sidecar: pipelined reports, their acks, breaks and resends."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from agentaudit_client import AsyncGatewayClient, GatewayClient, InvalidRequestError, NotFoundError, UnavailableError
from tests.conftest import RunningGateway, start_gateway

STEP = {"tenant_id": "t_42", "agent_id": "support-agent", "actor": ("user", "u_1"), "action": "crm.lookup"}


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs an async test body in a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def rows(path: Path, where: str) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [tuple(r) for r in conn.execute(f"SELECT kind, link_event_id FROM journal WHERE {where} ORDER BY seq")]


def post_events(path: Path, pre_event_id: str) -> int:
    return len(rows(path, f"kind = 'post_exec' AND link_event_id = '{pre_event_id}'"))


@in_loop
async def test_a_pipelined_report_is_acknowledged_by_the_next_decide(gateway_server: RunningGateway) -> None:
    async with AsyncGatewayClient(gateway_server.unix_target) as client, client.session() as session:
        first = await session.decide(run_id="run_p1", step_id=1, **STEP)
        assert await session.report_result(first.event_id) is None  # queued, not awaited
        await session.decide(run_id="run_p1", step_id=2, **STEP)
        # The sidecar answers a decide only after every report sent before it: the ack is already here.
        assert session.unacknowledged == 0
        assert post_events(gateway_server.journal_path, first.event_id) == 1


@in_loop
async def test_report_with_wait_returns_the_ack_and_a_repeat_is_a_duplicate(gateway_server: RunningGateway) -> None:
    async with AsyncGatewayClient(gateway_server.unix_target) as client, client.session() as session:
        decided = await session.decide(run_id="run_p2", step_id=1, **STEP)
        first = await session.report_result(decided.event_id, wait=True)
        again = await session.report_result(decided.event_id, wait=True)
        assert first is not None and again is not None
        assert not first.duplicate and again.duplicate and again.event_id == first.event_id
    assert post_events(gateway_server.journal_path, decided.event_id) == 1


@in_loop
async def test_flush_raises_a_failed_pipelined_report(gateway_server: RunningGateway) -> None:
    async with AsyncGatewayClient(gateway_server.unix_target) as client:
        session = client.session()
        await session.report_result("evt_that_does_not_exist")
        with pytest.raises(NotFoundError):
            await session.flush()
        await session.flush()  # raised once; the session goes on
        decided = await session.decide(run_id="run_p3", step_id=1, **STEP)
        assert decided.allowed
        await session.aclose()


@in_loop
async def test_on_report_error_hears_each_failed_pipelined_report_and_flush_raises_none(
    gateway_server: RunningGateway,
) -> None:
    heard: list[Exception] = []
    async with (
        AsyncGatewayClient(gateway_server.unix_target) as client,
        client.session(on_report_error=heard.append) as session,
    ):
        await session.report_result("evt_that_does_not_exist")
        decided = await session.decide(run_id="run_p3b", step_id=1, **STEP)
        await session.report_result(decided.event_id)
        await session.flush()  # the failure went to the callback, not here
        assert [type(e) for e in heard] == [NotFoundError]
        with pytest.raises(NotFoundError):  # an awaited report still raises where it is awaited
            await session.report_result("evt_also_missing", wait=True)
    assert len(heard) == 1 and post_events(gateway_server.journal_path, decided.event_id) == 1


@in_loop
async def test_an_on_report_error_that_raises_leaves_the_failure_to_flush_and_the_session_working(
    gateway_server: RunningGateway,
) -> None:
    def broken(error: Exception) -> None:
        raise RuntimeError("the caller's callback is broken")

    async with AsyncGatewayClient(gateway_server.unix_target) as client:
        session = client.session(on_report_error=broken)
        await session.report_result("evt_that_does_not_exist")
        decided = await session.decide(run_id="run_p3c", step_id=1, **STEP)  # the reader survived the callback
        assert decided.allowed
        with pytest.raises(NotFoundError):
            await session.flush()
        await session.aclose()


@in_loop
async def test_an_invalid_decide_raises_and_the_session_goes_on(gateway_server: RunningGateway) -> None:
    async with AsyncGatewayClient(gateway_server.unix_target) as client, client.session() as session:
        with pytest.raises(InvalidRequestError) as refused:
            await session.decide(run_id="", step_id=1, **STEP)
        assert "run_id" in refused.value.fields
        assert (await session.decide(run_id="run_p4", step_id=1, **STEP)).allowed


@in_loop
async def test_concurrent_decides_share_one_stream(gateway_server: RunningGateway) -> None:
    async with AsyncGatewayClient(gateway_server.unix_target) as client, client.session() as session:

        async def step(n: int) -> str:
            decided = await session.decide(run_id=f"run_cc{n}", step_id=1, **{**STEP, "action": "kb.search"})
            assert decided.allowed
            await session.report_result(decided.event_id)
            return decided.event_id

        ids = await asyncio.gather(*(step(n) for n in range(64)))
    assert len(set(ids)) == 64
    posts = rows(gateway_server.journal_path, "kind = 'post_exec'")
    assert {link for _, link in posts} == set(ids) and len(posts) == 64


@in_loop
async def test_unacked_reports_are_resent_after_a_sigkill_and_journaled_once(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "gw")
    async with AsyncGatewayClient(gw.unix_target, timeout=20.0) as client:
        session = client.session()
        decided = [await session.decide(run_id="run_k", step_id=n + 1, **STEP) for n in range(20)]
        gw.proc.send_signal(signal.SIGSTOP)  # the reports are queued while nothing is read ...
        for d in decided:
            await session.report_result(d.event_id)
        gw.proc.send_signal(signal.SIGKILL)  # ... and the sidecar dies before acknowledging any
        gw.proc.wait(10)
        with pytest.raises(UnavailableError):
            await session.decide(run_id="run_k", step_id=99, **STEP)
        assert session.unacknowledged == 20
        restarted = start_gateway(tmp_path / "gw")  # same directory, same socket
        try:
            await session.flush()  # reconnects with backoff and resends every unacknowledged report
            assert session.unacknowledged == 0
            await session.aclose()
            for d in decided:
                assert post_events(restarted.journal_path, d.event_id) == 1  # every acked decide, one result each
        finally:
            restarted.stop()


def test_the_sync_session_pipelines_reports_from_threads(gateway_server: RunningGateway) -> None:
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    with GatewayClient(gateway_server.unix_target) as client, client.session() as session:

        def step(n: int) -> str:
            decided = session.decide(run_id=f"run_sync{n}", step_id=1, **{**STEP, "action": "kb.search"})
            assert decided.allowed
            assert session.report_result(decided.event_id) is None
            return decided.event_id

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(step, range(32)))
        with pytest.raises(NotFoundError):
            session.report_result("evt_missing", wait=True)
    for event_id in ids:  # closing flushed: every report acknowledged, so journaled
        assert post_events(gateway_server.journal_path, event_id) == 1


def test_the_sync_session_hands_failed_queued_reports_to_on_report_error(gateway_server: RunningGateway) -> None:
    import threading  # noqa: PLC0415

    heard: list[tuple[type[Exception], str]] = []
    with (
        GatewayClient(gateway_server.unix_target) as client,
        client.session(on_report_error=lambda e: heard.append((type(e), threading.current_thread().name))) as session,
    ):
        session.report_result("evt_that_does_not_exist")
        session.flush()  # raises nothing: the callback had it
    assert heard == [(NotFoundError, "agentaudit-session")]  # on the session's own thread


@contextlib.asynccontextmanager
async def older_sidecar(target: str) -> AsyncIterator[str]:
    """A sidecar from before the Session stream: the real one's Decide and ReportResult, relayed byte for byte."""
    upstream = grpc.aio.insecure_channel(target)

    def relay(method: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        forward = upstream.unary_unary(f"/agentaudit.v1.GatewayService/{method}")

        async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            try:
                answer: bytes = await forward(request)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ()))
            return answer

        return grpc.unary_unary_rpc_method_handler(handle)

    server = grpc.aio.server()
    methods = {name: relay(name) for name in ("Decide", "ReportResult")}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("agentaudit.v1.GatewayService", methods)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await upstream.close()


@in_loop
async def test_a_sidecar_without_session_is_served_by_the_unary_calls(gateway_server: RunningGateway) -> None:
    async with older_sidecar(gateway_server.unix_target) as target, AsyncGatewayClient(target) as client:
        session = client.session()
        # The first decide meets UNIMPLEMENTED on the stream: it was never processed, so it goes unary, once.
        first = await session.decide(run_id="run_old", step_id=1, **STEP)
        assert first.allowed and session.uses_unary
        await session.report_result(first.event_id)
        second = await session.decide(run_id="run_old", step_id=2, **STEP)
        await session.report_result(second.event_id)
        with pytest.raises(NotFoundError):  # failures still surface, as on the stream
            await session.report_result("evt_that_does_not_exist", wait=True)
        await session.aclose()
    for event_id in (first.event_id, second.event_id):
        assert post_events(gateway_server.journal_path, event_id) == 1
    assert len(rows(gateway_server.journal_path, "kind = 'pre_exec' AND run_id = 'run_old'")) == 2


@in_loop
async def test_a_report_pipelined_into_a_sidecar_without_session_is_delivered_unary(
    gateway_server: RunningGateway,
) -> None:
    async with AsyncGatewayClient(gateway_server.unix_target) as client:
        decided = await client.decide(run_id="run_old2", step_id=1, **STEP)
    async with older_sidecar(gateway_server.unix_target) as target, AsyncGatewayClient(target) as client:
        session = client.session()
        assert await session.report_result(decided.event_id) is None  # written to a stream that is then refused
        await session.flush()
        assert session.uses_unary and session.unacknowledged == 0
        await session.aclose()
    assert post_events(gateway_server.journal_path, decided.event_id) == 1


def commits_apart(path: Path, first_event: str, second_event: str) -> bool:
    """Whether two journal entries were committed in different group commits (a v2 seal between them)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        seqs = [
            conn.execute("SELECT seq FROM journal WHERE event_id = ?", (event,)).fetchone()[0]
            for event in (first_event, second_event)
        ]
        sealed = {row[0] for row in conn.execute("SELECT size FROM journal_seals")}
    low, high = sorted(seqs)
    return any(low < size <= high for size in sealed)  # a seal of size n covers seqs below n


@in_loop
async def test_a_pipelined_report_travels_and_commits_with_the_next_decide(gateway_server: RunningGateway) -> None:
    async with AsyncGatewayClient(gateway_server.unix_target) as client, client.session() as session:
        first = await session.decide(run_id="run_ride", step_id=1, **STEP)
        await session.report_result(first.event_id)
        second = await session.decide(run_id="run_ride", step_id=2, **STEP)
        assert session.unacknowledged == 0
    with sqlite3.connect(f"file:{gateway_server.journal_path}?mode=ro", uri=True) as conn:
        (post_id,) = conn.execute(
            "SELECT event_id FROM journal WHERE kind = 'post_exec' AND link_event_id = ?", (first.event_id,)
        ).fetchone()
    # One stream message carried both, and the sidecar committed them together: one fsync for the step.
    assert not commits_apart(gateway_server.journal_path, post_id, second.event_id)
    assert commits_apart(gateway_server.journal_path, first.event_id, post_id)


@pytest.mark.parametrize("linger", [0.0, 0.001, 0.2])
def test_a_pipelined_report_with_nothing_after_it_is_sent_within_the_linger(
    gateway_server: RunningGateway, linger: float
) -> None:
    async def scenario() -> int:
        async with AsyncGatewayClient(gateway_server.unix_target) as client:
            session = client.session(report_linger_s=linger)
            decided = await session.decide(run_id=f"run_linger{linger}", step_id=1, **STEP)
            await session.report_result(decided.event_id)
            for _ in range(200):  # no flush, no further request: only the linger sends it
                if session.unacknowledged == 0:
                    break
                await asyncio.sleep(0.01)
            seen = post_events(gateway_server.journal_path, decided.event_id)
            await session.aclose()
            return seen

    assert asyncio.run(scenario()) == 1


def test_report_linger_is_bounded() -> None:
    with pytest.raises(ValueError, match="report_linger_s"):
        GatewayClient("unix:///nonexistent.sock").session(report_linger_s=5)


@in_loop
async def test_more_reports_than_one_stream_message_holds_are_split_and_all_journaled(
    gateway_server: RunningGateway,
) -> None:
    async with AsyncGatewayClient(gateway_server.unix_target, timeout=30.0) as client, client.session() as session:

        async def decide(n: int) -> str:
            step = {**STEP, "action": "kb.search"}  # no rate limit in the example policy
            decided = await session.decide(run_id=f"run_split{n // 40}", step_id=n % 40 + 1, **step)
            assert decided.allowed
            return decided.event_id

        ids = await asyncio.gather(*(decide(n) for n in range(1300)))
        for event_id in ids:  # queued without a pause: one outbox of 1,300, more than the sidecar's 1,024 a message
            await session.report_result(event_id)
        await session.flush()
        assert session.unacknowledged == 0
    posts = rows(gateway_server.journal_path, "kind = 'post_exec' AND run_id LIKE 'run_split%'")
    assert len(posts) == 1300 and {link for _, link in posts} == set(ids)
