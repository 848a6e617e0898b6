"""``POST /slack/interactions``: the Approve and Deny buttons of the approval messages, and the deny dialog.

Every request is checked before anything in it is believed (the numbered steps of
:meth:`SlackInteractions.authenticate`): Slack's signature over the timestamp and the raw body, with
``slack_sdk``'s :class:`~slack_sdk.signature.SignatureVerifier`; the timestamp within 5 minutes of now; and the
signature never seen before (``slack_replays``, shared by every replica). Then the Slack user id must be on
``collector.slack.users``, which says who that person is as an approver (the identity the fleet records, never a
name from the payload) and their roles (approver or admin to answer).

- **Approve** → ``FleetControl.vote(grant=True, channel="slack")`` with that identity. The answer to Slack comes
  at once (Slack wants one within 3 s); the vote runs just after, and its outcome updates the message (the
  poster's ``on_approval_voted`` hook) or, for a refusal by the approval rules, reaches only the person who
  pressed, as an ephemeral reply through the interaction's ``response_url``.
- **Deny** → a modal (``views.open`` with the interaction's ``trigger_id``) asking for the justification a denial
  needs; its ``view_submission`` → ``vote(grant=False, comment=justification)``. An empty justification or a
  refusal is shown in the modal.

Every refused request is answered 401 (unsigned, bad signature, stale, replayed) or 403 (unknown user, not an
approver), or, when the approval rules refuse (self-approval, not among the rule's approvers), with an
ephemeral reply; each is journaled centrally as a signed ``operator_denied`` act in ``control_log``
(``FleetControl.record_denied``). Unauthenticated refusals are journaled up to :data:`ANONYMOUS_JOURNAL_PER_MIN`
a minute (a flood must not fill the log or hold the fleet's write lock); the rest are counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.signature import Clock, SignatureVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.collector.fleet import FleetApproval, FleetControl
from gateway.collector.store import CollectorUnavailableError
from gateway.config.slack import SlackConfig
from gateway.errors import (
    AgentAuditError,
    FailedPreconditionError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from gateway.identity import Operator
from gateway.rpc.auth import ROLE_APPROVER, require
from gateway.slack.api import SlackApi, retrying
from gateway.slack.messages import (
    ACTION_APPROVE,
    ACTION_DENY,
    ACTION_OPEN,
    DENY_CALLBACK,
    JUSTIFICATION_ACTION,
    JUSTIFICATION_BLOCK,
    approval_message,
    console_link,
    deny_modal,
    ephemeral,
    shown_state,
)
from gateway.slack.store import SlackStore, now_ms

log = logging.getLogger(__name__)

PATH = "/slack/interactions"
WINDOW_S = 300  # Slack's own: a request older (or newer) than 5 minutes is refused
MAX_BODY_BYTES = 1 << 20  # a block_actions payload carries the whole message: tens of KB at most
VIEW_WAIT_S = 2.0  # how long a view_submission waits for its vote before answering (Slack allows 3 s)
ANONYMOUS_JOURNAL_PER_MIN = 30
DRAIN_S = 5.0
WHAT = f"POST {PATH}"
BAD_PAYLOAD = "bad_payload"  # 400: answered, not journaled (it passed the signature: Slack sent it)


@dataclass
class Refusal(Exception):
    """A refused request: its HTTP status, the journal's reason and detail, and who (if known)."""

    status: int
    reason: str  # a stable code (the table in docs/slack.md)
    detail: str
    identity: str = ""
    what: str = WHAT


class _Budget:
    """At most ``per_minute`` in any minute (a fixed window: simple, and enough to bound a flood)."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._window = 0
        self._used = 0

    def take(self) -> bool:
        window = int(self._clock() // 60)
        if window != self._window:
            self._window, self._used = window, 0
        self._used += 1
        return self._used <= self._per_minute


class _Clock(Clock):
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


class SlackInteractions:
    """The interaction endpoint's handler; owns the tasks that do the work after Slack got its answer."""

    def __init__(
        self,
        fleet: FleetControl,
        store: SlackStore,
        api: SlackApi,
        config: SlackConfig,
        signing_secret: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fleet = fleet
        self._store = store
        self._api = api
        self._config = config
        self._clock = clock
        self._verifier = SignatureVerifier(signing_secret, clock=_Clock(clock))
        self._anonymous = _Budget(ANONYMOUS_JOURNAL_PER_MIN, clock)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.unjournaled = 0
        """Unauthenticated refusals over the journaling budget (logged, counted, not journaled) since start."""

    def routes(self) -> list[Route]:
        """The Starlette route(s) to mount (the console's listener serves them)."""
        return [Route(PATH, self.handle, methods=["POST"], name="slack_interactions")]

    async def aclose(self) -> None:
        """Lets the work in flight finish (up to :data:`DRAIN_S`), then cancels the rest."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=DRAIN_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- 1. who is asking ---------------------------------------------------------------------------------

    def authenticate(self, body: bytes, timestamp: str | None, signature: str | None) -> int:
        """Checks a request is Slack's, as sent; returns its timestamp.

        1. Both headers are present (``X-Slack-Request-Timestamp``, ``X-Slack-Signature``): else unsigned.
        2. The timestamp is whole seconds within :data:`WINDOW_S` of now: else stale (a captured request stops
           working after 5 minutes).
        3. ``v0=HMAC-SHA256(signing secret, "v0:<timestamp>:<raw body>")`` matches, compared in constant time
           (``SignatureVerifier``): else forged or altered.
        The replay check (step 4, the signature not seen before) needs the database: :meth:`handle` does it.

        Raises:
            Refusal: 401.
        """
        if not timestamp or not signature:
            raise Refusal(401, "unsigned", "unsigned request (no X-Slack-Signature / X-Slack-Request-Timestamp)")
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            raise Refusal(401, "bad_timestamp", "malformed X-Slack-Request-Timestamp")
        at = int(timestamp)
        if abs(self._clock() - at) > WINDOW_S:
            raise Refusal(401, "stale", f"stale request: timestamp {at} is outside the {WINDOW_S} s window")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(401, "bad_signature", "bad signature (the body is not UTF-8)") from None
        if not self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
            raise Refusal(401, "bad_signature", "bad signature")
        return at

    def _operator(self, payload: dict[str, Any], what: str) -> Operator:
        """The allow-listed approver behind the payload's (signed) Slack user id.

        Raises:
            Refusal: 403, an unknown Slack user or one without the approver (or admin) role.
        """
        user = payload.get("user")
        user_id = user.get("id") if isinstance(user, dict) else None
        if not isinstance(user_id, str) or not user_id:
            raise Refusal(400, BAD_PAYLOAD, "payload without a user id", what=what)
        known = self._config.user(user_id)
        if known is None:
            raise Refusal(
                403, "unknown_slack_user", f"Slack user {user_id[:32]} is not in collector.slack.users",
                identity=f"slack:{user_id[:32]}", what=what,
            )  # fmt: skip
        operator = Operator(known.identity, frozenset(known.roles))
        try:
            require(operator, ROLE_APPROVER)
        except PermissionDeniedError as exc:
            raise Refusal(403, "wrong_role", f"{exc} (Slack user {user_id})", known.identity, what) from None
        return operator

    async def _journal(self, refusal: Refusal) -> None:
        if not refusal.identity and not self._anonymous.take():
            self.unjournaled += 1
            log.warning("slack: refused %s (%s); not journaled: over %d a minute", refusal.what, refusal.detail,
                        ANONYMOUS_JOURNAL_PER_MIN)  # fmt: skip
            return
        try:
            await self._fleet.record_denied(
                identity=refusal.identity, what=refusal.what, reason=refusal.reason, channel="slack",
                detail=refusal.detail,
            )  # fmt: skip
        except CollectorUnavailableError as exc:
            log.error("slack: refused %s (%s) but could not journal it: %s", refusal.what, refusal.detail, exc)

    # --- 2. the request -----------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """``POST /slack/interactions``."""
        body = await _read_body(request)
        if body is None:
            return PlainTextResponse("request body too large", 413)
        peer = request.client.host if request.client else "unknown peer"
        try:
            at = self.authenticate(
                body, request.headers.get("x-slack-request-timestamp"), request.headers.get("x-slack-signature")
            )
            # 4. Never seen before, by any replica (after step 3, so only Slack's own requests are remembered).
            if not await self._store.first_use(request.headers["x-slack-signature"], at, WINDOW_S):
                raise Refusal(401, "replayed", "replayed request (this signature was already used)")
        except Refusal as refusal:
            refusal.detail = f"{refusal.detail}, from {peer}"
            await self._journal(refusal)
            return PlainTextResponse(f"refused: {refusal.detail}", refusal.status)
        except CollectorUnavailableError as exc:
            log.error("slack: cannot check for replays, refusing the request: %s", exc)
            return PlainTextResponse("the collector's database is unavailable", 503)
        payload = _payload(body)
        if payload is None:
            return PlainTextResponse("expected a form field 'payload' holding a JSON object", 400)
        kind = payload.get("type")
        try:
            if kind == "block_actions":
                return await self._block_actions(payload)
            if kind == "view_submission":
                return await self._view_submission(payload)
        except Refusal as refusal:
            if refusal.status != 400:
                await self._journal(refusal)
                self._spawn(self._tell(payload.get("response_url"), f"Refused: {refusal.detail}"))
            return PlainTextResponse(f"refused: {refusal.detail}", refusal.status)
        return Response(status_code=200)  # other interactions (a closed view, a shortcut): nothing to do

    async def _block_actions(self, payload: dict[str, Any]) -> Response:
        actions = payload.get("actions")
        action = actions[0] if isinstance(actions, list) and actions and isinstance(actions[0], dict) else {}
        action_id, approval_id = action.get("action_id"), action.get("value")
        if action_id == ACTION_OPEN or action_id not in (ACTION_APPROVE, ACTION_DENY):
            return Response(status_code=200)  # the console link: Slack opens it, nothing to do here
        if not isinstance(approval_id, str) or not approval_id:
            raise Refusal(400, BAD_PAYLOAD, "button without an approval id")
        operator = self._operator(payload, _what(action_id == ACTION_APPROVE, approval_id))
        response_url = payload.get("response_url")
        if action_id == ACTION_APPROVE:
            self._spawn(self._approve(operator, approval_id, response_url))
        else:
            self._spawn(self._ask_justification(operator, approval_id, payload.get("trigger_id"), response_url))
        return Response(status_code=200)

    async def _view_submission(self, payload: dict[str, Any]) -> Response:
        view = payload.get("view")
        if not isinstance(view, dict) or view.get("callback_id") != DENY_CALLBACK:
            return Response(status_code=200)
        try:
            metadata = json.loads(view.get("private_metadata") or "{}")
            approval_id = metadata["approval_id"]
            response_url = metadata.get("response_url")
            value = view["state"]["values"][JUSTIFICATION_BLOCK][JUSTIFICATION_ACTION].get("value")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Refusal(400, BAD_PAYLOAD, "view_submission without the approval or the justification") from None
        if not isinstance(approval_id, str) or not approval_id:
            raise Refusal(400, BAD_PAYLOAD, "view_submission without the approval")
        operator = self._operator(payload, _what(False, approval_id))
        justification = value if isinstance(value, str) else ""
        if not justification.strip():
            return _view_errors("A denial needs a justification: the agent and the investigators read it.")
        vote = self._spawn(self._vote(operator, approval_id, grant=False, comment=justification.strip()))
        done, _ = await asyncio.wait({vote}, timeout=VIEW_WAIT_S)
        if vote in done:
            refusal, _ = vote.result()
            return _view_errors(refusal) if refusal else Response(status_code=200)
        self._spawn(self._tell_when_done(vote, response_url))  # slow database: Slack closes the modal meanwhile
        return Response(status_code=200)

    # --- 3. the work, after Slack got its answer ---------------------------------------------------------

    async def _vote(
        self, operator: Operator, approval_id: str, *, grant: bool, comment: str
    ) -> tuple[str, FleetApproval | None]:
        """The vote; returns ("", the approval now) or (why it was refused, None). Journals rule refusals."""
        what = _what(grant, approval_id)
        try:
            result = await self._fleet.vote(approval_id, grant=grant, operator=operator, comment=comment,
                                            channel="slack")  # fmt: skip
        except PermissionDeniedError as exc:
            reason = "self_approval" if "cannot approve it" in str(exc) else "not_an_approver"
            await self._journal(Refusal(403, reason, str(exc), operator.identity, what))
            return f"Refused: {exc}", None
        except (FailedPreconditionError, NotFoundError, InvalidRequestError) as exc:
            log.info("slack: %s by %s not recorded: %s", what, operator.identity, exc)
            return f"Not recorded: {exc}", None
        except (CollectorUnavailableError, AgentAuditError) as exc:
            log.warning("slack: %s by %s failed: %s", what, operator.identity, exc)
            return "Not recorded: the collector cannot record answers right now; try again shortly.", None
        return "", result

    async def _approve(self, operator: Operator, approval_id: str, response_url: Any) -> None:
        refusal, result = await self._vote(operator, approval_id, grant=True, comment="")
        if refusal or result is None:
            await self._tell(response_url, refusal)
            return
        if result.state == "pending":
            granted = sum(1 for v in result.votes if v.grant)
            await self._tell(
                response_url,
                f"Your approval is recorded ({granted} of {result.approvals_required}): "
                "it takes effect when another approver grants it too.",
            )
        await self._replace_if_unknown(result, response_url)

    async def _ask_justification(
        self, operator: Operator, approval_id: str, trigger_id: Any, response_url: Any
    ) -> None:
        try:
            approval = await self._fleet.get_approval(approval_id)
        except (NotFoundError, CollectorUnavailableError) as exc:
            await self._tell(response_url, f"Cannot deny: {exc}")
            return
        state = shown_state(approval, now_ms())
        if state != "pending":
            by = f" by {approval.resolved_by}" if approval.resolved_by else ""
            await self._tell(response_url, f"Approval {approval_id} is already {state}{by}.")
            return
        if not self._api.has_bot or not isinstance(trigger_id, str):
            link = console_link(self._config.console_url, approval_id)
            where = f"the console ({link})" if link else f"agentaudit deny {approval_id} --collector … --comment …"
            await self._tell(response_url, f"A denial needs a justification: deny it from {where}.")
            return
        metadata = json.dumps(
            {"approval_id": approval_id, "response_url": response_url if isinstance(response_url, str) else ""}
        )
        if len(metadata) > 3000:  # Slack's limit on private_metadata
            metadata = json.dumps({"approval_id": approval_id})
        view = deny_modal(approval, metadata)
        # One retry at most: the trigger is valid for 3 s.
        if not await retrying(
            lambda: self._api.open_view(trigger_id, view), f"views.open for {approval_id}", attempts=2
        ):
            await self._tell(response_url, "Slack did not open the dialog; deny it from the console instead.")

    async def _tell_when_done(self, vote: asyncio.Task[tuple[str, FleetApproval | None]], response_url: Any) -> None:
        refusal, _ = await vote
        if refusal:
            await self._tell(response_url, refusal)

    async def _replace_if_unknown(self, approval: FleetApproval, response_url: Any) -> None:
        """A message the poster cannot update (posted through the webhook) is replaced through ``response_url``."""
        with contextlib.suppress(CollectorUnavailableError):
            if await self._store.message(approval.approval_id) is not None:
                return  # the poster updates it (on_approval_voted)
        if isinstance(response_url, str) and self._api.reply_allowed(response_url):
            message = {**approval_message(approval, console_url=self._config.console_url, now_ms=now_ms()),
                       "replace_original": True}  # fmt: skip
            await retrying(lambda: self._api.respond(response_url, message), "response_url update", attempts=3)

    async def _tell(self, response_url: Any, text: str) -> None:
        """An ephemeral reply to the person who pressed (nothing if the interaction has no usable response_url)."""
        if isinstance(response_url, str) and self._api.reply_allowed(response_url):
            await retrying(lambda: self._api.respond(response_url, ephemeral(text)), "ephemeral reply", attempts=3)


def _what(grant: bool, approval_id: str) -> str:
    """The journal's ``what`` of a button or the dialog: ``slack approve apr_…``."""
    return f"slack {'approve' if grant else 'deny'} {approval_id[:128]}"


def _view_errors(text: str) -> Response:
    return JSONResponse({"response_action": "errors", "errors": {JUSTIFICATION_BLOCK: text[:1000]}})


async def _read_body(request: Request) -> bytes | None:
    """The raw body (what Slack signed), or None past :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _payload(body: bytes) -> dict[str, Any] | None:
    """The JSON object in the ``payload`` form field (Slack's encoding of every interaction)."""
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10)
        payload = json.loads(fields["payload"][0])
    except (ValueError, KeyError, IndexError):
        return None
    return payload if isinstance(payload, dict) else None
