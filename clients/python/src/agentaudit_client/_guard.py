"""Pieces of ``guard`` and ``Run`` shared by the sync and asyncio clients."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypedDict

from ._convert import ActorLike, ScopeLike
from .models import DecideResult, ReportResult, ResultStatusName

# The server rejects longer error messages; cut ours so a report never fails because of its length.
MAX_ERROR_BYTES = 4096


@dataclass(slots=True)
class Step:
    """One guarded action, yielded by ``guard`` while the block runs.

    Attributes:
        decision: The allow decision that let the block run.
        output: Set it to a JSON-like dict to report it as the action's output.
        report: The acknowledged result, once the block has finished and been reported.
    """

    decision: DecideResult
    output: dict[str, Any] | None = None
    report: ReportResult | None = None

    @property
    def event_id(self) -> str:
        """Id of the pre-event the result is reported against."""
        return self.decision.event_id


def failure(exc: BaseException) -> tuple[ResultStatusName, str]:
    """Returns the status and error message to report for an exception raised by a guarded block."""
    # Cancellation and interpreter exit (BaseException but not Exception) did not fail the action:
    # it was interrupted, and the journal should say so.
    status: ResultStatusName = "failed" if isinstance(exc, Exception) else "cancelled"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    message = text.encode()[:MAX_ERROR_BYTES]
    return status, message.decode(errors="ignore")


def wait_seconds(wait_for_approval: timedelta | float | bool | None) -> float | None:
    """Seconds ``guard`` waits for an approval: None for no wait; ``True`` waits until resolved (or expired)."""
    if wait_for_approval is None or wait_for_approval is False:
        return None
    if wait_for_approval is True:
        return float("inf")
    seconds = wait_for_approval.total_seconds() if isinstance(wait_for_approval, timedelta) else wait_for_approval
    if seconds <= 0:
        raise ValueError("wait_for_approval must be positive")
    return float(seconds)


def output_of(value: object) -> dict[str, Any] | None:
    """The output to report for a guarded function's return value: the value if it is a dict."""
    return value if isinstance(value, dict) else None


def bind_args(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Names a call's arguments by the function's signature, defaults included.

    ``**kwargs`` parameters are merged in at the top level; ``*args`` stay a list under their name.
    """
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            named[name] = list(value)
        else:
            named[name] = value
    return named


class DecideKwargs(TypedDict):
    """Keyword arguments of ``decide`` and ``guard``, as a run fills them in."""

    run_id: str
    tenant_id: str
    action: str
    args: Mapping[str, Any] | None
    step_id: int
    actor: ActorLike | None
    agent_id: str
    scope: ScopeLike | None
    approval_id: str
    traceparent: str
    labels: Mapping[str, str] | None


@dataclass
class RunContext:
    """What every step of a run shares, and the step counter (step ids start at 1)."""

    run_id: str
    tenant_id: str
    agent_id: str = ""
    actor: ActorLike | None = None
    scope: ScopeLike | None = None
    traceparent: str = ""
    labels: Mapping[str, str] | None = None
    _steps: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def next_step(self) -> int:
        """Allocates the next step id (thread-safe: ``next`` on a count is atomic)."""
        return next(self._steps)

    def decide_kwargs(
        self,
        action: str,
        args: Mapping[str, Any] | None,
        *,
        scope: ScopeLike | None,
        approval_id: str,
        labels: Mapping[str, str] | None,
    ) -> DecideKwargs:
        """Keyword arguments for ``decide``/``guard`` for the next step of this run."""
        return {
            "run_id": self.run_id,
            "tenant_id": self.tenant_id,
            "action": action,
            "args": args,
            "step_id": self.next_step(),
            "actor": self.actor,
            "agent_id": self.agent_id,
            "scope": scope if scope is not None else self.scope,
            "approval_id": approval_id,
            "traceparent": self.traceparent,
            "labels": labels if labels is not None else self.labels,
        }
