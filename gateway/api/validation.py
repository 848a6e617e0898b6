"""Validation of requests at the edge: every bad field is named, nothing bad reaches policy or the journal."""

from __future__ import annotations

import math
import re
from typing import Any

from google.protobuf import struct_pb2

from agentaudit.v1 import gateway_pb2, types_pb2
from gateway.canonical import JsonPayload, key_sorts_alike, normalise_number
from gateway.errors import FieldViolation, InvalidRequestError
from gateway.policy.model import ActionRequest
from gateway.tracecontext import valid_traceparent

MAX_ID_BYTES = 256
MAX_LABELS = 64
MAX_LABEL_VALUE_BYTES = 256
MAX_ERROR_BYTES = 4096
MAX_DURATION_S = 30 * 24 * 3600
MAX_STEP_ID = 2**53 - 1

_ACTION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,255}")  # used with fullmatch: "$" would admit a final \n
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,62}")


ACTOR_TYPES = {
    types_pb2.ACTOR_TYPE_UNSPECIFIED: "",
    types_pb2.ACTOR_TYPE_USER: "user",
    types_pb2.ACTOR_TYPE_SERVICE: "service",
    types_pb2.ACTOR_TYPE_AGENT: "agent",
}
ACTION_SCOPES = {
    types_pb2.SCOPE_UNSPECIFIED: "",
    types_pb2.SCOPE_USER: "user",
    types_pb2.SCOPE_TENANT: "tenant",
    types_pb2.SCOPE_GLOBAL: "global",
}
RESULT_STATUSES = {
    types_pb2.RESULT_STATUS_SUCCEEDED: "succeeded",
    types_pb2.RESULT_STATUS_FAILED: "failed",
    types_pb2.RESULT_STATUS_CANCELLED: "cancelled",
    types_pb2.RESULT_STATUS_TIMED_OUT: "timed_out",
}


class _TooDeep(Exception):
    pass


class _NotFinite(Exception):
    pass


class _BadKey(Exception):
    """A map key the journal must not hold; ``path`` is filled in (outermost first) as the walk unwinds."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []

    def describe(self, field: str) -> str:
        return f"has {self.problem} at {field}{''.join(self.path)}"


class _Unusual(Exception):
    """The fast conversion met something it leaves to the precise one (a refusal, named there)."""


def _fast_struct(s: struct_pb2.Struct, depth: int, max_depth: int, exact: list[bool]) -> dict[str, Any]:
    """:func:`struct_to_json`'s value for a Struct that holds nothing it refuses; raises _Unusual otherwise.

    The same walk as :func:`_precise_struct_to_json` (same depths, same number normalisation, same key order) with
    the scalar cases inline and no per-key error bookkeeping: a Decide's args are converted in one call per
    container rather than one per value. ``exact[0]`` becomes False where :func:`encode_normalised` would not do.
    """
    if depth > max_depth:
        raise _Unusual
    out: dict[str, Any] = {}
    fields = s.fields
    for k in fields:
        if not k or "\x00" in k:
            raise _Unusual
        if not (k.isascii() or max(k) < "\ue000"):  # key_sorts_alike, inline
            exact[0] = False
        v = fields[k]
        kind = v.WhichOneof("kind")
        if kind == "string_value":
            out[k] = v.string_value
        elif kind == "number_value":
            out[k] = _fast_number(v.number_value, exact)
        elif kind == "bool_value":
            out[k] = v.bool_value
        elif kind == "struct_value":
            out[k] = _fast_struct(v.struct_value, depth + 1, max_depth, exact)
        elif kind == "list_value":
            out[k] = _fast_list(v.list_value, depth + 1, max_depth, exact)
        else:
            out[k] = None
    return out


def _fast_list(values: struct_pb2.ListValue, depth: int, max_depth: int, exact: list[bool]) -> list[Any]:
    if depth > max_depth:
        raise _Unusual
    items: list[Any] = []
    append = items.append
    for v in values.values:
        kind = v.WhichOneof("kind")
        if kind == "string_value":
            append(v.string_value)
        elif kind == "number_value":
            append(_fast_number(v.number_value, exact))
        elif kind == "bool_value":
            append(v.bool_value)
        elif kind == "struct_value":
            append(_fast_struct(v.struct_value, depth + 1, max_depth, exact))
        elif kind == "list_value":
            append(_fast_list(v.list_value, depth + 1, max_depth, exact))
        else:
            append(None)
    return items


def _fast_number(number: float, exact: list[bool]) -> int | float:
    if not math.isfinite(number):
        raise _Unusual
    normal, fits = normalise_number(number)
    if not fits:
        exact[0] = False
    return normal


def struct_to_json(message: struct_pb2.Struct, max_depth: int) -> JsonPayload:
    """Converts a Struct to plain Python, refusing nesting deeper than ``max_depth``, NaN/infinity, and empty
    or NUL-holding keys (an empty key makes an ambiguous redaction path; NUL ends keys in C-string consumers).

    The fast walk converts what it can; anything it would refuse is converted again by the precise walk, which
    raises the refusal with its path (tests/test_validation_struct.py compares the two)."""
    exact = [True]
    try:
        return JsonPayload(_fast_struct(message, 1, max_depth, exact), exact[0])
    except (_Unusual, RecursionError):
        return _precise_struct_to_json(message, max_depth)


def _precise_struct_to_json(message: struct_pb2.Struct, max_depth: int) -> JsonPayload:
    """:func:`struct_to_json` one value at a time, naming the path of the first refused value or key."""
    exact = True

    def value(v: struct_pb2.Value, depth: int) -> Any:
        nonlocal exact
        kind = v.WhichOneof("kind")
        if kind == "string_value":
            return v.string_value
        if kind == "number_value":
            number = v.number_value
            if not math.isfinite(number):
                raise _NotFinite
            normal, fits = normalise_number(number)
            exact = exact and fits
            return normal
        if kind == "bool_value":
            return v.bool_value
        if kind == "struct_value":
            return struct(v.struct_value, depth + 1)
        if kind == "list_value":
            if depth + 1 > max_depth:
                raise _TooDeep
            items = []
            for i, item in enumerate(v.list_value.values):
                try:
                    items.append(value(item, depth + 1))
                except _BadKey as exc:
                    exc.path.insert(0, f"[{i}]")
                    raise
            return items
        return None

    def struct(s: struct_pb2.Struct, depth: int) -> dict[str, Any]:
        nonlocal exact
        if depth > max_depth:
            raise _TooDeep
        out = {}
        for k, v in s.fields.items():
            if not k:
                raise _BadKey("an empty key")
            if "\x00" in k:
                raise _BadKey(f"a key containing NUL ({k[:64]!r})")
            if not key_sorts_alike(k):
                exact = False
            try:
                out[k] = value(v, depth)
            except _BadKey as exc:
                exc.path.insert(0, f".{k[:64]}")
                raise
        return out

    converted = struct(message, 1)
    return JsonPayload(converted, exact)


_EMPTY = JsonPayload({}, True)


class _Checker:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def text(self, field: str, value: str, *, required: bool, max_bytes: int = MAX_ID_BYTES) -> None:
        if not value:
            if required:
                self.add(field, "is required")
            return
        if len(value) > max_bytes or (not value.isascii() and len(value.encode()) > max_bytes):
            self.add(field, f"must be at most {max_bytes} bytes")
        elif not value.isprintable():
            self.add(field, "must not contain control or separator characters other than space")
        elif value[0] == " " or value[-1] == " ":
            # Ids are matched byte for byte: "run_1 " would be a second run that reads like the first.
            self.add(field, "must not begin or end with a space")

    def payload(self, field: str, message: struct_pb2.Struct, max_bytes: int, max_depth: int) -> JsonPayload:
        size = message.ByteSize()
        if size > max_bytes:
            self.add(field, f"is {size} bytes, more than the limit of {max_bytes}")
            return _EMPTY
        try:
            return struct_to_json(message, max_depth)
        except _TooDeep:
            self.add(field, f"is nested deeper than {max_depth} levels")
        except _NotFinite:
            self.add(field, "holds NaN or infinity, which JSON cannot represent")
        except _BadKey as exc:
            self.add(field, exc.describe(field))
        return _EMPTY

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidRequestError(self.violations)


def parse_decide(request: gateway_pb2.DecideRequest, *, max_args_bytes: int, max_depth: int) -> ActionRequest:
    """Validates a DecideRequest and returns the policy input.

    Raises:
        InvalidRequestError: naming every bad field.
    """
    check = _Checker()
    check.text("run_id", request.run_id, required=True)
    if request.step_id > MAX_STEP_ID:
        # Events are JSON: integers beyond 2**53-1 are not interoperable (RFC 7493).
        check.add("step_id", f"must be at most {MAX_STEP_ID}")
    check.text("tenant_id", request.tenant_id, required=True)
    check.text("agent_id", request.agent_id, required=False)
    check.text("approval_id", request.approval_id, required=False, max_bytes=128)
    if request.actor.type not in ACTOR_TYPES:
        check.add("actor.type", f"unknown actor type {request.actor.type}")
    check.text("actor.id", request.actor.id, required=False)
    if request.scope not in ACTION_SCOPES:
        check.add("scope", f"unknown scope {request.scope}")
    name = request.action.name
    if not name:
        check.add("action.name", "is required")
    elif not _ACTION_RE.fullmatch(name):
        check.add("action.name", "must match [A-Za-z0-9][A-Za-z0-9_.:/-]{0,255}")
    args = check.payload("action.args", request.action.args, max_args_bytes, max_depth)
    if request.traceparent and not valid_traceparent(request.traceparent):
        check.add("traceparent", "must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")
    if len(request.labels) > MAX_LABELS:
        check.add("labels", f"has {len(request.labels)} entries, more than {MAX_LABELS}")
    else:
        for key, val in request.labels.items():
            if not _LABEL_KEY_RE.fullmatch(key):
                check.add(f"labels[{key[:64]!r}]", "key must match [A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}")
            elif len(val.encode()) > MAX_LABEL_VALUE_BYTES or not val.isprintable():
                check.add(f"labels[{key!r}]", f"value must be at most {MAX_LABEL_VALUE_BYTES} bytes, no controls")
    check.raise_if_any()
    return ActionRequest(
        run_id=request.run_id,
        step_id=request.step_id,
        tenant_id=request.tenant_id,
        actor_type=ACTOR_TYPES[request.actor.type],
        actor_id=request.actor.id,
        agent_id=request.agent_id,
        action=name,
        args=args.value,
        args_normalised=args.normalised,
        scope=ACTION_SCOPES[request.scope],
        approval_id=request.approval_id,
        traceparent=request.traceparent,
        labels=dict(request.labels),
    )


def parse_report(
    request: gateway_pb2.ReportResultRequest, *, max_output_bytes: int, max_depth: int
) -> tuple[str, str, str, JsonPayload, int | None]:
    """Validates a ReportResultRequest: (event_id, status, error, output, duration_ns).

    Raises:
        InvalidRequestError: naming every bad field.
    """
    check = _Checker()
    check.text("event_id", request.event_id, required=True, max_bytes=64)
    status = RESULT_STATUSES.get(request.status)
    if status is None:
        check.add("status", "is required (succeeded, failed, cancelled or timed_out)")
    if len(request.error.encode()) > MAX_ERROR_BYTES:
        check.add("error", f"must be at most {MAX_ERROR_BYTES} bytes")
    output = check.payload("output", request.output, max_output_bytes, max_depth)
    duration_ns = None
    if request.HasField("duration"):
        d = request.duration
        if d.seconds < 0 or d.nanos < 0 or d.nanos >= 1_000_000_000 or d.seconds > MAX_DURATION_S:
            check.add("duration", f"must be between 0 and {MAX_DURATION_S} seconds")
        else:
            duration_ns = d.seconds * 1_000_000_000 + d.nanos
    check.raise_if_any()
    assert status is not None
    return request.event_id, status, request.error, output, duration_ns
