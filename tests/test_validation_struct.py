"""The fast Struct conversion (``validation._fast_struct``) gives what the precise walk gives, and refuses nothing
itself: whatever it leaves, the precise walk converts or refuses with its path, as before."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.api import validation
from gateway.api.validation import _BadKey, _NotFinite, _precise_struct_to_json, _TooDeep, struct_to_json

KEYS = st.sampled_from(["a", "b", "email", "", "x\x00y", "\ue000", "\U0001f600", "ß", "é"]) | st.text(max_size=4)
NUMBERS = st.floats() | st.integers(-(2**60), 2**60).map(float) | st.sampled_from([0.0, -0.0, 1e-5, 1e16, 2.0**53])
SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=6)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=20,
)


def outcome(convert: Any, message: struct_pb2.Struct, max_depth: int) -> Any:
    try:
        payload = convert(message, max_depth)
    except _BadKey as exc:
        return ("bad key", exc.describe("args"))
    except (_TooDeep, _NotFinite) as exc:
        return (type(exc).__name__,)
    return ("ok", payload.value, payload.normalised)


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to itself and -0.0 told from 0.0 (the converted values must be identical)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=5), st.integers(1, 5))
@example({"a": [[[1.5]]]}, 3)
@example({"a": {"b": {"c": 1}}}, 3)
@example({"a": {"b": {"c": {}}}}, 3)
@example({"": 1}, 5)
@example({"a": [{"x\x00": 1}]}, 5)
@example({"a": math.inf}, 5)
@example({"\U0001f600": 1.0, "k": 1e-7}, 5)
def test_fast_conversion_equals_the_precise_one(value: dict[str, Any], max_depth: int) -> None:
    message = struct_pb2.Struct()
    message.update(value)
    assert same(outcome(struct_to_json, message, max_depth), outcome(_precise_struct_to_json, message, max_depth))


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        pytest.param({"a": [[1]]}, 2, id="list-too-deep"),
        pytest.param({"a": {"b": {}}}, 2, id="struct-too-deep"),
        pytest.param({"a": [{"": 1}]}, 5, id="empty-key-in-list"),
        pytest.param({"a": -math.inf}, 5, id="infinity"),
    ],
)
def test_fast_conversion_leaves_refusals_to_the_precise_walk(value: dict[str, Any], depth: int) -> None:
    message = struct_pb2.Struct()
    message.update(value)
    with pytest.raises(validation._Unusual):
        validation._fast_struct(message, 1, depth, [True])
    assert outcome(struct_to_json, message, depth)[0] != "ok"
