"""Who is signed in to the console: sessions, CSRF tokens, one-time sign-in links and trusted identity headers.

Sessions live in the console process's memory (one collector process serves its console; a restart signs
everyone out). The cookie holds a random 32-byte session id; only its SHA-256 is kept, like operator tokens, so
a memory dump of the table cannot be replayed as cookies. Every session has its own CSRF token, compared in
constant time on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import OperatorConfig
from gateway.errors import UnauthenticatedError
from gateway.identity import Operator
from gateway.rpc.auth import Authenticator

COOKIE = "agentaudit_console"
ONE_TIME_TTL_S = 600.0
HEADER_EMAIL = "x-forwarded-email"
HEADER_USER = "x-forwarded-user"
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    """One signed-in operator: who, the CSRF token of their forms, and when the session ends (monotonic s)."""

    operator: Operator
    csrf: str
    expires_at: float
    via: str  # token | header | link


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Sessions:
    """The console's sessions and one-time links.

    Args:
        operators: the collector's operator tokens (``collector.operator.tokens``): what ``/login`` accepts.
        ttl_s: a session's lifetime from sign-in (``collector.console.session_ttl_s``).
        header_roles: identities accepted from a trusted header, with their roles.
        clock: monotonic seconds (tests move it).
    """

    def __init__(
        self,
        operators: OperatorConfig,
        ttl_s: float,
        header_roles: dict[str, tuple[str, ...]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auth = Authenticator(operators)
        self.ttl_s = ttl_s
        self._header_roles = {k.strip().casefold(): (k, frozenset(v)) for k, v in header_roles.items()}
        self.clock = clock
        self._sessions: dict[bytes, Session] = {}
        self._links: dict[bytes, tuple[Operator, float]] = {}

    def sign_in_with_token(self, token: str) -> Operator | None:
        """The operator a token belongs to (hashed and compared in constant time), or None."""
        try:
            return self._auth.authenticate([("authorization", f"Bearer {token}")], {})
        except UnauthenticatedError:
            return None

    def operator_from_header(self, value: str) -> Operator | None:
        """The operator a trusted identity header names, if ``header_roles`` lists it."""
        found = self._header_roles.get(value.strip().casefold())
        return None if found is None else Operator(found[0], found[1])

    def open(self, operator: Operator, via: str) -> tuple[str, Session]:
        """A new session: returns the cookie value and the session."""
        self._expire()
        while len(self._sessions) >= MAX_SESSIONS:  # the oldest go first
            self._sessions.pop(next(iter(self._sessions)))
        sid = secrets.token_urlsafe(32)
        session = Session(operator, secrets.token_urlsafe(32), self.clock() + self.ttl_s, via)
        self._sessions[_digest(sid)] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        """The live session of a cookie value (None: unknown or expired; an expired one is dropped)."""
        if not sid:
            return None
        key = _digest(sid)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires_at <= self.clock():
            del self._sessions[key]
            return None
        return session

    def close(self, sid: str) -> None:
        """Signs a session out."""
        self._sessions.pop(_digest(sid), None)

    def one_time_link(self, operator: Operator) -> str:
        """A secret for ``/login/once/<secret>`` that signs ``operator`` in once, within :data:`ONE_TIME_TTL_S`."""
        secret = secrets.token_urlsafe(32)
        self._links[_digest(secret)] = (operator, self.clock() + ONE_TIME_TTL_S)
        return secret

    def redeem(self, secret: str) -> Operator | None:
        """The operator of a one-time link, removing it (a second use finds nothing)."""
        found = self._links.pop(_digest(secret), None)
        if found is None or found[1] <= self.clock():
            return None
        return found[0]

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]


def csrf_ok(session: Session, presented: str) -> bool:
    """Whether a form's CSRF token is the session's (constant time)."""
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), presented.encode())


READ_ROLES = frozenset({"auditor", "approver", "admin"})


def has_role(operator: Operator, role: str) -> bool:
    """Whether ``operator`` may do what ``role`` may: admin everything, every role reads (``auditor``)."""
    if role == "auditor":
        return bool(operator.roles & READ_ROLES)
    return "admin" in operator.roles or role in operator.roles
