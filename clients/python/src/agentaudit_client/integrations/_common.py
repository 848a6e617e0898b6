"""What every framework adapter shares: identity from the environment, tool call → Decide / ReportResult.

An adapter only translates. It reads the framework's tool call (name, arguments, run or thread id), asks a
:class:`ToolCallGovernor` to decide it, runs the tool only on allow, and hands the outcome back to the governor
to report; on stop it turns :func:`blocked_text` into the framework's own "blocked" answer so the model reads
the reason. The sidecar does the deciding and recording; nothing here caches or second-guesses a decision.

The API an adapter uses::

    settings = AdapterSettings.from_env(tenant_id=..., agent_id=...)   # AGENTAUDIT_* first, overrides win
    governor = ToolCallGovernor(settings)                               # owns its (lazy) sync and async clients
    run_id = settings.run_id_for(framework_run_id)                      # AGENTAUDIT_RUN_ID, else the framework's
    action = action_name(tool_name, actions)                            # tool name → action name
    decision = governor.decide(run_id, action, tool_args(raw))          # or: await governor.adecide(...)
    if decision.decision == "approval_required" and framework has no approval primitive:
        decision = governor.wait_and_resume(run_id, action, args, decision)   # WaitApproval up to the bound
    if not decision.allowed:
        return framework_blocked_answer(blocked_text(decision))   # the tool never runs
    started = time.monotonic()
    try:
        value = run_the_tool()
    except BaseException as exc:
        governor.report(decision, started, error=exc)                   # "failed" / "cancelled"; never raises
        raise
    governor.report(decision, started, output=tool_output(value))       # "succeeded"

Fail closed: when the sidecar cannot be reached (or answers with an error), ``decide`` returns a ``stop`` with
reason :data:`SIDECAR_UNREACHABLE` instead of raising, so the adapter's ordinary stop path keeps the tool from
running and the model reads why. A failed report is logged (the tool already ran; its result still goes to the
model) and never raised.

Environment (read by :meth:`AdapterSettings.from_env`):

==============================  ======================================================================
``AGENTAUDIT_SIDECAR``          sidecar address (``AGENTAUDIT_TARGET`` is read too; default the dev socket)
``AGENTAUDIT_TENANT_ID``        tenant the agent acts for (required, unless passed)
``AGENTAUDIT_AGENT_ID``         agent id in the policy's bindings
``AGENTAUDIT_ACTOR_TYPE``       ``user`` | ``service`` | ``agent`` (default ``agent``)
``AGENTAUDIT_ACTOR_ID``         who initiated the run (default: the agent id)
``AGENTAUDIT_RUN_ID``           fixed run id (default: the framework's run or thread id)
``AGENTAUDIT_APPROVAL_WAIT_S``  how long a WaitApproval blocks at most (default 300)
==============================  ======================================================================
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._guard import MAX_ERROR_BYTES, failure
from ..aio import AsyncGatewayClient
from ..client import GatewayClient
from ..errors import AgentAuditError, GatewayError
from ..models import ActorTypeName, DecideResult

log = logging.getLogger("agentaudit_client.integrations")

ENV_SIDECAR = "AGENTAUDIT_SIDECAR"
ENV_TARGET = "AGENTAUDIT_TARGET"
ENV_TENANT_ID = "AGENTAUDIT_TENANT_ID"
ENV_AGENT_ID = "AGENTAUDIT_AGENT_ID"
ENV_ACTOR_TYPE = "AGENTAUDIT_ACTOR_TYPE"
ENV_ACTOR_ID = "AGENTAUDIT_ACTOR_ID"
ENV_RUN_ID = "AGENTAUDIT_RUN_ID"
ENV_APPROVAL_WAIT_S = "AGENTAUDIT_APPROVAL_WAIT_S"

DEFAULT_SIDECAR = "unix://./.agentaudit/gateway.sock"
DEFAULT_APPROVAL_WAIT_S = 300.0
DEFAULT_TIMEOUT_S = 10.0

SIDECAR_UNREACHABLE = "sidecar_unreachable"
"""Reason of the client-side ``stop`` returned when Decide failed: nothing was decided, so nothing runs."""

# Step counters kept per run; an adapter serving a long-lived process forgets the oldest runs past this.
_MAX_RUNS = 10_000
_ACTOR_TYPES: tuple[ActorTypeName, ...] = ("user", "service", "agent")
# Tool outputs larger than this (as JSON) are reported as a note of their size, not in full.
MAX_OUTPUT_CHARS = 64_000

ActionNames = Mapping[str, str] | Callable[[str], str] | None
"""How tool names become action names: a mapping (names not in it stay as they are), a function, or None."""


class AdapterConfigError(AgentAuditError, ValueError):
    """The adapter lacks what it needs to decide (a tenant, a valid actor type, a positive wait)."""


@dataclass(frozen=True)
class AdapterSettings:
    """Where the sidecar is and who acts: one set per adapter instance.

    Attributes:
        sidecar: Sidecar address, any form ``grpc_target`` accepts.
        tenant_id: Tenant the agent acts for.
        agent_id: Agent id, as the policy's bindings name it.
        actor_type: "user", "service" or "agent".
        actor_id: Who initiated the run (empty: the agent id).
        run_id: A fixed run id; empty to take the framework's run or thread id.
        approval_wait_s: The most a WaitApproval blocks, for frameworks with no approval primitive of their own.
        timeout_s: Deadline of each Decide and ReportResult.
        labels: Labels sent with every decision.
    """

    sidecar: str = DEFAULT_SIDECAR
    tenant_id: str = ""
    agent_id: str = ""
    actor_type: ActorTypeName = "agent"
    actor_id: str = ""
    run_id: str = ""
    approval_wait_s: float = DEFAULT_APPROVAL_WAIT_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tenant_id:
            raise AdapterConfigError(f"agentaudit needs a tenant: pass tenant_id or set {ENV_TENANT_ID}")
        if self.actor_type not in _ACTOR_TYPES:
            raise AdapterConfigError(f"actor_type must be one of {', '.join(_ACTOR_TYPES)}, not {self.actor_type!r}")
        if not self.approval_wait_s > 0:
            raise AdapterConfigError("approval_wait_s must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AdapterSettings:
        """Settings from ``AGENTAUDIT_*`` variables (see the module docstring); non-empty ``overrides`` win.

        Raises:
            AdapterConfigError: no tenant, an unknown actor type, or a wait that is not a positive number.
        """
        env = os.environ if environ is None else environ
        wait_text = env.get(ENV_APPROVAL_WAIT_S, "")
        try:
            wait = float(wait_text) if wait_text else DEFAULT_APPROVAL_WAIT_S
        except ValueError:
            raise AdapterConfigError(f"{ENV_APPROVAL_WAIT_S}={wait_text!r} is not a number of seconds") from None
        values: dict[str, Any] = {
            "sidecar": env.get(ENV_SIDECAR) or env.get(ENV_TARGET) or DEFAULT_SIDECAR,
            "tenant_id": env.get(ENV_TENANT_ID, ""),
            "agent_id": env.get(ENV_AGENT_ID, ""),
            "actor_type": env.get(ENV_ACTOR_TYPE) or "agent",
            "actor_id": env.get(ENV_ACTOR_ID, ""),
            "run_id": env.get(ENV_RUN_ID, ""),
            "approval_wait_s": wait,
        }
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown agentaudit settings: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None and v != ""})
        return cls(**values)

    @property
    def actor(self) -> tuple[str, str]:
        """The run's initiator as ``(type, id)``; the agent id (else "agent") when no actor id is set."""
        return (self.actor_type, self.actor_id or self.agent_id or "agent")

    def run_id_for(self, framework_run_id: object = None) -> str:
        """The run id to decide under: the fixed one, else the framework's (as text), else a fresh one."""
        if self.run_id:
            return self.run_id
        if framework_run_id is not None and str(framework_run_id):
            return str(framework_run_id)
        return "run_" + uuid.uuid4().hex


def action_name(tool_name: str, actions: ActionNames = None) -> str:
    """The action name a tool call is decided as: ``actions`` applied to the tool's name (default: the name)."""
    if actions is None:
        return tool_name
    if callable(actions):
        return actions(tool_name)
    return actions.get(tool_name, tool_name)


def _jsonable(value: Any) -> Any:
    """A JSON-like copy of ``value``: pydantic models and dataclasses as dicts, anything else unknown as text."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # pydantic models: their JSON form, not their repr
        return _jsonable(dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return str(value)


def tool_args(raw: Any) -> dict[str, Any]:
    """The Decide args of a tool call: its arguments as a JSON-like dict (a lone value under ``input``)."""
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw) if raw.strip().startswith("{") else raw
        except ValueError:
            parsed = raw
        raw = parsed
    value = _jsonable(raw)
    if isinstance(value, dict):
        return value
    return {} if value is None else {"input": value}


def tool_output(value: Any) -> dict[str, Any] | None:
    """The ReportResult output of a tool's return value: a dict as is, else the value under ``result``.

    The sidecar redacts and digests it like args; a very large output is reported by its size only.
    """
    if value is None:
        return None
    data = _jsonable(value)
    output = data if isinstance(data, dict) else {"result": data}
    size = len(json.dumps(output, default=str))
    if size > MAX_OUTPUT_CHARS:
        return {"truncated": True, "json_chars": size}
    return output


def blocked_text(decision: DecideResult, action: str = "") -> str:
    """What the model reads when a tool call is not run: the decision, its reason, and what to do next."""
    what = f"the call {action}" if action else "this tool call"
    if decision.reason == SIDECAR_UNREACHABLE:
        return f"agentaudit could not reach its sidecar, so {what} was not run (fail closed). Retry later."
    if decision.decision == "approval_required" or decision.reason == "approval_pending":
        return pending_text(decision, action)
    text = f"agentaudit stopped {what}: {decision.reason}"
    if decision.policy_rule:
        text += f" (policy {decision.policy_layer}/{decision.policy_rule})"
    text += ". It was not run."
    if decision.retry_after:
        text += f" Retry after {decision.retry_after:g} s."
    elif decision.reason.startswith("approval_"):
        text += " Do not retry it without a new approval."
    else:
        text += " Do not retry it."
    return text


def pending_text(decision: DecideResult, action: str = "") -> str:
    """What the model (or the app) reads while a human approval is still open; nothing was run."""
    what = f"the call {action}" if action else "this tool call"
    approval = decision.approval_id
    return (
        f"agentaudit: {what} needs a human approval ({approval}); it was not run. "
        f"An approver runs `agentaudit approve {approval}`."
    )


class _StepCounter:
    """Step ids per run, from 1; thread-safe, forgets the least recently used runs past ``_MAX_RUNS``."""

    def __init__(self) -> None:
        self._next: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def next(self, run_id: str) -> int:
        with self._lock:
            step = self._next.pop(run_id, 1)
            self._next[run_id] = step + 1
            if len(self._next) > _MAX_RUNS:
                self._next.popitem(last=False)
            return step


class ToolCallGovernor:
    """Decides tool calls and reports their results for one adapter, sync or asyncio.

    Holds one ``GatewayClient`` and one ``AsyncGatewayClient``, each created on first use (an asyncio channel
    binds to the event loop that first uses it, so a sync-only agent never makes one). Steps are numbered
    per run id. Thread-safe.
    """

    def __init__(self, settings: AdapterSettings) -> None:
        self.settings = settings
        # Fixed for the governor's life (the settings are frozen): computed once, not on every call.
        self._actor = settings.actor
        self._labels = dict(settings.labels)
        self._steps = _StepCounter()
        self._client: GatewayClient | None = None
        self._aclient: AsyncGatewayClient | None = None
        self._lock = threading.Lock()

    # --- clients ---------------------------------------------------------------------------------------------

    @property
    def client(self) -> GatewayClient:
        """The blocking client (created on first use; after that, read without taking the lock)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = GatewayClient(self.settings.sidecar, timeout=self.settings.timeout_s)
            return self._client

    @property
    def aclient(self) -> AsyncGatewayClient:
        """The asyncio client (created on first use, inside the running loop; then read without the lock)."""
        aclient = self._aclient
        if aclient is not None:
            return aclient
        with self._lock:
            if self._aclient is None:
                self._aclient = AsyncGatewayClient(self.settings.sidecar, timeout=self.settings.timeout_s)
            return self._aclient

    def close(self) -> None:
        """Closes the blocking client (the asyncio one is closed by ``aclose``)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Closes both clients."""
        self.close()
        with self._lock:
            aclient, self._aclient = self._aclient, None
        if aclient is not None:
            await aclient.aclose()

    # --- decide ----------------------------------------------------------------------------------------------

    def _decide_kwargs(
        self, run_id: str, action: str, args: Mapping[str, Any], approval_id: str, labels: Mapping[str, str] | None
    ) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "step_id": self._steps.next(run_id),
            "tenant_id": self.settings.tenant_id,
            "agent_id": self.settings.agent_id,
            "actor": self._actor,
            "action": action,
            "args": args,
            "approval_id": approval_id,
            "labels": {**self._labels, **labels} if labels else self._labels or None,
        }

    def decide(
        self,
        run_id: str,
        action: str,
        args: Mapping[str, Any],
        *,
        approval_id: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> DecideResult:
        """Decides the next step of ``run_id``; a failed call is a ``stop`` (:data:`SIDECAR_UNREACHABLE`)."""
        try:
            return self.client.decide(**self._decide_kwargs(run_id, action, args, approval_id, labels))
        except GatewayError as exc:
            return _unreachable(action, exc)

    async def adecide(
        self,
        run_id: str,
        action: str,
        args: Mapping[str, Any],
        *,
        approval_id: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> DecideResult:
        """``decide``, awaited."""
        try:
            return await self.aclient.decide(**self._decide_kwargs(run_id, action, args, approval_id, labels))
        except GatewayError as exc:
            return _unreachable(action, exc)

    def wait_and_resume(
        self, run_id: str, action: str, args: Mapping[str, Any], decision: DecideResult, *, wait_s: float | None = None
    ) -> DecideResult:
        """Waits (WaitApproval, at most ``wait_s`` or the settings' bound) for a human, then decides again.

        Returns the resumed decision: allow once granted; a stop naming why otherwise (``approval_denied``,
        ``approval_expired``, ``approval_pending`` when nobody answered in time). Returns ``decision`` as is
        when it is not ``approval_required``.
        """
        if decision.decision != "approval_required":
            return decision
        try:
            self.client.wait_approval(decision.approval_id, timeout=wait_s or self.settings.approval_wait_s)
        except GatewayError as exc:
            return _unreachable(action, exc)
        # Resolved or not, the sidecar's answer to the resume is what counts, and it journals the attempt.
        return self.decide(run_id, action, args, approval_id=decision.approval_id)

    async def await_and_resume(
        self, run_id: str, action: str, args: Mapping[str, Any], decision: DecideResult, *, wait_s: float | None = None
    ) -> DecideResult:
        """``wait_and_resume``, awaited."""
        if decision.decision != "approval_required":
            return decision
        try:
            await self.aclient.wait_approval(decision.approval_id, timeout=wait_s or self.settings.approval_wait_s)
        except GatewayError as exc:
            return _unreachable(action, exc)
        return await self.adecide(run_id, action, args, approval_id=decision.approval_id)

    # --- report ----------------------------------------------------------------------------------------------

    @staticmethod
    def _report_kwargs(
        started: float, output: Mapping[str, Any] | None, error: BaseException | str | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"duration": max(0.0, time.monotonic() - started)}
        if error is None:
            kwargs.update(status="succeeded", output=output)
        elif isinstance(error, str):
            kwargs.update(status="failed", error=error.encode()[:MAX_ERROR_BYTES].decode(errors="ignore"))
        else:
            status, message = failure(error)
            kwargs.update(status=status, error=message)
        return kwargs

    def report(
        self,
        decision: DecideResult,
        started: float,
        *,
        output: Mapping[str, Any] | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        """Reports how an allowed call went (``started``: its ``time.monotonic()``); logs, never raises."""
        try:
            self.client.report_result(decision.event_id, **self._report_kwargs(started, output, error))
        except GatewayError as exc:  # the tool already ran: the model still gets its result
            log.error("agentaudit: could not report the result of %s: %s", decision.event_id, exc)

    async def areport(
        self,
        decision: DecideResult,
        started: float,
        *,
        output: Mapping[str, Any] | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        """``report``, awaited."""
        try:
            await self.aclient.report_result(decision.event_id, **self._report_kwargs(started, output, error))
        except GatewayError as exc:
            log.error("agentaudit: could not report the result of %s: %s", decision.event_id, exc)


def _unreachable(action: str, exc: GatewayError) -> DecideResult:
    log.error("agentaudit: Decide failed for %s, not running it: %s", action, exc)
    return DecideResult(decision="stop", reason=SIDECAR_UNREACHABLE)
