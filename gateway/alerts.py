"""Alerts: ``stop`` and ``approval_required`` decisions posted to webhooks, asynchronously, never blocking a decision.

Two payload formats: a Slack incoming-webhook message and a CloudEvents 1.0 structured-mode JSON event for any
other receiver. The Decide path calls :meth:`AlertDispatcher.notify` after the decision is recorded; ``notify``
only matches filters and enqueues (``put_nowait``), so a slow or broken receiver can never delay or change a
decision. Each webhook has its own bounded queue and one worker task, so a receiver that is down (and being
retried) does not hold up alerts to the others, and its alerts arrive in order. Full queues drop and count.

Alerts carry identifiers and policy outcome only, never action arguments: a webhook receiver is outside the
audit boundary (DESIGN §2.5). Webhook URLs (a Slack URL's path is its secret) and header values are never
logged. The reference is docs/alerts.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gateway import __version__, metrics
from gateway.config.alerts import FORMAT_CLOUDEVENTS, AlertsConfig, WebhookConfig
from gateway.ids import now_nanos, rfc3339_nanos
from gateway.policy.model import ActionRequest, Decision

if TYPE_CHECKING:
    import httpx  # imported by start(), only when a webhook is configured: ~3 MiB a sidecar without one never pays

log = logging.getLogger(__name__)

CLOUDEVENTS_SPECVERSION = "1.0"
CLOUDEVENTS_TYPE_PREFIX = "dev.agentaudit.decision."
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
SLACK_CONTENT_TYPE = "application/json"
USER_AGENT = f"agentaudit/{__version__}"

_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


@dataclass(frozen=True)
class Alert:
    """One alertable decision: identifiers and policy outcome, never the action's arguments."""

    decision: str
    reason: str
    policy_layer: str
    policy_rule: str
    policy_version: str
    tenant_id: str
    run_id: str
    step_id: int
    agent_id: str
    action: str
    event_id: str
    approval_id: str
    timestamp: str
    origin: str


def journal_alert(*, reason: str, rule: str, origin: str, event_id: str = "", decision: str = "stop") -> Alert:
    """An alert about the journal itself (lost, rolled back, tampered with): no run, tenant or action to name."""
    return Alert(
        decision=decision,
        reason=reason,
        policy_layer="audit",
        policy_rule=rule,
        policy_version="",
        tenant_id="",
        run_id="",
        step_id=0,
        agent_id="",
        action="",
        event_id=event_id,
        approval_id="",
        timestamp=rfc3339_nanos(now_nanos()),
        origin=origin,
    )


def alert_from_decision(
    request: ActionRequest, decision: Decision, *, event_id: str, approval_id: str, timestamp: str, origin: str
) -> Alert:
    """Builds the alert for a recorded decision (the caller decides whether the verdict is alertable)."""
    return Alert(
        decision=decision.verdict.value,
        reason=decision.reason,
        policy_layer=decision.layer,
        policy_rule=decision.rule,
        policy_version=decision.policy_version,
        tenant_id=request.tenant_id,
        run_id=request.run_id,
        step_id=request.step_id,
        agent_id=request.agent_id,
        action=request.action,
        event_id=event_id,
        approval_id=approval_id,
        timestamp=timestamp,
        origin=origin,
    )


# ---------------------------------------------------------------------------------------------------------------
# Filters and payloads


def webhook_matches(webhook: WebhookConfig, alert: Alert) -> bool:
    """Whether ``webhook`` wants ``alert``: decision listed, and reason, layer and tenant each match a glob."""
    # fnmatchcase, not fnmatch: matching must not depend on the OS's case rules. Compiled patterns are cached.
    return (
        alert.decision in webhook.decisions
        and any(fnmatch.fnmatchcase(alert.reason, p) for p in webhook.reasons)
        and any(fnmatch.fnmatchcase(alert.policy_layer, p) for p in webhook.layers)
        and any(fnmatch.fnmatchcase(alert.tenant_id, p) for p in webhook.tenants)
    )


def slack_escape(text: str) -> str:
    """``text`` safe inside Slack mrkdwn: ``&``, ``<`` and ``>`` escaped, so no value becomes a link or a mention."""
    # Agent-supplied ids must not become Slack links or mentions (`<!channel>`); Slack wants exactly these three.
    return text.translate(_SLACK_ESCAPES)


def approve_hint(alert: Alert, approve_command: str) -> str:
    """The approve command (or link) for ``alert``; empty when it has no approval."""
    if not alert.approval_id:
        return ""
    # str.replace, not str.format: a format string could reach attributes ({approval_id.__class__}).
    return approve_command.replace("{approval_id}", alert.approval_id)


def console_link(alert: Alert, console_url: str) -> str:
    """The web console page an alert is about: its approval, else its run, else the fleet page; "" without a URL.

    Identifiers are percent-encoded into the path (they are the console's own path parameters), so a run id cannot
    add a query, a fragment or another path to the link.
    """
    if not console_url:
        return ""
    if alert.approval_id:
        return f"{console_url}/approvals/{quote(alert.approval_id, safe='')}"
    if alert.run_id:
        return f"{console_url}/runs/{quote(alert.run_id, safe='')}"
    return f"{console_url}/fleet"


def slack_payload(alert: Alert, approve_command: str, console_url: str = "") -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (also the notification fallback) plus ``blocks``.

    Args:
        alert: the decision to report.
        approve_command: template with ``{approval_id}``, shown when the alert has an approval.
        console_url: the web console's base URL; set, the message links to the page the alert is about.
    """
    e = slack_escape
    text = (
        f"{e(alert.agent_id or 'agent')} decision={e(alert.decision)}, reason={e(alert.reason)}, "
        f"tenant={e(alert.tenant_id)}, run_id={e(alert.run_id)}, action={e(alert.action)}, event={e(alert.event_id)}"
    )
    hint = approve_hint(alert, approve_command)
    if hint:
        text += f"\nTo approve: `{e(hint)}`"
    context = (
        f"step {alert.step_id} · layer {e(alert.policy_layer)} · rule {e(alert.policy_rule) or '-'} · "
        f"policy {e(alert.policy_version[:12])} · {e(alert.origin)} · {e(alert.timestamp)}"
    )
    link = console_link(alert, console_url)
    if link:
        text += f"\n<{e(link)}|Open in the console>"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
    ]
    return {"text": text, "blocks": blocks}


def cloudevents_payload(alert: Alert, console_url: str = "") -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode event (POSTed as ``application/cloudevents+json``).

    ``id`` is the journal event id, so a receiver can de-duplicate retries. A fail-closed ``audit_unavailable``
    stop has no journal event; it gets a random id, stable across the retries of one delivery.
    """
    import uuid  # noqa: PLC0415 - with a webhook only: uuid and email are ~0.8 MiB a sidecar without one never pays

    return {
        "specversion": CLOUDEVENTS_SPECVERSION,
        "id": alert.event_id or f"unrecorded-{uuid.uuid4().hex}",
        "source": f"agentaudit://{quote(alert.origin, safe='/:@-._~')}",
        "type": f"{CLOUDEVENTS_TYPE_PREFIX}{alert.decision}",
        "subject": alert.run_id,
        "time": alert.timestamp,
        "datacontenttype": "application/json",
        "data": dataclasses.asdict(alert)
        | ({"console_link": link} if (link := console_link(alert, console_url)) else {}),
    }


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Parses a ``Retry-After`` header (delta-seconds or HTTP-date) to seconds from now; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # noqa: PLC0415 - see cloudevents_payload()

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# ---------------------------------------------------------------------------------------------------------------
# Delivery


class _TransientError(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, why: str, delay_s: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.delay_s = delay_s


class _PermanentError(Exception):
    """One attempt failed in a way retrying cannot fix (4xx other than 429, 3xx)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass
class _Route:
    """One webhook's queue and worker. ``busy`` stays True if the worker is cancelled mid-delivery."""

    index: int
    webhook: WebhookConfig
    queue: asyncio.Queue[Alert]
    label: str
    body_headers: dict[str, str]
    busy: bool = False
    dropping: bool = False
    task: asyncio.Task[None] | None = None


class AlertDispatcher:
    """Owns the webhook queues, their worker tasks and the HTTP client.

    Lifecycle: ``await start()`` → ``notify(...)`` any number of times (on the event loop thread) →
    ``await aclose()``. Alerts notified before ``start`` wait in the queue; after ``aclose`` begins they are
    dropped and counted.
    """

    def __init__(self, config: AlertsConfig) -> None:
        self._config = config
        self._routes = [
            _Route(
                index=i,
                webhook=w,
                queue=asyncio.Queue(maxsize=config.queue_size),
                label=f"webhooks[{i}] ({w.format}, {w.display_url})",
                body_headers={
                    **dict(w.headers),
                    "Content-Type": CLOUDEVENTS_CONTENT_TYPE if w.format == FORMAT_CLOUDEVENTS else SLACK_CONTENT_TYPE,
                    "User-Agent": USER_AGENT,
                },
            )
            for i, w in enumerate(config.webhooks)
        ]
        self._client: httpx.AsyncClient | None = None
        self._accepting = True
        self._closed = False
        # Full jitter needs no cryptographic randomness; a private instance keeps tests' global seeds out.
        self._random = random.Random()  # noqa: S311

    async def __aenter__(self) -> AlertDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Creates the HTTP client and one worker task per webhook (nothing at all when none is configured)."""
        if not self._routes or self._client is not None or self._closed:
            return
        import httpx  # noqa: PLC0415 - see the TYPE_CHECKING import above

        # httpx logs every request URL at INFO; a Slack URL's path is its secret. Quieten unless the operator chose.
        for name in ("httpx", "httpcore"):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        # Loading the CA bundle (certifi's, as httpx does by default) reads files: do it off the event loop.
        ssl_context = await asyncio.to_thread(httpx.create_ssl_context)
        self._client = httpx.AsyncClient(verify=ssl_context, follow_redirects=False, trust_env=True)
        for route in self._routes:
            route.task = asyncio.create_task(self._run(route), name=f"agentaudit-alerts-{route.index}")

    def notify(self, alert: Alert) -> None:
        """Queues ``alert`` for every webhook whose filters match. Synchronous; never blocks, awaits or raises.

        Call it on the event loop thread after the decision is recorded. A full queue drops the alert for that
        webhook and counts it in ``agentaudit_alerts_dropped_total``.
        """
        for route in self._routes:
            try:
                if not webhook_matches(route.webhook, alert):
                    continue
                if not self._accepting:
                    metrics.ALERTS_DROPPED.labels(route.webhook.format).inc()
                    continue
                route.queue.put_nowait(alert)
                route.dropping = False
            except asyncio.QueueFull:
                metrics.ALERTS_DROPPED.labels(route.webhook.format).inc()
                if not route.dropping:
                    # Once per burst, not per alert: an alert storm must not become a log storm.
                    route.dropping = True
                    log.warning("alerts: queue for %s is full; dropping (counted) until it drains", route.label)
            except Exception:
                # An alert must never turn a recorded decision into an error.
                log.exception("alert for %s not queued", route.label)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stops accepting, delivers what is queued within ``timeout_s``, then cancels and counts the rest as dropped.

        Args:
            timeout_s: how long queued alerts (including their retries) may take to deliver.
        """
        if self._closed:
            return
        self._closed = True
        # 1. Stop accepting: later notify calls drop and count.
        self._accepting = False
        started = [r for r in self._routes if r.task is not None]
        # 2. Drain: queue.join() returns once every queued alert was delivered or given up on.
        if started:
            _done, pending = await asyncio.wait(
                [asyncio.create_task(r.queue.join()) for r in started], timeout=max(timeout_s, 0.0)
            )
            for waiter in pending:
                waiter.cancel()
        # 3. Cancel workers (idle ones wait on get; busy ones may be mid-backoff) and wait for them to finish.
        for route in started:
            assert route.task is not None
            route.task.cancel()
        await asyncio.gather(*(r.task for r in started if r.task is not None), return_exceptions=True)
        # 4. Whatever was not delivered is dropped, and counted as such.
        for route in self._routes:
            left = route.queue.qsize() + (1 if route.busy else 0)
            while not route.queue.empty():
                route.queue.get_nowait()
            if left:
                metrics.ALERTS_DROPPED.labels(route.webhook.format).inc(left)
                log.warning("alerts: %d alert(s) for %s dropped at shutdown", left, route.label)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self, route: _Route) -> None:
        while True:
            alert = await route.queue.get()
            route.busy = True
            try:
                await self._deliver(route, alert)
            except Exception:
                # A bug in payload building must not kill the worker and silently stop all alerts.
                metrics.ALERT_FAILURES.labels(route.webhook.format).inc()
                log.exception("alert %s for %s failed", alert.event_id, route.label)
            finally:
                route.queue.task_done()
            # Only reached when not cancelled: a cancelled delivery leaves busy=True for aclose to count.
            route.busy = False

    def _backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**(attempt-1))]."""
        cap = min(self._config.backoff_max_s, self._config.backoff_initial_s * 2 ** min(attempt - 1, 32))
        return self._random.uniform(0.0, cap)

    async def _deliver(self, route: _Route, alert: Alert) -> None:
        webhook = route.webhook
        payload = (
            cloudevents_payload(alert, self._config.console_url)
            if webhook.format == FORMAT_CLOUDEVENTS
            else slack_payload(alert, self._config.approve_command, self._config.console_url)
        )
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        why = ""
        for attempt in range(1, webhook.max_attempts + 1):
            try:
                await self._attempt(route, body)
            except _TransientError as transient:
                why = transient.why
                if attempt == webhook.max_attempts:
                    break
                delay = transient.delay_s if transient.delay_s is not None else self._backoff_s(attempt)
                metrics.ALERT_RETRIES.labels(webhook.format).inc()
                log.debug("alert %s for %s: %s, retry in %.2fs", alert.event_id, route.label, why, delay)
                await asyncio.sleep(min(delay, self._config.backoff_max_s))
            except _PermanentError as permanent:
                why = permanent.why
                break
            else:
                metrics.ALERT_DELIVERIES.labels(webhook.format).inc()
                return
        metrics.ALERT_FAILURES.labels(webhook.format).inc()
        log.warning(
            "alert %s (%s, run %s) not delivered to %s after %d attempt(s): %s",
            alert.event_id,
            alert.decision,
            alert.run_id,
            route.label,
            attempt,
            why,
        )

    async def _attempt(self, route: _Route, body: bytes) -> None:
        """One POST. Returns on 2xx; raises _TransientError (transient) or _PermanentError (permanent)."""
        assert self._client is not None
        import httpx  # noqa: PLC0415 - loaded by start() already: a dictionary lookup

        try:
            response = await self._client.post(
                route.webhook.url, content=body, headers=route.body_headers, timeout=route.webhook.timeout_s
            )
        except httpx.TimeoutException as exc:
            raise _TransientError(f"timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            # Only the exception type: httpx messages can embed the URL.
            raise _TransientError(f"connection error ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            # E.g. an undecodable answer body: may be the receiver's passing fault, so worth another attempt.
            raise _TransientError(f"HTTP error ({type(exc).__name__})") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500:
            delay = retry_after_s(response.headers.get("Retry-After")) if status in (429, 503) else None
            raise _TransientError(f"HTTP {status}", delay)
        raise _PermanentError(f"HTTP {status} (not retried)")
