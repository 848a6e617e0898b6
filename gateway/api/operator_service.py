"""OperatorService: approvals, kill switches and policy for authenticated operators (own listener).

Every call is authenticated first; the identity is the actor of every event the call causes. A call refused
for its credential (UNAUTHENTICATED) or role (PERMISSION_DENIED) is journaled as ``operator_denied``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import timestamp_pb2

from agentaudit.v1 import operator_pb2, types_pb2
from gateway.api.convert import APPROVAL_STATES, add_approval_details
from gateway.errors import (
    ConfigError,
    FieldViolation,
    InvalidRequestError,
    JournalUnavailableError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from gateway.identity import Operator
from gateway.journal.entry import HEADER_SIZE
from gateway.journal.query import EventFilter
from gateway.journal.state import NEVER_NS, PENDING, Approval, EngagedSwitch
from gateway.journal.store import JournalReader, SignedEvent
from gateway.policy.document import KILL_SWITCH_SCOPES
from gateway.rpc.auth import ROLE_ADMIN, ROLE_APPROVER, ROLE_AUDITOR, Authenticator, require
from gateway.rpc.filters import parse_event_filter
from gateway.rpc.handlers import Call, Context, service_handler
from gateway.sidecar.approvals import ApprovalBook
from gateway.sidecar.forwarder import Forwarder
from gateway.sidecar.killswitch import KillSwitchBoard
from gateway.sidecar.policy_manager import TRIGGER_OPERATOR, PolicyManager
from gateway.sidecar.recorder import AuditRecorder
from gateway.sidecar.selfcheck import TamperGate

if TYPE_CHECKING:
    from gateway.rpc.telemetry import Telemetry

log = logging.getLogger(__name__)

SERVICE_NAME = "agentaudit.v1.OperatorService"
MAX_COMMENT_BYTES = 1024
MAX_POLICY_BYTES = 1024 * 1024
# The wire enum spells each of the policy's scopes as KILL_SWITCH_SCOPE_<NAME>; one missing fails at import.
_KILL_SWITCH_SCOPE_ENUMS = {
    scope: operator_pb2.KillSwitchScope.Value(f"KILL_SWITCH_SCOPE_{scope.upper()}") for scope in KILL_SWITCH_SCOPES
}
_KILL_SWITCH_SCOPE_NAMES = {v: k for k, v in _KILL_SWITCH_SCOPE_ENUMS.items()}
_STATE_NAMES = {v: k for k, v in APPROVAL_STATES.items()}
_ACTOR_TYPES = {
    "user": types_pb2.ACTOR_TYPE_USER,
    "service": types_pb2.ACTOR_TYPE_SERVICE,
    "agent": types_pb2.ACTOR_TYPE_AGENT,
}


def _timestamp(nanos: int | None) -> timestamp_pb2.Timestamp | None:
    if nanos is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(nanos)
    return ts


def approval_message(a: Approval) -> operator_pb2.Approval:
    """The API view of an approval."""
    return operator_pb2.Approval(
        approval_id=a.approval_id,
        state=APPROVAL_STATES[a.state],
        tenant_id=a.tenant_id,
        run_id=a.run_id,
        step_id=a.step_id,
        agent_id=a.agent_id,
        actor=types_pb2.Actor(type=_ACTOR_TYPES.get(a.actor_type, types_pb2.ACTOR_TYPE_UNSPECIFIED), id=a.actor_id),
        action=a.action,
        action_key=a.action_key,
        policy_rule=a.policy_rule,
        approvers=list(a.approvers),
        created_at=_timestamp(a.created_ns),
        expires_at=_timestamp(None if a.expires_ns >= NEVER_NS else a.expires_ns),  # unset: parks until answered
        resolved_by=a.resolved_by,
        resolved_at=_timestamp(a.resolved_ns),
        comment=a.comment,
        event_id=a.event_id,
        used=a.used,
        approvals_required=a.approvals_required,
        votes=[
            operator_pb2.ApprovalVote(
                approver=v.identity,
                grant=v.grant,
                channel=v.channel,
                comment=v.comment,
                at=_timestamp(v.voted_ns),
                via=v.via,
            )
            for v in a.votes
        ],
        policy_version=a.policy_version,
    )


def _switch_message(s: EngagedSwitch) -> operator_pb2.KillSwitch:
    return operator_pb2.KillSwitch(
        scope=_KILL_SWITCH_SCOPE_ENUMS[s.scope],
        target=s.target,
        reason=s.reason,
        engaged_by=s.engaged_by,
        engaged_at=_timestamp(s.engaged_ns),
        via=s.via,
    )


def _text(field: str, value: str, max_bytes: int, *, required: bool = False) -> None:
    if required and not value:
        raise InvalidRequestError([FieldViolation(field, "is required")])
    if len(value.encode()) > max_bytes:
        raise InvalidRequestError([FieldViolation(field, f"must be at most {max_bytes} bytes")])


DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
WATCH_PAGE = 500
WATCH_POLL_S = 0.2


def _page_cursor(token: str) -> int | None:
    if not token:
        return None
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError([FieldViolation("page_token", "is not a token from a previous page")]) from None


def _event_filter(f: operator_pb2.EventFilter, newest_first: bool) -> EventFilter:
    fields, _ = parse_event_filter(f)  # origin names a sidecar at the collector; here there is only this one
    return EventFilter(**fields, newest_first=newest_first)


def _searched_event(row: SignedEvent) -> operator_pb2.SearchedEvent:
    seq, entry, signature, body = row
    event = operator_pb2.SearchedEvent(seq=seq, entry=entry, signature=signature)
    event.body.update(body)
    return event


def _scope_target(scope: int, target: str) -> tuple[str, str]:
    name = _KILL_SWITCH_SCOPE_NAMES.get(scope)  # type: ignore[call-overload]
    if name is None:
        raise InvalidRequestError([FieldViolation("scope", "must be global, tenant, agent or run")])
    if name == "global" and target:
        raise InvalidRequestError([FieldViolation("target", "must be empty for a global switch")])
    if name != "global" and (not target or len(target.encode()) > 256 or not target.isprintable()):
        raise InvalidRequestError([FieldViolation("target", f"is required for a {name} switch (at most 256 bytes)")])
    return name, target


class OperatorServicer:
    """Implements OperatorService."""

    def __init__(
        self,
        authenticator: Authenticator,
        recorder: AuditRecorder,
        approvals: ApprovalBook,
        switches: KillSwitchBoard,
        policy: PolicyManager,
        reader: JournalReader,
        forwarder: Forwarder | None = None,
        tamper_gate: TamperGate | None = None,
    ) -> None:
        self._auth = authenticator
        self._recorder = recorder
        self._approvals = approvals
        self._switches = switches
        self._policy = policy
        self._forwarder = forwarder
        self._tamper_gate = tamper_gate
        self._reader = reader

    def guarded(self, method: str, roles: tuple[str, ...], call: Callable[[Any, Operator], Awaitable[Any]]) -> Call:
        """Authenticates and authorises, journaling refusals, then runs ``call`` with the operator."""

        async def handler(request: Any, context: Context) -> Any:
            identity = ""
            try:
                operator = self._auth.authenticate(context.invocation_metadata(), context.auth_context())
                identity = operator.identity
                require(operator, *roles)
            except (UnauthenticatedError, PermissionDeniedError) as exc:
                reason = "unauthenticated" if isinstance(exc, UnauthenticatedError) else "permission_denied"
                try:
                    await self._recorder.record_operator_denied(method, identity, reason, str(exc))
                except JournalUnavailableError:
                    log.error("could not journal a refused operator call to %s", method)
                raise
            try:
                return await call(request, operator)
            except PermissionDeniedError as exc:  # e.g. not among a rule's approvers, or approving one's own run
                await self._recorder.record_operator_denied(method, identity, "permission_denied", str(exc))
                raise

        return handler

    async def list_approvals(self, request: operator_pb2.ListApprovalsRequest, operator: Operator) -> Any:
        state = _STATE_NAMES.get(request.state, PENDING)
        approvals = await self._approvals.list(state, request.tenant_id, request.limit)
        return operator_pb2.ListApprovalsResponse(approvals=[await self._detailed(a) for a in approvals])

    async def _detailed(self, approval: Approval) -> operator_pb2.Approval:
        """The approval with what it approves, read from its pre-event (an approver must see the arguments)."""
        message = approval_message(approval)
        event = await self._reader.find_event(approval.event_id)
        if event is None:  # pruned by retention: the approval itself is still listed
            return message
        entries = await self._reader.signed_entries(event.seq, event.seq + 1)
        if not entries:
            return message
        body = json.loads(entries[0].entry[HEADER_SIZE:])
        previous = await self._reader.count_pre_events_before([approval.run_id], event.seq)
        add_approval_details(message, body, previous.get(approval.run_id, 0))
        return message

    async def _resolve(self, request: Any, operator: Operator, grant: bool) -> tuple[Approval, str]:
        _text("approval_id", request.approval_id, 128, required=True)
        _text("comment", request.comment, MAX_COMMENT_BYTES)
        return await self._approvals.resolve(request.approval_id, grant, operator, request.comment)

    async def grant(self, request: operator_pb2.GrantApprovalRequest, operator: Operator) -> Any:
        approval, event_id = await self._resolve(request, operator, grant=True)
        return operator_pb2.GrantApprovalResponse(approval=approval_message(approval), event_id=event_id)

    async def deny(self, request: operator_pb2.DenyApprovalRequest, operator: Operator) -> Any:
        approval, event_id = await self._resolve(request, operator, grant=False)
        return operator_pb2.DenyApprovalResponse(approval=approval_message(approval), event_id=event_id)

    async def engage(self, request: operator_pb2.EngageKillSwitchRequest, operator: Operator) -> Any:
        scope, target = _scope_target(request.scope, request.target)
        _text("reason", request.reason, MAX_COMMENT_BYTES, required=True)
        switch, event = await self._switches.engage(scope, target, request.reason, operator.identity)
        return operator_pb2.EngageKillSwitchResponse(kill_switch=_switch_message(switch), event_id=event.event_id)

    async def release(self, request: operator_pb2.ReleaseKillSwitchRequest, operator: Operator) -> Any:
        scope, target = _scope_target(request.scope, request.target)
        _text("reason", request.reason, MAX_COMMENT_BYTES)
        event = await self._switches.release(scope, target, request.reason, operator.identity)
        return operator_pb2.ReleaseKillSwitchResponse(event_id=event.event_id)

    async def list_switches(self, request: operator_pb2.ListKillSwitchesRequest, operator: Operator) -> Any:
        switches = [_switch_message(s) for s in self._switches.engaged()]
        for switch in self._policy.engine.document.kill_switches:
            if switch.scope == "global" or not switch.target.matches_all:
                targets = switch.target.patterns if switch.scope != "global" else ("",)
                switches += [
                    operator_pb2.KillSwitch(
                        scope=_KILL_SWITCH_SCOPE_ENUMS[switch.scope],
                        target=t,
                        reason=switch.reason,
                        engaged_by=f"policy:{switch.name}",
                    )
                    for t in targets
                ]
        return operator_pb2.ListKillSwitchesResponse(kill_switches=switches)

    async def get_policy(self, request: operator_pb2.GetPolicyRequest, operator: Operator) -> Any:
        document = self._policy.engine.document
        return operator_pb2.GetPolicyResponse(
            version=document.version,
            source=str(self._policy.path),
            document=self._policy.document_text,
            mode=document.mode,
        )

    async def acknowledge_recovery(self, request: operator_pb2.AcknowledgeRecoveryRequest, operator: Operator) -> Any:
        _text("comment", request.comment, MAX_COMMENT_BYTES, required=True)
        detected = self._forwarder.status.recovery_required if self._forwarder is not None else ""
        if not detected and self._tamper_gate is not None:
            detected = self._tamper_gate.blocked
        event = await self._recorder.record_recovery_acknowledged(operator.identity, request.comment)
        if self._forwarder is not None:
            await self._forwarder.acknowledge_recovery()
        if self._tamper_gate is not None:
            self._tamper_gate.acknowledge()
        return operator_pb2.AcknowledgeRecoveryResponse(detected=detected, event_id=event.event_id)

    async def search(self, request: operator_pb2.SearchEventsRequest, operator: Operator) -> Any:
        flt = _event_filter(request.filter, request.newest_first)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _page_cursor(request.page_token)
        rows = await self._reader.search(flt, after_seq=after, limit=page_size)
        events = [_searched_event(row) for row in rows]
        token = base64.urlsafe_b64encode(str(rows[-1][0]).encode()).decode() if len(rows) == page_size else ""
        return operator_pb2.SearchEventsResponse(events=events, next_page_token=token)

    def guarded_stream(
        self, method: str, roles: tuple[str, ...], call: Callable[[Any, Operator], AsyncIterator[Any]]
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        """:meth:`guarded` for a server-streaming method."""
        check = self.guarded(method, roles, self._identity)

        async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
            operator = await check(request, context)
            async for message in call(request, operator):
                yield message

        return handler

    async def _identity(self, request: Any, operator: Operator) -> Operator:
        return operator

    async def watch(self, request: operator_pb2.WatchEventsRequest, operator: Operator) -> AsyncIterator[Any]:
        flt = _event_filter(request.filter, newest_first=False)
        if request.HasField("after_seq"):
            after = request.after_seq
        else:
            after = await self._reader.last_seq()
        while True:
            tail, rows = await self._reader.watch_page(flt, after_seq=after, limit=WATCH_PAGE)
            for row in rows:
                yield operator_pb2.WatchEventsResponse(event=_searched_event(row))
                after = row[0]
            if len(rows) < WATCH_PAGE:
                # Everything up to the tail was scanned: the next poll starts after it, matches or not.
                after = max(after, tail)
                await asyncio.sleep(WATCH_POLL_S)

    async def reload_policy(self, request: operator_pb2.ReloadPolicyRequest, operator: Operator) -> Any:
        _text("document", request.document, MAX_POLICY_BYTES)
        try:
            outcome = await self._policy.reload(
                TRIGGER_OPERATOR, operator.identity, document_text=request.document or None
            )
        except ConfigError as exc:
            raise InvalidRequestError([FieldViolation("document", str(exc))]) from None
        if outcome.error:
            raise InvalidRequestError([FieldViolation("document" if request.document else "file", outcome.error)])
        return operator_pb2.ReloadPolicyResponse(
            changed=outcome.changed,
            old_version=outcome.old_version,
            new_version=outcome.new_version,
            event_id=outcome.event_id,
        )


def operator_handler(
    servicer: OperatorServicer, telemetry: Telemetry | None = None
) -> grpc.GenericRpcHandler[Any, Any]:
    """The OperatorService handlers, each behind authentication and its role check (in a span with telemetry)."""
    read = (ROLE_AUDITOR, ROLE_APPROVER, ROLE_ADMIN)
    approve = (ROLE_APPROVER,)
    admin = (ROLE_ADMIN,)
    table: dict[str, tuple[tuple[str, ...], Callable[[Any, Operator], Awaitable[Any]], Any]] = {
        "ListApprovals": (read, servicer.list_approvals, operator_pb2.ListApprovalsRequest),
        "GrantApproval": (approve, servicer.grant, operator_pb2.GrantApprovalRequest),
        "DenyApproval": (approve, servicer.deny, operator_pb2.DenyApprovalRequest),
        "EngageKillSwitch": (admin, servicer.engage, operator_pb2.EngageKillSwitchRequest),
        "ReleaseKillSwitch": (admin, servicer.release, operator_pb2.ReleaseKillSwitchRequest),
        "ListKillSwitches": (read, servicer.list_switches, operator_pb2.ListKillSwitchesRequest),
        "GetPolicy": (read, servicer.get_policy, operator_pb2.GetPolicyRequest),
        "ReloadPolicy": (admin, servicer.reload_policy, operator_pb2.ReloadPolicyRequest),
        "AcknowledgeRecovery": (admin, servicer.acknowledge_recovery, operator_pb2.AcknowledgeRecoveryRequest),
        "SearchEvents": (read, servicer.search, operator_pb2.SearchEventsRequest),
    }
    streams = {
        "WatchEvents": (servicer.guarded_stream("WatchEvents", read, servicer.watch), operator_pb2.WatchEventsRequest)
    }
    return service_handler(
        SERVICE_NAME,
        streams=streams,
        methods={
            name: (servicer.guarded(name, roles, call), request_type)
            for name, (roles, call, request_type) in table.items()
        },
        telemetry=telemetry,
    )
