"""canonical_json must produce exactly RFC 8785 bytes, on the fast path and the fallback alike."""

from __future__ import annotations

import math

import pytest
import rfc8785
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.validation import struct_to_json
from gateway.canonical import CanonicalizationError, canonical_json, encode_normalised, parse_json

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_matches_rfc8785_for_any_json_value(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"b": 1, "a": 2}, b'{"a":2,"b":1}', id="sorted-keys"),
        pytest.param({"amount": 250.0}, b'{"amount":250}', id="integral-float-as-integer"),
        pytest.param({"x": 1e21}, b'{"x":1e+21}', id="large-float-fallback"),
        pytest.param({"x": 1e-7}, b'{"x":1e-7}', id="small-float-fallback"),
        pytest.param({"x": -0.0}, b'{"x":0}', id="negative-zero"),
        pytest.param({"x": 2.0**53}, b'{"x":9007199254740992}', id="integral-float-beyond-safe-range"),
        pytest.param({"\U0001f600": 1, "\ue000": 2}, rfc8785.dumps({"\U0001f600": 1, "\ue000": 2}), id="utf16-order"),
        pytest.param({"s": "é\n\u0001"}, '{"s":"é\\n\\u0001"}'.encode(), id="string-escapes"),
    ],
)
def test_known_encodings(value: object, expected: bytes) -> None:
    assert canonical_json(value) == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2**60, {1: "x"}, b"bytes"], ids=str)
def test_refuses_values_json_cannot_carry(bad: object) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json({"v": bad})


# Keys validation accepts: non-empty, no NUL (test_bad_input covers the refused ones).
struct_keys = st.text(min_size=1, max_size=8).filter(lambda key: "\x00" not in key)
struct_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(struct_keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(struct_keys, struct_values, max_size=5))
def test_struct_conversion_flags_exactly_when_the_fast_encoding_is_canonical(value: dict[str, object]) -> None:
    """What the Decide hot path relies on: a Struct converted as 'normalised' encodes to RFC 8785 bytes."""
    message = struct_pb2.Struct()
    message.update(value)
    payload = struct_to_json(message, max_depth=64)
    expected = rfc8785.dumps(payload.value)
    if payload.normalised:
        assert encode_normalised(payload.value) == expected
    assert canonical_json(payload.value) == expected


doubles = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**64), 2**64).map(float)


@settings(max_examples=400, deadline=None)
@given(
    st.recursive(
        doubles | st.text(),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
        max_leaves=10,
    )
)
def test_parse_json_reads_back_what_canonical_json_wrote(value: object) -> None:
    """What verify relies on: re-canonicalising stored bytes gives the same bytes, for doubles of any magnitude."""
    encoded = canonical_json(value)
    assert canonical_json(parse_json(encoded.decode())) == encoded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("10000000000000000", 1e16, id="integer-beyond-safe-range-is-a-double"),
        pytest.param("9007199254740993", 2.0**53, id="rounds-to-the-nearest-double"),
        pytest.param("9007199254740991", 2**53 - 1, id="safe-integer-stays-int"),
    ],
)
def test_parse_json_reads_numbers_as_doubles(text: str, expected: object) -> None:
    value = parse_json(text)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_json_refuses_an_integer_beyond_a_double() -> None:
    with pytest.raises(ValueError, match="range of a double"):
        parse_json("1" + "0" * 400)
