"""Sealed ``requestState`` (MCP 2026-07-28): what the proxy hands a client to echo back when it retries.

The client is untrusted, so the state is authenticated (HMAC-SHA-256 with the proxy's key) and bound to
everything that makes a retry the same request: the approval id, the tool, the digest of its arguments, the
principal (tenant, agent, actor, run) and an expiry. Each state is spent once, recorded in the proxy's state
file, so a replayed token is refused even before it expires. The approval itself is never in the token's
gift: the sidecar decides again with the approval id, and only a human resolution there lets the call run.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from gateway.canonical import canonical_json
from gateway.mcp.state import ProxyState

_FORMAT = "aa1"  # bound under the MAC, so a token never names its own algorithm


class SealError(Exception):
    """A requestState that is malformed, forged, bound to another request, expired, or already used."""


@dataclass(frozen=True)
class SealedRequest:
    """What a sealed state binds."""

    approval_id: str
    tool: str
    args_digest: str
    principal: str
    expires_at: float


def args_digest(arguments: object) -> str:
    """SHA-256 of the arguments' canonical JSON (a binding, not a journal digest: it never leaves the proxy)."""
    return hashlib.sha256(canonical_json(arguments)).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StateSealer:
    """Seals and opens request states with one key; spends each state once."""

    def __init__(self, key: bytes, state: ProxyState, ttl_s: float = 3600.0) -> None:
        self._key = key
        self._state = state
        self._ttl_s = ttl_s

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _FORMAT.encode() + b"." + payload, hashlib.sha256).digest()

    def seal(self, approval_id: str, tool: str, digest: str, principal: str) -> str:
        """A token for the client to echo back."""
        body = {
            "a": approval_id,
            "t": tool,
            "d": digest,
            "p": principal,
            "e": time.time() + self._ttl_s,
            "n": secrets.token_hex(16),
        }
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return f"{_FORMAT}.{_b64(payload)}.{_b64(self._mac(payload))}"

    def open(self, token: str, tool: str, digest: str, principal: str) -> SealedRequest:
        """Verifies a token against the retried request and spends it.

        Steps, each refusing with ``SealError``:
        1. The format prefix is ours and the token has three parts.
        2. The MAC over prefix and payload matches (constant-time), so nothing in it was edited.
        3. The tool, argument digest and principal equal the retried request's: a token cannot move.
        4. It has not expired.
        5. It was not spent before (recorded now, atomically, so a concurrent replay loses).
        """
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _FORMAT:
            raise SealError("malformed requestState")
        try:
            payload, mac = _unb64(parts[1]), _unb64(parts[2])
        except ValueError:
            raise SealError("malformed requestState") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise SealError("requestState failed authentication")
        body = json.loads(payload)
        if (body["t"], body["d"], body["p"]) != (tool, digest, principal):
            raise SealError("requestState is bound to another call")
        now = time.time()
        if body["e"] < now:
            raise SealError("requestState expired")
        if not self._state.spend(body["n"], body["e"], now):
            raise SealError("requestState was already used")
        return SealedRequest(body["a"], body["t"], body["d"], body["p"], body["e"])
