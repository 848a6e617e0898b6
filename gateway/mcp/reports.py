"""ReportResult calls sent off the answer's path, in an order that still follows what the client could know.

A ``tools/call`` result goes back to the client as soon as the server answered; its ReportResult (the post-event)
is sent beside it, owned here. What this keeps (docs/mcp.md, "When the result is journaled"):

1. Nothing is forwarded before its Decide, and the pre-event is durable before that Decide answers (unchanged).
2. A run's next Decide (and a tools/list change Decide) first waits for every report of that run still in
   flight, so the journal's order follows causality: a result is journaled before any call the client could
   have made after seeing it, as when the answer waited for the report.
3. ``aclose`` (the client closing stdin, SIGTERM, the HTTP server stopping) waits for every report in flight
   before the sidecar channel closes, so an orderly stop loses none.
4. At most ``limit`` reports are in flight; past it the call waits for its own report before answering
   (backpressure instead of an unbounded backlog when the sidecar is slow).

What it gives up: for about one sidecar round trip after the client has a result, the journal does not yet hold
it, and a proxy killed in that window (SIGKILL, power loss) leaves the pre-event without a post-event. A report
that fails is logged, as it was when the answer waited for it: the client had its result either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("agentaudit.mcp")

DEFAULT_LIMIT = 256


class PendingReports:
    """The ReportResult calls in flight, by run. One owner (the proxy): ``send`` / ``settle`` / ``aclose``."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._by_run: dict[str, set[asyncio.Task[None]]] = {}
        self._count = 0
        self._closed = False

    def __len__(self) -> int:
        return self._count

    async def send(self, run_id: str, report: Callable[[], Awaitable[None]]) -> None:
        """Starts ``report`` in the background, or runs it here when the limit is reached or after ``aclose``."""
        if self._closed or self._count >= self._limit:
            await _logged(report)
            return
        task = asyncio.get_running_loop().create_task(_logged(report), name=f"mcp-report-{run_id}")
        tasks = self._by_run.setdefault(run_id, set())
        tasks.add(task)
        self._count += 1
        task.add_done_callback(lambda done: self._forget(run_id, done))

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        tasks = self._by_run.get(run_id)
        if tasks is not None and task in tasks:
            tasks.discard(task)
            self._count -= 1
            if not tasks:
                del self._by_run[run_id]

    async def settle(self, run_id: str) -> None:
        """Returns once every report of ``run_id`` started before this call has finished (at once if none)."""
        tasks = self._by_run.get(run_id)
        if tasks:
            # Shielded: a caller cancelled while it waits must not cancel the reports themselves.
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))

    async def aclose(self) -> None:
        """Waits for every report in flight; later ``send`` calls run inline."""
        self._closed = True
        while self._by_run:
            pending = [t for tasks in self._by_run.values() for t in tasks]
            await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.sleep(0)  # let the done callbacks run


async def _logged(report: Callable[[], Awaitable[None]]) -> None:
    try:
        await report()
    except Exception:  # the report's own errors are logged by it; this is anything it did not expect
        log.exception("ReportResult failed")
