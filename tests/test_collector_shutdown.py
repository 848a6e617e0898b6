"""A SIGTERM'd collector exits in bounded time.

The cause of the hang: on Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives while the future
it waits on has just completed (it returns the result instead). The act feed's and the head watcher's loops waited
on an event with it, so a cancel at shutdown that met an act being committed (a kill switch, a vote) was lost: the
loop went on waiting and ``Collector.aclose`` waited for it forever. They wait under ``asyncio.timeout`` now, which
keeps the cancellation.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agentaudit.v1 import control_pb2_grpc
from gateway.collector.control_service import ActFeed
from gateway.collector.fleet import FleetControl, open_fleet
from gateway.collector.sqlite_store import SqliteCollectorStore
from gateway.signing import Ed25519Signer

KEY = Ed25519Signer("shutdown/control", bytes([21]) * 32)


async def _fleet(tmp_path: Path) -> tuple[SqliteCollectorStore, FleetControl]:
    store = SqliteCollectorStore(tmp_path / "collector.db", check_workers=0)
    await store.start()
    fleet = open_fleet(store, KEY, replica="test")
    await fleet.start()
    return store, fleet


@pytest.mark.parametrize("turns", range(6))
def test_a_wait_for_an_act_cancelled_as_the_act_arrives_ends(tmp_path: Path, turns: int) -> None:
    """The act lands ``turns`` loop turns before the cancel: in every case the waiter ends cancelled."""

    async def main() -> None:
        store, fleet = await _fleet(tmp_path)
        try:
            head = fleet._seen_head
            waiter = asyncio.create_task(fleet.wait_for_act(head + 1000, 30.0))  # woken by each act, waits on
            await asyncio.sleep(0.05)
            advanced, fleet._advanced = fleet._advanced, asyncio.Event()  # what the watcher does on a new act
            advanced.set()
            for _ in range(turns):
                await asyncio.sleep(0)
            waiter.cancel()
            done, _ = await asyncio.wait({waiter}, timeout=5)
            assert waiter in done, "the cancellation was lost: the waiter still waits"
            assert waiter.cancelled()
        finally:
            await fleet.aclose()
            await store.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("turns", range(6))
def test_the_act_feed_and_the_watcher_stop_when_an_act_meets_the_shutdown(tmp_path: Path, turns: int) -> None:
    async def main() -> None:
        store, fleet = await _fleet(tmp_path)
        feed = ActFeed(fleet)
        await feed.start()
        await asyncio.sleep(0.05)
        fleet._poke.set()  # an act committed here, as the watcher and the feed are cancelled
        advanced, fleet._advanced = fleet._advanced, asyncio.Event()  # the watcher's wake, head unchanged
        advanced.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(feed.aclose(), fleet.aclose()), 10)
        await store.aclose()

    asyncio.run(main())


def test_a_control_stream_opened_during_the_shutdown_is_refused_at_once(tmp_path: Path) -> None:
    """Not held until the gRPC server's grace ends: the sidecar is told UNAVAILABLE and reconnects elsewhere."""
    from tests.test_control_service import collector  # noqa: PLC0415 - its real-collector helper

    async def main() -> None:
        async with collector(tmp_path / "c", f"sqlite:///{tmp_path / 'collector.db'}") as c:
            assert c.control is not None
            await c.control.aclose()  # the collector's first step of the shutdown
            async with grpc.aio.insecure_channel(c.bound[0]) as channel:
                call = control_pb2_grpc.ControlServiceStub(channel).Connect()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await asyncio.wait_for(call.read(), 10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "shutting down" in str(refused.value.details())

    asyncio.run(main())
