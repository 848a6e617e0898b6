"""The MCP proxy's ReportResult calls sent beside the answer (``gateway.mcp.reports``): what they keep.

Each report here is a real coroutine that finishes when the test lets it (an ``asyncio.Event``), so every
ordering below is forced, not hoped for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

import anyio
import pytest

from gateway.mcp.reports import PendingReports
from gateway.mcp.stdio import _stopping_on_signals

WAIT_S = 5.0  # only an upper bound that catches a hang

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Report:
    """A report that finishes (or fails) when released, and says whether it finished."""

    def __init__(self, fail: bool = False) -> None:
        self.release = asyncio.Event()
        self.done = False
        self.fail = fail

    def __call__(self) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            await self.release.wait()
            if self.fail:
                raise RuntimeError("sidecar fell over")
            self.done = True

        return send


async def _finished(awaitable: Awaitable[None]) -> bool:
    """Whether ``awaitable`` finishes within a few loop turns."""
    task = asyncio.ensure_future(awaitable)
    for _ in range(20):
        await asyncio.sleep(0)
    if task.done():
        return True
    task.cancel()
    return False


async def test_send_returns_before_the_report_finishes() -> None:
    reports, slow = PendingReports(), _Report()
    await asyncio.wait_for(reports.send("run_a", slow()), WAIT_S)
    assert not slow.done and len(reports) == 1
    slow.release.set()
    await asyncio.wait_for(reports.aclose(), WAIT_S)
    assert slow.done and len(reports) == 0


async def test_settle_waits_for_the_runs_own_reports_only() -> None:
    reports, mine, other = PendingReports(), _Report(), _Report()
    await reports.send("run_a", mine())
    await reports.send("run_b", other())
    assert not await _finished(reports.settle("run_a"))  # run_a's report is still in flight
    assert await _finished(reports.settle("run_c"))  # a run with nothing in flight does not wait
    mine.release.set()
    await asyncio.wait_for(reports.settle("run_a"), WAIT_S)
    assert mine.done and not other.done  # run_b's report did not hold run_a up
    other.release.set()
    await asyncio.wait_for(reports.aclose(), WAIT_S)


async def test_aclose_waits_for_every_report_in_flight() -> None:
    reports = PendingReports()
    pending = [_Report() for _ in range(5)]
    for i, report in enumerate(pending):
        await reports.send(f"run_{i % 2}", report())
    closing = asyncio.ensure_future(reports.aclose())
    for report in pending[:-1]:
        report.release.set()
    assert not await _finished(asyncio.shield(closing))
    pending[-1].release.set()
    await asyncio.wait_for(closing, WAIT_S)
    assert all(r.done for r in pending)


async def test_past_the_limit_the_call_waits_for_its_own_report() -> None:
    reports, first, second = PendingReports(limit=1), _Report(), _Report()
    await reports.send("run_a", first())
    blocked = asyncio.ensure_future(reports.send("run_a", second()))
    assert not await _finished(asyncio.shield(blocked))  # inline: the answer waits (backpressure)
    second.release.set()
    await asyncio.wait_for(blocked, WAIT_S)
    assert second.done and not first.done
    first.release.set()
    await asyncio.wait_for(reports.aclose(), WAIT_S)


async def test_after_aclose_a_report_runs_inline() -> None:
    reports = PendingReports()
    await reports.aclose()
    late = _Report()
    late.release.set()
    await asyncio.wait_for(reports.send("run_a", late()), WAIT_S)
    assert late.done and len(reports) == 0


async def test_a_failing_report_is_logged_and_settles(caplog: pytest.LogCaptureFixture) -> None:
    reports, broken = PendingReports(), _Report(fail=True)
    await reports.send("run_a", broken())
    broken.release.set()
    with caplog.at_level(logging.ERROR, logger="agentaudit.mcp"):
        await asyncio.wait_for(reports.settle("run_a"), WAIT_S)
        await asyncio.wait_for(reports.aclose(), WAIT_S)
    assert "ReportResult failed" in caplog.text and len(reports) == 0


async def test_a_cancelled_settle_does_not_cancel_the_report() -> None:
    reports, slow = PendingReports(), _Report()
    await reports.send("run_a", slow())
    waiter = asyncio.ensure_future(reports.settle("run_a"))
    await asyncio.sleep(0)
    waiter.cancel()  # the client cancelled the next call while it waited for this run's reports
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slow.release.set()
    await asyncio.wait_for(reports.aclose(), WAIT_S)
    assert slow.done


async def test_sigterm_ends_the_stdio_session_so_aclose_runs() -> None:
    with anyio.CancelScope() as serving, _stopping_on_signals(serving):
        os.kill(os.getpid(), signal.SIGTERM)  # without the handler this would end the test process
        await anyio.sleep(WAIT_S)
    assert serving.cancelled_caught
