"""Whatever the API accepts, once journaled, verifies: the writer and the verifier agree on RFC 8785.

Decide ``action.args`` and ReportResult ``output`` are ``google.protobuf.Struct``, so every number arrives as an
IEEE-754 double. RFC 8785 serialises a double as ECMAScript does (``1e16`` is ``10000000000000000``, ``1e21`` is
``1e+21``) and reads a JSON number back as a double, so the verifier must too; an accepted number that the
verifier then re-reads differently would poison the journal permanently.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentaudit.v1 import gateway_pb2, types_pb2
from gateway.api.validation import parse_decide, parse_report
from gateway.canonical import canonical_json, parse_json
from gateway.errors import InvalidRequestError
from gateway.journal.entry import HEADER_SIZE, EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.store import JournalReader
from gateway.journal.verify import FindingCode, verify_journal
from gateway.journal.writer import JournalWriter
from gateway.policy.model import Decision, Verdict
from gateway.redaction import Redactor
from gateway.sidecar.recorder import AuditRecorder
from tests.conftest import RunningGateway, run_cli
from tests.gateway_helpers import decide_request, stub
from tests.journal_helpers import body as body_of
from tests.journal_helpers import fixed_signer

MAX_DEPTH = 32  # the configured default (server.max_depth)
MAX_BYTES = 64 * 1024
SIGNER = fixed_signer()
ALLOW = Decision(Verdict.ALLOW, "allowed", "access", "support", "sha256:test")

# Doubles at the edges where number printers disagree: the safe-integer boundary, the plain/exponent switch
# points of Python (1e16) and ECMAScript (1e21, 1e-7), subnormals and the extremes.
EDGE_NUMBERS = [
    0.0,
    -0.0,
    2.0**53 - 1,
    2.0**53,
    2.0**53 + 2,
    -(2.0**53),
    1e16,
    9999999999999998.0,
    1e20,
    1e21,
    1.2345678901234568e20,
    1e-4,
    1e-5,
    1e-6,
    1e-7,
    5e-324,
    2.2250738585072014e-308,
    2.225073858507201e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.1 + 0.2,
]

numbers = (
    st.sampled_from(EDGE_NUMBERS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**63), max_value=2**63).map(float)
    | st.integers(min_value=2**53 - 4, max_value=2**53 + 4).map(float)
)
# Keys where UTF-16 order differs from code-point order (U+E000.. against supplementary characters), plus
# arbitrary text; payloads() sometimes adds an empty or NUL-holding key, which must be refused, never journaled.
keys = st.sampled_from(["a", "\ue000", "\uffff", "\U0001f600", "\U00010000", "é", "A"]) | st.text(
    min_size=1, max_size=6
).filter(lambda key: "\x00" not in key)
# Struct strings are protobuf strings: valid UTF-8 only (lone surrogates cannot be encoded, see below).
strings = st.text() | st.sampled_from(["\U0001f600", "\x00", "a\x00b", "\u2028", "\ufeff", '"\\'])
scalars = st.none() | st.booleans() | numbers | strings
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=12,
)


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A Struct-shaped dict, sometimes with a value nested right up to (or just past) the depth limit."""
    top = draw(st.dictionaries(keys, values, max_size=4))
    if draw(st.booleans()):
        node: Any = draw(scalars)
        for level in range(draw(st.integers(min_value=1, max_value=MAX_DEPTH))):
            node = [node] if level % 2 else {draw(keys): node}
        top[draw(keys)] = node
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        top[draw(st.sampled_from(["", "\x00", "k\x00"]))] = draw(scalars)
    return top


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


async def record(path: Path, args: struct_pb2.Struct, output: struct_pb2.Struct) -> bool:
    """Records a Decide and its ReportResult through the real recorder and writer; False if validation refused
    either request (then nothing is recorded)."""
    request = decide_request(
        actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_USER, id="u_1"), labels={"team": "support"}
    )
    request.action.args.CopyFrom(args)
    try:
        action = parse_decide(request, max_args_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    except InvalidRequestError:
        return False
    writer = JournalWriter(path, SIGNER)
    await writer.start()
    reader = JournalReader(path)
    try:
        recorder = AuditRecorder(writer, reader, Redactor.create(b"k" * 32, ["email"], hash_args=True))
        prepared = recorder.prepare(action.action, action.args, normalised=action.args_normalised)
        pre = await recorder.record_decision(action, prepared, ALLOW, "")
        report = gateway_pb2.ReportResultRequest(event_id=pre.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED)
        report.output.CopyFrom(output)
        try:
            event_id, status, error, out, duration_ns = parse_report(
                report, max_output_bytes=MAX_BYTES, max_depth=MAX_DEPTH
            )
        except InvalidRequestError:
            return True
        await recorder.record_result(event_id, status, error, out, duration_ns)
        return True
    finally:
        await reader.aclose()
        await writer.aclose()


def assert_verifies(path: Path) -> None:
    report = verify_journal(path, [SIGNER.verifier])
    assert [f"{f.code}: {f.message}" for f in report.findings] == []
    assert report.ok


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payloads(), payloads())
def test_every_accepted_payload_verifies_once_journaled(args: dict[str, Any], output: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "journal.db"
        accepted = asyncio.run(record(path, struct(args), struct(output)))
        event("accepted" if accepted else "refused")  # shown by --hypothesis-show-statistics
        if accepted:
            assert_verifies(path)


@pytest.mark.parametrize("number", [pytest.param(n, id=repr(n)) for n in EDGE_NUMBERS])
def test_edge_number_in_args_and_output_verifies(tmp_path: Path, number: float) -> None:
    path = tmp_path / "journal.db"
    assert asyncio.run(record(path, struct({"n": number, "l": [number]}), struct({"n": number})))
    assert_verifies(path)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf], ids=repr)
def test_nan_and_infinity_are_refused_naming_the_field(tmp_path: Path, number: float) -> None:
    request = decide_request(args={"deep": [{"n": number}]})
    with pytest.raises(InvalidRequestError) as info:
        parse_decide(request, max_args_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    assert [v.field for v in info.value.violations] == ["action.args"]


def test_negative_zero_is_recorded_as_zero_with_the_digest_of_zero() -> None:
    """RFC 8785 prints -0 as 0, so -0.0 and 0.0 are the same canonical args (one action key, one digest)."""
    redactor = Redactor.create(b"k" * 32, [], hash_args=True)
    keys_seen = set()
    for zero in (0.0, -0.0):
        action = parse_decide(decide_request(args={"n": zero}), max_args_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
        canonical, _, _ = redactor.prepare(action.args, "args", normalised=action.args_normalised)
        assert canonical == b'{"n":0}'
        keys_seen.add(redactor.action_key(action.tenant_id, action.action, canonical))
    assert len(keys_seen) == 1


def test_lone_surrogates_cannot_reach_the_api() -> None:
    """A Struct string is a protobuf string: a lone surrogate can be neither set nor parsed off the wire (the
    server refuses undecodable requests as INVALID_ARGUMENT, see test_bad_input)."""
    with pytest.raises(UnicodeEncodeError):
        struct({"s": "\ud800"})
    wire = struct({"s": "x"}).SerializeToString().replace(b"\x1a\x01x", b"\x1a\x03\xed\xa0\x80")
    with pytest.raises(Exception, match="UTF-8"):
        struct_pb2.Struct.FromString(wire)


def test_sidecar_journal_with_1e16_verifies_with_the_cli(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        args = {"amount": 1e16, "limit": 9007199254740992.0, "note": "a\x00b"}
        reply = gw.Decide(decide_request(args=args), timeout=10)
        gw.ReportResult(
            gateway_pb2.ReportResultRequest(
                event_id=reply.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED, output=struct({"total": 1e16})
            ),
            timeout=10,
        )
    result = run_cli("verify", str(gateway_server.journal_path), "--public-key", str(gateway_server.public_key_path))
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(f"file:{gateway_server.journal_path}?mode=ro", uri=True) as conn:
        (entry,) = conn.execute("SELECT entry FROM journal WHERE event_id = ?", (reply.event_id,)).fetchone()
    stored = bytes(entry)[HEADER_SIZE:]
    assert b'"amount":10000000000000000' in stored
    # NUL in a string value is kept: the body is a JSON escape inside a BLOB, which nothing truncates.
    assert parse_json(stored.decode())["args"]["note"] == "a\x00b"


@pytest.mark.parametrize(
    "literal",
    [
        pytest.param("9007199254740993", id="integer-that-is-no-double"),
        pytest.param("1e16", id="exponent-where-jcs-prints-digits"),
        pytest.param("10000000000000000.0", id="fraction-of-an-integral-double"),
        pytest.param("1E+21", id="capital-exponent"),
        pytest.param("-0", id="negative-zero"),
        pytest.param("1e400", id="beyond-a-double"),
        pytest.param("1" + "0" * 400, id="integer-beyond-a-double"),
    ],
)
def test_signed_body_with_a_noncanonical_number_is_reported(tmp_path: Path, literal: str) -> None:
    """Reading numbers as doubles keeps the verifier strict: only the one RFC 8785 spelling of a double passes."""
    path = tmp_path / "journal.db"
    body = body_of(0)
    encoded = canonical_json(body)[:-1] + b',"z":' + literal.encode() + b"}"

    async def write() -> None:
        writer = JournalWriter(path, SIGNER)
        await writer.start()
        try:
            await writer.append(EventKind.PRE_EXEC, encoded, indexed_values(body), 1_700_000_000_000_000_000)
        finally:
            await writer.aclose()

    asyncio.run(write())
    report = verify_journal(path, [SIGNER.verifier])
    assert [(f.seq, f.code) for f in report.findings] == [(0, FindingCode.NONCANONICAL_BODY)]
