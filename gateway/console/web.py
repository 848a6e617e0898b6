"""The console's HTTP edge: routes, sign-in, the guard every page passes, and the security headers.

Each handler is parse → guard → read model (:mod:`gateway.console.pages`) or act (through
:class:`~gateway.collector.fleet.FleetControl`) → template. The guard (:meth:`Console.guard`) is the one place a
request is authenticated, authorised by role and (for a POST) checked for its CSRF token; every refusal is
answered 401 or 403 and journaled in ``control_log`` as ``operator_denied`` with who tried what.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.canonical import canonical_json
from gateway.collector.fleet import FleetControl
from gateway.collector.fleet_model import SCOPES
from gateway.collector.store import CollectorStore
from gateway.console import pages
from gateway.console.auth import COOKIE, HEADER_EMAIL, HEADER_USER, Session, Sessions, csrf_ok, has_role
from gateway.console.bundle import collector_bundle
from gateway.errors import (
    FailedPreconditionError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from gateway.identity import Operator

log = logging.getLogger(__name__)

CHANNEL = "console"
HERE = Path(__file__).parent
LOGIN_COOKIE = "agentaudit_console_login"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
READ, APPROVE, ADMIN = "auditor", "approver", "admin"
MAX_FORM_BYTES = 16_384


class Refused(Exception):
    """A request the guard refuses: status 401 or 403, a reason code and a sentence for the page."""

    def __init__(self, status: int, reason: str, message: str, identity: str = "") -> None:
        super().__init__(message)
        self.status, self.reason, self.identity = status, reason, identity


@dataclass(frozen=True)
class Caller:
    """A request that passed the guard: its session (with the CSRF token for forms) and the cookie to set."""

    session: Session
    new_cookie: str = ""

    @property
    def operator(self) -> Operator:
        return self.session.operator


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: journal text can hold markup
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ms_time"] = lambda ms: "" if ms is None else pages._iso(int(ms)).replace("T", " ")[:19]
    env.filters["ns_time"] = lambda ns: "" if ns is None else pages._iso(int(ns) // 10**6).replace("T", " ")[:23]
    env.filters["span"] = _span
    env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False, sort_keys=True)
    env.filters["ms"] = lambda ns: f"{int(ns) / 1e6:.1f}"
    return env


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"  # the one-time link never leaves in a Referer
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response


class Console:
    """The pages and acts over one collector's fleet and store; one per collector, shared by its listeners."""

    def __init__(self, fleet: FleetControl, store: CollectorStore, sessions: Sessions, *, secure: bool) -> None:
        self.fleet = fleet
        self.store = store
        self.sessions = sessions
        self.secure = secure
        self.env = _environment()
        self.now_ms: Callable[[], int] = lambda: time.time_ns() // 10**6

    # --- the guard ---------------------------------------------------------------------------------------

    async def guard(self, request: Request, role: str, *, trust_headers: bool, form: FormData | None = None) -> Caller:
        """The caller of a request, or :class:`Refused` (journaled by :meth:`refuse`).

        1. On a trusted listener, an identity header names the operator (``header_roles`` must list it); a
           session is opened for it (its cookie is set with the answer) unless the cookie's session is theirs.
        2. Otherwise the session cookie must name a live session (none or expired: 401).
        3. The operator needs ``role`` (admin has every role; 403).
        4. A POST must carry the session's CSRF token in its form (``csrf``) or ``X-CSRF-Token`` (403).
        """
        sid = request.cookies.get(COOKIE, "")
        session = await self.sessions.get(sid)
        new_cookie = ""
        header = request.headers.get(HEADER_EMAIL) or request.headers.get(HEADER_USER) or ""
        theirs = session is not None and session.operator.identity.casefold() == header.strip().casefold()
        if trust_headers and header and not theirs:  # 1.
            operator = self.sessions.operator_from_header(header)
            if operator is None:
                raise Refused(403, "unknown_identity", "this identity has no console roles", header.strip())
            new_cookie, session = await self.sessions.open(operator, "header")
        if session is None:  # 2.
            expired = bool(sid)
            raise Refused(401, "session_expired" if expired else "no_session", "sign in first")
        if not has_role(session.operator, role):  # 3.
            raise Refused(403, "wrong_role", f"this needs the {role} role", session.operator.identity)
        if request.method == "POST":  # 4.
            presented = request.headers.get("x-csrf-token", "")
            if form is not None and not presented:
                value = form.get("csrf", "")
                presented = value if isinstance(value, str) else ""
            if not csrf_ok(session, presented):
                raise Refused(403, "bad_csrf", "the form's CSRF token is missing or wrong", session.operator.identity)
        return Caller(session, new_cookie)

    async def refuse(self, request: Request, refused: Refused) -> Response:
        """Answers a refusal (401 or 403) and journals it as ``operator_denied``."""
        what = f"{request.method} {request.url.path}"[:256]
        try:
            await self.fleet.record_denied(
                identity=refused.identity,
                what=what,
                reason=refused.reason,
                channel=CHANNEL,
                detail=f"from {request.client.host if request.client else '-'}",
            )
        except Exception:  # the answer must not depend on the journal; the fleet logged its failure
            log.exception("console: cannot journal the refusal of %s", what)
        if refused.status == 401:
            response = self._login_page(request, refused.status, error=str(refused))
            return response
        return self.render(request, None, "refused.html", {"message": str(refused)}, status=refused.status)

    # --- rendering --------------------------------------------------------------------------------------

    def render(
        self, request: Request, caller: Caller | None, template: str, values: dict[str, Any], status: int = 200
    ) -> Response:
        """A page; sets the session cookie when the guard opened a session."""
        session = caller.session if caller else None
        html = self.env.get_template(template).render(
            **values,
            me=session.operator if session else None,
            csrf=session.csrf if session else "",
            can_approve=bool(session and has_role(session.operator, APPROVE)),
            can_admin=bool(session and has_role(session.operator, ADMIN)),
            path=request.url.path,
        )
        response = HTMLResponse(html, status_code=status)
        if caller is not None and caller.new_cookie:
            self.set_cookie(response, caller.new_cookie)
        return response

    def set_cookie(self, response: Response, sid: str) -> None:
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(self.sessions.ttl_s),
            httponly=True,
            samesite="strict",
            secure=self.secure,
            path="/",
        )

    def _login_page(self, request: Request, status: int, error: str = "") -> Response:
        nonce = secrets.token_urlsafe(24)
        html = self.env.get_template("login.html").render(
            error=error, login_csrf=nonce, me=None, csrf="", can_approve=False, can_admin=False, path="/login"
        )
        response = HTMLResponse(html, status_code=status)
        response.set_cookie(
            LOGIN_COOKIE, nonce, max_age=600, httponly=True, samesite="strict", secure=self.secure, path="/login"
        )
        return response

    # --- sign-in ----------------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return self._login_page(request, 200)

    async def login(self, request: Request) -> Response:
        """Signs in with an operator token (the form's login nonce must match its cookie: no login CSRF)."""
        form = await _form(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        presented = str(form.get("login_csrf", ""))
        if not nonce or not secrets.compare_digest(nonce.encode(), presented.encode()):
            return await self.refuse(request, Refused(403, "bad_csrf", "reload the sign-in page and try again"))
        operator = self.sessions.sign_in_with_token(str(form.get("token", "")).strip())
        if operator is None:
            await self.fleet.record_denied(identity="", what="POST /login", reason="invalid_token", channel=CHANNEL)
            return self._login_page(request, 401, error="that token is not an operator token of this collector")
        return await self._signed_in(operator, "token")

    async def login_once(self, request: Request) -> Response:
        """The one-time sign-in link (``agentaudit dev``): works once, within ten minutes."""
        operator = await self.sessions.redeem(request.path_params["secret"])
        if operator is None:
            return await self.refuse(request, Refused(401, "link_used", "this sign-in link was used or has expired"))
        return await self._signed_in(operator, "link")

    async def _signed_in(self, operator: Operator, via: str) -> Response:
        sid, _ = await self.sessions.open(operator, via)
        response = RedirectResponse("/approvals", status_code=303)
        self.set_cookie(response, sid)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        log.info("console: %s signed in (%s)", operator.identity, via)
        return response

    async def logout(self, request: Request, caller: Caller, form: FormData) -> Response:
        await self.sessions.close(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- pages ------------------------------------------------------------------------------------------

    async def overview(self, request: Request, caller: Caller) -> Response:
        data = await pages.overview(self.store, self.fleet, time.time_ns())
        charts = {
            "hour": pages.chart_bars(data.hour, data.outcomes, 600, 120),
            "day": pages.chart_bars(data.day, data.outcomes, 600, 120),
        }
        return self.render(request, caller, "overview.html", {"o": data, "charts": charts})

    async def inbox(self, request: Request, caller: Caller) -> Response:
        flt = pages.ApprovalFilters.of(request.query_params)
        views = await pages.inbox(self.fleet, flt, self.now_ms())
        return self.render(request, caller, "inbox.html", {"views": views, "f": flt})

    async def resolved(self, request: Request, caller: Caller) -> Response:
        flt = pages.ApprovalFilters.of(request.query_params)
        views = await pages.resolved(self.fleet, flt, self.now_ms())
        if request.query_params.get("format") == "csv":
            out = io.StringIO()
            csv.writer(out).writerows(pages.resolved_csv_rows(views))
            return Response(
                out.getvalue(),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="approvals.csv"'},
            )
        query = urlencode({k: v for k, v in vars(flt).items() if v})
        return self.render(request, caller, "resolved.html", {"views": views, "f": flt, "query": query})

    async def approval(self, request: Request, caller: Caller, *, error: str = "", status: int = 200) -> Response:
        approval_id = request.path_params["approval_id"]
        try:
            approval = await self.fleet.get_approval(approval_id)
        except NotFoundError:
            return self.render(request, caller, "refused.html", {"message": "no such approval"}, status=404)
        view = pages.approval_view(approval, self.now_ms())
        run = None
        if approval.run_id:
            try:
                run = await pages.timeline(self.store, self.fleet, approval.run_id, approval.origin)
            except LookupError:
                run = None
        values = {"v": view, "a": approval, "run": run, "error": error, "pages": pages}
        return self.render(request, caller, "approval.html", values, status=status)

    async def vote(self, request: Request, caller: Caller, form: FormData) -> Response:
        """Approve or deny through :meth:`FleetControl.vote` as the signed-in operator, channel ``console``."""
        approval_id = request.path_params["approval_id"]
        decision = str(form.get("decision", ""))
        if decision not in ("approve", "deny"):
            return await self.approval(request, caller, error="choose approve or deny", status=400)
        comment = str(form.get("comment", "")).strip()
        try:
            await self.fleet.vote(
                approval_id, grant=decision == "approve", operator=caller.operator, comment=comment, channel=CHANNEL
            )
        except InvalidRequestError as exc:
            return await self.approval(request, caller, error=_violations(exc), status=400)
        except PermissionDeniedError as exc:
            await self.fleet.record_denied(
                identity=caller.operator.identity,
                what=f"POST {request.url.path}",
                reason="not_an_approver",
                channel=CHANNEL,
                detail=str(exc),
            )
            return await self.approval(request, caller, error=str(exc), status=403)
        except FailedPreconditionError as exc:
            return await self.approval(request, caller, error=str(exc), status=409)
        except NotFoundError:
            return self.render(request, caller, "refused.html", {"message": "no such approval"}, status=404)
        return RedirectResponse(f"/approvals/{_quote(approval_id)}", status_code=303)

    async def runs(self, request: Request, caller: Caller) -> Response:
        try:
            page = await pages.search(self.store, request.query_params)
        except ValueError as exc:
            return self.render(
                request,
                caller,
                "runs.html",
                {"page": None, "error": str(exc), "given": {}, "next_query": ""},
                status=400,
            )
        next_query = urlencode({**page.filters, "page": page.next_cursor}) if page.next_cursor else ""
        values = {"page": page, "error": "", "given": page.filters, "next_query": next_query}
        return self.render(request, caller, "runs.html", values)

    async def run(self, request: Request, caller: Caller) -> Response:
        run_id = request.path_params["run_id"]
        try:
            view = await pages.timeline(self.store, self.fleet, run_id, request.query_params.get("origin", ""))
        except LookupError:
            return self.render(request, caller, "refused.html", {"message": "no events of this run"}, status=404)
        values = {"t": view, "pages": pages, "bundle_query": urlencode({"origin": view.origin})}
        return self.render(request, caller, "run.html", values)

    async def bundle(self, request: Request, caller: Caller) -> Response:
        run_id = request.path_params["run_id"]
        origin = request.query_params.get("origin", "")
        try:
            data = await collector_bundle(self.store, origin, run_id)
        except LookupError:
            return self.render(request, caller, "refused.html", {"message": "no events of this run"}, status=404)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:80] or "run"
        return Response(
            canonical_json(data) + b"\n",
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{safe}.aab"'},
        )

    async def switches(self, request: Request, caller: Caller, *, error: str = "", status: int = 200) -> Response:
        found = await pages.switches(self.fleet)
        return self.render(
            request, caller, "switches.html", {"switches": found, "scopes": SCOPES, "error": error}, status=status
        )

    async def engage(self, request: Request, caller: Caller, form: FormData) -> Response:
        return await self._switch(request, caller, form, engage=True)

    async def release(self, request: Request, caller: Caller, form: FormData) -> Response:
        return await self._switch(request, caller, form, engage=False)

    async def _switch(self, request: Request, caller: Caller, form: FormData, *, engage: bool) -> Response:
        scope, target = str(form.get("scope", "")), str(form.get("target", "")).strip()
        reason = str(form.get("reason", "")).strip()
        expected = f"{scope}:{target or '*'}"
        if str(form.get("confirm", "")).strip() != expected:
            return await self.switches(
                request, caller, status=400, error=f"type {expected} in the confirmation box to confirm the scope"
            )
        try:
            if engage:
                await self.fleet.engage_switch(scope, target, reason, caller.operator, CHANNEL)
            else:
                await self.fleet.release_switch(scope, target, reason, caller.operator, CHANNEL)
        except InvalidRequestError as exc:
            return await self.switches(request, caller, error=_violations(exc), status=400)
        except (FailedPreconditionError, NotFoundError) as exc:
            return await self.switches(request, caller, error=str(exc), status=409)
        return RedirectResponse("/switches", status_code=303)

    async def fleet_page(self, request: Request, caller: Caller) -> Response:
        origins = await pages.fleet_origins(self.store, self.fleet)
        denied = await self.fleet.denied_acts(20)
        return self.render(request, caller, "fleet.html", {"origins": origins, "denied": denied})


def _violations(exc: InvalidRequestError) -> str:
    return "; ".join(f"{v.field} {v.description}" for v in exc.violations) or str(exc)


def _quote(text: str) -> str:
    from urllib.parse import quote  # noqa: PLC0415

    return quote(text, safe="")


async def _form(request: Request) -> FormData:
    length = int(request.headers.get("content-length") or 0)
    if length > MAX_FORM_BYTES:
        return FormData()
    return await request.form(max_files=0, max_fields=32)


Page = Callable[[Request, Caller], Awaitable[Response]]
Act = Callable[[Request, Caller, FormData], Awaitable[Response]]


def console_app(console: Console, *, trust_headers: bool = False, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The console's ASGI app for one listener.

    Args:
        console: the pages and acts (shared by every listener of the collector).
        trust_headers: this listener sits behind an authenticating proxy: identity headers sign people in.
        extra_routes: more routes mounted as they are (e.g. ``gateway.slack``'s ``slack_routes(...)``); they do
            their own authentication.
    """

    def page(role: str, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                caller = await console.guard(request, role, trust_headers=trust_headers)
            except Refused as refused:
                return await console.refuse(request, refused)
            return await handler(request, caller)

        return endpoint

    def act(role: str, handler: Act) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            form = await _form(request)
            try:
                caller = await console.guard(request, role, trust_headers=trust_headers, form=form)
            except Refused as refused:
                return await console.refuse(request, refused)
            return await handler(request, caller, form)

        return endpoint

    routes: list[BaseRoute] = [
        Route("/login", console.login_form, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/login/once/{secret}", console.login_once, methods=["GET"]),
        Route("/logout", act(READ, console.logout), methods=["POST"]),
        Route("/", page(READ, console.overview), methods=["GET"]),
        Route("/approvals", page(READ, console.inbox), methods=["GET"]),
        Route("/approvals/resolved", page(READ, console.resolved), methods=["GET"]),
        Route("/approvals/{approval_id:path}/vote", act(APPROVE, console.vote), methods=["POST"]),
        Route("/approvals/{approval_id:path}", page(READ, console.approval), methods=["GET"]),
        Route("/runs", page(READ, console.runs), methods=["GET"]),
        Route("/runs/{run_id:path}/bundle", page(READ, console.bundle), methods=["GET"]),
        Route("/runs/{run_id:path}", page(READ, console.run), methods=["GET"]),
        Route("/switches", page(READ, console.switches), methods=["GET"]),
        Route("/switches/engage", act(ADMIN, console.engage), methods=["POST"]),
        Route("/switches/release", act(ADMIN, console.release), methods=["POST"]),
        Route("/fleet", page(READ, console.fleet_page), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        *extra_routes,
    ]
    return Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)])
