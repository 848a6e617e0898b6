"""Identifiers: time-ordered, random, URL-safe (ULID layout in Crockford base32)."""

from __future__ import annotations

import base64
import os
import threading
import time

# RFC 4648 base32 digits mapped, value for value, to Crockford's alphabet (which sorts like the values do).
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")


_RANDOM_CHUNK = 4000  # 400 ids' random bits per getrandom(2) call
_random = b""
_random_at = 0
_random_lock = threading.Lock()


def _random_bits() -> bytes:
    """10 bytes from the OS CSPRNG, read in chunks: one system call per id cost a measured 3% of the loop thread
    under load. Every byte is used once; a forked child starts with a fresh chunk, never the parent's."""
    global _random, _random_at  # noqa: PLW0603 - the chunk and the offset into it
    with _random_lock:
        if _random_at + 10 > len(_random):
            _random, _random_at = os.urandom(_RANDOM_CHUNK), 0
        taken = _random[_random_at : _random_at + 10]
        _random_at += 10
        return taken


def _forget_random() -> None:
    global _random, _random_at
    _random, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def _ulid() -> str:
    """48-bit millisecond time then 80 random bits, 26 Crockford base32 characters; sorts by time."""
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + _random_bits()
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
