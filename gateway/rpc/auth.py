"""Operator authentication: bearer tokens (stored hashed) or a TLS client certificate, and role checks.

The authenticated identity is the ``actor`` of every event an operator call causes; a request can never claim
an actor. Failed authentication and authorisation are journaled (``operator_denied``) by the servicer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.config import OperatorConfig
from gateway.errors import PermissionDeniedError, UnauthenticatedError
from gateway.identity import Operator

ROLE_ADMIN, ROLE_APPROVER, ROLE_AUDITOR = "admin", "approver", "auditor"
_BEARER = "bearer "


class Authenticator:
    """Maps a call's credentials to an :class:`Operator`."""

    def __init__(self, config: OperatorConfig) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), t.identity, frozenset(t.roles)) for t in config.tokens]
        self._cert_roles = {cn: frozenset(roles) for cn, roles in (config.tls.identities if config.tls else ())}

    def authenticate(self, metadata: Iterable[tuple[str, Any]] | Any, auth_context: Mapping[str, Any]) -> Operator:
        """The operator behind a call.

        1. A verified TLS client certificate whose common name is configured authenticates by itself.
        2. Otherwise an ``authorization: Bearer <token>`` header must hash to a configured token digest
           (compared in constant time; the token itself is never stored or logged).

        Raises:
            UnauthenticatedError: neither credential is valid.
        """
        for cn in auth_context.get("x509_common_name", ()):
            name = cn.decode() if isinstance(cn, bytes) else str(cn)
            if name in self._cert_roles:
                return Operator(name, self._cert_roles[name])
        header = next((str(v) for k, v in metadata or () if k == "authorization"), "")
        if not header.lower().startswith(_BEARER):
            raise UnauthenticatedError(
                "missing operator credential (authorization: Bearer <token> or a client certificate)"
            )
        digest = hashlib.sha256(header[len(_BEARER) :].strip().encode()).digest()
        match = None
        for expected, identity, roles in self._tokens:
            if hmac.compare_digest(digest, expected):
                match = Operator(identity, roles)
        if match is None:
            raise UnauthenticatedError("invalid operator token")
        return match


def require(operator: Operator, *roles: str) -> None:
    """Raises PermissionDeniedError unless the operator has one of ``roles`` (admin always qualifies)."""
    if ROLE_ADMIN in operator.roles or operator.roles & set(roles):
        return
    raise PermissionDeniedError(f"{operator.identity} needs one of the roles {', '.join(roles)}")
