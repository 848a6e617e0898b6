"""parse_canonical (the fast "these bytes are canonical" answer verify and the collector run per entry) never says
yes where the general check says no, and says yes for what the sidecar writes."""

from __future__ import annotations

import json

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.canonical import canonical_json, parse_canonical, parse_json
from gateway.journal.check import _check_body
from tests.test_canonical import json_values


def general_check(data: bytes) -> bool:
    """The general path: the bytes are the RFC 8785 form of the JSON object they parse to."""
    try:
        value = parse_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not isinstance(value, dict):
        return False
    try:
        return bytes(rfc8785.dumps(value)) == data
    except (rfc8785.CanonicalizationError, rfc8785.FloatDomainError, rfc8785.IntegerDomainError):
        return False  # NaN, a lone surrogate: no RFC 8785 form at all


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_canonical_bytes_of_any_object_parse_back_to_the_same_object(value: dict[str, object]) -> None:
    data = canonical_json(value)
    fast = parse_canonical(data)
    if fast is not None:  # None only sends the caller down the general path
        assert general_check(data)
        assert fast == parse_json(data.decode())
    assert _check_body(data) == (parse_json(data.decode()), True, None)


def _respellings(value: dict[str, object]) -> list[bytes]:
    """Encodings of the same JSON that are not its canonical bytes (or may be, by chance)."""
    return [
        json.dumps(value).encode(),
        json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode(),
        json.dumps(value, sort_keys=True, indent=1).encode(),
        json.dumps(value, separators=(",", ":")).encode(),  # insertion order
    ]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_never_says_canonical_where_the_general_check_does_not(value: dict[str, object]) -> None:
    for data in _respellings(value):
        if parse_canonical(data) is not None:
            assert general_check(data), data


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"a":1,"a":1}', id="duplicate-key"),
        pytest.param(b'{"a":1.0}', id="float-literal"),
        pytest.param(b'{"a":1e2}', id="exponent"),
        pytest.param(b'{"a":-0}', id="negative-zero"),
        pytest.param(b'{"a":9007199254740993}', id="beyond-2**53"),
        pytest.param(b'{"a":NaN}', id="nan"),
        pytest.param(b'{"a":"\\u00e9"}', id="escaped-non-ascii"),
        pytest.param(b'{"a":"\\ud800"}', id="lone-surrogate"),
        pytest.param(b'{"\\ue000":1,"\\ud83d\\ude00":2}', id="escaped-high-code-points"),
        pytest.param('{"\U0001f600":1,"\ue000":2}'.encode(), id="keys-in-code-point-order"),
        pytest.param(b'{"a":"\xff"}', id="invalid-utf-8"),
        pytest.param(b"[1]", id="not-an-object"),
        pytest.param(b'{"a":1} ', id="trailing-space"),
        pytest.param(b'\xef\xbb\xbf{"a":1}', id="byte-order-mark"),
    ],
)
def test_leaves_every_doubtful_spelling_to_the_general_check(data: bytes) -> None:
    assert parse_canonical(data) is None
    _, canonical, _ = _check_body(data)
    assert canonical is general_check(data)


def test_says_canonical_for_a_sidecar_body() -> None:
    body = {"kind": "pre_exec", "args": {"limit": 20, "q": "résumé \u2028 \x7f"}, "n": -(2**53 - 1), "ok": None}
    assert parse_canonical(canonical_json(body)) == body
