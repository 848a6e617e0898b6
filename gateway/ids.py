"""Identifiers: time-ordered, random, URL-safe (ULID layout in Crockford base32)."""

from __future__ import annotations

import base64
import os
import time

# RFC 4648 base32 digits mapped, value for value, to Crockford's alphabet (which sorts like the values do).
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def _ulid() -> str:
    """48-bit millisecond time then 80 random bits, 26 Crockford base32 characters; sorts by time."""
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    return base64.b32encode(raw)[:26].translate(_TO_CROCKFORD).decode("ascii")


def new_event_id() -> str:
    """A new journal event id, e.g. ``evt_01JD...``."""
    return "evt_" + _ulid()


def new_approval_id() -> str:
    """A new approval id, e.g. ``apr_01JD...``."""
    return "apr_" + _ulid()


_last_second: tuple[int, str] = (-1, "")


def rfc3339_nanos(unix_nanos: int) -> str:
    """RFC 3339 UTC timestamp with nanoseconds, e.g. ``2026-11-27T09:18:15.123456789Z``."""
    global _last_second  # noqa: PLW0603 - a one-entry cache: most events fall in the same second as the last
    seconds, nanos = divmod(unix_nanos, 1_000_000_000)
    if _last_second[0] != seconds:
        _last_second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{_last_second[1]}.{nanos:09d}Z"


def now_nanos() -> int:
    """Wall-clock time in nanoseconds: the one clock of entry timestamps, expiries and alerts."""
    return time.time_ns()
