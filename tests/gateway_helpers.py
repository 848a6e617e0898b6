"""Raw-stub helpers for end-to-end tests of the sidecar (the client library has its own tests)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2


def stub(target: str) -> tuple[grpc.Channel, gateway_pb2_grpc.GatewayServiceStub]:
    channel = grpc.insecure_channel(target)
    return channel, gateway_pb2_grpc.GatewayServiceStub(channel)


def decide_request(
    run_id: str = "run_1",
    tenant_id: str = "t_42",
    action: str = "crm.lookup",
    args: dict[str, Any] | None = None,
    step_id: int = 1,
    **fields: Any,
) -> gateway_pb2.DecideRequest:
    """A request from the example policy's ``support-agent`` acting for user ``u_1`` unless fields say otherwise."""
    fields.setdefault("agent_id", "support-agent")
    fields.setdefault("actor", types_pb2.Actor(type=types_pb2.ACTOR_TYPE_USER, id="u_1"))
    request = gateway_pb2.DecideRequest(
        run_id=run_id, tenant_id=tenant_id, step_id=step_id, action=gateway_pb2.Action(name=action), **fields
    )
    if args:
        request.action.args.update(args)
    return request


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    """The field names of the google.rpc.BadRequest detail of an INVALID_ARGUMENT error."""
    fields = []
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    fields += [v.field for v in bad.field_violations]
    return fields


def journal_count(path: Path, where: str = "1=1") -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM journal WHERE {where}").fetchone()[0])


def journal_event_ids(path: Path) -> set[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM journal")}
