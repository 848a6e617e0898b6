"""The Python client against a real sidecar (``agentaudit dev`` with the example policy).

Example policy (gateway/policy/example_policy.yaml): tenant ``t_frozen`` → stop / ``kill_switch_engaged`` (a kill
switch in the file); ``refund.create`` over 100 → approval_required; CRM reads → allow / ``allowed``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from agentaudit.v1 import gateway_pb2
from agentaudit_client import (
    ActionStopped,
    Actor,
    ApprovalRequired,
    AsyncGatewayClient,
    FailedPreconditionError,
    GatewayClient,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    ResourceExhaustedError,
    Step,
    UnavailableError,
    from_rpc_error,
)
from agentaudit_client._convert import approval_outcome
from tests.conftest import RunningGateway, run_cli

ACTOR = ("user", "u_1")
AGENT: dict[str, Any] = {"agent_id": "support-agent", "actor": ACTOR}


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex}"


def journal_events(server: RunningGateway, run_id: str) -> list[dict[str, Any]]:
    """The run's journal events, read with ``agentaudit events`` (JSON lines)."""
    completed = run_cli("events", str(server.journal_path), "--run-id", run_id, check=True)
    return [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]


def post_events(server: RunningGateway, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's post-exec events, keyed by the pre-event they report on."""
    return {e["pre_event_id"]: e for e in journal_events(server, run_id) if e["kind"] == "post_exec"}


@pytest.fixture(params=["unix_target", "tcp_target"], ids=["unix", "tcp"])
def target(request: pytest.FixtureRequest, gateway_server: RunningGateway) -> str:
    address: str = getattr(gateway_server, request.param)
    return address


@pytest.fixture
def client(gateway_server: RunningGateway) -> Iterator[GatewayClient]:
    with GatewayClient(gateway_server.unix_target) as gateway_client:
        yield gateway_client


DECISION_CASES = [
    pytest.param("crm.lookup", "t_42", "allow", "allowed", id="allow"),
    pytest.param("crm.search", "t_frozen", "stop", "kill_switch_engaged", id="stop"),
    pytest.param("refund.create", "t_42", "approval_required", "approval_required", id="approval"),
]


# --- decide ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "tenant_id", "decision", "reason"), DECISION_CASES)
def test_decide_answers_the_policy_decision(
    target: str, action: str, tenant_id: str, decision: str, reason: str
) -> None:
    with GatewayClient(target) as gateway_client:
        result = gateway_client.decide(
            run_id=new_run_id(),
            tenant_id=tenant_id,
            action=action,
            args={"order_id": "o_1", "amount": 250},
            step_id=1,
            actor=ACTOR,
            agent_id="support-agent",
        )

    assert (result.decision, result.reason) == (decision, reason)
    assert result.allowed is (decision == "allow")
    assert result.event_id
    assert result.action_key
    assert result.policy_version
    assert bool(result.approval_id) is (decision == "approval_required")


def test_decide_accepts_every_optional_field(client: GatewayClient) -> None:
    result = client.decide(
        run_id=new_run_id(),
        tenant_id="t_42",
        action="crm.lookup",
        args={"customer": {"id": "c_7", "tags": ["vip", 1, True, None]}},
        step_id=7,
        actor=Actor("service", "billing"),
        agent_id="support-agent",
        scope="tenant",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        labels={"env": "test"},
    )

    assert result.decision == "allow"


def test_same_action_and_args_have_the_same_action_key(client: GatewayClient) -> None:
    keys = {
        client.decide(
            run_id=new_run_id(), tenant_id="t_42", action="crm.lookup", args={"a": 1, "b": [2, 3]}, **AGENT
        ).action_key
        for _ in range(2)
    }

    assert len(keys) == 1


# --- report_result --------------------------------------------------------------------------------------


def test_report_result_journals_a_post_event(client: GatewayClient) -> None:
    pre = client.decide(run_id=new_run_id(), tenant_id="t_42", action="crm.lookup", args={"id": "c_7"}, **AGENT)

    report = client.report_result(
        pre.event_id, status="succeeded", output={"name": "Ann"}, duration=timedelta(milliseconds=12)
    )

    assert report.event_id
    assert report.event_id != pre.event_id
    assert report.duplicate is False


def test_report_result_twice_answers_the_first_post_event(client: GatewayClient) -> None:
    pre = client.decide(run_id=new_run_id(), tenant_id="t_42", action="crm.lookup", **AGENT)
    first = client.report_result(pre.event_id, status="failed", error="boom", duration=0.5)

    second = client.report_result(pre.event_id, status="succeeded")

    assert (second.event_id, second.duplicate) == (first.event_id, True)


def test_report_result_for_a_stopped_action_is_a_failed_precondition(client: GatewayClient) -> None:
    pre = client.decide(run_id=new_run_id(), tenant_id="t_frozen", action="crm.search", **AGENT)

    with pytest.raises(FailedPreconditionError):
        client.report_result(pre.event_id, status="succeeded")


def test_report_result_for_an_unknown_event_is_not_found(client: GatewayClient) -> None:
    with pytest.raises(NotFoundError) as info:
        client.report_result("evt_unknown", status="succeeded")

    assert info.value.code is grpc.StatusCode.NOT_FOUND


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"run_id": ""}, "run_id", id="run_id"),
        pytest.param({"tenant_id": ""}, "tenant_id", id="tenant_id"),
        pytest.param({"action": ""}, "action.name", id="action"),
    ],
)
def test_invalid_request_lists_the_field_violations(
    client: GatewayClient, overrides: dict[str, str], field: str
) -> None:
    request: dict[str, Any] = {
        "run_id": new_run_id(),
        "tenant_id": "t_42",
        "action": "crm.lookup",
        **overrides,
    }

    with pytest.raises(InvalidRequestError) as info:
        client.decide(**request)

    assert field in info.value.fields
    assert all(description for _, description in info.value.violations)


def test_unreachable_sidecar_is_unavailable(tmp_path: Path) -> None:
    with (
        GatewayClient(f"unix://{tmp_path}/absent.sock", timeout=5) as gateway_client,
        pytest.raises(UnavailableError),
    ):
        gateway_client.decide(run_id=new_run_id(), tenant_id="t_42", action="crm.lookup", **AGENT)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"args": {"when": object()}}, TypeError, id="args-not-json"),
        pytest.param({"scope": "planet"}, ValueError, id="unknown-scope"),
        pytest.param({"actor": ("robot", "r_1")}, ValueError, id="unknown-actor-type"),
    ],
)
def test_bad_arguments_are_rejected_before_calling(
    client: GatewayClient, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        client.decide(run_id=new_run_id(), tenant_id="t_42", action="crm.lookup", **{**AGENT, **kwargs})


def _aio_error(code: grpc.StatusCode, *details: Message) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=code.value[0], message="m")
    for detail in details:
        status.details.add().Pack(detail)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, "m", None)


def test_rpc_error_translation_decodes_status_details() -> None:
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(1500)
    violation = error_details_pb2.BadRequest.FieldViolation(field="labels", description="too many")

    invalid = from_rpc_error(
        _aio_error(grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest(field_violations=[violation]))
    )
    exhausted = from_rpc_error(_aio_error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry))
    internal = from_rpc_error(_aio_error(grpc.StatusCode.INTERNAL))

    assert isinstance(invalid, InvalidRequestError)
    assert invalid.violations == [("labels", "too many")]
    assert isinstance(exhausted, ResourceExhaustedError)
    assert exhausted.retry_after == 1.5
    assert type(internal) is GatewayError
    assert internal.code is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(
    ("state", "name"),
    [
        pytest.param(gateway_pb2.APPROVAL_STATE_PENDING, "pending", id="pending"),
        pytest.param(gateway_pb2.APPROVAL_STATE_GRANTED, "granted", id="granted"),
        pytest.param(gateway_pb2.APPROVAL_STATE_DENIED, "denied", id="denied"),
        pytest.param(gateway_pb2.APPROVAL_STATE_EXPIRED, "expired", id="expired"),
        pytest.param(gateway_pb2.APPROVAL_STATE_ABANDONED, "abandoned", id="abandoned"),
    ],
)
def test_every_approval_state_has_its_name_and_only_granted_is_a_grant(state: Any, name: str) -> None:
    outcome = approval_outcome(gateway_pb2.WaitApprovalResponse(state=state))
    assert (outcome.state, outcome.granted) == (name, name == "granted")


# --- guard ----------------------------------------------------------------------------------------------


def test_guard_runs_the_block_and_reports_success(gateway_server: RunningGateway, client: GatewayClient) -> None:
    run_id = new_run_id()

    with client.guard(run_id=run_id, tenant_id="t_42", action="crm.lookup", args={"id": "c_7"}, **AGENT) as step:
        step.output = {"name": "Ann"}

    assert step.decision.decision == "allow"
    assert step.report is not None
    post = post_events(gateway_server, run_id)[step.event_id]
    assert (post["event_id"], post["status"], post["error"]) == (step.report.event_id, "succeeded", "")
    assert post["output"] == {"name": "Ann"}
    assert post["duration_ns"] > 0


def test_guard_reports_the_failure_and_reraises(gateway_server: RunningGateway, client: GatewayClient) -> None:
    run_id = new_run_id()

    with (
        pytest.raises(RuntimeError, match="card declined"),
        client.guard(run_id=run_id, tenant_id="t_42", action="crm.lookup", **AGENT) as step,
    ):
        raise RuntimeError("card declined")

    post = post_events(gateway_server, run_id)[step.event_id]
    assert (post["status"], post["error"]) == ("failed", "RuntimeError: card declined")
    assert post["duration_ns"] > 0


def test_guard_keeps_the_block_error_when_the_report_fails(client: GatewayClient) -> None:
    with (
        pytest.raises(RuntimeError, match="card declined") as info,
        client.guard(run_id=new_run_id(), tenant_id="t_42", action="crm.lookup", **AGENT),
    ):
        client.close()  # the failure cannot be reported any more
        raise RuntimeError("card declined")

    assert "could not report the failure" in "".join(info.value.__notes__)


@pytest.mark.parametrize(
    ("tenant_id", "action", "error", "reason"),
    [
        pytest.param("t_frozen", "crm.search", ActionStopped, "kill_switch_engaged", id="stop"),
        pytest.param("t_42", "refund.create", ApprovalRequired, "approval_required", id="approval"),
    ],
)
def test_guard_raises_on_a_deny_without_running_the_block(
    client: GatewayClient, tenant_id: str, action: str, error: type[Exception], reason: str
) -> None:
    ran = False

    with (
        pytest.raises(error) as info,
        client.guard(
            run_id=new_run_id(), tenant_id=tenant_id, action=action, args={"order_id": "o_1", "amount": 250}, **AGENT
        ),
    ):
        ran = True

    assert not ran
    denied = info.value
    assert isinstance(denied, ActionStopped | ApprovalRequired)
    assert denied.reason == reason
    assert denied.event_id
    assert denied.action_key
    assert denied.result.decision != "allow"
    assert bool(denied.approval_id) is (error is ApprovalRequired)


# --- Run and the decorator ------------------------------------------------------------------------------


def test_run_numbers_steps_from_one(gateway_server: RunningGateway, client: GatewayClient) -> None:
    run = client.run(new_run_id(), tenant_id="t_42", agent_id="support-agent", actor=ACTOR)

    run.decide("crm.lookup", {"customer_id": "c_7"})
    with run.guard("crm.lookup", {"customer_id": "c_8"}):
        pass
    run.decide("crm.lookup")

    pre_steps = [e["step_id"] for e in journal_events(gateway_server, run.run_id) if e["kind"] == "pre_exec"]
    assert pre_steps == [1, 2, 3]


def test_guarded_function_runs_on_allow_with_its_arguments(
    gateway_server: RunningGateway, client: GatewayClient
) -> None:
    run = client.run(new_run_id(), tenant_id="t_42", agent_id="support-agent", actor=ACTOR)
    calls: list[str] = []

    @run.guarded("crm.lookup")
    def lookup(customer_id: str, *, region: str = "eu") -> dict[str, Any]:
        calls.append(customer_id)
        return {"customer_id": customer_id, "region": region}

    assert lookup("c_7") == {"customer_id": "c_7", "region": "eu"}
    assert lookup(customer_id="c_8", region="us")["region"] == "us"

    assert calls == ["c_7", "c_8"]
    events = journal_events(gateway_server, run.run_id)
    pre = [e for e in events if e["kind"] == "pre_exec"]
    assert [(e["step_id"], e["args"]) for e in pre] == [
        (1, {"customer_id": "c_7", "region": "eu"}),
        (2, {"customer_id": "c_8", "region": "us"}),
    ]
    posts = [e for e in events if e["kind"] == "post_exec"]
    assert [(e["step_id"], e["status"], e["output"]["region"]) for e in posts] == [
        (1, "succeeded", "eu"),
        (2, "succeeded", "us"),
    ]


def test_guarded_function_does_not_run_when_stopped(client: GatewayClient) -> None:
    run = client.run(new_run_id(), tenant_id="t_frozen", agent_id="support-agent", actor=ACTOR)
    calls: list[str] = []

    @run.guarded("crm.search")
    def search(query: str) -> None:
        calls.append(query)

    with pytest.raises(ActionStopped) as info:
        search("ann")

    assert calls == []
    assert info.value.reason == "kill_switch_engaged"


# --- asyncio --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "tenant_id", "decision", "reason"), DECISION_CASES)
def test_async_decide_answers_the_policy_decision(
    target: str, action: str, tenant_id: str, decision: str, reason: str
) -> None:
    async def scenario() -> tuple[str, str]:
        async with AsyncGatewayClient(target) as gateway_client:
            result = await gateway_client.decide(
                run_id=new_run_id(),
                tenant_id=tenant_id,
                action=action,
                args={"amount": 250},
                step_id=1,
                **AGENT,
            )
        return result.decision, result.reason

    assert asyncio.run(scenario()) == (decision, reason)


def test_async_guard_reports_success_failure_and_cancellation(gateway_server: RunningGateway) -> None:
    async def scenario() -> tuple[str, list[Step]]:
        async with AsyncGatewayClient(gateway_server.unix_target) as gateway_client:
            run = gateway_client.run(new_run_id(), tenant_id="t_42", agent_id="support-agent", actor=ACTOR)
            async with run.guard("crm.lookup", {"customer_id": "c_7"}) as ok:
                ok.output = {"found": True}
            with pytest.raises(KeyError):
                async with run.guard("crm.lookup", {"customer_id": "c_8"}) as failed:
                    raise KeyError("c_8")

            entered: asyncio.Queue[Step] = asyncio.Queue()

            async def slow_lookup() -> None:
                async with run.guard("crm.lookup", {"customer_id": "c_9"}) as step:
                    await entered.put(step)
                    await asyncio.Event().wait()  # until cancelled

            task = asyncio.create_task(slow_lookup())
            cancelled = await entered.get()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return run.run_id, [ok, failed, cancelled]

    run_id, steps = asyncio.run(scenario())

    posts = post_events(gateway_server, run_id)
    assert [(posts[s.event_id]["status"], posts[s.event_id]["error"]) for s in steps] == [
        ("succeeded", ""),
        ("failed", "KeyError: 'c_8'"),
        ("cancelled", "CancelledError"),
    ]
    assert posts[steps[0].event_id]["output"] == {"found": True}


def test_async_guard_raises_approval_required(gateway_server: RunningGateway) -> None:
    async def scenario() -> ApprovalRequired:
        async with AsyncGatewayClient(gateway_server.unix_target) as gateway_client:
            with pytest.raises(ApprovalRequired) as info:
                async with gateway_client.guard(
                    run_id=new_run_id(), tenant_id="t_42", action="refund.create", args={"amount": 250}, **AGENT
                ):
                    pytest.fail("the block ran without approval")
        return info.value

    denied = asyncio.run(scenario())

    assert denied.reason == "approval_required"
    assert denied.approval_id
    assert denied.event_id


def test_async_guarded_coroutine_numbers_steps(gateway_server: RunningGateway) -> None:
    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        async with AsyncGatewayClient(gateway_server.tcp_target) as gateway_client:
            run = gateway_client.run(new_run_id(), tenant_id="t_42", agent_id="support-agent", actor=ACTOR)

            @run.guarded("crm.lookup")
            async def lookup(customer_id: str) -> dict[str, Any]:
                await asyncio.sleep(0)
                return {"customer_id": customer_id}

            results = [await lookup("c_7"), await lookup(customer_id="c_8")]
        return run.run_id, results

    run_id, results = asyncio.run(scenario())

    assert results == [{"customer_id": "c_7"}, {"customer_id": "c_8"}]
    pre_steps = [e["step_id"] for e in journal_events(gateway_server, run_id) if e["kind"] == "pre_exec"]
    assert pre_steps == [1, 2]


def test_async_errors_are_translated(gateway_server: RunningGateway) -> None:
    async def scenario() -> tuple[GatewayError, GatewayError]:
        async with AsyncGatewayClient(gateway_server.unix_target) as gateway_client:
            with pytest.raises(InvalidRequestError) as invalid:
                await gateway_client.decide(run_id="", tenant_id="t_42", action="crm.lookup")
            with pytest.raises(NotFoundError) as not_found:
                await gateway_client.report_result("evt_unknown")
        return invalid.value, not_found.value

    invalid, not_found = asyncio.run(scenario())

    assert isinstance(invalid, InvalidRequestError)
    assert "run_id" in invalid.fields
    assert not_found.code is grpc.StatusCode.NOT_FOUND
