"""RFC 8785 (JCS) canonical JSON, fast for the documents agentaudit produces.

Journal bodies are signed as produced, so canonicalisation sits on the Decide hot path. ``rfc8785.dumps`` is
correct but costs ~30 µs for a typical event; ``json.dumps`` with sorted keys produces identical bytes when

* every float is integral and within ±(2**53-1) (JCS prints it as an integer; we convert it to ``int``) or lies in
  ``[1e-4, 1e16)`` in magnitude, where Python's ``repr`` and ECMAScript's Number-to-String agree (both print the
  shortest round-trip digits in plain notation), and
* no object key contains a code point at or above U+E000 (JCS sorts keys by UTF-16 code units; Python sorts by
  code points; the two orders differ only when such characters meet supplementary-plane ones).

Anything else falls back to ``rfc8785``. A property test checks both paths give the same bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import rfc8785

from gateway.errors import AgentAuditError

_MAX_SAFE_INT = 2**53 - 1  # the interoperable integer range of I-JSON (RFC 7493)
_encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


class CanonicalizationError(AgentAuditError):
    """A value cannot be represented in canonical JSON (NaN, infinity, integers beyond ±(2**53-1), …)."""


class _NeedsFallback(Exception):
    pass


def _prepare(value: Any) -> Any:
    """Returns ``value`` with integral floats as ints; raises _NeedsFallback where json.dumps would differ."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalizationError("object keys must be strings")
            if k and max(k) >= "\ue000":
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
        if value.is_integer() and abs(value) <= _MAX_SAFE_INT:
            return int(value)
        if 1e-4 <= abs(value) < 1e16:
            return value
        raise _NeedsFallback
    raise CanonicalizationError(f"type {type(value).__name__} cannot be canonicalised")


def canonical_json(value: Any) -> bytes:
    """Returns the RFC 8785 canonical UTF-8 encoding of a JSON-like value."""
    try:
        return _encoder.encode(_prepare(value)).encode("utf-8")
    except _NeedsFallback:
        pass
    except UnicodeEncodeError as exc:
        raise CanonicalizationError("strings must be valid Unicode (no lone surrogates)") from exc
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, rfc8785.IntegerDomainError, rfc8785.FloatDomainError) as exc:
        raise CanonicalizationError(str(exc)) from exc
