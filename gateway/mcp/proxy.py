"""The governing core both transports share: every ``tools/call`` is decided, forwarded only on allow, reported.

A client of the sidecar (``agentaudit_client``), never a journal writer. Per call:

1. Identity: action ``mcp.<server>.<tool>``, args = the tool arguments; tenant, agent and actor from the
   configuration (flags, environment, or verified JWT claims in HTTP mode); the run from ``_meta``
   (``agentaudit/run_id``), the ``Agentaudit-Run-Id`` header, the flag, or the client session; steps numbered
   per run; W3C ``traceparent`` from ``_meta``.
2. Decide. ``allow`` forwards and reports the result (``isError`` → failed) with its duration, the report sent
   beside the answer on the Session stream, in causal order (docs/mcp.md, "When the result is journaled";
   ``--report-before-answer`` waits for it). ``stop`` answers a
   tool error the model can read. ``approval_required`` asks a human through URL-mode elicitation (never a form:
   a client can forge an "accept") and resumes only when the sidecar, deciding again with the approval id, allows.
3. Fail closed: if the sidecar cannot be reached, nothing is forwarded.

Not governed, passed through: resources (with subscriptions), prompts, logging levels, the server's
notifications and its requests to the client (sampling, roots, elicitation: ``relay.py``), the client's
``notifications/roots/list_changed``, each call's progress, and cancellation: a call the client cancels is
cancelled upstream and reported ``cancelled``.

``tools/list`` hides tools the policy's access layer can never allow for this identity (no journaling), and
pins each definition's digest; a changed definition is journaled when a listing shows it, through a Decide for
``mcp.<server>.tools/list`` with labels (``GoverningProxy._journal_change``), and marks every later call of the
tool (``tool.changed`` in CEL).
"""

from __future__ import annotations

import gc
import json
import logging
import time
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from agentaudit_client import AsyncGatewayClient, DecideResult, GatewayError
from gateway import reasons
from gateway.mcp.listing import Identity, ListingPolicy, may_ever_allow, tool_digest
from gateway.mcp.relay import NotificationRelay
from gateway.mcp.seal import SealError, StateSealer, args_digest
from gateway.mcp.state import ProxyState, load_or_create_key
from gateway.mcp.upstream import Upstream, UpstreamUnavailableError

log = logging.getLogger("agentaudit.mcp")

RUN_ID_META_KEY = "agentaudit/run_id"
RUN_ID_HEADER = "agentaudit-run-id"
# Where HTTP mode's bearer middleware (bearer.py) leaves the identity it verified, in the request's ASGI scope.
VERIFIED_IDENTITY_SCOPE_KEY = "agentaudit.identity"
TRACEPARENT_META_KEY = "traceparent"
APPROVAL_INPUT_KEY = "agentaudit_approval"
# Labels the sidecar reads as the ``tool`` CEL variable (gateway.policy.engine); annotations are the server's
# hints, untrusted.
LABEL_SERVER = "mcp.server"
LABEL_TOOL_CHANGED = "mcp.tool_changed"
LABEL_TOOL_CHANGE_NEW = "mcp.tool_change_new"
LABEL_TOOL_DIGEST = "mcp.tool_digest"
LABEL_TOOL_PINNED = "mcp.tool_pinned_digest"
LABEL_ANNOTATION_PREFIX = "mcp.annotation."
# On the tools/list Decide that journals a changed definition: which tool, and the action its calls have.
LABEL_TOOL = "mcp.tool"
LABEL_TOOL_ACTION = "mcp.tool_action"
LIST_TOOLS_ACTION = "tools/list"  # decided as mcp.<server>.tools/list
# A tools/call answer: the proxy's own (a tool error, an approval request) or the server's result as it came.
ToolAnswer = types.CallToolResult | types.InputRequiredResult | dict[str, Any]
_ANNOTATION_HINTS = ("destructiveHint", "readOnlyHint", "idempotentHint", "openWorldHint")


@dataclass(frozen=True)
class ProxyConfig:
    """How the proxy governs (flags of ``agentaudit mcp``)."""

    sidecar: str
    server_name: str
    identity: Identity
    state_dir: Path
    run_id: str = ""
    policy_path: Path | None = None
    approval_url_template: str = ""
    approval_wait_s: float = 300.0
    sidecar_timeout_s: float = 10.0
    labels: Mapping[str, str] = field(default_factory=dict)
    # True: a tools/call result waits for its ReportResult's ack before it goes back (docs/mcp.md, "When the result
    # is journaled", says what the default, False, keeps and gives up).
    report_before_answer: bool = False


@dataclass
class _ToolInfo:
    digest: str
    pinned: str
    hints: dict[str, bool]

    @property
    def changed(self) -> bool:
        return self.digest != self.pinned


def tool_error(text: str) -> types.CallToolResult:
    """A tool result the model reads (a deny is a value, not a JSON-RPC error)."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def stop_text(decision: DecideResult) -> str:
    """What the model is told when the sidecar says stop."""
    text = f"agentaudit stopped this call: {decision.reason}"
    if decision.policy_rule:
        text += f" (policy {decision.policy_layer}/{decision.policy_rule})"
    if decision.retry_after is not None:
        text += f"; retry after {decision.retry_after:.3g}s"
    return text + "."


def _result_output(result: Mapping[str, Any]) -> dict[str, Any]:
    """What ReportResult records of a tool result (wire form): its content and structured content."""
    output: dict[str, Any] = {"content": result.get("content") or []}
    if result.get("structuredContent") is not None:
        output["structuredContent"] = result["structuredContent"]
    return output


class GoverningProxy:
    """An MCP server that governs a real one. Build with ``await GoverningProxy.open(...)``."""

    def __init__(self, config: ProxyConfig, upstream: Upstream, gateway: AsyncGatewayClient) -> None:
        self.config = config
        self.upstream = upstream
        self.gateway = gateway
        # Decides and reports share one Session stream (ADR 0025): cheaper per call than unary calls, and a report
        # queued before a call's answer is journaled before any Decide the client could make after seeing it.
        # Each report is written at once (no linger): its commit then overlaps the answer's trip to the client and
        # the client's next request. With the client's 1 ms linger a sequential client's next Decide arrived just
        # after the report had gone alone and waited behind its commit (docs/performance.md, 0 vs 1 vs 5 ms).
        self.session = gateway.session(report_linger_s=0.0, on_report_error=_log_report_failure)
        self._state = ProxyState(config.state_dir)
        self.sealer = StateSealer(load_or_create_key(config.state_dir), self._state)
        self._policy = ListingPolicy(config.policy_path)
        self._tools: dict[str, _ToolInfo] = {}
        self._steps: dict[str, int] = {}
        self._pending: dict[tuple[str, str, str], str] = {}  # (principal, tool, args digest) → approval id
        self._session_runs: dict[int, str] = {}
        self.relay = NotificationRelay()
        upstream.on_message = self.relay.relay
        upstream.on_sampling = self.relay.sampling
        upstream.on_elicitation = self.relay.elicitation
        upstream.on_list_roots = self.relay.list_roots
        self.server = self._build_server()

    async def start(self) -> None:
        """Connects to the upstream server; freezes what start-up allocated out of the collector's view."""
        await self.upstream.start()
        # The long-lived objects (modules, the SDK's pydantic schemas) would otherwise be scanned again by every
        # full collection on the call path, as in the sidecar (gateway.app.freeze_startup_objects).
        gc.collect()
        gc.freeze()

    async def aclose(self) -> None:
        """Stops in order: the upstream connection, the reports in flight, the sidecar channel, the state file."""
        await self.upstream.aclose()
        try:
            await self.session.aclose()  # waits for every report's acknowledgement (failures go to the log)
        except GatewayError as exc:
            log.error("reports in flight at exit were not all acknowledged: %s", exc)
        await self.gateway.aclose()
        self._state.close()

    def _build_server(self) -> Server[Any]:
        with warnings.catch_warnings():
            # Logging is deprecated as of 2026-07-28; the proxy still passes it through for older clients.
            warnings.simplefilter("ignore")
            server: Server[Any] = Server(
                f"agentaudit-{self.config.server_name}",
                on_list_tools=self.list_tools,
                on_call_tool=cast(Any, self.call_tool),  # it may answer the server's result dict, as it came
                on_list_resources=self._passthrough("list_resources"),
                on_list_resource_templates=self._passthrough("list_resource_templates"),
                on_read_resource=self._read_resource,
                on_subscribe_resource=self._subscribe,
                on_unsubscribe_resource=self._unsubscribe,
                on_list_prompts=self._passthrough("list_prompts"),
                on_get_prompt=self._get_prompt,
                on_set_logging_level=self._set_logging_level,
                on_roots_list_changed=self._roots_list_changed,
            )
        server.middleware.append(self._see_connection)
        return server

    async def _see_connection(self, ctx: ServerRequestContext[Any], call_next: Any) -> Any:
        # Handshake-era connections have a standalone stream for the server's notifications (relay.py).
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self.relay.seen(ctx.session)
        return await call_next(ctx)

    # --- pass-through (not governed) ---------------------------------------------------------------------------

    def _passthrough(self, method: str) -> Any:
        async def handler(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
            return await self.upstream.call(method, params=_page(params))

        return handler

    async def _read_resource(self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams) -> Any:
        return await self.upstream.call("read_resource", str(params.uri))

    async def _subscribe(self, ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resources/subscribe is 2025-era; the upstream link is handshake-era
            return await self.upstream.call("subscribe_resource", str(params.uri))

    async def _unsubscribe(self, ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return await self.upstream.call("unsubscribe_resource", str(params.uri))

    async def _set_logging_level(self, ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams) -> Any:
        return await self.upstream.call("set_logging_level", params.level)

    async def _roots_list_changed(
        self, ctx: ServerRequestContext[Any], params: types.NotificationParams | None
    ) -> None:
        # The client's roots changed: tell the server, which lists them again (through relay.list_roots).
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # roots is deprecated as of 2026-07-28
                await self.upstream.call("send_roots_list_changed")
        except Exception as exc:  # a notification has no answer to carry an error
            log.warning("could not relay notifications/roots/list_changed upstream: %s", exc)

    async def _get_prompt(self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> Any:
        return await self.upstream.call("get_prompt", params.name, params.arguments)

    # --- identity ------------------------------------------------------------------------------------------------

    def identity(self, ctx: ServerRequestContext[Any]) -> Identity:
        """The identity a verified bearer token carries (HTTP with ``--jwt-*``), else the configured one."""
        scope = getattr(ctx.request, "scope", None)
        verified = scope.get(VERIFIED_IDENTITY_SCOPE_KEY) if isinstance(scope, Mapping) else None
        return verified if isinstance(verified, Identity) else self.config.identity

    def _run_id(self, ctx: ServerRequestContext[Any], meta: Mapping[str, Any]) -> str:
        from_meta = meta.get(RUN_ID_META_KEY)
        if isinstance(from_meta, str) and from_meta:
            return from_meta
        request = ctx.request
        headers = getattr(request, "headers", None)
        if headers is not None and headers.get(RUN_ID_HEADER):
            return str(headers[RUN_ID_HEADER])
        if self.config.run_id:
            return self.config.run_id
        if headers is not None and headers.get("mcp-session-id"):
            return f"mcp-{headers['mcp-session-id']}"
        # stdio, or a stateless request with nothing better: one run per client connection.
        key = id(ctx.session)
        if key not in self._session_runs:
            self._session_runs[key] = f"mcp-{self.config.server_name}-{time.time_ns():x}"
        return self._session_runs[key]

    def _next_step(self, run_id: str) -> int:
        self._steps[run_id] = self._steps.get(run_id, 0) + 1
        return self._steps[run_id]

    # --- tools/list ----------------------------------------------------------------------------------------------

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        """The upstream's tools, minus those the access layer never allows; each definition pinned.

        A definition that changed since it was pinned is journaled now, through a Decide for the action
        ``mcp.<server>.tools/list`` (see :meth:`_journal_change`); a changed tool that Decide does not allow is
        withheld from this listing, so what the client saw matches what the journal says.
        """
        listed: types.ListToolsResult = await self.upstream.call("list_tools", params=_page(params))
        self._remember(listed.tools)
        identity = self.identity(ctx)
        withheld: set[str] = set()
        server = self.config.server_name
        for tool in listed.tools:
            info = self._tools[tool.name]
            if not info.changed:
                continue
            if self._state.first_report(server, tool.name, info.digest):
                run_id = self._run_id(ctx, (params.meta or {}) if params else {})
                if not await self._journal_change(tool.name, info, identity, run_id):
                    withheld.add(tool.name)
            elif self._state.withheld(server, tool.name, info.digest):
                withheld.add(tool.name)  # decided at an earlier listing: not listed while this definition stands
        document = self._policy.document()
        listed.tools = [
            t
            for t in listed.tools
            if t.name not in withheld and (document is None or may_ever_allow(document, self.action(t.name), identity))
        ]
        return listed

    async def _journal_change(self, name: str, info: _ToolInfo, identity: Identity, run_id: str) -> bool:
        """Journals a changed definition at ``tools/list`` time; True if the tool may stay listed.

        The proxy speaks to the sidecar only through Decide and ReportResult, so the change travels as a Decide
        for the action ``mcp.<server>.tools/list`` whose labels name the tool and both digests (the sidecar
        journals a ``tool_changed`` event for it, then the pre-event). The policy decides that action like any
        other: ``allow`` keeps the tool listed and the listing is reported succeeded; ``stop`` or
        ``approval_required`` withholds it from this and later listings while the definition stands (nothing is
        reported, since nothing ran). If the sidecar cannot be
        reached the tool is withheld (fail closed) and the change is reported again at the next listing.
        """
        labels = {
            **self.config.labels,
            **self._change_labels(info),
            LABEL_SERVER: self.config.server_name,
            LABEL_TOOL: name,
            LABEL_TOOL_ACTION: self.action(name),
            LABEL_TOOL_CHANGE_NEW: "true",
        }
        try:
            decision = await self.session.decide(
                run_id=run_id,
                step_id=self._next_step(run_id),
                tenant_id=identity.tenant_id,
                agent_id=identity.agent_id,
                actor=(identity.actor_type, identity.actor_id or identity.agent_id or "mcp-client"),
                action=self.action(LIST_TOOLS_ACTION),
                args={"tool": name},
                labels=labels,
            )
        except GatewayError as exc:
            log.error("sidecar Decide failed for the changed tool %s: %s; withheld from tools/list", name, exc)
            self._state.forget_report(self.config.server_name, name, info.digest)
            return False
        if decision.decision != "allow":
            log.warning("changed MCP tool %s withheld from tools/list: %s", name, decision.reason)
            self._state.withhold(self.config.server_name, name, info.digest)
            return False
        try:
            await self.session.report_result(
                decision.event_id, status="succeeded", output={"listed": name}, duration=0.0
            )
        except GatewayError as exc:
            log.error("ReportResult for %s failed: %s", decision.event_id, exc)
        return True

    def _remember(self, tools: list[types.Tool]) -> None:
        for tool in tools:
            digest = tool_digest(tool)
            pinned = self._state.pin(self.config.server_name, tool.name, digest)
            annotations = tool.annotations
            hints = {
                hint: bool(value)
                for hint in _ANNOTATION_HINTS
                if annotations is not None and (value := getattr(annotations, _snake(hint), None)) is not None
            }
            self._tools[tool.name] = _ToolInfo(digest, pinned, hints)
            if digest != pinned:
                log.warning("MCP tool %s.%s changed since it was pinned", self.config.server_name, tool.name)

    @staticmethod
    def _change_labels(info: _ToolInfo) -> dict[str, str]:
        labels = {LABEL_TOOL_CHANGED: "true" if info.changed else "false"}
        labels.update({LABEL_ANNOTATION_PREFIX + k: "true" if v else "false" for k, v in info.hints.items()})
        if info.changed:
            labels[LABEL_TOOL_DIGEST] = info.digest
            labels[LABEL_TOOL_PINNED] = info.pinned
        return labels

    def action(self, tool: str) -> str:
        """The action name the sidecar sees for a tool."""
        return f"mcp.{self.config.server_name}.{tool}"

    async def _tool_labels(self, name: str) -> dict[str, str]:
        if name not in self._tools:
            try:
                self._remember((await self.upstream.call("list_tools")).tools)
            except Exception as exc:
                log.warning("cannot list upstream tools: %s", exc)
        labels = {**self.config.labels, LABEL_SERVER: self.config.server_name}
        info = self._tools.get(name)
        if info is None:
            return labels
        labels.update(self._change_labels(info))
        # Normally journaled when the listing showed it; a call arriving with no such listing (a client that
        # listed before the change) carries the news itself.
        if info.changed and self._state.first_report(self.config.server_name, name, info.digest):
            labels[LABEL_TOOL_CHANGE_NEW] = "true"
        return labels

    # --- tools/call ----------------------------------------------------------------------------------------------

    async def call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> ToolAnswer:
        """Decide → forward on allow → report; stop and pending approvals become tool errors."""
        name, arguments = params.name, dict(params.arguments or {})
        meta: Mapping[str, Any] = params.meta or {}
        identity = self.identity(ctx)
        run_id = self._run_id(ctx, meta)
        principal = f"{identity.tenant_id}|{identity.agent_id}|{identity.actor_type}:{identity.actor_id}|{run_id}"
        digest = args_digest(arguments)
        approval_id = ""
        if params.request_state is not None:
            try:
                approval_id = self.sealer.open(params.request_state, name, digest, principal).approval_id
            except SealError as exc:
                return tool_error(f"agentaudit refused this retry: {exc}. Nothing was run.")
            # input_responses are deliberately ignored: an "accept" relayed by the client is not an approval.
        else:
            approval_id = self._pending.pop((principal, name, digest), "")
        traceparent = meta.get(TRACEPARENT_META_KEY)
        call = _Call(self, ctx, name, arguments, identity, run_id, principal, digest)
        call.traceparent = traceparent if isinstance(traceparent, str) else ""
        call.labels = await self._tool_labels(name)
        decision = await call.decide(approval_id)
        if decision is None:
            return tool_error(
                "agentaudit could not reach its sidecar, so this call was not run (fail closed). Retry later."
            )
        if approval_id and decision.decision == "approval_required" and decision.approval_id == approval_id:
            return call.still_pending(decision)  # a resume before the human decided: never ask again in a loop
        return await call.answer(decision)

    def remember_pending(self, principal: str, tool: str, digest: str, approval_id: str) -> None:
        """A later identical call resumes with this approval (clients that cannot carry a requestState)."""
        self._pending[(principal, tool, digest)] = approval_id

    def approval_url(self, approval_id: str, action: str) -> str:
        """Where a human approves: the configured console page, else a text naming the CLI command."""
        if self.config.approval_url_template:
            return self.config.approval_url_template.replace("{approval_id}", urllib.parse.quote(approval_id))
        text = (
            f"agentaudit: the call {action} needs a human approval ({approval_id}). "
            f"An approver runs: agentaudit approve {approval_id}"
        )
        return "data:text/plain;charset=utf-8," + urllib.parse.quote(text)


def _page(params: types.PaginatedRequestParams | None) -> types.PaginatedRequestParams | None:
    """The client's cursor, for the upstream request (its ``_meta`` is the client's own, not forwarded)."""
    return types.PaginatedRequestParams(cursor=params.cursor) if params is not None and params.cursor else None


def _snake(hint: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in hint)


@dataclass
class _Call:
    """One governed ``tools/call`` in flight."""

    proxy: GoverningProxy
    ctx: ServerRequestContext[Any]
    tool: str
    arguments: dict[str, Any]
    identity: Identity
    run_id: str
    principal: str
    digest: str
    traceparent: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    async def decide(self, approval_id: str) -> DecideResult | None:
        identity = self.identity
        try:
            # On the Session stream: the reports queued before it (results the client has seen) are journaled first.
            return await self.proxy.session.decide(
                run_id=self.run_id,
                step_id=self.proxy._next_step(self.run_id),
                tenant_id=identity.tenant_id,
                agent_id=identity.agent_id,
                actor=(identity.actor_type, identity.actor_id or identity.agent_id or "mcp-client"),
                action=self.proxy.action(self.tool),
                args=self.arguments,
                approval_id=approval_id,
                traceparent=self.traceparent,
                labels=self.labels,
            )
        except GatewayError as exc:
            log.error("sidecar Decide failed for %s: %s", self.tool, exc)
            return None

    async def answer(self, decision: DecideResult) -> ToolAnswer:
        if decision.decision == "allow":
            return await self.forward(decision)
        if decision.decision == "approval_required":
            return await self.ask_approval(decision)
        if decision.reason == reasons.APPROVAL_PENDING:
            return self.still_pending(decision)
        return tool_error(stop_text(decision))

    def still_pending(self, decision: DecideResult) -> types.CallToolResult:
        approval_id = decision.approval_id
        if approval_id:
            self.proxy.remember_pending(self.principal, self.tool, self.digest, approval_id)
        return tool_error(
            f"agentaudit: approval {approval_id or ''} is still pending; nothing was run. "
            "Retry the same call once a human has approved it."
        )

    async def ask_approval(self, decision: DecideResult) -> ToolAnswer:
        approval_id = decision.approval_id
        url = self.proxy.approval_url(approval_id, self.proxy.action(self.tool))
        message = f"agentaudit: {self.proxy.action(self.tool)} needs a human approval ({approval_id})."
        if self.ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            # 2026-07-28: the client shows the page, then retries with the sealed state; the retry decides again.
            sealed = self.proxy.sealer.seal(approval_id, self.tool, self.digest, self.principal)
            request = types.ElicitRequest(params=types.ElicitRequestURLParams(message=message, url=url))
            return types.InputRequiredResult(input_requests={APPROVAL_INPUT_KEY: request}, request_state=sealed)
        capabilities = self.ctx.session.client_capabilities if self.ctx.session is not None else None
        elicitation = capabilities.elicitation if capabilities is not None else None
        if elicitation is not None and elicitation.url is not None:
            # 2025-11-25 with URL elicitation: show the page, then wait for the human (bounded).
            try:
                await self.ctx.session.elicit_url(message, url, elicitation_id=approval_id)
            except Exception as exc:
                log.warning("URL elicitation for %s failed: %s", approval_id, exc)
            # Whatever the client answered, only the sidecar's record of a human resolution counts.
            try:
                await self.proxy.gateway.wait_approval(approval_id, timeout=self.proxy.config.approval_wait_s)
            except GatewayError as exc:
                log.warning("WaitApproval %s failed: %s", approval_id, exc)
            resumed = await self.decide(approval_id)
            if resumed is None:
                return tool_error("agentaudit could not reach its sidecar, so this call was not run (fail closed).")
            if resumed.decision == "approval_required" and resumed.approval_id == approval_id:
                return self.still_pending(resumed)
            if resumed.decision == "approval_required":  # a later rule asks again: do not loop here
                self.proxy.remember_pending(self.principal, self.tool, self.digest, resumed.approval_id)
                return tool_error(f"agentaudit: another approval is required ({resumed.approval_id}).")
            return await self.answer(resumed)
        self.proxy.remember_pending(self.principal, self.tool, self.digest, approval_id)
        return tool_error(
            f"agentaudit: this call needs a human approval ({approval_id}); nothing was run. "
            f"An approver can run `agentaudit approve {approval_id}`"
            + (f" or open {url}" if self.proxy.config.approval_url_template else "")
            + ". Retrying the same call after approval will go through."
        )

    async def forward(self, decision: DecideResult) -> dict[str, Any] | types.CallToolResult:
        """Sends the call upstream as the client made it; the server's result goes back as it came (a dict).

        The result is validated once, by the SDK's server side for the client's revision, not parsed into a model
        here; the report reads ``isError``, ``content`` and ``structuredContent`` from the dict.
        """
        started = time.monotonic()
        session = self.ctx.session

        async def relay_progress(progress: float, total: float | None, message: str | None) -> None:
            await session.report_progress(progress, total, message)  # a no-op unless the client gave a token

        params = {"name": self.tool, "arguments": self.arguments}
        try:
            with self.proxy.relay.in_call(session, self.ctx.request_id):
                result = await self.proxy.upstream.call_tool(params, relay_progress)
        except anyio.get_cancelled_exc_class():
            # The client cancelled (notifications/cancelled; the SDK cancels this handler, and the upstream
            # request with it) or the proxy is stopping: either way the call did not finish, so say so.
            with anyio.CancelScope(shield=True):
                await self.report(
                    decision, "cancelled", time.monotonic() - started, error="cancelled before it finished", wait=True
                )
            raise
        except (UpstreamUnavailableError, Exception) as exc:
            await self.report(decision, "failed", time.monotonic() - started, error=f"upstream failed: {exc}")
            return tool_error(f"the MCP server failed while running {self.tool}: {exc}")
        failed = result.get("isError") is True
        error = _first_text(result) if failed else ""
        await self.report(
            decision,
            "failed" if failed else "succeeded",
            time.monotonic() - started,
            error=error,
            output=_result_output(result),
        )
        if self.ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and "resultType" not in result:
            result["resultType"] = "complete"  # required from 2026-07-28; a handshake-era server leaves it out
        return result

    async def report(
        self,
        decision: DecideResult,
        status: str,
        duration: float,
        *,
        error: str = "",
        output: Any = None,
        wait: bool = False,
    ) -> None:
        """Queues the ReportResult on the Session beside the answer; with ``wait`` or the flag, waits for its ack.

        A queued report that fails is logged (``_log_report_failure``): the client has its result either way.
        """
        try:
            await self.proxy.session.report_result(
                decision.event_id,
                status=status,  # type: ignore[arg-type]
                error=error[:4096],
                output=output,
                duration=duration,
                wait=wait or self.proxy.config.report_before_answer,
            )
        except GatewayError as exc:  # the call already ran: say so in the log, the model still gets its result
            log.error("ReportResult for %s failed: %s", decision.event_id, exc)


def _log_report_failure(error: GatewayError) -> None:
    log.error("ReportResult failed: %s", error)


def _first_text(result: Mapping[str, Any]) -> str:
    for item in result.get("content") or []:
        if isinstance(item, Mapping) and item.get("type") == "text" and isinstance(item.get("text"), str):
            return str(item["text"])
    return json.dumps(_result_output(result))[:4096]
