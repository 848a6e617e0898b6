"""Event loop setup shared by the echo server and the load generator."""

from __future__ import annotations

import asyncio


def install_event_loop_policy() -> None:
    """Installs uvloop the way the real server does (before any loop exists), falling back to asyncio.

    The echo server has to run the same loop as the sidecar, or the echo ceiling would compare event loops
    rather than measure the transport.
    """
    try:
        import uvloop  # noqa: PLC0415 -- optional dependency, absent on some platforms
    except ImportError:
        return
    uvloop.install()


def current_loop_name() -> str:
    """Names the running loop's implementation ("uvloop" or "asyncio") for the results."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
