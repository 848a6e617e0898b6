"""One hook call: parse the agent's JSON, decide (before) or report (after), answer the way the agent expects.

Fail closed: if the sidecar cannot be reached, or answers with an error, a tool is denied with a reason that says
so, unless its class (:func:`~.dialects.tool_class`) is listed in ``fail_open``. An approval is waited for up to
``approval_wait_s`` (0 by default: the hook answers at once); still pending, the call is denied (or, with
``on_approval="ask"``, handed to the agent's own prompt) and the approval id is kept, so the same call retried
after a human approved it (``agentaudit approve ID``) resumes with that approval.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from typing import Any, NamedTuple, TextIO

from . import pairing
from .dialects import DIALECTS, Dialect, ToolEvent, Verdict, tool_class

DEFAULT_SIDECAR = "unix://./.agentaudit/gateway.sock"
MAX_OUTPUT_BYTES = 64 * 1024  # a tool's response can be a whole file: past this only its size is reported


class HookConfig(NamedTuple):  # not a dataclass: see dialects.ToolEvent
    """Who the hook decides for and how it fails; every field has an ``AGENTAUDIT_*`` environment variable."""

    sidecar: str = ""
    tenant_id: str = "local"
    agent_id: str = ""
    actor_id: str = ""
    timeout_s: float = 3.0
    approval_wait_s: float = 0.0
    on_approval: str = "deny"
    fail_open: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str], **flags: Any) -> HookConfig:
        """The configuration from flags (when given) over environment variables over defaults."""

        def pick(flag: str, var: str, default: str) -> str:
            value = flags.get(flag)
            return str(value) if value not in (None, "") else env.get(var, default)

        fail_open = pick("fail_open", "AGENTAUDIT_HOOK_FAIL_OPEN", "")
        return cls(
            sidecar=pick("sidecar", "AGENTAUDIT_SIDECAR", ""),
            tenant_id=pick("tenant", "AGENTAUDIT_TENANT_ID", "local"),
            agent_id=pick("agent", "AGENTAUDIT_AGENT_ID", ""),
            actor_id=pick("actor", "AGENTAUDIT_ACTOR_ID", env.get("USER", "")),
            timeout_s=float(pick("timeout", "AGENTAUDIT_HOOK_TIMEOUT", "3")),
            approval_wait_s=float(pick("approval_wait", "AGENTAUDIT_HOOK_APPROVAL_WAIT", "0")),
            on_approval=pick("on_approval", "AGENTAUDIT_HOOK_ON_APPROVAL", "deny"),
            fail_open=frozenset(c.strip() for c in fail_open.split(",") if c.strip()),
        )


def handle(dialect: Dialect, payload: dict[str, Any], config: HookConfig) -> dict[str, Any]:
    """The answer to one hook payload (an empty dict means no opinion)."""
    event = dialect.parse(payload)
    if event is None:  # an event we were not installed for: stay out of the way
        return {}
    if event.phase == "post":
        _report(dialect, event, config)
        return dialect.render("post", "allow", "")
    verdict, reason = _decide(dialect, event, config)
    return dialect.render("pre", verdict, reason)


def _client(event: ToolEvent, config: HookConfig) -> Any:
    """The sidecar's client for this call: :mod:`.unary` (no gRPC import) where it can reach the target."""
    from agentaudit_client.address import grpc_target  # noqa: PLC0415

    target = grpc_target(config.sidecar or DEFAULT_SIDECAR, base=event.cwd or None)
    if os.environ.get("AGENTAUDIT_HOOK_TRANSPORT", "h2") != "grpc":
        from . import unary  # noqa: PLC0415

        where = unary.endpoint(target)
        if where is not None and _has_h2():
            return unary.GatewayCalls(where, config.timeout_s)
    from agentaudit_client.client import GatewayClient  # noqa: PLC0415 - gRPC only once there is a call

    return GatewayClient(target, timeout=config.timeout_s)


def _has_h2() -> bool:
    try:
        import h2  # noqa: F401, PLC0415 - the package's __init__ only (importlib.util would cost more)
    except ImportError:
        return False
    return True


def _failures(client: Any) -> tuple[type[Exception], ...]:
    """The exceptions ``client`` raises for a failed call (never importing gRPC for the h2 client)."""
    from . import unary  # noqa: PLC0415

    if isinstance(client, unary.GatewayCalls):
        return (unary.CallError,)
    from agentaudit_client.errors import GatewayError  # noqa: PLC0415

    return (GatewayError,)


def _kind(exc: Exception) -> str:
    """The client's error class name for a failed call (``UnavailableError``...), as the deny reason names it."""
    kind = getattr(exc, "kind", None)
    return kind if isinstance(kind, str) else type(exc).__name__


# What a plain connect to a unix socket answers when no sidecar listens there: no socket file, or a stale one.
_NOBODY_LISTENS = frozenset({errno.ENOENT, errno.ECONNREFUSED})


def _nobody_listens(event: ToolEvent, config: HookConfig) -> OSError | None:
    """The connect error when the sidecar's unix socket has no listener, else None (also for TCP targets).

    gRPC would answer UNAVAILABLE at once in exactly these two cases (it connects the same way), so the
    fail-closed answer is known before any client is imported (h2's, or gRPC's for the targets only it reaches).
    Any other outcome (a listener, a timeout, a path too long) goes to the client, which decides as before."""
    from agentaudit_client.address import AddressError, unix_socket_path  # noqa: PLC0415

    try:
        path = unix_socket_path(config.sidecar or DEFAULT_SIDECAR, base=event.cwd or None)
    except AddressError:
        return None  # the client raises the same error, with its message
    if path is None:
        return None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(config.timeout_s)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc if exc.errno in _NOBODY_LISTENS else None
    finally:
        probe.close()
    return None


def _decide(dialect: Dialect, event: ToolEvent, config: HookConfig) -> tuple[Verdict, str]:
    directory = pairing.state_dir(event.cwd)
    call_key = f"{dialect.name}|{event.run_id}|{event.tool}|{json.dumps(event.args, sort_keys=True, default=str)}"
    waiting = pairing.take(directory, "approval", call_key)
    request = {
        "run_id": event.run_id or f"{dialect.name}-session",
        "tenant_id": config.tenant_id,
        "action": f"{dialect.action_prefix}.{event.tool}",
        "args": event.args,
        # Each hook is its own process: microseconds since the epoch keep step ids increasing within a run.
        "step_id": time.time_ns() // 1000,
        "actor": ("user", config.actor_id or "unknown"),
        "agent_id": config.agent_id or dialect.name,
        "labels": {"hook": dialect.name, "tool_class": tool_class(event.tool)},
    }
    refused = _nobody_listens(event, config)
    if refused is not None:
        return _unreachable(event, config, "UnavailableError", str(refused))
    client = _client(event, config)
    try:
        with client:
            decision = client.decide(**request, approval_id=(waiting or {}).get("approval_id", ""))
            if decision.decision == "approval_required" and config.approval_wait_s > 0:
                outcome = client.wait_approval(decision.approval_id, timeout=config.approval_wait_s)
                if outcome.state != "pending":
                    request["step_id"] = time.time_ns() // 1000
                    decision = client.decide(**request, approval_id=decision.approval_id)
    except _failures(client) as exc:
        return _unreachable(event, config, _kind(exc), str(exc))
    if decision.allowed:
        pairing.put(directory, "pre", event.pair_key, {"event_id": decision.event_id, "started": time.time()})
        pairing.prune(directory)
        return "allow", f"agentaudit: allowed ({decision.event_id})"
    if decision.decision == "approval_required":
        pairing.put(directory, "approval", call_key, {"approval_id": decision.approval_id})
        if config.on_approval == "ask":
            # If the person at the agent's prompt says yes, the call runs without an agentaudit approval: report
            # it against this pre-event anyway, so the sidecar journals it as the violation it is.
            pairing.put(directory, "pre", event.pair_key, {"event_id": decision.event_id, "started": time.time()})
        reason = (
            f"agentaudit: approval_required: a human must approve this call (approval {decision.approval_id}: "
            f"`agentaudit approve {decision.approval_id}`), then retry it."
        )
        return ("ask" if config.on_approval == "ask" else "deny"), reason
    retry = f" Retry after {decision.retry_after:g} s." if decision.retry_after else ""
    rule = decision.policy_rule or "default"
    return "deny", f"agentaudit: stopped ({decision.reason}) by policy rule {rule}.{retry}"


def _unreachable(event: ToolEvent, config: HookConfig, kind: str, detail: str) -> tuple[Verdict, str]:
    klass = tool_class(event.tool)
    where = config.sidecar or DEFAULT_SIDECAR
    if klass in config.fail_open:
        print(f"agentaudit: sidecar at {where} unavailable; {klass} tools fail open: {detail}", file=sys.stderr)
        return "allow", ""
    return "deny", (
        f"agentaudit: audit_unavailable: the sidecar at {where} cannot be reached ({kind}), "
        f"so this {klass} call is denied (fail closed; start it with `agentaudit dev`, or set "
        "AGENTAUDIT_HOOK_FAIL_OPEN for tool classes that may run unaudited)."
    )


def _report(dialect: Dialect, event: ToolEvent, config: HookConfig) -> None:
    pending = pairing.take(pairing.state_dir(event.cwd), "pre", event.pair_key)
    if pending is None:  # never allowed by this hook (denied, or hooked in after the call started)
        return
    duration = max(0.0, time.time() - float(pending.get("started", time.time())))
    client = _client(event, config)
    try:
        with client:
            if event.error:
                client.report_result(pending["event_id"], status="failed", error=event.error[:4096], duration=duration)
            else:
                client.report_result(pending["event_id"], output=_output(event.output), duration=duration)
    except _failures(client) as exc:
        print(f"agentaudit: could not report the result of {pending['event_id']}: {exc}", file=sys.stderr)


def _output(value: Any) -> dict[str, Any]:
    text = json.dumps(value, default=str)
    if len(text) > MAX_OUTPUT_BYTES:
        return {"truncated": True, "bytes": len(text)}
    plain = json.loads(text)
    return plain if isinstance(plain, dict) else {"result": plain}


def main(agent: str, config: HookConfig, stdin: TextIO, stdout: TextIO) -> int:
    """Runs one hook call for ``agent``: reads the payload, prints the answer, returns the exit code."""
    dialect = DIALECTS[agent]
    try:
        payload = json.loads(stdin.read() or "{}")
    except json.JSONDecodeError as exc:
        print(f"agentaudit hook {agent}: the hook input is not JSON: {exc}", file=sys.stderr)
        return 2  # every supported agent reads exit code 2 as "block", with stderr as the reason
    answer = handle(dialect, payload if isinstance(payload, dict) else {}, config)
    stdout.write(json.dumps(answer) + "\n")
    return 0
