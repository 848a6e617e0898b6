"""Alerts against a real HTTP receiver on loopback: payloads, filters, retries, failures, drops, shutdown, config."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from agentaudit.v1 import types_pb2
from gateway.alerts import (
    Alert,
    AlertDispatcher,
    cloudevents_payload,
    retry_after_s,
    slack_payload,
    webhook_matches,
)
from gateway.config import AlertsConfig, WebhookConfig, parse_alerts_config
from gateway.errors import ConfigError
from tests.conftest import ROOT, free_port, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.helpers import eventually, eventually_async
from tests.operator_helpers import prepare_dir

DEADLINE_S = 15.0

ALERT = Alert(
    decision="approval_required",
    reason="approval_required",
    policy_layer="approval",
    policy_rule="refunds_over_100",
    policy_version="3f2a9c0d1e2b4a5c",
    tenant_id="t_42",
    run_id="run_981",
    step_id=7,
    agent_id="Support-Agent",
    action="refund.create",
    event_id="evt_01",
    approval_id="apr_123",
    timestamp="2026-11-27T09:18:15.123456789Z",
    origin="agentaudit-dev/host-1",
)
STOP = replace(ALERT, decision="stop", reason="kill_switch_engaged", policy_layer="kill_switch", approval_id="")


# ---------------------------------------------------------------------------------------------------------------
# A real webhook receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """A loopback HTTP server that records POSTs and fails on purpose: ``fail_next`` answers, then ``fail_always``.

    A failure is an HTTP status (503, 500, 429, 400, ...), ``"close"`` (drop the connection without answering) or
    ``"hang"`` (answer only after the client has given up).
    """

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    attempts: int = 0
    fail_next: list[int | str] = field(default_factory=list)
    fail_always: int | str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self) -> int | str | None:
        with self.lock:
            self.attempts += 1
            if self.fail_next:
                return self.fail_next.pop(0)
            return self.fail_always

    def delivered(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out separately; Nagle would add ~40 ms each

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            failure = state.plan()
            if failure == "close":
                self.close_connection = True
                self.connection.close()
                return
            if failure == "hang":
                state.release.wait(DEADLINE_S)  # the client times out first
                self.close_connection = True
                return
            status = 200 if failure is None else int(failure)
            if status == 200:
                with state.lock:
                    state.requests.append(Received(self.path, dict(self.headers.items()), json.loads(body)))
            self.send_response(status)
            for name, value in state.extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE_S)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def counter(name: str, fmt: str) -> float:
    return REGISTRY.get_sample_value(name, {"webhook_format": fmt}) or 0.0


def config(*webhooks: WebhookConfig, **overrides: Any) -> AlertsConfig:
    values: dict[str, Any] = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, **overrides}
    return AlertsConfig(webhooks=webhooks, **values)


def hook(url: str, fmt: str = "cloudevents", **overrides: Any) -> WebhookConfig:
    return WebhookConfig(url=url, format=fmt, **{"timeout_s": 2.0, **overrides})


def run(cfg: AlertsConfig, scenario: Callable[[AlertDispatcher], Awaitable[None]]) -> None:
    async def main() -> None:
        async with AlertDispatcher(cfg) as dispatcher:
            await scenario(dispatcher)

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------------
# Delivery


def test_cloudevent_is_delivered_in_structured_mode(receiver: Receiver) -> None:
    async def scenario(d: AlertDispatcher) -> None:
        d.notify(ALERT)
        await eventually_async(lambda: len(receiver.delivered()) == 1, message="the event")

    run(config(hook(receiver.url + "/events")), scenario)
    got = receiver.delivered()[0]
    assert got.path == "/events"
    assert got.headers["Content-Type"] == "application/cloudevents+json"
    assert got.body["specversion"] == "1.0"
    assert got.body["id"] == "evt_01"
    assert got.body["source"] == "agentaudit://agentaudit-dev/host-1"
    assert got.body["type"] == "dev.agentaudit.decision.approval_required"
    assert got.body["subject"] == "run_981"
    assert got.body["time"] == ALERT.timestamp
    assert got.body["datacontenttype"] == "application/json"
    assert got.body["data"]["tenant_id"] == "t_42"
    assert got.body["data"]["approval_id"] == "apr_123"
    assert got.body["data"]["step_id"] == 7


def test_slack_message_is_delivered_with_the_approve_command(receiver: Receiver) -> None:
    async def scenario(d: AlertDispatcher) -> None:
        d.notify(ALERT)
        await eventually_async(lambda: len(receiver.delivered()) == 1, message="the message")

    run(config(hook(receiver.url + "/services/T0/B0/x", "slack")), scenario)
    got = receiver.delivered()[0]
    assert got.headers["Content-Type"] == "application/json"
    assert got.body["text"].startswith(
        "Support-Agent decision=approval_required, reason=approval_required, tenant=t_42, run_id=run_981, "
        "action=refund.create, event=evt_01"
    )
    assert "agentaudit approve apr_123" in got.body["text"]
    assert got.body["blocks"][0]["text"]["text"] == got.body["text"]


def test_configured_headers_are_sent(receiver: Receiver) -> None:
    async def scenario(d: AlertDispatcher) -> None:
        d.notify(STOP)
        await eventually_async(lambda: len(receiver.delivered()) == 1, message="the event")

    run(config(hook(receiver.url, headers=(("Authorization", "Bearer s3cret"),))), scenario)
    assert receiver.delivered()[0].headers["Authorization"] == "Bearer s3cret"
    assert receiver.delivered()[0].headers["User-Agent"].startswith("agentaudit/")


def test_each_webhook_gets_only_the_alerts_its_filters_match(receiver: Receiver) -> None:
    hooks = (
        hook(receiver.url + "/t42", tenants=("t_42",)),
        hook(receiver.url + "/stops", decisions=("stop",)),
        hook(receiver.url + "/approvals", "slack", reasons=("approval_*",), layers=("approval",)),
    )
    other_tenant = replace(STOP, tenant_id="t_7", event_id="evt_02")

    async def scenario(d: AlertDispatcher) -> None:
        d.notify(ALERT)
        d.notify(other_tenant)
        d.notify(STOP)

    run(config(*hooks), scenario)  # aclose (leaving the context) delivers everything queued

    # In notify order: one worker per webhook keeps a receiver's alerts ordered.
    assert [r.body["data"]["reason"] for r in receiver.delivered("/t42")] == [
        "approval_required",
        "kill_switch_engaged",
    ]
    assert [r.body["data"]["tenant_id"] for r in receiver.delivered("/stops")] == ["t_7", "t_42"]
    assert len(receiver.delivered("/approvals")) == 1


@pytest.mark.parametrize(
    ("webhook", "alert", "matches"),
    [
        pytest.param(WebhookConfig("http://x", "slack"), ALERT, True, id="defaults-match-approval"),
        pytest.param(WebhookConfig("http://x", "slack"), STOP, True, id="defaults-match-stop"),
        pytest.param(WebhookConfig("http://x", "slack", decisions=("stop",)), ALERT, False, id="decision-excluded"),
        pytest.param(
            WebhookConfig("http://x", "slack"), replace(STOP, decision="allow"), False, id="allow-never-matches"
        ),
        pytest.param(WebhookConfig("http://x", "slack", reasons=("rate_limited_*",)), STOP, False, id="reason-glob-no"),
        pytest.param(
            WebhookConfig("http://x", "slack", reasons=("rate_limited_*", "kill_*")), STOP, True, id="reason-glob-yes"
        ),
        pytest.param(WebhookConfig("http://x", "slack", layers=("kill_switch",)), STOP, True, id="layer-yes"),
        pytest.param(WebhookConfig("http://x", "slack", layers=("access",)), STOP, False, id="layer-no"),
        pytest.param(WebhookConfig("http://x", "slack", tenants=("t_4?",)), STOP, True, id="tenant-glob-yes"),
        pytest.param(WebhookConfig("http://x", "slack", tenants=("T_42",)), STOP, False, id="tenant-case-sensitive"),
    ],
)
def test_webhook_filters(webhook: WebhookConfig, alert: Alert, matches: bool) -> None:
    assert webhook_matches(webhook, alert) is matches


# ---------------------------------------------------------------------------------------------------------------
# Failures, retries, recovery


@pytest.mark.parametrize(
    ("failures", "timeout_s"),
    [
        pytest.param([503, 503, 503], 5.0, id="503-then-recovers"),
        pytest.param([500, 502], 5.0, id="5xx-then-recovers"),
        pytest.param(["close", "close"], 5.0, id="connection-dropped-then-recovers"),
        pytest.param(["hang"], 0.5, id="timeout-then-recovers"),
        pytest.param([429], 5.0, id="429-then-recovers"),
    ],
)
def test_receiver_that_fails_then_recovers_gets_the_alert(
    receiver: Receiver, failures: list[int | str], timeout_s: float
) -> None:
    receiver.fail_next = list(failures)
    before = counter("agentaudit_alert_deliveries_total", "cloudevents")
    retries_before = counter("agentaudit_alert_retries_total", "cloudevents")

    async def scenario(d: AlertDispatcher) -> None:
        d.notify(ALERT)
        await eventually_async(lambda: len(receiver.delivered()) == 1, message="delivery after recovery")

    run(config(hook(receiver.url, timeout_s=timeout_s)), scenario)
    assert receiver.attempts == len(failures) + 1
    assert counter("agentaudit_alert_deliveries_total", "cloudevents") == before + 1
    assert counter("agentaudit_alert_retries_total", "cloudevents") == retries_before + len(failures)


def test_retry_after_is_honoured_but_capped_at_backoff_max(receiver: Receiver) -> None:
    # Ignored, the retry would come after the 1 ms backoff; honoured, after an hour, but capped at backoff_max_s
    # (0.5 s), so the delivery comes within the deadline and no sooner than the cap.
    receiver.fail_next = [429]
    receiver.extra_headers = {"Retry-After": "3600"}
    backoff_max_s = 0.5

    async def scenario(d: AlertDispatcher) -> None:
        started = time.monotonic()
        d.notify(ALERT)
        await eventually_async(lambda: len(receiver.delivered()) == 1, message="delivery after Retry-After")
        # A little under the cap: the event loop may wake a clock tick early.
        assert time.monotonic() - started >= backoff_max_s * 0.9, "the retry did not wait for Retry-After"

    run(config(hook(receiver.url), backoff_initial_s=0.001, backoff_max_s=backoff_max_s), scenario)


def test_receiver_that_always_fails_exhausts_max_attempts_and_counts_a_failure(receiver: Receiver) -> None:
    receiver.fail_always = 500
    before = counter("agentaudit_alert_failures_total", "slack")

    async def scenario(d: AlertDispatcher) -> None:
        d.notify(ALERT)
        await eventually_async(
            lambda: counter("agentaudit_alert_failures_total", "slack") == before + 1, message="failure"
        )

    run(config(hook(receiver.url, "slack", max_attempts=3)), scenario)
    assert receiver.attempts == 3
    assert receiver.delivered() == []


def test_client_error_is_not_retried(receiver: Receiver) -> None:
    receiver.fail_always = 400
    before = counter("agentaudit_alert_failures_total", "cloudevents")

    async def scenario(d: AlertDispatcher) -> None:
        d.notify(ALERT)
        await eventually_async(
            lambda: counter("agentaudit_alert_failures_total", "cloudevents") == before + 1, message="failure"
        )

    run(config(hook(receiver.url, max_attempts=5)), scenario)
    assert receiver.attempts == 1


def test_unreachable_receiver_counts_a_failure() -> None:
    before = counter("agentaudit_alert_failures_total", "cloudevents")

    async def scenario(d: AlertDispatcher) -> None:
        d.notify(ALERT)
        await eventually_async(
            lambda: counter("agentaudit_alert_failures_total", "cloudevents") == before + 1, message="failure"
        )

    run(config(hook(f"http://127.0.0.1:{free_port()}/", max_attempts=2)), scenario)


def test_failure_log_names_the_webhook_without_secrets(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.fail_always = 500
    caplog.set_level(logging.DEBUG)
    url = receiver.url + "/services/T0/B0/PATHSECRET?token=QUERYSECRET"
    webhook = hook(url, "slack", max_attempts=2, headers=(("Authorization", "Bearer HEADERSECRET"),))
    before = counter("agentaudit_alert_failures_total", "slack")

    async def scenario(d: AlertDispatcher) -> None:
        d.notify(ALERT)
        await eventually_async(
            lambda: counter("agentaudit_alert_failures_total", "slack") == before + 1, message="failure"
        )

    run(config(webhook), scenario)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("webhooks[0]" in m and "not delivered" in m for m in warnings)
    for secret in ("PATHSECRET", "QUERYSECRET", "HEADERSECRET"):
        assert secret not in caplog.text
        assert secret not in repr(webhook)


# ---------------------------------------------------------------------------------------------------------------
# Decisions are never affected: notify is synchronous, never raises, and a full queue drops and counts


def test_notify_is_a_plain_function_that_returns_none_even_when_receiver_is_down() -> None:
    assert not inspect.iscoroutinefunction(AlertDispatcher.notify)

    async def scenario(d: AlertDispatcher) -> None:
        for _ in range(100):
            assert d.notify(ALERT) is None

    run(config(hook(f"http://127.0.0.1:{free_port()}/", max_attempts=1), queue_size=10), scenario)


def test_notify_never_raises_on_a_malformed_alert() -> None:
    broken = replace(ALERT, tenant_id=None)  # type: ignore[arg-type]

    async def scenario(d: AlertDispatcher) -> None:
        d.notify(broken)

    run(config(hook("http://127.0.0.1:9/", tenants=("t_*",))), scenario)


def test_full_queue_drops_and_counts_the_overflow_then_delivers_the_rest(receiver: Receiver) -> None:
    before = counter("agentaudit_alerts_dropped_total", "cloudevents")

    async def main() -> None:
        dispatcher = AlertDispatcher(config(hook(receiver.url), queue_size=100))
        # Not started yet: nothing consumes, so the queue fills after exactly queue_size alerts.
        for i in range(10_000):
            dispatcher.notify(replace(ALERT, event_id=f"evt_{i}"))
        assert counter("agentaudit_alerts_dropped_total", "cloudevents") == before + 9_900
        await dispatcher.start()
        try:
            await eventually_async(lambda: len(receiver.delivered()) == 100, message="the queued alerts")
        finally:
            await dispatcher.aclose()

    asyncio.run(main())
    assert [r.body["id"] for r in receiver.delivered()] == [f"evt_{i}" for i in range(100)]
    assert counter("agentaudit_alerts_dropped_total", "cloudevents") == before + 9_900


def test_aclose_delivers_what_is_queued(receiver: Receiver) -> None:
    async def main() -> None:
        dispatcher = AlertDispatcher(config(hook(receiver.url), queue_size=50))
        await dispatcher.start()
        for i in range(50):
            dispatcher.notify(replace(ALERT, event_id=f"evt_{i}"))
        await dispatcher.aclose(timeout_s=DEADLINE_S)

    asyncio.run(main())
    assert len(receiver.delivered()) == 50


def test_aclose_counts_undelivered_alerts_as_dropped_after_its_timeout(receiver: Receiver) -> None:
    receiver.fail_always = 503
    before = counter("agentaudit_alerts_dropped_total", "cloudevents")
    failures_before = counter("agentaudit_alert_failures_total", "cloudevents")

    async def main() -> None:
        dispatcher = AlertDispatcher(config(hook(receiver.url, max_attempts=100)))
        await dispatcher.start()
        for _ in range(3):
            dispatcher.notify(ALERT)
        await eventually_async(lambda: receiver.attempts >= 1, message="a first attempt")
        await dispatcher.aclose(timeout_s=0.05)
        dispatcher.notify(ALERT)  # after close: dropped and counted, never queued

    asyncio.run(main())
    assert counter("agentaudit_alerts_dropped_total", "cloudevents") == before + 4
    assert counter("agentaudit_alert_failures_total", "cloudevents") == failures_before


def test_dispatcher_without_webhooks_starts_nothing() -> None:
    async def main() -> None:
        async with AlertDispatcher(AlertsConfig()) as dispatcher:
            dispatcher.notify(ALERT)
            assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------------
# Payloads


def test_slack_text_escapes_agent_supplied_markup() -> None:
    text = slack_payload(replace(STOP, agent_id="<!channel> & co"), "x")["text"]
    assert text.startswith("&lt;!channel&gt; &amp; co decision=stop, reason=kill_switch_engaged")
    assert "<" not in text


def test_slack_text_without_agent_or_approval() -> None:
    text = slack_payload(replace(STOP, agent_id=""), "agentaudit approve {approval_id}")["text"]
    assert text == (
        "agent decision=stop, reason=kill_switch_engaged, tenant=t_42, run_id=run_981, action=refund.create, "
        "event=evt_01"
    )


def test_approve_command_template_is_substituted_not_formatted() -> None:
    text = slack_payload(ALERT, "https://console.example/approvals/{approval_id} {approval_id.__class__}")["text"]
    assert "https://console.example/approvals/apr_123 {approval_id.__class__}" in text


def test_cloudevent_type_follows_the_decision_and_never_carries_args() -> None:
    event = cloudevents_payload(STOP)
    assert event["type"] == "dev.agentaudit.decision.stop"
    assert set(event["data"]) == set(Alert.__dataclass_fields__)
    assert "args" not in event["data"]


def test_cloudevent_for_an_unrecorded_stop_still_has_an_id() -> None:
    event = cloudevents_payload(replace(STOP, event_id="", reason="audit_unavailable"))
    assert event["id"].startswith("unrecorded-")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param("Fri, 27 Nov 2026 09:18:45 GMT", 30.0, id="http-date"),
        pytest.param("Fri, 27 Nov 2026 09:00:00 GMT", 0.0, id="date-in-the-past"),
        pytest.param("soon", None, id="garbage"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 27, 9, 18, 15, tzinfo=UTC)
    assert retry_after_s(header, now) == expected


# ---------------------------------------------------------------------------------------------------------------
# Configuration


def documented_block() -> Any:
    """The first YAML block of docs/alerts.md: the configuration reference must be valid as written."""
    text = (ROOT / "docs" / "alerts.md").read_text()
    start = text.index("```yaml\n") + len("```yaml\n")
    return yaml.safe_load(text[start : text.index("```", start)])


def test_documented_block_is_accepted() -> None:
    cfg = parse_alerts_config(documented_block()["alerts"])
    slack, events = cfg.webhooks
    assert slack.format == "slack"
    assert slack.decisions == ("approval_required",)
    assert slack.reasons == ("*",)
    assert events.layers == ("kill_switch", "limits", "approval")
    assert events.headers == (("Authorization", "Bearer example-token"),)
    assert events.timeout_s == 5.0
    assert cfg.backoff_max_s == 30.0


def test_absent_section_means_no_webhooks() -> None:
    assert parse_alerts_config(None) == AlertsConfig()
    assert parse_alerts_config({}) == AlertsConfig()


WEBHOOK = "webhooks:\n  - url: http://127.0.0.1:1/x\n    format: slack\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[1]", "alerts: expected a mapping", id="not-a-mapping"),
        pytest.param("colour: red", "alerts: unknown key(s) colour", id="unknown-key"),
        pytest.param("webhooks: {}", "alerts.webhooks: expected a list", id="webhooks-not-a-list"),
        pytest.param("webhooks: [1]", "alerts.webhooks[0]: expected a mapping", id="webhook-not-a-mapping"),
        pytest.param("webhooks: [{format: slack}]", "alerts.webhooks[0].url: required", id="url-missing"),
        pytest.param("webhooks: [{url: 'http://h'}]", "alerts.webhooks[0].format: required", id="format-missing"),
        pytest.param(
            "webhooks: [{url: 'ftp://h/x', format: slack}]",
            "alerts.webhooks[0].url: must be an http(s) URL",
            id="url-scheme",
        ),
        pytest.param(
            "webhooks: [{url: 'https://', format: slack}]",
            "alerts.webhooks[0].url: must be an http(s) URL",
            id="no-host",
        ),
        pytest.param(
            "webhooks: [{url: 'http://h:99999', format: slack}]",
            "alerts.webhooks[0].url: must be an http(s) URL",
            id="bad-port",
        ),
        pytest.param(
            'webhooks: [{url: "http://h\\x01/", format: slack}]',
            "alerts.webhooks[0].url: must be an http(s) URL",
            id="control-character",
        ),
        pytest.param("webhooks: [{url: 'http://h', format: xml}]", "alerts.webhooks[0].format", id="bad-format"),
        pytest.param(WEBHOOK + "    colour: red\n", "alerts.webhooks[0]: unknown key(s) colour", id="webhook-unknown"),
        pytest.param(WEBHOOK + "    decisions: [allow]\n", "alerts.webhooks[0].decisions", id="decision-allow"),
        pytest.param(WEBHOOK + "    decisions: stop\n", "alerts.webhooks[0].decisions", id="decisions-not-a-list"),
        pytest.param(WEBHOOK + "    reasons: []\n", "alerts.webhooks[0].reasons: must not be empty", id="no-reasons"),
        pytest.param(WEBHOOK + "    layers: [1]\n", "alerts.webhooks[0].layers", id="layer-not-a-string"),
        pytest.param(WEBHOOK + "    tenants: ['']\n", "alerts.webhooks[0].tenants", id="empty-tenant"),
        pytest.param(WEBHOOK + "    timeout_s: 0\n", "alerts.webhooks[0].timeout_s", id="timeout-zero"),
        pytest.param(WEBHOOK + "    timeout_s: fast\n", "alerts.webhooks[0].timeout_s", id="timeout-not-a-number"),
        pytest.param(WEBHOOK + "    max_attempts: 0\n", "alerts.webhooks[0].max_attempts", id="attempts-zero"),
        pytest.param(WEBHOOK + "    max_attempts: true\n", "alerts.webhooks[0].max_attempts", id="attempts-bool"),
        pytest.param(WEBHOOK + "    headers: [a]\n", "alerts.webhooks[0].headers: expected a mapping", id="headers"),
        pytest.param(WEBHOOK + "    headers: {'a b': x}\n", "alerts.webhooks[0].headers", id="header-name"),
        pytest.param(
            WEBHOOK + '    headers: {X-Token: "a\\nb"}\n', "alerts.webhooks[0].headers.X-Token", id="header-newline"
        ),
        pytest.param(
            WEBHOOK + "    headers: {Content-Type: text/plain}\n",
            "alerts.webhooks[0].headers.Content-Type",
            id="header-reserved",
        ),
        pytest.param("queue_size: 0", "alerts.queue_size", id="queue-size-zero"),
        pytest.param("backoff_initial_s: -1", "alerts.backoff_initial_s", id="backoff-negative"),
        pytest.param(
            "backoff_initial_s: 10\nbackoff_max_s: 1", "alerts.backoff_initial_s: 10.0 exceeds", id="backoff-order"
        ),
        pytest.param("approve_command: 3", "alerts.approve_command", id="approve-not-a-string"),
    ],
)
def test_bad_alerts_config_is_rejected_with_the_key_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_alerts_config(yaml.safe_load(text))
    assert message in str(info.value)


def test_url_is_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_alerts_config({"webhooks": [{"url": "ftp://h/SECRET", "format": "slack"}]})
    assert "SECRET" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Through a real sidecar


def test_sidecar_alerts_on_stops_and_new_approvals_and_a_failing_receiver_never_affects_decisions(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.fail_next = [503, "close"]  # the receiver is down for the first two attempts, then recovers
    alerts = {
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "webhooks": [
            {"url": f"{receiver.url}/slack", "format": "slack"},
            {"url": f"{receiver.url}/ce", "format": "cloudevents", "decisions": ["approval_required"]},
        ],
    }
    prepare_dir(tmp_path / "gw", extra={"alerts": alerts})
    gw = start_gateway(tmp_path / "gw")
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            allowed = gateway.Decide(decide_request(), timeout=10)
            stopped = gateway.Decide(decide_request(tenant_id="t_frozen"), timeout=10)
            approval = gateway.Decide(decide_request(action="refund.create", args={"amount": 250}), timeout=10)
        assert [allowed.decision, stopped.decision, approval.decision] == [
            types_pb2.DECISION_ALLOW,
            types_pb2.DECISION_STOP,
            types_pb2.DECISION_APPROVAL_REQUIRED,
        ]
        eventually(
            lambda: len(receiver.delivered("/slack")) >= 2 and receiver.delivered("/ce"),
            timeout=DEADLINE_S,
            message="alerts delivered",
        )
        texts = sorted(r.body["text"] for r in receiver.delivered("/slack"))
        assert "decision=stop" in texts[1] and "kill_switch_engaged" in texts[1] and "tenant=t_frozen" in texts[1]
        assert approval.approval_id in texts[0], "the approval alert says how to approve"
        [cloudevent] = receiver.delivered("/ce")
        assert cloudevent.body["type"] == "dev.agentaudit.decision.approval_required"
        assert cloudevent.body["data"]["approval_id"] == approval.approval_id
    finally:
        gw.stop()


def test_alerts_link_to_the_console_page_they_are_about() -> None:
    console = "https://console.example"
    approval = slack_payload(ALERT, "x", console)["text"]
    assert approval.endswith("\n<https://console.example/approvals/apr_123|Open in the console>")
    stop = slack_payload(replace(STOP, run_id="run/../x?y#z|<b>"), "x", console)["text"]
    # The run id is one path segment: no query, fragment, Slack link separator or markup can ride along.
    assert stop.endswith("\n<https://console.example/runs/run%2F..%2Fx%3Fy%23z%7C%3Cb%3E|Open in the console>")
    fleet = slack_payload(replace(STOP, run_id="", approval_id=""), "x", console)["text"]
    assert fleet.endswith("<https://console.example/fleet|Open in the console>")
    assert "Open in the console" not in slack_payload(ALERT, "x")["text"]
    assert cloudevents_payload(ALERT, console)["data"]["console_link"] == "https://console.example/approvals/apr_123"
    assert "console_link" not in cloudevents_payload(ALERT)["data"]


def test_console_url_is_checked_and_delivered(receiver: Receiver) -> None:
    with pytest.raises(ConfigError, match=r"alerts.console_url: must be an http\(s\) URL"):
        parse_alerts_config({"console_url": "javascript:alert(1)"}, "alerts")
    cfg = parse_alerts_config(
        {"console_url": "http://127.0.0.1:7421/", "webhooks": [{"url": receiver.url + "/s/T/B/x", "format": "slack"}]},
        "alerts",
    )
    assert cfg.console_url == "http://127.0.0.1:7421"

    async def scenario(d: AlertDispatcher) -> None:
        d.notify(ALERT)
        await eventually_async(lambda: len(receiver.delivered()) == 1, message="the message")

    run(cfg, scenario)
    assert "<http://127.0.0.1:7421/approvals/apr_123|Open in the console>" in receiver.delivered()[0].body["text"]
