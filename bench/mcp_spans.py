"""Runs ``agentaudit mcp`` with wall-clock timers on the stages of a ``tools/call`` (for ``bench.mcp_profile``).

``python -m bench.mcp_spans OUT -m gateway.cli mcp ...``: wraps, in this process only, the proxy's handler
(``GoverningProxy.call_tool``), the sidecar session's ``decide`` and ``report_result`` (``AsyncSession``: the
proxy's Session stream; a queued report returns once queued) and the upstream
``Upstream.call_tool``, and at exit writes every duration (seconds) per stage to OUT as JSON. SIGUSR1 clears what
was collected so far (the warm-up). Nothing of this is in the proxy itself. With MCP_SPANS_NO_UVLOOP=1 the proxy
runs on the plain asyncio loop (to see what uvloop changes).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

_SPANS: dict[str, list[float]] = {"handler": [], "decide": [], "upstream": [], "report": []}


def _timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            _SPANS[stage].append(time.perf_counter() - started)

    return wrapper


def _clear(signum: int, frame: FrameType | None) -> None:
    for durations in _SPANS.values():
        durations.clear()


def _dump(out: str) -> None:
    with open(out, "w") as f:
        json.dump(_SPANS, f)


def main() -> None:
    out, flag, module, *rest = sys.argv[1:]
    if flag != "-m":
        raise SystemExit("usage: python -m bench.mcp_spans OUT -m MODULE [ARGS...]")
    from agentaudit_client.session import AsyncSession  # noqa: PLC0415
    from gateway.mcp.proxy import GoverningProxy  # noqa: PLC0415
    from gateway.mcp.upstream import Upstream  # noqa: PLC0415

    GoverningProxy.call_tool = _timed("handler", GoverningProxy.call_tool)  # type: ignore[method-assign]
    AsyncSession.decide = _timed("decide", AsyncSession.decide)  # type: ignore[method-assign]
    AsyncSession.report_result = _timed("report", AsyncSession.report_result)  # type: ignore[method-assign]
    Upstream.call_tool = _timed("upstream", Upstream.call_tool)  # type: ignore[method-assign]
    if os.environ.get("MCP_SPANS_NO_UVLOOP"):
        sys.modules["uvloop"] = None  # type: ignore[assignment]
    sys.argv = [module, *rest]
    signal.signal(signal.SIGUSR1, _clear)
    atexit.register(_dump, out)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
