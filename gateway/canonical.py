"""RFC 8785 (JCS) canonical JSON, fast for the documents agentaudit produces.

Journal bodies are signed as produced, so canonicalisation sits on the Decide hot path. ``rfc8785.dumps`` is
correct but costs ~30 µs for a typical event; ``json.dumps`` with sorted keys produces identical bytes when

* every float is integral and within ±(2**53-1) (JCS prints it as an integer; we convert it to ``int``) or lies in
  ``[1e-4, 1e16)`` in magnitude, where Python's ``repr`` and ECMAScript's Number-to-String agree (both print the
  shortest round-trip digits in plain notation), and
* no object key contains a code point at or above U+E000 (JCS sorts keys by UTF-16 code units; Python sorts by
  code points; the two orders differ only when such characters meet supplementary-plane ones).

Anything else falls back to ``rfc8785``. A property test checks both paths give the same bytes.

Numbers are IEEE-754 doubles (RFC 8785 §3.2.2.3), in both directions: a double of any finite magnitude is
written as ECMAScript prints it (``1e16`` → ``10000000000000000``, ``1e21`` → ``1e+21``), and :func:`parse_json`
reads a JSON number back as the double it denotes, so re-canonicalising stored bytes (what ``verify`` does)
gives the same bytes for every number the API can accept. Python ints beyond ±(2**53-1) are refused when
encoding: they are not doubles, and a body built from them would not survive that round trip.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rfc8785

from gateway.errors import AgentAuditError

_MAX_SAFE_INT = 2**53 - 1  # the interoperable integer range of I-JSON (RFC 7493)
_encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
# The C encoder ``_encoder.encode`` builds on every call, built once with the same arguments except the circular
# reference check (values here are trees: parsed JSON, protobuf conversions, bodies built by hand), which roughly
# halves the cost of encoding a journal body. None where the C accelerator is missing.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", True, False, False)
)


class CanonicalizationError(AgentAuditError):
    """A value cannot be represented in canonical JSON (NaN, infinity, integers beyond ±(2**53-1), …)."""


class _NeedsFallback(Exception):
    pass


def normalise_number(value: float) -> tuple[int | float, bool]:
    """Returns the number as JCS prints it (integral → int) and whether ``json.dumps`` prints it identically."""
    if value.is_integer():
        # Beyond 2**53-1 Python prints "9007199254740992.0" where JCS prints "9007199254740992".
        return (int(value), True) if abs(value) <= _MAX_SAFE_INT else (value, False)
    return value, 1e-4 <= abs(value) < 1e16


def _parse_int(literal: str) -> int | float:
    value = int(literal)
    if abs(value) <= _MAX_SAFE_INT:
        return value
    # Beyond the safe range a JSON integer denotes the nearest double (RFC 8785 §3.2.2.3); float() rounds to it.
    try:
        return float(value)
    except OverflowError as exc:
        raise ValueError(f"number {literal[:32]}… is beyond the range of a double") from exc


def parse_json(text: str) -> Any:
    """Parses JSON the way RFC 8785 reads it: numbers as doubles (integers beyond ±(2**53-1) become floats,
    which :func:`canonical_json` prints as JCS does), so ``canonical_json(parse_json(t)) == t`` holds for every
    canonical ``t`` this module writes.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``), or an integer literal beyond the range of a double.
    """
    return json.loads(text, parse_int=_parse_int)


class _NotFastPath(Exception):
    """A literal :func:`parse_canonical` leaves to the general path (a float, a large integer, NaN)."""


def _refuse_literal(_: str) -> Any:
    raise _NotFastPath


def _safe_int(literal: str) -> int:
    value = int(literal)
    if abs(value) > _MAX_SAFE_INT:
        raise _NotFastPath
    return value


# typeshed types make_scanner's argument as the scanner class itself; it takes the decoder whose hooks it calls.
_FAST_SCAN: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder(parse_int=_safe_int, parse_float=_refuse_literal, parse_constant=_refuse_literal)  # type: ignore[arg-type]
)

# A UTF-8 lead byte of a code point at or above U+E000: where code-point and UTF-16 key orders may differ.
_HIGH_CODE_POINT = re.compile(rb"[\xee-\xff]")


def parse_canonical(data: bytes) -> dict[str, Any] | None:
    """The JSON object ``data`` holds when ``data`` is certainly its RFC 8785 form; None when it takes a closer look.

    The fast half of checking stored bytes (``verify`` and the collector run it on every entry): one C parse and
    one C encode, no walk. It answers only "yes": an object of strings, integers within ±(2**53-1), booleans and
    nulls, with no code point at or above U+E000 anywhere, that ``json.dumps`` with sorted keys writes back byte
    for byte, is canonical (the module docstring says why those bytes are the JCS ones). Anything else (a float,
    a large integer, NaN, a high code point, different bytes, invalid UTF-8, a lone surrogate, not an object)
    returns None, and the caller runs :func:`parse_json` and :func:`canonical_json`, which decide precisely.
    """
    if not data.isascii() and _HIGH_CODE_POINT.search(data):
        return None
    try:
        # The decoder's scanner at offset 0, not json.loads: that builds a decoder per call when given hooks, and
        # skips whitespace the byte comparison below refuses anyway. What follows the value is compared too.
        value, _ = _FAST_SCAN(data.decode("utf-8"), 0)
        if not isinstance(value, dict) or encode_normalised(value) != data:
            return None
    except (_NotFastPath, ValueError, RecursionError, StopIteration):  # StopIteration: no value at offset 0
        return None
    return value


def bulk_parse_canonical(data: bytes) -> dict[str, Any] | None:
    """:func:`parse_canonical` on orjson: the same "certainly canonical" answer, in less than half the time.

    For the checkers of many entries (``verify``, the collector's ingest): ~8-10 µs against ~18-20 µs on the bench
    journal's 1.1 KB bodies (docs/performance.md, "Collector ingest"). orjson is imported on the first call, since it
    costs ~2.7 MiB resident, which a sidecar checking a few entries at start should not pay. It answers "yes" under
    the same conditions as :func:`parse_canonical`: an object of strings, integers within ±(2**53-1), booleans and
    nulls, with no code point at or above U+E000 anywhere, that orjson writes back with sorted keys byte for byte.
    orjson escapes strings as ``json.dumps(ensure_ascii=False)`` and RFC 8785 do (the short escapes, ``\\u00xx``
    in lower case for the other control characters, nothing else), refuses invalid UTF-8, lone surrogates, NaN and
    a BOM, and keeps the last of duplicate keys (so the bytes differ). Numbers it would print otherwise than
    RFC 8785: integers beyond ±(2**53-1) make its encoder raise (``OPT_STRICT_INTEGER``), and a walk over the
    parsed value refuses any float (a regular expression over the bytes for where a float could be cost more than
    the walk: ~13 µs against ~2.5 µs).
    """
    if not data.isascii() and _HIGH_CODE_POINT.search(data):
        return None
    import orjson  # noqa: PLC0415 (on first use, see above; later calls find it in sys.modules, ~0.1 µs)

    try:
        value = orjson.loads(data)
        if type(value) is not dict:
            return None
        if orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER) != data:
            return None
    except (ValueError, TypeError, RecursionError):  # JSONDecodeError is a ValueError; the encoder's: TypeError
        return None
    # The bytes are orjson's encoding, which nests at most 254 levels: the walk stays within Python's stack.
    return value if _no_floats(value) else None


def _no_floats(container: dict[str, Any] | list[Any]) -> bool:
    """Whether a parsed object or array holds no float anywhere. Leaves are tested in the loop and only containers
    recurse: a call per value (45 in a typical body) cost ~40 % more (2.9 against 2.1 µs)."""
    items: Any = container.values() if type(container) is dict else container
    for item in items:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and not _no_floats(item)):
            return False
    return True


def key_sorts_alike(key: str) -> bool:
    """Whether code-point order equals UTF-16 order for this key (true unless it has a code point ≥ U+E000)."""
    return key.isascii() or max(key) < "\ue000"


def encode_normalised(value: Any) -> bytes:
    """RFC 8785 bytes of a value already normalised: every float passed :func:`normalise_number` as exact and
    every key :func:`key_sorts_alike`. Callers that built the value that way skip the checking walk."""
    if _c_encode is not None:
        return "".join(_c_encode(value, 0)).encode("utf-8")
    return _encoder.encode(value).encode("utf-8")


@dataclass(frozen=True)
class JsonPayload:
    """A Struct as plain Python, JCS-normalised (integral numbers as int).

    ``normalised`` is true when :func:`encode_normalised` yields its RFC 8785 bytes directly
    (every number and key passed the checks), so the hot path can skip the general canonicaliser.
    """

    value: dict[str, Any]
    normalised: bool


def _prepare(value: Any) -> Any:
    """Returns ``value`` with integral floats as ints; raises _NeedsFallback where json.dumps would differ."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalizationError("object keys must be strings")
            if not key_sorts_alike(k):
                raise _NeedsFallback
            out[k] = _prepare(v)
        return out
    if isinstance(value, list | tuple):
        return [_prepare(v) for v in value]
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise CanonicalizationError(f"integer {value} is outside the interoperable range ±(2**53-1)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalizationError("NaN and infinity are not allowed in JSON")
        number, exact = normalise_number(value)
        if not exact:
            raise _NeedsFallback
        return number
    raise CanonicalizationError(f"type {type(value).__name__} cannot be canonicalised")


def canonical_json(value: Any) -> bytes:
    """Returns the RFC 8785 canonical UTF-8 encoding of a JSON-like value."""
    try:
        return encode_normalised(_prepare(value))
    except _NeedsFallback:
        pass
    except UnicodeEncodeError as exc:
        raise CanonicalizationError("strings must be valid Unicode (no lone surrogates)") from exc
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, rfc8785.IntegerDomainError, rfc8785.FloatDomainError) as exc:
        raise CanonicalizationError(str(exc)) from exc
