"""W3C trace context: checking a ``traceparent`` and taking it from gRPC metadata (a primitive, no gRPC import)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def valid_traceparent(value: str) -> bool:
    """A W3C trace context ``traceparent``: known-format version, non-zero trace and span ids."""
    match = _TRACEPARENT_RE.match(value)
    return not (match is None or match.group(1) == "ff" or set(match.group(2)) == {"0"} or set(match.group(3)) == {"0"})


def traceparent_header(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The caller's ``traceparent`` gRPC metadata, or "" if absent or invalid (W3C: an invalid one is ignored)."""
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            return value if valid_traceparent(value) else ""
    return ""


def trace_ids(traceparent: str) -> tuple[str, str]:
    """The (trace id, parent span id) of a valid ``traceparent``, or two empty strings."""
    if not traceparent:
        return "", ""
    parts = traceparent.split("-")
    return parts[1], parts[2]
