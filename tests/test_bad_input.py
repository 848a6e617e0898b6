"""Malformed requests are INVALID_ARGUMENT naming each bad field; nothing is journaled; the server stays healthy."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import struct_pb2

from agentaudit.v1 import gateway_pb2, types_pb2
from gateway.api.validation import parse_decide
from gateway.errors import InvalidRequestError
from tests.conftest import RunningGateway, wait_serving
from tests.gateway_helpers import bad_request_fields, decide_request, journal_count, stub


def deep_args(levels: int) -> dict[str, object]:
    node: dict[str, object] = {"leaf": 1}
    for _ in range(levels):
        node = {"n": node}
    return node


def raw_string_field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


VALID = decide_request().SerializeToString()

DECIDE_CASES: list[tuple[str, Callable[[], bytes], list[str]]] = [
    ("missing-run-id", lambda: decide_request(run_id="").SerializeToString(), ["run_id"]),
    ("missing-tenant", lambda: decide_request(tenant_id="").SerializeToString(), ["tenant_id"]),
    ("missing-action", lambda: decide_request(action="").SerializeToString(), ["action.name"]),
    (
        "all-required-missing",
        lambda: gateway_pb2.DecideRequest().SerializeToString(),
        ["run_id", "tenant_id", "action.name"],
    ),
    ("bad-action-name", lambda: decide_request(action="rm -rf /").SerializeToString(), ["action.name"]),
    ("oversized-args", lambda: decide_request(args={"blob": "x" * 70_000}).SerializeToString(), ["action.args"]),
    ("too-deep-args", lambda: decide_request(args=deep_args(40)).SerializeToString(), ["action.args"]),
    ("nan-in-args", lambda: decide_request(args={"amount": float("nan")}).SerializeToString(), ["action.args"]),
    ("step-id-beyond-json-range", lambda: decide_request(step_id=2**53).SerializeToString(), ["step_id"]),
    ("long-run-id", lambda: decide_request(run_id="r" * 300).SerializeToString(), ["run_id"]),
    ("control-char", lambda: decide_request(tenant_id="t\n42").SerializeToString(), ["tenant_id"]),
    ("bad-traceparent", lambda: decide_request(traceparent="00-xyz").SerializeToString(), ["traceparent"]),
    ("unknown-scope", lambda: decide_request(scope=99).SerializeToString(), ["scope"]),  # type: ignore[arg-type]
    ("bad-label-key", lambda: decide_request(labels={"bad key": "v"}).SerializeToString(), ["labels['bad key']"]),
    ("invalid-utf8-run-id", lambda: raw_string_field(1, b"\xff\xfe") + VALID[VALID.index(b"\x1a") :], ["run_id"]),
    (
        "invalid-utf8-action-name",
        lambda: (
            raw_string_field(1, b"r")
            + raw_string_field(3, b"t")
            + bytes([6 << 3 | 2, 4])
            + raw_string_field(1, b"\xc3(")
        ),
        ["action.name"],
    ),
    (
        "invalid-utf8-label",
        lambda: VALID + bytes([10 << 3 | 2, 6]) + raw_string_field(1, b"k") + raw_string_field(2, b"\xff"),
        ["labels"],
    ),
    ("not-protobuf", lambda: b"\xff\xff\xff\xff", ["request"]),
    # Ids are compared byte for byte: " run_1" and "run_1" would be two runs that look alike in every report.
    ("run-id-leading-space", lambda: decide_request(run_id=" run_1").SerializeToString(), ["run_id"]),
    ("run-id-trailing-space", lambda: decide_request(run_id="run_1 ").SerializeToString(), ["run_id"]),
    ("tenant-id-trailing-space", lambda: decide_request(tenant_id="t_42 ").SerializeToString(), ["tenant_id"]),
    ("agent-id-leading-space", lambda: decide_request(agent_id=" support-agent").SerializeToString(), ["agent_id"]),
    (
        "actor-id-trailing-space",
        lambda: decide_request(actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_USER, id="u_1 ")).SerializeToString(),
        ["actor.id"],
    ),
    ("approval-id-leading-space", lambda: decide_request(approval_id=" apr_1").SerializeToString(), ["approval_id"]),
    (
        "action-name-trailing-newline",
        lambda: decide_request(action="crm.lookup\n").SerializeToString(),
        ["action.name"],
    ),
    (
        "label-key-trailing-newline",
        lambda: decide_request(labels={"team\n": "v"}).SerializeToString(),
        ["labels['team\\n']"],
    ),
    ("nul-in-label-key", lambda: decide_request(labels={"a\x00": "v"}).SerializeToString(), ["labels['a\\x00']"]),
    ("nul-in-args-key", lambda: decide_request(args={"a\x00b": 1}).SerializeToString(), ["action.args"]),
    (
        "nul-in-nested-args-key",
        lambda: decide_request(args={"c": [{"ok": 1}, {"\x00": 1}]}).SerializeToString(),
        ["action.args"],
    ),
    ("empty-args-key", lambda: decide_request(args={"": 1}).SerializeToString(), ["action.args"]),
    ("empty-nested-args-key", lambda: decide_request(args={"c": {"": 1}}).SerializeToString(), ["action.args"]),
]


@pytest.mark.parametrize(("payload", "fields"), [pytest.param(p, f, id=i) for i, p, f in DECIDE_CASES])
def test_malformed_decide_is_invalid_argument_naming_fields(
    gateway_server: RunningGateway, payload: Callable[[], bytes], fields: list[str]
) -> None:
    before = journal_count(gateway_server.journal_path)
    with grpc.insecure_channel(gateway_server.unix_target) as channel:
        call = channel.unary_unary("/agentaudit.v1.GatewayService/Decide")
        with pytest.raises(grpc.RpcError) as info:
            call(payload(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == fields
    assert journal_count(gateway_server.journal_path) == before, "nothing is journaled for a malformed request"
    wait_serving(gateway_server.unix_target, deadline_s=5)
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        assert gw.Decide(decide_request(), timeout=10).event_id, "still answers valid requests"


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        pytest.param(gateway_pb2.ReportResultRequest(status=1), ["event_id"], id="missing-event-id"),
        pytest.param(gateway_pb2.ReportResultRequest(event_id="evt_x"), ["status"], id="missing-status"),
        pytest.param(
            gateway_pb2.ReportResultRequest(event_id="evt_x", status=1, error="e" * 5000), ["error"], id="long-error"
        ),
        pytest.param(
            gateway_pb2.ReportResultRequest(
                event_id="evt_x",
                status=1,
                output=struct_pb2.Struct(fields={"b": struct_pb2.Value(string_value="x" * 70_000)}),
            ),
            ["output"],
            id="oversized-output",
        ),
        pytest.param(
            gateway_pb2.ReportResultRequest(event_id="evt_x ", status=1), ["event_id"], id="event-id-trailing-space"
        ),
        pytest.param(
            gateway_pb2.ReportResultRequest(event_id=" evt_x", status=1), ["event_id"], id="event-id-leading-space"
        ),
        pytest.param(
            gateway_pb2.ReportResultRequest(
                event_id="evt_x", status=1, output=struct_pb2.Struct(fields={"k\x00": struct_pb2.Value(number_value=1)})
            ),
            ["output"],
            id="nul-in-output-key",
        ),
        pytest.param(
            gateway_pb2.ReportResultRequest(
                event_id="evt_x", status=1, output=struct_pb2.Struct(fields={"": struct_pb2.Value(number_value=1)})
            ),
            ["output"],
            id="empty-output-key",
        ),
    ],
)
def test_malformed_report_is_invalid_argument(
    gateway_server: RunningGateway, request_: gateway_pb2.ReportResultRequest, fields: list[str]
) -> None:
    before = journal_count(gateway_server.journal_path)
    channel, gw = stub(gateway_server.unix_target)
    with channel, pytest.raises(grpc.RpcError) as info:
        gw.ReportResult(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == fields
    assert journal_count(gateway_server.journal_path) == before


@pytest.mark.parametrize(
    ("args", "description"),
    [
        pytest.param({"": 1}, "has an empty key at action.args", id="top-level-empty"),
        pytest.param(
            {"c": [{"ok": 1}, {"k\x00": 1}]}, "has a key containing NUL ('k\\x00') at action.args.c[1]", id="nested-nul"
        ),
    ],
)
def test_bad_key_violation_says_where_the_key_is(args: dict[str, object], description: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_decide(decide_request(args=args), max_args_bytes=65_536, max_depth=32)
    assert [(v.field, v.description) for v in info.value.violations] == [("action.args", description)]
