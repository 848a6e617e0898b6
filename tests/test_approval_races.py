"""Who may resolve an approval, and how often, through a real sidecar process.

Concurrent operators and agents on one approval: exactly one of each wins. The run's own actor cannot approve it
under any spelling, and the unauthenticated agent port learns only the state, never who resolved it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentaudit.v1 import gateway_pb2, operator_pb2, types_pb2
from gateway.journal.store import iter_bodies
from tests.conftest import RunningGateway, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.operator_helpers import TOKENS, auth, operator_stub, prepare_dir

CALLERS = 20
REFUND = {"order_id": "o_1", "amount": 250}
RESOLUTION_KINDS = ("approval_granted", "approval_denied", "approval_expired")


@pytest.fixture
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    directory = Path(tmp_path_factory.mktemp("race"))
    prepare_dir(directory)
    gw = start_gateway(directory)
    try:
        yield gw
    finally:
        gw.stop()


def ask_refund(gw: RunningGateway, **fields: Any) -> Any:
    channel, gateway = stub(gw.unix_target)
    with channel:
        return gateway.Decide(
            decide_request(action="refund.create", args=REFUND, run_id="run_race", **fields), timeout=10
        )


def error_reason(error: grpc.RpcError) -> str:
    """The google.rpc.ErrorInfo reason of a gRPC error ('' without one)."""
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Runs every call at once on its own thread; returns each result or the RpcError it raised."""

    def run(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def resolutions(gw: RunningGateway, approval_id: str) -> list[dict[str, Any]]:
    return [
        body
        for _, body in iter_bodies(gw.journal_path)
        if body["kind"] in RESOLUTION_KINDS and body.get("approval_id") == approval_id
    ]


def resolve_calls(op: Any, approval_id: str, kinds: list[str]) -> list[Callable[[], Any]]:
    metadata = auth(TOKENS["alice"][0])

    def call(kind: str) -> Callable[[], Any]:
        if kind == "grant":
            request: Any = operator_pb2.GrantApprovalRequest(approval_id=approval_id, comment="ok")
            return lambda: op.GrantApproval(request, metadata=metadata, timeout=20)
        request = operator_pb2.DenyApprovalRequest(approval_id=approval_id, comment="no")
        return lambda: op.DenyApproval(request, metadata=metadata, timeout=20)

    return [call(kind) for kind in kinds]


def test_concurrent_grants_and_denies_resolve_an_approval_exactly_once(sidecar: RunningGateway) -> None:
    pending = ask_refund(sidecar)
    kinds = ["grant" if i % 2 == 0 else "deny" for i in range(CALLERS)]
    channel, op = operator_stub(sidecar.operator_target)
    with channel:
        outcomes = concurrently(resolve_calls(op, pending.approval_id, kinds))

    won = [o for o in outcomes if not isinstance(o, grpc.RpcError)]
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert len(won) == 1, f"exactly one resolution wins, got {len(won)}"
    assert {e.code() for e in refused} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert {error_reason(e) for e in refused} == {"APPROVAL_ALREADY_RESOLVED"}  # ErrorInfo reasons are UPPER_SNAKE
    assert all("alice" in (e.details() or "") for e in refused), "each refusal names the winner"

    journaled = resolutions(sidecar, pending.approval_id)
    assert len(journaled) == 1
    assert journaled[0]["event_id"] == won[0].event_id
    # The approval is still known afterwards, in the state the winner gave it.
    winner_state = won[0].approval.state
    again = ask_refund(sidecar, approval_id=pending.approval_id)
    if winner_state == gateway_pb2.APPROVAL_STATE_GRANTED:
        assert again.decision == types_pb2.DECISION_ALLOW
    else:
        assert (again.decision, again.reason) == (types_pb2.DECISION_STOP, "approval_denied")


def test_twenty_concurrent_resumes_of_a_raced_grant_yield_exactly_one_allow(sidecar: RunningGateway) -> None:
    pending = ask_refund(sidecar)
    channel, op = operator_stub(sidecar.operator_target)
    with channel:
        outcomes = concurrently(resolve_calls(op, pending.approval_id, ["grant"] * CALLERS))
    assert sum(not isinstance(o, grpc.RpcError) for o in outcomes) == 1
    assert len(resolutions(sidecar, pending.approval_id)) == 1

    resumes = concurrently([lambda: ask_refund(sidecar, approval_id=pending.approval_id)] * CALLERS)
    decisions = [r.decision for r in resumes]
    assert decisions.count(types_pb2.DECISION_ALLOW) == 1
    assert {r.reason for r in resumes if r.decision != types_pb2.DECISION_ALLOW} == {"approval_used"}


@pytest.mark.parametrize(
    "actor_id",
    [
        pytest.param("Alice", id="capitalised"),
        pytest.param("ALICE", id="upper"),  # edge spaces never reach here: ids with them are INVALID_ARGUMENT
        pytest.param("\uff41\uff4c\uff49\uff43\uff45", id="full-width"),
    ],
)
def test_the_runs_actor_cannot_approve_it_under_any_spelling(sidecar: RunningGateway, actor_id: str) -> None:
    pending = ask_refund(sidecar, actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_USER, id=actor_id))
    channel, op = operator_stub(sidecar.operator_target)
    with channel, pytest.raises(grpc.RpcError) as info:
        resolve_calls(op, pending.approval_id, ["grant"])[0]()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "cannot approve" in (info.value.details() or "")
    assert resolutions(sidecar, pending.approval_id) == []


def test_wait_approval_on_the_agent_port_returns_the_state_but_not_who_resolved_it(sidecar: RunningGateway) -> None:
    pending = ask_refund(sidecar)
    channel, op = operator_stub(sidecar.operator_target)
    with channel:
        resolve_calls(op, pending.approval_id, ["grant"])[0]()
    channel, gateway = stub(sidecar.tcp_target)
    with channel:
        waited = gateway.WaitApproval(gateway_pb2.WaitApprovalRequest(approval_id=pending.approval_id), timeout=10)
    assert waited.state == gateway_pb2.APPROVAL_STATE_GRANTED
    assert (waited.resolved_by, waited.comment) == ("", "")
