"""The journal entry envelope: exact bytes, signature payload and RFC 6962 leaf hash.

::

    entry     = "agentaudit-journal/v1\\n" | u8 kind | u64 seq | i64 unix_nanos | [32] prev_leaf_hash
                | [4] key_id | u32 body_len | body                  (body = RFC 8785 JSON; integers big-endian)
    signature = Ed25519(key, "agentaudit-journal/v1 sig\\n" | origin | "\\n" | entry)
    leaf_hash = SHA-256(0x00 | entry | signature)

This module is pure (no I/O) so the writer, the offline verifier and the collector share it.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from gateway.errors import MalformedEntryError

ENTRY_DOMAIN = b"agentaudit-journal/v1\n"
SIGNATURE_DOMAIN = b"agentaudit-journal/v1 sig\n"
ZERO_HASH = bytes(32)

_HEADER = struct.Struct(">BQq32s4sI")
HEADER_SIZE = len(ENTRY_DOMAIN) + _HEADER.size


class EventKind(enum.IntEnum):
    """The u8 ``kind`` of an entry; its name (lower case) is the body's ``kind`` field. Values never change."""

    PRE_EXEC = 1
    POST_EXEC = 2
    VIOLATION = 3
    JOURNAL_STARTED = 4
    APPROVAL_GRANTED = 5
    APPROVAL_DENIED = 6
    APPROVAL_EXPIRED = 7
    KILL_SWITCH = 8
    POLICY_CHANGED = 9
    CHECKPOINT = 10
    COSIGNATURE = 11
    HEARTBEAT = 12
    PRUNE = 13
    OPERATOR_DENIED = 14
    GAP_RECOVERY = 15
    TOOL_CHANGED = 16
    STATE_MISMATCH = 17
    APPROVAL_ABANDONED = 18
    APPROVAL_VOTED = 19

    @property
    def label(self) -> str:
        """The body's ``kind`` string, e.g. ``pre_exec``."""
        return self.name.lower()


@dataclass(frozen=True)
class Entry:
    """A decoded entry. ``raw`` is the exact stored byte string everything is verified against."""

    kind: int
    seq: int
    unix_nanos: int
    prev_leaf_hash: bytes
    key_id: bytes
    body: bytes
    raw: bytes


def encode_entry(kind: int, seq: int, unix_nanos: int, prev_leaf_hash: bytes, key_id: bytes, body: bytes) -> bytes:
    """Builds the exact entry bytes."""
    return ENTRY_DOMAIN + _HEADER.pack(kind, seq, unix_nanos, prev_leaf_hash, key_id, len(body)) + body


def decode_entry(raw: bytes) -> Entry:
    """Parses entry bytes, checking the domain tag and that the body length matches exactly."""
    if not raw.startswith(ENTRY_DOMAIN) or len(raw) < HEADER_SIZE:
        raise MalformedEntryError("missing the agentaudit-journal/v1 domain tag or truncated header")
    kind, seq, nanos, prev, kid, body_len = _HEADER.unpack_from(raw, len(ENTRY_DOMAIN))
    body = raw[HEADER_SIZE:]
    if len(body) != body_len:
        raise MalformedEntryError(f"body length field says {body_len} bytes, entry holds {len(body)}")
    return Entry(kind=kind, seq=seq, unix_nanos=nanos, prev_leaf_hash=prev, key_id=kid, body=body, raw=raw)


def signature_payload(origin: str, entry: bytes) -> bytes:
    """The domain-separated message that is signed (binds the entry to its journal's origin)."""
    return SIGNATURE_DOMAIN + origin.encode() + b"\n" + entry


def leaf_hash(entry: bytes, signature: bytes) -> bytes:
    """RFC 6962 leaf hash over the entry and its signature."""
    return hashlib.sha256(b"\x00" + entry + signature).digest()
