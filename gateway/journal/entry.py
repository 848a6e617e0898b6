"""The journal entry envelope: exact bytes, signature payload and RFC 6962 leaf hash.

::

    entry     = "agentaudit-journal/vN\\n" | u8 kind | u64 seq | i64 unix_nanos | [32] prev_leaf_hash
                | [4] key_id | u32 body_len | body                  (body = RFC 8785 JSON; integers big-endian)
    signature = Ed25519(key, "agentaudit-journal/vN sig\\n" | origin | "\\n" | entry)
    leaf_hash = SHA-256(0x00 | entry | signature)

Two formats (docs/adr/0024-seal-per-commit-signing.md). In v1 every entry carries its signature. In v2 an entry's
signature is empty unless it is one that travels alone (:func:`travels_alone`: approval events, which the fleet
control channel reports one by one); every v2 entry is covered instead by the *seal* of the commit that wrote it
(:mod:`gateway.journal.seal`), one signed checkpoint per group commit. The layout is the same; the domain tag
names the format, so no entry can be read as the other format's.

This module is pure (no I/O) so the writer, the offline verifier and the collector share it.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from typing import NamedTuple

from gateway.errors import MalformedEntryError

ENTRY_DOMAIN = b"agentaudit-journal/v1\n"
SIGNATURE_DOMAIN = b"agentaudit-journal/v1 sig\n"
ENTRY_DOMAIN_V2 = b"agentaudit-journal/v2\n"
SIGNATURE_DOMAIN_V2 = b"agentaudit-journal/v2 sig\n"
ZERO_HASH = bytes(32)
FORMAT_V1 = 1
FORMAT_V2 = 2
assert len(ENTRY_DOMAIN) == len(ENTRY_DOMAIN_V2)  # the header sits at the same offset in both formats
_DOMAINS = {FORMAT_V1: ENTRY_DOMAIN, FORMAT_V2: ENTRY_DOMAIN_V2}
_SIGNATURE_DOMAINS = {ENTRY_DOMAIN: SIGNATURE_DOMAIN, ENTRY_DOMAIN_V2: SIGNATURE_DOMAIN_V2}

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
        return _LABELS[self]


# Each kind's label, worked out once: the recorder asks for labels several times per Decide and every entry
# check once, and ``name.lower()`` through the enum's descriptors cost ~0.7 µs a time.
_LABELS: dict[int, str] = {kind.value: kind.name.lower() for kind in EventKind}


def kind_label(kind: int) -> str | None:
    """The label of a header's kind byte, or None when it names no known kind."""
    return _LABELS.get(kind)


class Entry(NamedTuple):
    """A decoded entry. ``raw`` is the exact stored byte string everything is verified against.

    A named tuple, not a frozen dataclass: every check of an entry decodes one (verify, the collector's ingest),
    and the dataclass's ``__init__`` cost ~1 µs more an entry."""

    kind: int
    seq: int
    unix_nanos: int
    prev_leaf_hash: bytes
    key_id: bytes
    body: bytes
    raw: bytes
    version: int = FORMAT_V1


def encode_entry(
    kind: int,
    seq: int,
    unix_nanos: int,
    prev_leaf_hash: bytes,
    key_id: bytes,
    body: bytes,
    version: int = FORMAT_V1,
) -> bytes:
    """Builds the exact entry bytes of journal format ``version`` (1 or 2)."""
    return _DOMAINS[version] + _HEADER.pack(kind, seq, unix_nanos, prev_leaf_hash, key_id, len(body)) + body


def entry_version(raw: bytes) -> int | None:
    """The journal format an entry's domain tag names (1 or 2), or None for neither."""
    if raw.startswith(ENTRY_DOMAIN):
        return FORMAT_V1
    if raw.startswith(ENTRY_DOMAIN_V2):
        return FORMAT_V2
    return None


def decode_entry(raw: bytes) -> Entry:
    """Parses entry bytes, checking the domain tag and that the body length matches exactly."""
    version = entry_version(raw)
    if version is None or len(raw) < HEADER_SIZE:
        raise MalformedEntryError("missing the agentaudit-journal/v1 or /v2 domain tag or truncated header")
    kind, seq, nanos, prev, kid, body_len = _HEADER.unpack_from(raw, len(ENTRY_DOMAIN))
    body = raw[HEADER_SIZE:]
    if len(body) != body_len:
        raise MalformedEntryError(f"body length field says {body_len} bytes, entry holds {len(body)}")
    return Entry(
        kind=kind, seq=seq, unix_nanos=nanos, prev_leaf_hash=prev, key_id=kid, body=body, raw=raw, version=version
    )


def signature_payload(origin: str, entry: bytes) -> bytes:
    """The domain-separated message that is signed (binds the entry to its journal's origin and format)."""
    domain = _SIGNATURE_DOMAINS.get(entry[: len(ENTRY_DOMAIN)], SIGNATURE_DOMAIN)
    return domain + origin.encode() + b"\n" + entry


# Kinds that never concern an approval; any other kind (a kind added later, such as approval_voted) may.
_NOT_APPROVAL_KINDS = frozenset(
    {
        EventKind.POST_EXEC,
        EventKind.VIOLATION,
        EventKind.JOURNAL_STARTED,
        EventKind.KILL_SWITCH,
        EventKind.POLICY_CHANGED,
        EventKind.CHECKPOINT,
        EventKind.COSIGNATURE,
        EventKind.HEARTBEAT,
        EventKind.PRUNE,
        EventKind.OPERATOR_DENIED,
        EventKind.GAP_RECOVERY,
        EventKind.TOOL_CHANGED,
        EventKind.STATE_MISMATCH,
    }
)


def travels_alone(kind: int, raw: bytes) -> bool:
    """Whether an entry may concern an approval: the fleet verifies such entries one by one (the control channel
    reports them alone, the collector mirrors them), so in format v2 the writer still signs each of them.

    A cheap test on the bytes: bodies are RFC 8785, so a pre-event that neither asks for an approval nor resumes
    one contains the exact bytes tested here. A false positive only costs a signature; there are no false
    negatives.
    """
    if kind == EventKind.PRE_EXEC:
        return b'"approval_required"' in raw or b'"resumed_approval_id":""' not in raw
    return kind not in _NOT_APPROVAL_KINDS


def leaf_hash(entry: bytes, signature: bytes) -> bytes:
    """RFC 6962 leaf hash over the entry and its signature."""
    return hashlib.sha256(b"\x00" + entry + signature).digest()
