"""The fleet's operator API: ``OperatorService`` served by the collector on ``collector.operator.listen``.

The same service, authentication and roles as a sidecar's operator API (bearer tokens stored as SHA-256 digests,
or mutual TLS; auditor reads, approver answers approvals, admin does everything), over the whole fleet: approvals
are listed across every sidecar and answered once here, kill switches are engaged for every sidecar. The servicer
only parses and converts; :class:`~gateway.collector.fleet.FleetControl` decides and journals each act in
``control_log`` with the operator's identity and the channel ``cli``.

A call refused for its credential or role is logged at WARNING with the method and the identity (never the
token). Methods that only make sense on one sidecar (policy, search, watch, recovery) answer UNIMPLEMENTED saying
where to call them instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from agentaudit.v1 import gateway_pb2, operator_pb2, types_pb2
from gateway.collector.fleet import FleetApproval, FleetControl, FleetSwitch
from gateway.collector.fleet_model import ABANDONED, DENIED, EXPIRED, GRANTED, PENDING, USED
from gateway.config import OperatorConfig
from gateway.errors import ConfigError, FieldViolation, InvalidRequestError, PermissionDeniedError, UnauthenticatedError
from gateway.identity import Operator
from gateway.rpc.auth import ROLE_ADMIN, ROLE_APPROVER, ROLE_AUDITOR, Authenticator, require
from gateway.rpc.handlers import Call, Context, service_handler

log = logging.getLogger(__name__)

SERVICE_NAME = "agentaudit.v1.OperatorService"
CHANNEL = "cli"
MAX_LIST = 1000

_STATE_ENUMS = {
    PENDING: gateway_pb2.APPROVAL_STATE_PENDING,
    GRANTED: gateway_pb2.APPROVAL_STATE_GRANTED,
    USED: gateway_pb2.APPROVAL_STATE_GRANTED,  # a used approval is a granted one with used = true
    DENIED: gateway_pb2.APPROVAL_STATE_DENIED,
    EXPIRED: gateway_pb2.APPROVAL_STATE_EXPIRED,
    ABANDONED: gateway_pb2.APPROVAL_STATE_ABANDONED,
}
_STATE_QUERIES = {
    gateway_pb2.APPROVAL_STATE_UNSPECIFIED: (PENDING,),
    gateway_pb2.APPROVAL_STATE_PENDING: (PENDING,),
    gateway_pb2.APPROVAL_STATE_GRANTED: (GRANTED, USED),
    gateway_pb2.APPROVAL_STATE_DENIED: (DENIED,),
    gateway_pb2.APPROVAL_STATE_EXPIRED: (EXPIRED,),
    gateway_pb2.APPROVAL_STATE_ABANDONED: (ABANDONED,),
}
_SCOPES = {
    operator_pb2.KILL_SWITCH_SCOPE_GLOBAL: "global",
    operator_pb2.KILL_SWITCH_SCOPE_TENANT: "tenant",
    operator_pb2.KILL_SWITCH_SCOPE_AGENT: "agent",
    operator_pb2.KILL_SWITCH_SCOPE_RUN: "run",
}
_SCOPE_ENUMS = {name: value for value, name in _SCOPES.items()}
_UNIMPLEMENTED: dict[str, Any] = {
    "GetPolicy": operator_pb2.GetPolicyRequest,
    "ReloadPolicy": operator_pb2.ReloadPolicyRequest,
    "AcknowledgeRecovery": operator_pb2.AcknowledgeRecoveryRequest,
    "SearchEvents": operator_pb2.SearchEventsRequest,
    "WatchEvents": operator_pb2.WatchEventsRequest,
}


def _timestamp(ms: int | None) -> timestamp_pb2.Timestamp | None:
    if ms is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def approval_message(a: FleetApproval) -> operator_pb2.Approval:
    """The API view of a fleet approval (the same message a sidecar answers, with ``origin`` and the votes)."""
    message = operator_pb2.Approval(
        approval_id=a.approval_id,
        state=_STATE_ENUMS.get(a.state, gateway_pb2.APPROVAL_STATE_UNSPECIFIED),
        tenant_id=a.tenant_id,
        run_id=a.run_id,
        step_id=a.step_id,
        agent_id=a.agent_id,
        actor=types_pb2.Actor(id=a.actor_id),
        action=a.action,
        policy_rule=a.policy_rule,
        approvers=list(a.approvers),
        created_at=_timestamp(a.created_ms),
        expires_at=_timestamp(a.expires_ms),
        resolved_by=a.resolved_by,
        resolved_at=_timestamp(a.resolved_ms),
        comment=a.comment,
        used=a.state == USED,
        redacted_paths=list(a.redacted_paths),
        reason=a.reason,
        approvals_required=a.approvals_required,
        votes=[
            operator_pb2.ApprovalVote(
                approver=v.approver, grant=v.grant, channel=v.channel, comment=v.comment, at=_timestamp(v.at_ms)
            )
            for v in a.votes
        ],
        origin=a.origin,
        policy_version=a.policy_version,
    )
    message.args.update(a.args)
    return message


def switch_message(s: FleetSwitch, via: str) -> operator_pb2.KillSwitch:
    """The API view of a fleet kill switch; ``via`` is the collector's control key name."""
    return operator_pb2.KillSwitch(
        scope=_SCOPE_ENUMS[s.scope],
        target=s.target,
        reason=s.reason,
        engaged_by=s.operator,
        engaged_at=_timestamp(s.engaged_ms),
        via=via,
    )


def _scope(value: int) -> str:
    name = _SCOPES.get(value)  # type: ignore[call-overload]
    if name is None:
        raise InvalidRequestError([FieldViolation("scope", "must be global, tenant, agent or run")])
    return str(name)


class FleetOperatorServicer:
    """OperatorService over :class:`~gateway.collector.fleet.FleetControl`."""

    def __init__(self, fleet: FleetControl, authenticator: Authenticator) -> None:
        self._fleet = fleet
        self._auth = authenticator

    def guarded(self, method: str, roles: tuple[str, ...], call: Callable[[Any, Operator], Awaitable[Any]]) -> Call:
        """Authenticates and authorises, logging refusals (never the credential), then runs ``call``."""

        async def handler(request: Any, context: Context) -> Any:
            identity = ""
            try:
                operator = self._auth.authenticate(context.invocation_metadata(), context.auth_context())
                identity = operator.identity
                require(operator, *roles)
                return await call(request, operator)
            except (UnauthenticatedError, PermissionDeniedError) as exc:
                reason = "unauthenticated" if isinstance(exc, UnauthenticatedError) else "permission_denied"
                log.warning("collector operator API: %s refused (%s) for %s: %s", method, reason, identity or "-", exc)
                raise

        return handler

    async def list_approvals(self, request: operator_pb2.ListApprovalsRequest, operator: Operator) -> Any:
        states = _STATE_QUERIES.get(request.state)
        if states is None:
            raise InvalidRequestError([FieldViolation("state", "is not a known approval state")])
        limit = min(request.limit or MAX_LIST, MAX_LIST)
        found: list[FleetApproval] = []
        for state in states:
            found += await self._fleet.list_approvals(
                state=state,
                tenant_id=request.tenant_id,
                agent_id=request.agent_id,
                action=request.action,
                policy_rule=request.policy_rule,
                origin=request.origin,
                min_age_s=request.min_age_s,
                limit=limit,
            )
        found.sort(key=lambda a: (-a.created_ms, a.approval_id))
        return operator_pb2.ListApprovalsResponse(approvals=[approval_message(a) for a in found[:limit]])

    async def _vote(self, request: Any, operator: Operator, *, grant: bool) -> FleetApproval:
        return await self._fleet.vote(
            request.approval_id, grant=grant, operator=operator, comment=request.comment, channel=CHANNEL
        )

    async def grant(self, request: operator_pb2.GrantApprovalRequest, operator: Operator) -> Any:
        approval = await self._vote(request, operator, grant=True)
        return operator_pb2.GrantApprovalResponse(approval=approval_message(approval))

    async def deny(self, request: operator_pb2.DenyApprovalRequest, operator: Operator) -> Any:
        approval = await self._vote(request, operator, grant=False)
        return operator_pb2.DenyApprovalResponse(approval=approval_message(approval))

    async def engage(self, request: operator_pb2.EngageKillSwitchRequest, operator: Operator) -> Any:
        switch = await self._fleet.engage_switch(
            _scope(request.scope), request.target, request.reason, operator, CHANNEL
        )
        return operator_pb2.EngageKillSwitchResponse(kill_switch=switch_message(switch, self._via))

    async def release(self, request: operator_pb2.ReleaseKillSwitchRequest, operator: Operator) -> Any:
        await self._fleet.release_switch(_scope(request.scope), request.target, request.reason, operator, CHANNEL)
        return operator_pb2.ReleaseKillSwitchResponse()

    async def list_switches(self, request: operator_pb2.ListKillSwitchesRequest, operator: Operator) -> Any:
        switches = await self._fleet.switches()
        return operator_pb2.ListKillSwitchesResponse(kill_switches=[switch_message(s, self._via) for s in switches])

    @property
    def _via(self) -> str:
        return self._fleet.control_verifier.name


def _unimplemented(method: str) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{method} is served by each sidecar's operator API, not the collector's fleet API "
            "(for searches across the fleet use CollectorService.SearchEvents)",
        )

    return handler


def operator_handlers(servicer: FleetOperatorServicer) -> list[grpc.GenericRpcHandler[Any, Any]]:
    """The fleet OperatorService: each method behind authentication and its role; the rest UNIMPLEMENTED."""
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
    }
    served = service_handler(
        SERVICE_NAME,
        {name: (servicer.guarded(name, roles, call), kind) for name, (roles, call, kind) in table.items()},
    )
    rest: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for name, kind in _UNIMPLEMENTED.items():
        make = grpc.unary_stream_rpc_method_handler if name == "WatchEvents" else grpc.unary_unary_rpc_method_handler
        rest[name] = make(_unimplemented(name), request_deserializer=kind.FromString)
    return [served, grpc.method_handlers_generic_handler(SERVICE_NAME, rest)]


def operator_credentials(config: OperatorConfig) -> grpc.ServerCredentials | None:
    """Mutual TLS for the listener when ``operator.tls`` is set: a client certificate signed by its CA is required."""
    if config.tls is None:
        return None
    try:
        key, cert, ca = (p.read_bytes() for p in (config.tls.key, config.tls.cert, config.tls.client_ca))
    except OSError as exc:
        raise ConfigError(f"collector.operator.tls: cannot read {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
