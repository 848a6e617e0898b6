"""Signed control-channel messages: the sidecar's hello, and the collector's changes (ADR 0016, docs/fleet.md).

Both directions are RFC 8785 JSON bodies signed with Ed25519 over a domain-separated message, so a signature made
for a journal entry, a checkpoint or the other direction can never be replayed as one of these.

A collector → sidecar message is believed only if all of these hold, checked in this order by
:class:`ControlVerifier`; each failure has its own stable ``refused`` word:

1. ``forged``: the signature verifies against the pinned control key and the body parses as a control message;
2. ``wrong_origin``: it is addressed to this sidecar's origin, by the pinned collector name;
3. ``stale``: it has not expired (``expires_ms``), and was not issued more than the allowed skew in the future;
4. ``replayed``: its sequence number is above the highest one already applied. A ``kill_switch_set`` is the
   exception: it carries the sequence number of the hello it answers (the highest the sidecar applied; the acts
   sent after it are all above it), so it is believed at that number too, but only on the stream it was issued
   for: its ``nonce`` must be that stream's challenge (pass ``stream_nonce``, or check it yourself, as
   :mod:`gateway.sidecar.control` does).

Times are unix milliseconds (RFC 8785 numbers are exact only up to 2**53, nanoseconds are not); a kind's field
that must carry nanoseconds carries them as a decimal string.

The sequence is the collector's (one counter per fleet, kept in its store, shared by its replicas), so a sidecar
sees gaps (changes for other origins) but never a repeat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.canonical import canonical_json
from gateway.errors import AgentAuditError
from gateway.ids import now_nanos
from gateway.signing import Ed25519Signer, Verifier

HELLO_TYPE = "agentaudit.control_hello"
CONTROL_TYPE = "agentaudit.control"
VERSION = 1
_HELLO_DOMAIN = b"agentaudit control-hello v1\n"
_CONTROL_DOMAIN = b"agentaudit control v1\n"

# The kinds of collector → sidecar change.
KILL_SWITCH_SET = "kill_switch_set"  # the complete fleet set: sent first on every stream
KILL_SWITCH = "kill_switch"  # one engage or release
APPROVAL_VOTE = "approval_vote"  # one approver's grant or deny
KINDS = frozenset({KILL_SWITCH_SET, KILL_SWITCH, APPROVAL_VOTE})

# Refusal words (ControlAck.refused and the log line).
FORGED = "forged"
WRONG_ORIGIN = "wrong_origin"
STALE = "stale"
REPLAYED = "replayed"

DEFAULT_TTL_S = 60.0  # how long a control message stays valid after it was issued
HELLO_SKEW_NS = 120 * 10**9  # how far a hello's clock may be from the collector's
FUTURE_SKEW_NS = 120 * 10**9  # how far in the future a control message may claim to be issued


class ControlRefusedError(AgentAuditError):
    """A control message (or hello) that must not be believed; ``refused`` is one of the words above."""

    def __init__(self, refused: str, message: str) -> None:
        super().__init__(message)
        self.refused = refused


def _parse(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlRefusedError(FORGED, f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ControlRefusedError(FORGED, f"{what} is not a JSON object")
    return value


def _int(body: dict[str, Any], key: str, what: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ControlRefusedError(FORGED, f"{what}: {key} must be a non-negative integer")
    return value


def _str(body: dict[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ControlRefusedError(FORGED, f"{what}: {key} must be a non-empty string")
    return value


# --- the sidecar's hello ----------------------------------------------------------------------------------------


def sign_hello(signer: Ed25519Signer, collector: str, nonce: bytes, applied_seq: int) -> tuple[bytes, bytes]:
    """The hello body and its signature: the origin's journal key answers the collector's challenge."""
    body = canonical_json(
        {
            "type": HELLO_TYPE,
            "v": VERSION,
            "origin": signer.name,
            "collector": collector,
            "nonce": nonce.hex(),
            "time_ms": now_nanos() // 1_000_000,
            "applied_seq": applied_seq,
        }
    )
    return body, signer.sign(_HELLO_DOMAIN + body)


@dataclass(frozen=True)
class Hello:
    """A verified hello."""

    origin: str
    applied_seq: int


def verify_hello(
    body: bytes, signature: bytes, *, collector: str, nonce: bytes, verifiers: list[Verifier], now_ns: int = 0
) -> Hello:
    """Checks a hello against the challenge it answers and the origin's registered keys.

    Raises:
        ControlRefusedError: ``forged`` (bad signature, wrong nonce or collector, unknown origin) or ``stale``.
    """
    fields = _parse(body, "hello")
    if fields.get("type") != HELLO_TYPE or fields.get("v") != VERSION:
        raise ControlRefusedError(FORGED, "hello: not an agentaudit control hello v1")
    origin = _str(fields, "origin", "hello")
    if fields.get("collector") != collector or fields.get("nonce") != nonce.hex():
        raise ControlRefusedError(FORGED, "hello: does not answer this stream's challenge")
    if not any(v.name == origin and v.verify(_HELLO_DOMAIN + body, signature) for v in verifiers):
        raise ControlRefusedError(FORGED, f"hello: not signed by a key registered for origin {origin!r}")
    if abs((now_ns or now_nanos()) - _int(fields, "time_ms", "hello") * 1_000_000) > HELLO_SKEW_NS:
        raise ControlRefusedError(STALE, "hello: its clock is more than 120 s from the collector's")
    return Hello(origin=origin, applied_seq=_int(fields, "applied_seq", "hello"))


# --- collector → sidecar ----------------------------------------------------------------------------------------


def sign_control(
    signer: Ed25519Signer,
    origin: str,
    seq: int,
    kind: str,
    fields: dict[str, Any],
    *,
    ttl_s: float = DEFAULT_TTL_S,
    now_ns: int = 0,
) -> tuple[bytes, bytes]:
    """One control message for one origin, and its signature by the collector's control key."""
    if kind not in KINDS:
        raise ValueError(f"unknown control kind {kind!r}")
    issued = now_ns or now_nanos()
    body = canonical_json(
        {
            **fields,
            "type": CONTROL_TYPE,
            "v": VERSION,
            "collector": signer.name,
            "origin": origin,
            "seq": seq,
            "issued_ms": issued // 1_000_000,
            "expires_ms": (issued + int(ttl_s * 1e9)) // 1_000_000,
            "kind": kind,
        }
    )
    return body, signer.sign(_CONTROL_DOMAIN + body)


@dataclass(frozen=True)
class ControlMessage:
    """A verified control message: its sequence number, kind and the whole body (the kind's fields)."""

    seq: int
    kind: str
    collector: str
    issued_ns: int
    body: dict[str, Any]


class ControlVerifier:
    """Believes only control messages signed by the pinned key, for this origin, fresh, and newer than the last.

    ``applied_seq`` starts at what the journal says was applied last; :meth:`applied` moves it once a message's
    change is journaled (a refused change still moves it: the same message must not be tried twice).
    """

    def __init__(self, pinned: Verifier, origin: str, applied_seq: int = 0) -> None:
        self.pinned = pinned
        self.origin = origin
        self.applied_seq = applied_seq

    def verify(self, body: bytes, signature: bytes, *, now_ns: int = 0, stream_nonce: bytes = b"") -> ControlMessage:
        """Checks a message in the documented order; raises :class:`ControlRefusedError` naming the first failure.

        ``stream_nonce``: the challenge of the stream the message came on; a ``kill_switch_set`` must carry it
        (empty: the caller checks a set's ``nonce`` itself).
        """
        if not self.pinned.verify(_CONTROL_DOMAIN + body, signature):
            raise ControlRefusedError(FORGED, "control message: signature does not verify against the pinned key")
        fields = _parse(body, "control message")
        what = "control message"
        if fields.get("type") != CONTROL_TYPE or fields.get("v") != VERSION or fields.get("kind") not in KINDS:
            raise ControlRefusedError(FORGED, f"{what}: not an agentaudit control message v1 of a known kind")
        if fields.get("origin") != self.origin or fields.get("collector") != self.pinned.name:
            raise ControlRefusedError(
                WRONG_ORIGIN,
                f"{what}: addressed to {fields.get('origin')!r} by {fields.get('collector')!r}, "
                f"not to {self.origin!r} by {self.pinned.name!r}",
            )
        now = now_ns or now_nanos()
        issued, expires = _int(fields, "issued_ms", what) * 1_000_000, _int(fields, "expires_ms", what) * 1_000_000
        if expires <= now or issued > now + FUTURE_SKEW_NS:
            raise ControlRefusedError(STALE, f"{what}: valid from {issued} to {expires}, now is {now}")
        seq = _int(fields, "seq", what)
        if fields["kind"] == KILL_SWITCH_SET:
            if stream_nonce and fields.get("nonce") != stream_nonce.hex():
                raise ControlRefusedError(REPLAYED, f"{what}: a kill-switch set issued for another stream")
            if seq < self.applied_seq:
                raise ControlRefusedError(REPLAYED, f"{what}: a kill-switch set as of {seq}, below {self.applied_seq}")
        elif seq <= self.applied_seq:
            raise ControlRefusedError(REPLAYED, f"{what}: sequence {seq} is not above {self.applied_seq}")
        return ControlMessage(seq=seq, kind=fields["kind"], collector=self.pinned.name, issued_ns=issued, body=fields)

    def applied(self, seq: int) -> None:
        """The message ``seq`` was acted on (journaled, or refused for good): later ones must be newer."""
        self.applied_seq = max(self.applied_seq, seq)
