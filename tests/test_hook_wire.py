"""The hook's hand-kept wire form (agentaudit_client.hooks.wire) against the generated protobuf classes.

Every request it writes must parse, with the generated classes, to exactly the message the client's own
conversions (agentaudit_client._convert) build from the same arguments; every answer protobuf writes must read
to the same result values _convert reads from it. Property-based over JSON-like arguments."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import duration_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from agentaudit.v1 import gateway_pb2, types_pb2
from agentaudit_client import _convert
from agentaudit_client.hooks import wire

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # no lone surrogates: not UTF-8
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
ARGS = st.none() | st.dictionaries(TEXT, JSON, max_size=5)
UINT64 = st.integers(0, 2**64 - 1)


@settings(max_examples=300, deadline=None)
@given(
    run_id=TEXT,
    tenant_id=TEXT,
    action=TEXT,
    args=ARGS,
    step_id=UINT64,
    actor=st.none() | st.tuples(st.sampled_from(["user", "service", "agent"]), TEXT),
    agent_id=TEXT,
    approval_id=TEXT,
    labels=st.none() | st.dictionaries(TEXT, TEXT, max_size=3),
)
def test_a_decide_request_is_the_message_the_client_builds(**request: Any) -> None:
    expected = _convert.decide_request(**request, scope=None, traceparent="")
    written = gateway_pb2.DecideRequest.FromString(wire.decide_request(**request))
    assert written == expected
    assert written.HasField("action") and written.action.HasField("args") is (request["args"] is not None)


@settings(max_examples=200, deadline=None)
@given(
    event_id=TEXT,
    status=st.sampled_from(["succeeded", "failed", "cancelled", "timed_out"]),
    error=TEXT,
    output=ARGS,
    duration=st.none() | st.floats(-1e6, 1e9, allow_nan=False),
)
def test_a_report_request_is_the_message_the_client_builds(
    event_id: str, status: str, error: str, output: dict[str, Any] | None, duration: float | None
) -> None:
    expected = _convert.report_request(event_id, status=status, error=error, output=output, duration=duration)  # type: ignore[arg-type]
    written = wire.report_request(event_id, status=status, error=error, output=output, duration_s=duration)
    assert gateway_pb2.ReportResultRequest.FromString(written) == expected


@given(TEXT)
def test_a_wait_approval_request_is_the_generated_one(approval_id: str) -> None:
    parsed = gateway_pb2.WaitApprovalRequest.FromString(wire.wait_approval_request(approval_id))
    assert parsed == gateway_pb2.WaitApprovalRequest(approval_id=approval_id)


@settings(max_examples=300, deadline=None)
@given(
    decision=st.integers(0, 7),
    strings=st.lists(TEXT, min_size=7, max_size=7),
    retry=st.none() | st.tuples(st.integers(-(2**40), 2**40), st.integers(-999_999_999, 999_999_999)),
)
def test_a_decide_answer_reads_as_the_client_reads_it(
    decision: int, strings: list[str], retry: tuple[int, int] | None
) -> None:
    names = ["reason", "policy_layer", "policy_rule", "policy_version", "event_id", "action_key", "approval_id"]
    response = gateway_pb2.DecideResponse(decision=decision, **dict(zip(names, strings, strict=True)))  # type: ignore[arg-type]
    if retry is not None:
        response.retry_after.CopyFrom(duration_pb2.Duration(seconds=retry[0], nanos=retry[1]))
    assert wire.decide_result(response.SerializeToString()) == _convert.decide_result(response)


@given(event_id=TEXT, duplicate=st.booleans(), state=st.integers(0, 9), by=TEXT, comment=TEXT)
def test_the_report_and_approval_answers_read_as_the_client_reads_them(
    event_id: str, duplicate: bool, state: int, by: str, comment: str
) -> None:
    report = gateway_pb2.ReportResultResponse(event_id=event_id, duplicate=duplicate)
    assert wire.report_result(report.SerializeToString()) == _convert.report_result(report)
    outcome = gateway_pb2.WaitApprovalResponse(state=state, resolved_by=by, comment=comment)  # type: ignore[arg-type]
    assert wire.approval_outcome(outcome.SerializeToString()) == _convert.approval_outcome(outcome)


def test_fields_a_newer_sidecar_adds_are_skipped() -> None:
    # A later DecideResponse with fields this client does not know (every wire type) still reads.
    known = gateway_pb2.DecideResponse(decision=types_pb2.DECISION_ALLOW, event_id="ev_1").SerializeToString()
    extra = b"\xa8\x06\x07" + b"\xb2\x06\x02hi" + b"\xb9\x06" + b"\0" * 8 + b"\xc5\x06" + b"\0" * 4
    assert wire.decide_result(known + extra) == wire.decide_result(known)
    assert gateway_pb2.DecideResponse.FromString(known + extra).event_id == "ev_1"  # protobuf reads it too


@pytest.mark.parametrize(
    "garbage",
    [b"\x32\x05ab", b"\x08", b"\x0b", b"\x32\x02\xff\xfe", b"\x00\x01"],
    ids=["truncated-string", "truncated-varint", "group-wire-type", "not-utf8", "field-zero"],
)
def test_an_answer_that_is_not_a_message_is_refused(garbage: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decide_result(garbage)


def test_arguments_that_are_not_json_like_are_refused_as_the_client_refuses_them() -> None:
    with pytest.raises(TypeError):
        _convert.to_struct({"x": object()})
    with pytest.raises(TypeError):
        wire.decide_request(run_id="r", tenant_id="t", action="a", args={"x": object()})
