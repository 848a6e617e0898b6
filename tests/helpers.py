"""Waiting for a condition in tests: poll with a deadline, never sleep a fixed time and hope (STYLE.md, Tests).

:func:`eventually` for threads and processes, :func:`eventually_async` inside an event loop (it yields to the
loop between polls, so the tasks it waits for can run). Both return the predicate's first truthy value, so a test
can wait for a thing and use it in one line, and fail with ``message`` when the deadline passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")

TIMEOUT_S = 15.0
"""How long a condition may take by default: generous, since only a failing test waits this long."""
INTERVAL_S = 0.02
"""Time between polls by default."""


def eventually(
    predicate: Callable[[], _T], *, timeout: float = TIMEOUT_S, interval: float = INTERVAL_S, message: str = "condition"
) -> _T:
    """Polls ``predicate`` until it returns something truthy, and returns that; fails after ``timeout`` seconds.

    Raises:
        AssertionError: the deadline passed first (the message names what was awaited).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(interval)


async def eventually_async(
    predicate: Callable[[], _T],
    *,
    timeout: float = TIMEOUT_S,  # noqa: ASYNC109 (the same signature as eventually; a deadline, not a cancel scope)
    interval: float = INTERVAL_S,
    message: str = "condition",
) -> _T:
    """:func:`eventually` for a test running in an event loop: awaits between polls instead of blocking it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        await asyncio.sleep(interval)
