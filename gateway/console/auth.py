"""Who is signed in to the console: sessions, CSRF tokens, one-time sign-in links and trusted identity headers.

Sessions and one-time links live in the collector's database (``console_sessions``, ``console_links``; migration
0006), so every replica behind a load balancer answers for every session, a restart signs nobody out, and signing
out on one replica signs out on all. The cookie holds a random 32-byte session id; only its SHA-256 is stored,
like operator tokens, so a copy of the table cannot be replayed as cookies. Every session has its own CSRF token,
compared in constant time on every POST. Expiry is wall-clock time, which the replicas share.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.collector.fleet_db import FleetDb, Row
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
    """One signed-in operator: who, the CSRF token of their forms, and when the session ends (unix seconds)."""

    operator: Operator
    csrf: str
    expires_at: float
    via: str  # token | header | link


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _roles(text: str) -> frozenset[str]:
    return frozenset(r for r in text.split(",") if r)


def _session_of(row: Row) -> Session:
    operator = Operator(str(row["operator"]), _roles(str(row["roles"])))
    return Session(operator, str(row["csrf"]), int(row["expires_ms"]) / 1000, str(row["via"]))


class Sessions:
    """The console's sessions and one-time links, in the collector's database (shared by its replicas).

    Args:
        db: the collector's fleet tables' transactions (``FleetControl.db``).
        operators: the collector's operator tokens (``collector.operator.tokens``): what ``/login`` accepts.
        ttl_s: a session's lifetime from sign-in (``collector.console.session_ttl_s``).
        header_roles: identities accepted from a trusted header, with their roles.
        clock: wall-clock seconds (tests move it).
    """

    def __init__(
        self,
        db: FleetDb,
        operators: OperatorConfig,
        ttl_s: float,
        header_roles: dict[str, tuple[str, ...]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._auth = Authenticator(operators)
        self.ttl_s = ttl_s
        self._header_roles = {k.strip().casefold(): (k, frozenset(v)) for k, v in header_roles.items()}
        self.clock = clock

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

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

    async def open(self, operator: Operator, via: str) -> tuple[str, Session]:
        """A new session: returns the cookie value and the session. Expired sessions are removed first and, past
        :data:`MAX_SESSIONS` live ones, the oldest."""
        sid, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), self._now_ms()
        expires = now + int(self.ttl_s * 1000)
        async with self._db.write() as tx:
            await tx.execute("DELETE FROM console_sessions WHERE expires_ms <= ?", now)
            rows = await tx.fetch("SELECT count(*) AS n FROM console_sessions")
            excess = int(rows[0]["n"]) - MAX_SESSIONS + 1
            if excess > 0:
                await tx.execute(
                    "DELETE FROM console_sessions WHERE sid_sha256 IN "
                    "(SELECT sid_sha256 FROM console_sessions ORDER BY opened_ms, sid_sha256 LIMIT ?)",
                    excess,
                )
            await tx.execute(
                "INSERT INTO console_sessions (sid_sha256, operator, roles, csrf, via, opened_ms, expires_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                _digest(sid), operator.identity, ",".join(sorted(operator.roles)), csrf, via, now, expires,
            )  # fmt: skip
        return sid, Session(operator, csrf, expires / 1000, via)

    async def get(self, sid: str) -> Session | None:
        """The live session of a cookie value (None: unknown, signed out or expired)."""
        if not sid or len(sid) > 256:
            return None
        async with self._db.read() as tx:
            rows = await tx.fetch(
                "SELECT operator, roles, csrf, via, expires_ms FROM console_sessions WHERE sid_sha256 = ?",
                _digest(sid),
            )
        if not rows or int(rows[0]["expires_ms"]) <= self._now_ms():
            return None
        return _session_of(rows[0])

    async def close(self, sid: str) -> None:
        """Signs a session out, on every replica."""
        if sid:
            async with self._db.write() as tx:
                await tx.execute("DELETE FROM console_sessions WHERE sid_sha256 = ?", _digest(sid))

    async def one_time_link(self, operator: Operator) -> str:
        """A secret for ``/login/once/<secret>`` that signs ``operator`` in once, within :data:`ONE_TIME_TTL_S`."""
        secret, now = secrets.token_urlsafe(32), self._now_ms()
        async with self._db.write() as tx:
            await tx.execute("DELETE FROM console_links WHERE expires_ms <= ?", now)
            await tx.execute(
                "INSERT INTO console_links (link_sha256, operator, roles, expires_ms) VALUES (?, ?, ?, ?)",
                _digest(secret), operator.identity, ",".join(sorted(operator.roles)), now + int(ONE_TIME_TTL_S * 1000),
            )  # fmt: skip
        return secret

    async def redeem(self, secret: str) -> Operator | None:
        """The operator of a one-time link, removing it: of two replicas redeeming it at once, one gets it."""
        if not secret or len(secret) > 256:
            return None
        async with self._db.write() as tx:
            rows = await tx.fetch(
                "SELECT operator, roles, expires_ms FROM console_links WHERE link_sha256 = ?", _digest(secret)
            )
            if not rows or not await tx.execute("DELETE FROM console_links WHERE link_sha256 = ?", _digest(secret)):
                return None
        if int(rows[0]["expires_ms"]) <= self._now_ms():
            return None
        return Operator(str(rows[0]["operator"]), _roles(str(rows[0]["roles"])))


def csrf_ok(session: Session, presented: str) -> bool:
    """Whether a form's CSRF token is the session's (constant time)."""
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), presented.encode())


READ_ROLES = frozenset({"auditor", "approver", "admin"})


def has_role(operator: Operator, role: str) -> bool:
    """Whether ``operator`` may do what ``role`` may: admin everything, every role reads (``auditor``)."""
    if role == "auditor":
        return bool(operator.roles & READ_ROLES)
    return "admin" in operator.roles or role in operator.roles
