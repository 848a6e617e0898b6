"""HTTP mode's identity from a verified bearer JWT: who acts is what the token's issuer says, not what the client says.

``BearerVerifier`` checks a token and maps its claims to an :class:`~gateway.mcp.proxy.Identity` per the
configured mapping (``--claim tenant=org_id --claim actor=sub --claim agent=azp``); flags fill what the mapping
leaves out. ``BearerAuthMiddleware`` runs in front of the MCP endpoint: a request without a valid token is
answered 401 before the SDK reads it, so nothing is decided, forwarded or journaled for it.

Keys are public keys only (a JWKS file or one PEM), so the proxy can verify but never mint tokens, and an
asymmetric key cannot be replayed as an HMAC secret (PyJWT refuses that, and the algorithms allowed here are
asymmetric only).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.mcp.listing import Identity
from gateway.mcp.proxy import VERIFIED_IDENTITY_SCOPE_KEY

log = logging.getLogger("agentaudit.mcp")

# What a claim mapping may set (``--claim FIELD=CLAIM``).
CLAIM_FIELDS = ("tenant", "agent", "actor", "actor_type")
_IDENTITY_FIELD = {"tenant": "tenant_id", "agent": "agent_id", "actor": "actor_id", "actor_type": "actor_type"}
_ACTOR_TYPES = ("user", "service", "agent")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY_S = 30.0  # clock skew tolerated on exp / nbf / iat


class BearerError(Exception):
    """A token that is missing, malformed, unsigned by a trusted key, expired, for another audience or issuer, or
    lacking a mapped claim. The message is safe to show the client."""


@dataclass(frozen=True)
class BearerConfig:
    """How HTTP mode verifies tokens (``--jwt-*`` and ``--claim`` flags)."""

    issuer: str
    audience: str
    jwks_path: Path | None = None
    key_path: Path | None = None
    claims: Mapping[str, str] = field(default_factory=dict)  # identity field → claim name


def parse_claim_mapping(items: list[str]) -> dict[str, str]:
    """``["tenant=org_id", "actor=sub"]`` → ``{"tenant": "org_id", "actor": "sub"}``; unknown fields refused."""
    mapping: dict[str, str] = {}
    for item in items:
        name, sep, claim = item.partition("=")
        if not sep or not claim or name not in CLAIM_FIELDS:
            raise ValueError(f"--claim {item!r}: expected FIELD=CLAIM with FIELD one of {', '.join(CLAIM_FIELDS)}")
        mapping[name] = claim
    return mapping


class BearerVerifier:
    """Verifies bearer JWTs against fixed public keys and maps their claims to an identity."""

    def __init__(self, config: BearerConfig, defaults: Identity) -> None:
        if not config.issuer or not config.audience:
            raise ValueError("JWT verification needs both --jwt-issuer and --jwt-audience")
        if (config.jwks_path is None) == (config.key_path is None):
            raise ValueError("JWT verification needs exactly one of --jwt-jwks FILE or --jwt-key PEM")
        self._config = config
        self._defaults = defaults
        self._keys: dict[str, Any] = {}  # kid → key ("" when the only key has no kid)
        if config.jwks_path is not None:
            keyset = jwt.PyJWKSet.from_json(config.jwks_path.read_text())
            self._keys = {k.key_id or "": k for k in keyset.keys}
        elif config.key_path is not None:
            self._keys = {"": config.key_path.read_bytes()}

    def _key(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid") or ""
        except jwt.PyJWTError as exc:
            raise BearerError("malformed token") from exc
        key = self._keys.get(kid)
        if key is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            raise BearerError("token signed by an unknown key")
        return key

    def verify(self, token: str) -> Identity:
        """The identity a valid token carries.

        Steps, each refusing with ``BearerError``:
        1. The header names a key we hold (by ``kid``; a single key needs none).
        2. The signature verifies with that key under an asymmetric algorithm (never ``none``, never HMAC).
        3. ``exp`` is present and not past, ``nbf``/``iat`` not in the future (30 s leeway).
        4. ``iss`` and ``aud`` equal the configured issuer and audience.
        5. Every mapped claim is present and a non-empty string; the tenant ends up non-empty.
        """
        key = self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ASYMMETRIC_ALGORITHMS),
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise BearerError("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise BearerError("token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise BearerError("token is from another issuer") from exc
        except jwt.PyJWTError as exc:
            raise BearerError(f"invalid token: {exc}") from exc
        values: dict[str, str] = {}
        for name, claim in self._config.claims.items():
            value = claims.get(claim)
            if not isinstance(value, str) or not value:
                raise BearerError(f"token lacks the claim {claim!r}")
            values[_IDENTITY_FIELD[name]] = value
        identity = dataclasses.replace(self._defaults, **values)
        if identity.actor_type not in _ACTOR_TYPES:
            raise BearerError(f"claim {self._config.claims.get('actor_type')!r} is not an actor type")
        if not identity.tenant_id:
            raise BearerError("no tenant: map a claim with --claim tenant=CLAIM or pass --tenant")
        return identity


class BearerAuthMiddleware:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <valid JWT>``, or gets 401."""

    def __init__(self, app: ASGIApp, verifier: BearerVerifier) -> None:
        self._app = app
        self._verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise BearerError("a bearer token is required")
            identity = self._verifier.verify(token.strip())
        except BearerError as exc:
            log.info("refused an MCP request: %s", exc)
            await _unauthorized(send, str(exc))
            return
        await self._app({**scope, VERIFIED_IDENTITY_SCOPE_KEY: identity}, receive, send)


async def _unauthorized(send: Send, description: str) -> None:
    # RFC 6750 section 3: the challenge names the error; the description is ours and carries no token material.
    quoted = description.replace("\\", "\\\\").replace('"', '\\"')
    body = json.dumps({"error": "invalid_token", "error_description": description}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (
                    b"www-authenticate",
                    f'Bearer realm="agentaudit", error="invalid_token", error_description="{quoted}"'.encode(),
                ),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
