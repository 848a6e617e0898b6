"""parse_canonical and bulk_parse_canonical (the fast "these bytes are canonical" answers: the sidecar's, and the
orjson one verify and the collector run per entry) never say yes where the general check says no, and say yes for
what the sidecar writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.canonical import bulk_parse_canonical, canonical_json, parse_canonical, parse_json
from gateway.journal.check import _check_body
from tests.test_canonical import json_values

Parser = Callable[[bytes], "dict[str, Any] | None"]
PARSERS = pytest.mark.parametrize("parse", [parse_canonical, bulk_parse_canonical], ids=["stdlib", "orjson"])


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


@PARSERS
@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_canonical_bytes_of_any_object_parse_back_to_the_same_object(parse: Parser, value: dict[str, object]) -> None:
    data = canonical_json(value)
    fast = parse(data)
    if fast is not None:  # None only sends the caller down the general path
        assert general_check(data)
        assert fast == parse_json(data.decode())
    assert _check_body(data, parse) == (parse_json(data.decode()), True, None)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_both_fast_answers_agree(value: dict[str, object]) -> None:
    """Where the stdlib answer says canonical, so does orjson's, with the same value (and the other way round):
    switching a checker to orjson changes its speed, never what it finds."""
    for data in (canonical_json(value), *_respellings(value)):
        stdlib, fast = parse_canonical(data), bulk_parse_canonical(data)
        assert (stdlib is None) == (fast is None), data
        assert stdlib == fast


def _respellings(value: dict[str, object]) -> list[bytes]:
    """Encodings of the same JSON that are not its canonical bytes (or may be, by chance)."""
    return [
        json.dumps(value).encode(),
        json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode(),
        json.dumps(value, sort_keys=True, indent=1).encode(),
        json.dumps(value, separators=(",", ":")).encode(),  # insertion order
    ]


@PARSERS
@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_never_says_canonical_where_the_general_check_does_not(parse: Parser, value: dict[str, object]) -> None:
    for data in _respellings(value):
        if parse(data) is not None:
            assert general_check(data), data


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


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
        # What orjson reads or writes its own way: each must still go to the general check.
        pytest.param(b'{"a":[1.5]}', id="float-in-a-list"),
        pytest.param(b'{"a":{"b":1e16}}', id="float-orjson-prints-as-1e16"),
        pytest.param(b'{"a":9223372036854775808}', id="beyond-2**63"),
        pytest.param(b'{"a":18446744073709551616}', id="beyond-2**64"),
        pytest.param(b'{"a":-9007199254740992}', id="below-minus-2**53"),
        pytest.param(b'{"a":"\\u001F"}', id="upper-case-escape"),
        pytest.param(b'{"a":"\\/"}', id="escaped-solidus"),
        pytest.param(b'{"a":"\x1f"}', id="raw-control-character"),
        pytest.param(b'{"a":1e400}', id="infinite-double"),
        pytest.param(b'{"a":true,"a":false}', id="duplicate-key-last-differs"),
    ],
)
@PARSERS
def test_leaves_every_doubtful_spelling_to_the_general_check(parse: Parser, data: bytes) -> None:
    assert parse(data) is None
    _, canonical, _ = _check_body(data, parse)
    assert canonical is general_check(data)


@pytest.mark.parametrize("depth", [300, 2000], ids=["beyond-orjson-encoder", "beyond-orjson-parser"])
def test_deep_nesting_is_decided_alike(depth: int) -> None:
    """orjson nests less deep than the stdlib (254 levels to encode, 1024 to parse): it answers "look closer",
    and the check's outcome is the stdlib one."""
    data = _nested(depth)
    assert bulk_parse_canonical(data) is None
    assert _check_body(data, bulk_parse_canonical) == _check_body(data, parse_canonical)
    if depth == 300:
        assert _check_body(data, bulk_parse_canonical)[1] is True


@PARSERS
def test_says_canonical_for_a_sidecar_body(parse: Parser) -> None:
    body = {"kind": "pre_exec", "args": {"limit": 20, "q": "résumé \u2028 \x7f"}, "n": -(2**53 - 1), "ok": None}
    assert parse(canonical_json(body)) == body
    nested = {"a": [{"b": [None, True, '\x00\x1f"\\']}], "c": 2**53 - 1}
    assert parse(canonical_json(nested)) == nested
