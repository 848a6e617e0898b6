"""The protobuf wire form of the hook's few messages, without importing protobuf (docs/adr/0026).

Importing the generated ``gateway_pb2`` (protobuf's descriptor pool, ``python_message``, ``text_format``...)
is about a quarter of a hook's start-up, for three small requests and three small answers. This module writes
exactly the bytes protobuf writes for the fields the hook sets (``DecideRequest``, ``ReportResultRequest``,
``WaitApprovalRequest``, with ``google.protobuf.Struct`` arguments as ``Struct.update`` converts them) and reads
the three answers into the client's own result values, as ``agentaudit_client._convert`` does. The field
numbers are those of ``proto/agentaudit/v1/*.proto``; ``tests/test_hook_wire.py`` checks every function
against the generated classes (the same message after parsing, the same result values), so a change to the
.proto that this misses fails there.

Only the proto3 rules these messages need: a scalar at its default is not written, a message field is written
when set (an empty ``Struct`` too), a oneof member (``Value``'s kinds) is written even at its default, and an
unknown field in an answer is skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from agentaudit_client.models import ApprovalOutcome, DecideResult, ReportResult

_ACTOR_TYPES = {"user": 1, "service": 2, "agent": 3}
_RESULT_STATUSES = {"succeeded": 1, "failed": 2, "cancelled": 3, "timed_out": 4}
_DECISIONS = {1: "allow", 2: "stop", 3: "approval_required"}
_APPROVAL_STATES = {1: "pending", 2: "granted", 3: "denied", 4: "expired", 5: "abandoned"}
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not a well-formed message."""


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # a negative int64 is written as ten bytes of two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _len(field: int, data: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(data)) + data


def _str(field: int, text: str) -> bytes:
    return _len(field, text.encode()) if text else b""


def _int(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value) if value else b""


def value(item: Any) -> bytes:
    """A ``google.protobuf.Value``, converted as ``Struct.update`` converts it."""
    if item is None:
        return _key(1, _VARINT) + b"\0"  # null_value: a oneof member, written at its default
    if isinstance(item, bool):
        return _key(4, _VARINT) + (b"\1" if item else b"\0")
    if isinstance(item, str):
        return _len(3, item.encode())
    if isinstance(item, int | float):
        try:
            return _key(2, _I64) + struct.pack("<d", float(item))
        except OverflowError as exc:
            raise TypeError(f"values must be JSON-like numbers within a double, got {item!r}") from exc
    if isinstance(item, Mapping):
        return _len(5, struct_message(item))
    if isinstance(item, list | tuple):
        return _len(6, b"".join(_len(1, value(v)) for v in item))
    raise TypeError(f"values must be JSON-like (dict, list, str, number, bool, None), got {item!r}")


def struct_message(values: Mapping[str, Any]) -> bytes:
    """A ``google.protobuf.Struct``: its ``fields`` map, one entry (key 1, value 2) per item."""
    out = bytearray()
    for key, item in values.items():
        if not isinstance(key, str):
            raise TypeError(f"values must be JSON-like (dict keys are strings), got key {key!r}")
        out += _len(1, _str(1, key) + _len(2, value(item)))
    return bytes(out)


def duration(seconds: float) -> bytes:
    """A ``google.protobuf.Duration`` of ``seconds``, rounded to the nanosecond as ``_convert.to_duration``."""
    nanos = round(seconds * 1e9)
    whole, part = divmod(nanos, 1_000_000_000)
    if whole < 0 and part > 0:  # protobuf's normal form: seconds and nanos of one sign
        whole, part = whole + 1, part - 1_000_000_000
    return _int(1, whole) + _int(2, part)


def decide_request(
    *,
    run_id: str,
    tenant_id: str,
    action: str,
    args: Mapping[str, Any] | None = None,
    step_id: int = 0,
    actor: tuple[str, str] | None = None,
    agent_id: str = "",
    approval_id: str = "",
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """A serialized ``DecideRequest``, as ``_convert.decide_request`` builds it (no scope, no traceparent)."""
    out = bytearray(_str(1, run_id) + _int(2, step_id) + _str(3, tenant_id))
    if actor is not None:
        kind, actor_id = actor
        if kind not in _ACTOR_TYPES:
            raise ValueError(f"unknown actor type {kind!r}; expected one of {sorted(_ACTOR_TYPES)}")
        out += _len(4, _int(1, _ACTOR_TYPES[kind]) + _str(2, actor_id))
    out += _str(5, agent_id)
    out += _len(6, _str(1, action) + (_len(2, struct_message(args)) if args is not None else b""))
    out += _str(8, approval_id)
    for key, label in (labels or {}).items():
        out += _len(10, _str(1, key) + _str(2, label))
    return bytes(out)


def report_request(
    event_id: str,
    *,
    status: str = "succeeded",
    error: str = "",
    output: Mapping[str, Any] | None = None,
    duration_s: float | None = None,
) -> bytes:
    """A serialized ``ReportResultRequest``, as ``_convert.report_request`` builds it."""
    if status not in _RESULT_STATUSES:
        raise ValueError(f"unknown result status {status!r}; expected one of {sorted(_RESULT_STATUSES)}")
    out = _str(1, event_id) + _int(2, _RESULT_STATUSES[status]) + _str(3, error)
    if output is not None:
        out += _len(4, struct_message(output))
    if duration_s is not None:
        out += _len(5, duration(duration_s))
    return out


def wait_approval_request(approval_id: str) -> bytes:
    """A serialized ``WaitApprovalRequest``."""
    return _str(1, approval_id)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise WireError("a varint runs past the end of the message")
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, at
        shift += 7


def fields(data: bytes) -> dict[int, Any]:
    """The fields of a message: varints as ints, length-delimited ones as bytes; the last of a number wins."""
    found: dict[int, Any] = {}
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == _VARINT:
            found[number], at = _read_varint(data, at)
        elif wire_type == _LEN:
            size, at = _read_varint(data, at)
            if at + size > len(data):
                raise WireError("a field runs past the end of the message")
            found[number], at = data[at : at + size], at + size
        elif wire_type in (_I64, _I32):
            width = 8 if wire_type == _I64 else 4
            if at + width > len(data):
                raise WireError("a field runs past the end of the message")
            found[number], at = data[at : at + width], at + width
        else:
            raise WireError(f"wire type {wire_type} is not one these messages use")
    return found


def _text(found: dict[int, Any], number: int) -> str:
    raw = found.get(number, b"")
    if not isinstance(raw, bytes):
        raise WireError(f"field {number} is not a string")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"field {number} is not UTF-8") from exc


def _number(found: dict[int, Any], number: int) -> int:
    raw = found.get(number, 0)
    if not isinstance(raw, int):
        raise WireError(f"field {number} is not a varint")
    return raw


def _signed(raw: int, bits: int) -> int:
    raw &= (1 << bits) - 1
    return raw - (1 << bits) if raw >> (bits - 1) else raw


def decide_result(data: bytes) -> DecideResult:
    """A serialized ``DecideResponse`` as ``_convert.decide_result`` reads it (an unknown decision is stop)."""
    found = fields(data)
    retry_after = None
    if 9 in found:
        span = fields(found[9]) if isinstance(found[9], bytes) else {}
        seconds, nanos = _signed(_number(span, 1), 64), _signed(_number(span, 2), 32)
        retry_after = (seconds * 1_000_000_000 + nanos) / 1e9
    return DecideResult(
        decision=_DECISIONS.get(_number(found, 1), "stop"),  # type: ignore[arg-type]
        reason=_text(found, 2),
        policy_layer=_text(found, 3),
        policy_rule=_text(found, 4),
        policy_version=_text(found, 5),
        event_id=_text(found, 6),
        action_key=_text(found, 7),
        approval_id=_text(found, 8),
        retry_after=retry_after,
    )


def report_result(data: bytes) -> ReportResult:
    """A serialized ``ReportResultResponse``."""
    found = fields(data)
    return ReportResult(event_id=_text(found, 1), duplicate=bool(_number(found, 2)))


def approval_outcome(data: bytes) -> ApprovalOutcome:
    """A serialized ``WaitApprovalResponse`` (an unknown state counts as pending)."""
    found = fields(data)
    return ApprovalOutcome(
        state=_APPROVAL_STATES.get(_number(found, 1), "pending"),  # type: ignore[arg-type]
        resolved_by=_text(found, 2),
        comment=_text(found, 3),
    )
