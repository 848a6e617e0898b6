"""``encode_normalised`` through the cached C encoder writes exactly what ``json.dumps`` with the same settings
writes."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import canonical
from gateway.canonical import encode_normalised

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=30,
)


def reference(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def test_the_c_encoder_is_in_use() -> None:
    assert canonical._c_encode is not None  # CPython ships the accelerator; without it the fallback is json.dumps


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_same_bytes_as_json_dumps(value: object) -> None:
    assert encode_normalised(value) == reference(value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, [1, {"x": math.nan}]])
def test_non_finite_numbers_are_refused_as_before(bad: object) -> None:
    with pytest.raises(ValueError):
        encode_normalised(bad)


def test_lone_surrogates_are_refused_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_normalised({"a": "\ud800"})


def test_unknown_types_are_refused_as_before() -> None:
    with pytest.raises(TypeError):
        encode_normalised({"a": object()})
