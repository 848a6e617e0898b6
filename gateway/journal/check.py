"""The check of one journal entry against its signed bytes, shared by ``verify`` and the collector (pure, no I/O).

An entry is trusted only as far as these steps go, whoever holds it: :func:`gateway.journal.verify.verify_journal`
runs them on every stored row and reports every problem as a finding; the collector's
:func:`gateway.collector.ingest.verify_batch` runs them on every new entry of a batch and refuses the batch on
the first problem. Same steps, same rules, so nothing the collector witnesses can later fail ``verify``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.canonical import CanonicalizationError, canonical_json, parse_canonical, parse_json
from gateway.errors import MalformedEntryError
from gateway.journal.entry import FORMAT_V2, Entry, decode_entry, kind_label, signature_payload
from gateway.signing import Verifier

_MAX_QUOTED = 80

BodyParser = Callable[[bytes], "dict[str, Any] | None"]
"""The fast "certainly canonical" answer of step 5: :func:`gateway.canonical.parse_canonical` (the default) or
:func:`gateway.canonical.bulk_parse_canonical` (the same answers on orjson, for checkers of many entries)."""


class EntryFault(enum.StrEnum):
    """What is wrong with one entry. The values are the matching ``verify`` finding codes (docs/verify.md)."""

    MALFORMED_ENTRY = "malformed_entry"
    """The bytes do not decode as an envelope (domain tag, header, body length)."""
    UNKNOWN_KEY = "unknown_key"
    """No trusted key has the entry's key id."""
    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify under the trusted key(s) the key id names, for this origin."""
    REORDER = "reorder"
    """The seq signed inside the entry is not the seq it is stored or sent as."""
    CHAIN_BREAK = "chain_break"
    """The signed prev_leaf_hash is not the leaf hash of the entry before it (zeros at seq 0)."""
    NONCANONICAL_BODY = "noncanonical_body"
    """The body is not a UTF-8 JSON object byte-identical to its RFC 8785 canonical form."""
    KIND_MISMATCH = "kind_mismatch"
    """The header's kind byte is not a known kind, or the body's ``kind`` string does not name it."""


SIGNATURE_FAULTS = frozenset({EntryFault.MALFORMED_ENTRY, EntryFault.UNKNOWN_KEY, EntryFault.BAD_SIGNATURE})
"""Faults found by steps 1 and 2 (decoding and the signature), before anything the entry says is looked at."""


@dataclass(frozen=True)
class EntryProblem:
    """One fault of an entry, with a message for people (stored values quoted, never raw)."""

    fault: EntryFault
    message: str


class EntryCheck(NamedTuple):
    """The outcome of :func:`check_entry` (a named tuple: one is built per entry checked, and a frozen dataclass's
    ``__init__`` costs ~1 µs more).

    Attributes:
        entry: the decoded envelope; None when the bytes do not decode (then nothing else was checked).
        body: the body when it is a JSON object, canonical or not; else None.
        signed: the entry's own signature verifies under a trusted key for the origin.
        needs_seal: a format v2 entry without a signature of its own: it is vouched for only by the seal of its
            commit (``gateway.journal.seal``), which the caller checks: verify's scan, the collector's batch
            checkpoint, a bundle's inclusion proof.
        canonical: the body bytes are the RFC 8785 form of a JSON object.
        kind_ok: the body's ``kind`` names the header's kind byte.
        problems: every fault found, in the order of the steps.
    """

    entry: Entry | None
    body: dict[str, Any] | None
    signed: bool
    canonical: bool
    kind_ok: bool
    problems: tuple[EntryProblem, ...]
    needs_seal: bool = False

    @property
    def ok(self) -> bool:
        """True when the entry passed every step."""
        return not self.problems


def check_entry(
    seq: int,
    raw: bytes,
    signature: bytes,
    *,
    origin: str,
    keys: Mapping[bytes, Sequence[Verifier]],
    prev_leaf_hash: bytes | None,
    parse_body: BodyParser = parse_canonical,
) -> EntryCheck:
    """Checks one entry's bytes and signature, following the numbered steps below; keeps going after a fault.

    Args:
        seq: the seq the entry is stored (or sent) as.
        raw: the exact entry bytes; signature: the stored signature bytes.
        origin: the trusted origin signatures are bound to (never one read from the entry's holder).
        keys: trusted public keys by key id (several may share a 4-byte id).
        prev_leaf_hash: the recomputed leaf hash of the entry before (zeros at seq 0); None skips the chain
            step, when the entry before is missing (a gap, reported by the caller).
        parse_body: the fast answer of step 5 (see :data:`BodyParser`); whatever it is, the outcome is the same.
    """
    problems: list[EntryProblem] = []

    def fault(kind: EntryFault, message: str) -> None:
        problems.append(EntryProblem(kind, message))

    # 1. Decode the envelope. Bytes that do not decode name no key and carry no seq: nothing else can be checked.
    try:
        entry = decode_entry(raw)
    except MalformedEntryError as exc:
        fault(EntryFault.MALFORMED_ENTRY, str(exc))
        return EntryCheck(None, None, False, False, False, tuple(problems))

    # 2. Verify the signature over the domain-separated payload, bound to the trusted origin, under the key the
    #    entry names. Key ids are 4 bytes, so two trusted keys may share one; any of them verifying is enough.
    #    A format v2 entry with an empty signature has none to verify: its commit's seal vouches for it (the
    #    caller's check); the key id must still name a trusted key, the one that signs the seal.
    candidates = keys.get(entry.key_id)
    needs_seal = entry.version == FORMAT_V2 and not signature
    if not candidates:
        fault(EntryFault.UNKNOWN_KEY, f"key id {entry.key_id.hex()} matches none of the given public keys")
        signed = False
    elif needs_seal:
        signed = False
    else:
        payload = signature_payload(origin, entry.raw)
        signed = any(verifier.verify(payload, signature) for verifier in candidates)
        if not signed:
            names = ", ".join(f"{v.name}+{v.key_id.hex()}" for v in candidates)
            fault(EntryFault.BAD_SIGNATURE, f"signature does not verify under {names} for origin {origin!r}")

    # 3. The signed seq must be the seq it is held as: entries cannot be moved or renumbered.
    if entry.seq != seq:
        fault(EntryFault.REORDER, f"the entry is signed as seq {entry.seq}, stored as seq {seq}")

    # 4. The hash chain: the signed prev_leaf_hash must be the previous entry's recomputed leaf hash.
    if prev_leaf_hash is not None and entry.prev_leaf_hash != prev_leaf_hash:
        signed_prev, expected = _apart(entry.prev_leaf_hash, prev_leaf_hash)
        what = "zeros" if seq == 0 else f"the leaf hash of seq {seq - 1} ({expected})"
        fault(EntryFault.CHAIN_BREAK, f"prev_leaf_hash {signed_prev} is not {what}")

    # 5. The body must be canonical JSON, so the signed bytes are the one encoding of the event.
    body, canonical, body_problem = _check_body(entry.body, parse_body)
    if body_problem is not None:
        fault(EntryFault.NONCANONICAL_BODY, body_problem)

    # 6. The body's kind string must name the header's kind byte.
    kind_problem = None if body is None else _check_kind(entry.kind, body)
    if kind_problem is not None:
        fault(EntryFault.KIND_MISMATCH, kind_problem)
    kind_ok = body is not None and kind_problem is None

    return EntryCheck(entry, body, signed, canonical, kind_ok, tuple(problems), needs_seal)


def _check_body(
    body_bytes: bytes, parse_body: BodyParser = parse_canonical
) -> tuple[dict[str, Any] | None, bool, str | None]:
    """The parsed body when it is a JSON object (canonical or not), whether the bytes are its RFC 8785 form, and
    what is wrong (None: nothing)."""
    fast = parse_body(body_bytes)
    if fast is not None:  # certainly canonical: the general steps below would find the same body and no fault
        return fast, True, None
    try:
        # Decode explicitly: json.loads(bytes) would also accept UTF-16 and UTF-32. Numbers are read as doubles,
        # as RFC 8785 defines them (10000000000000000 is the double 1e16, not an out-of-range int).
        body = parse_json(body_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, False, f"body is not UTF-8 JSON: {exc}"
    if not isinstance(body, dict):
        return None, False, f"body is a JSON {type(body).__name__}, not an object"
    try:
        canonical = canonical_json(body)
    except (CanonicalizationError, RecursionError) as exc:
        # json.loads accepts what JCS cannot encode (NaN, Infinity, 1e400, lone surrogates).
        return body, False, f"body has no RFC 8785 form: {exc}"
    if canonical != body_bytes:
        return body, False, "body is not byte-identical to its RFC 8785 canonical form"
    return body, True, None


def _check_kind(kind: int, body: dict[str, Any]) -> str | None:
    label = kind_label(kind)
    if label is None:
        return f"header kind {kind} is not a known event kind"
    if body.get("kind") != label:
        return f"header kind {kind} is {label!r}, body kind is {quote(body.get('kind'))}"
    return None


def quote(value: object) -> str:
    """Quotes a stored value for a message. repr() escapes control characters, so a tampered value cannot inject
    terminal escape sequences into a report; long values are cut so one huge value cannot flood it."""
    text = value.hex() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "..."


_SHORT_BYTES = 8  # what _short shows


def _apart(first: bytes, second: bytes) -> tuple[str, str]:
    """Two different hashes shortened so that the difference shows: from the first byte that differs, if later."""
    at = next((i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y), 0)
    if at < _SHORT_BYTES:  # the usual case: the short forms already differ
        return f"{_short(first)}...", f"{_short(second)}..."

    def from_difference(digest: bytes) -> str:
        return f"{digest[:4].hex()}...(byte {at}) {digest[at : at + 4].hex()}..."

    return from_difference(first), from_difference(second)


def _short(digest: object) -> str:
    """The first 8 bytes of a hash in hex, enough to tell hashes apart in a message."""
    return digest.hex()[:16] if isinstance(digest, bytes) else quote(digest)
