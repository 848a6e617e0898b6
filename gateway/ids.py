"""Identifiers: time-ordered, random, URL-safe (ULID layout in Crockford base32)."""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid() -> str:
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_event_id() -> str:
    """A new journal event id, e.g. ``evt_01JD...``."""
    return "evt_" + _ulid()


def new_approval_id() -> str:
    """A new approval id, e.g. ``apr_01JD...``."""
    return "apr_" + _ulid()


def rfc3339_nanos(unix_nanos: int) -> str:
    """RFC 3339 UTC timestamp with nanoseconds, e.g. ``2026-11-27T09:18:15.123456789Z``."""
    seconds, nanos = divmod(unix_nanos, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"
