"""The collector's fleet alerts (gateway/collector/fleet_alerts.py) delivered to a real loopback webhook receiver.

Rollback evidence goes through a real collector (gRPC server, SQLite and PostgreSQL stores); the silent check reads
the store's cosigned checkpoints; approval-opened is called directly with a FleetApproval-shaped dataclass (the
fleet store registers it in FleetControl.on_approval_opened).
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from agentaudit.v1 import collector_pb2, collector_pb2_grpc
from gateway.collector.app import Collector, open_store
from gateway.collector.fleet_alerts import FleetAlerts, contacts_from
from gateway.config import CollectorConfig, load_collector_config
from gateway.config.alerts import AlertsConfig, WebhookConfig
from gateway.config.collector import FleetAlertsConfig
from gateway.errors import ConfigError
from gateway.signing import write_secret_file
from tests import test_alerts
from tests.helpers import eventually_async
from tests.journal_helpers import write_journal
from tests.test_alerts import Receiver
from tests.test_collector_store import WITNESS, Row, checkpoint, rows_of, signer

ORIGIN = "collector.test/alpha"
receiver = test_alerts.receiver  # the loopback webhook receiver fixture, shared with the sidecar's alert tests


def hooks(url: str, *formats: str) -> AlertsConfig:
    return AlertsConfig(
        webhooks=tuple(WebhookConfig(url=f"{url}/{fmt}", format=fmt, timeout_s=2.0) for fmt in formats),
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'c.db'}"
    else:
        yield request.getfixturevalue("postgres_database")


def collector_config(tmp_path: Path, store: str, alerts: FleetAlertsConfig) -> CollectorConfig:
    key = tmp_path / "witness.key"
    if not key.exists():
        write_secret_file(key, WITNESS.encode_private() + "\n")
        (tmp_path / "alpha.pub").write_text(signer().verifier.encode() + "\n")
    return CollectorConfig(
        listen=("127.0.0.1:0",),
        store=store,
        witness_key=key,
        origins=((ORIGIN, (tmp_path / "alpha.pub",)),),
        alerts=alerts,
    )


async def send(target: str, rows: list[Row], note: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(target) as channel:
        request = collector_pb2.IngestRequest(
            origin=ORIGIN,
            entries=[collector_pb2.JournalEntry(seq=s, entry=e, signature=g) for s, e, g in rows],
            checkpoint=note,
        )
        try:
            await collector_pb2_grpc.CollectorServiceStub(channel).Ingest(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def journals(tmp_path: Path) -> tuple[list[Row], list[Row], list[Row]]:
    """(full journal of 12, its first 6 as a restored backup, its first 4): both copies contradict the full one."""
    key = signer()
    path = tmp_path / "a.db"
    write_journal(path, 4, key)
    shutil.copy(path, tmp_path / "four.db")
    write_journal(path, 2, key, first=4)
    shutil.copy(path, tmp_path / "six.db")
    write_journal(path, 6, key, first=6)
    return rows_of(path), rows_of(tmp_path / "six.db"), rows_of(tmp_path / "four.db")


def test_rollback_evidence_at_ingest_is_alerted_once(tmp_path: Path, receiver: Receiver, store_url: str) -> None:
    full, six, four = journals(tmp_path)
    alerts = FleetAlertsConfig(hooks(receiver.url, "cloudevents", "slack"))

    async def scenario() -> None:
        collector = Collector(collector_config(tmp_path, store_url, alerts))
        await collector.start()
        try:
            target = collector.bound[0]
            assert await send(target, full, checkpoint(full, signer())) == grpc.StatusCode.OK
            # The same restored backup retried three times, and a shorter one: all contradict the same cosigned
            # checkpoint, so they are one piece of evidence and one alert per webhook.
            for rows in (six, six, six, four):
                assert await send(target, rows, checkpoint(rows, signer())) == grpc.StatusCode.FAILED_PRECONDITION
            await eventually_async(lambda: len(receiver.delivered()) >= 2, message="the evidence alert")
            assert collector.store is not None
            assert len(await collector.store.evidence(ORIGIN)) == 2, "the store keeps every contradicting note"
        finally:
            await collector.aclose()  # delivers anything still queued

    asyncio.run(scenario())
    (event,) = [r.body for r in receiver.delivered("/cloudevents")]
    assert event["type"] == "dev.agentaudit.decision.stop"
    assert event["source"] == f"agentaudit://{ORIGIN}"
    assert event["id"].startswith("evidence-")
    assert event["data"] | {"timestamp": ""} == event["data"] | {
        "decision": "stop",
        "reason": "journal_recovery_required",
        "policy_layer": "audit",
        "policy_rule": "rollback",
        "origin": ORIGIN,
        "timestamp": "",
    }
    (slack,) = [r.body for r in receiver.delivered("/slack")]
    assert "reason=journal_recovery_required" in slack["text"] and "rollback" in str(slack["blocks"])


def test_an_honest_refusal_is_not_evidence_and_not_alerted(tmp_path: Path, receiver: Receiver) -> None:
    full, _, _ = journals(tmp_path)
    alerts = FleetAlertsConfig(hooks(receiver.url, "cloudevents"))

    async def scenario() -> None:
        collector = Collector(collector_config(tmp_path, f"sqlite://{tmp_path / 'c.db'}", alerts))
        await collector.start()
        try:
            tampered = [(s, e, bytes(len(g))) if s == 3 else (s, e, g) for s, e, g in full]
            code = await send(collector.bound[0], tampered, checkpoint(full, signer()))
            assert code == grpc.StatusCode.FAILED_PRECONDITION  # bad_signature: refused, but no contradiction
        finally:
            await collector.aclose()

    asyncio.run(scenario())
    assert receiver.delivered() == []


# --- silent sidecars ---------------------------------------------------------------------------------------------


def test_a_sidecar_silent_too_long_is_alerted_once_per_silence(
    tmp_path: Path, receiver: Receiver, store_url: str
) -> None:
    full, _, _ = journals(tmp_path)
    clock = {"ms": 0}
    alerts = FleetAlertsConfig(hooks(receiver.url, "cloudevents"), silent_after_s=300)

    async def scenario() -> None:
        cfg = collector_config(tmp_path, store_url, FleetAlertsConfig())
        store = open_store(cfg.store)
        await store.start()
        await store.register_origin(ORIGIN, [signer().verifier])
        await store.register_origin("collector.test/never", [signer("collector.test/never").verifier])
        fleet = FleetAlerts(
            alerts, store, WITNESS.verifier, [ORIGIN, "collector.test/never"], now_ms=lambda: clock["ms"]
        )
        await fleet.start()
        try:
            await store.ingest(ORIGIN, full[:6], checkpoint(full[:6], signer()), WITNESS, 1_800_000_000)
            contacts = await fleet.last_contacts()
            assert contacts == {ORIGIN: 1_800_000_000_000, "collector.test/never": None}
            clock["ms"] = 1_800_000_000_000 + 299_000
            assert await fleet.check_silent() == []  # 299 s: not yet
            clock["ms"] += 2_000
            assert await fleet.check_silent() == [ORIGIN]
            clock["ms"] += 60_000
            assert await fleet.check_silent() == [], "the same silence is alerted once"
            # It speaks again (a heartbeat batch), then falls silent again: a new silence, a new alert.
            await store.ingest(ORIGIN, full, checkpoint(full, signer()), WITNESS, 1_800_000_400)
            clock["ms"] = 1_800_000_400_000 + 10_000
            assert await fleet.check_silent() == []
            clock["ms"] = 1_800_000_400_000 + 301_000
            assert await fleet.check_silent() == [ORIGIN]
            await eventually_async(lambda: len(receiver.delivered()) == 2, message="two silence alerts")
        finally:
            await fleet.aclose()
            await store.aclose()

    asyncio.run(scenario())
    first, second = (r.body for r in receiver.delivered())
    assert first["data"]["reason"] == second["data"]["reason"] == "sidecar_silent"
    assert first["data"]["policy_layer"] == "fleet" and first["data"]["origin"] == ORIGIN
    assert first["id"] != second["id"]


def test_the_silent_check_runs_by_itself_in_a_running_collector(tmp_path: Path, receiver: Receiver) -> None:
    full, _, _ = journals(tmp_path)
    alerts = FleetAlertsConfig(hooks(receiver.url, "cloudevents"), silent_after_s=1, silent_check_s=0.1)

    async def scenario() -> None:
        collector = Collector(collector_config(tmp_path, f"sqlite://{tmp_path / 'c.db'}", alerts))
        await collector.start()
        try:
            assert await send(collector.bound[0], full, checkpoint(full, signer())) == grpc.StatusCode.OK
            await eventually_async(receiver.delivered, message="a silence alert")
            await asyncio.sleep(0.5)  # five more checks: still the one silence
        finally:
            await collector.aclose()

    asyncio.run(scenario())
    (alert,) = receiver.delivered()
    assert alert.body["data"]["reason"] == "sidecar_silent"


@dataclass(frozen=True)
class OriginStatus:
    """The fields of the contract's OriginStatus that the contact source reads."""

    origin: str
    connected: bool
    last_contact_ms: int | None
    applied_seq: int
    replica: str


def test_control_channel_contact_keeps_a_quiet_forwarder_from_being_silent(tmp_path: Path) -> None:
    full, _, _ = journals(tmp_path)
    now = 1_800_000_000_000 + 600_000  # ten minutes after the last witnessed batch
    statuses = [OriginStatus(ORIGIN, True, now - 5_000, 3, "replica-a"), OriginStatus("other", False, None, 0, "")]

    async def origins() -> list[OriginStatus]:
        return statuses

    async def scenario() -> None:
        store = open_store(f"sqlite://{tmp_path / 'c.db'}")
        await store.start()
        await store.register_origin(ORIGIN, [signer().verifier])
        await store.ingest(ORIGIN, full, checkpoint(full, signer()), WITNESS, 1_800_000_000)
        fleet = FleetAlerts(
            FleetAlertsConfig(silent_after_s=300), store, WITNESS.verifier, [ORIGIN], now_ms=lambda: now
        )
        try:
            assert await fleet.check_silent() == [ORIGIN], "the forwarder alone says silent"
            fleet.add_contacts(contacts_from(origins))
            assert (await fleet.last_contacts())[ORIGIN] == now - 5_000
            statuses[0] = OriginStatus(ORIGIN, True, now - 4_000, 3, "replica-a")
            assert await fleet.check_silent() == [], "the control stream heard from it 4 s ago"
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_a_forged_cosignature_is_no_contact(tmp_path: Path) -> None:
    """An edited origins row (a note cosigned by another key) does not count as the sidecar speaking."""
    full, _, _ = journals(tmp_path)

    async def scenario() -> None:
        store = open_store(f"sqlite://{tmp_path / 'c.db'}")
        await store.start()
        await store.register_origin(ORIGIN, [signer().verifier])
        await store.ingest(ORIGIN, full, checkpoint(full, signer()), signer("collector.test/forger", 7), 1_800_000_000)
        fleet = FleetAlerts(FleetAlertsConfig(), store, WITNESS.verifier, [ORIGIN])
        try:
            assert await fleet.last_contacts() == {ORIGIN: None}
        finally:
            await store.aclose()

    asyncio.run(scenario())


# --- approvals -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    """The fields of the contract's FleetApproval (gateway/collector/fleet.py, built on another branch)."""

    origin: str = ORIGIN
    approval_id: str = "ap_0123456789abcdef"
    state: str = "pending"
    tenant_id: str = "t_42"
    agent_id: str = "support-agent"
    run_id: str = "run_7"
    step_id: int = 3
    actor_id: str = "user_9"
    action: str = "refund.create"
    policy_rule: str = "refunds_need_approval"
    reason: str = "approval_required"
    args: dict[str, Any] = field(default_factory=lambda: {"amount": 250, "card_number": "[REDACTED]", "note": "SEKRIT"})
    redacted_paths: tuple[str, ...] = ("card_number",)
    approvers: tuple[str, ...] = ("role:approver",)
    approvals_required: int = 2
    votes: tuple[Any, ...] = ()
    created_ms: int = 1_800_000_000_123
    expires_ms: int | None = 1_800_003_600_123
    resolved_by: str = ""
    resolved_ms: int | None = None
    comment: str = ""
    policy_version: str = "sha256:abcdef0123456789"
    event_seq: int = 41


def test_an_opened_approval_is_alerted_once_without_its_args(tmp_path: Path, receiver: Receiver) -> None:
    config = hooks(receiver.url, "cloudevents", "slack")
    config = AlertsConfig(
        webhooks=config.webhooks,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        approve_command="agentaudit approve {approval_id} --collector collector.internal:7430",
        console_url="https://console.example",
    )

    async def scenario() -> None:
        store = open_store(f"sqlite://{tmp_path / 'c.db'}")
        await store.start()
        fleet = FleetAlerts(FleetAlertsConfig(config), store, WITNESS.verifier, [])
        await fleet.start()
        try:
            await fleet.approval_opened(Approval())
            await fleet.approval_opened(Approval())  # seen again (a resent report, another surface)
            await fleet.approval_opened(Approval(origin="collector.test/beta"))  # another sidecar's approval
        finally:
            await fleet.aclose()
            await store.aclose()

    asyncio.run(scenario())
    events = [r.body for r in receiver.delivered("/cloudevents")]
    assert [e["data"]["origin"] for e in events] == [ORIGIN, "collector.test/beta"]
    event = events[0]
    assert event["type"] == "dev.agentaudit.decision.approval_required"
    assert event["time"] == "2027-01-15T08:00:00.123000000Z"
    assert event["data"]["console_link"] == "https://console.example/approvals/ap_0123456789abcdef"
    assert {
        k: event["data"][k] for k in ("approval_id", "tenant_id", "run_id", "step_id", "action", "policy_rule")
    } == {
        "approval_id": "ap_0123456789abcdef",
        "tenant_id": "t_42",
        "run_id": "run_7",
        "step_id": 3,
        "action": "refund.create",
        "policy_rule": "refunds_need_approval",
    }
    slack = receiver.delivered("/slack")[0].body
    assert "agentaudit approve ap_0123456789abcdef --collector collector.internal:7430" in slack["text"]
    everything = str([r.body for r in receiver.delivered()])
    assert "SEKRIT" not in everything and "amount" not in everything, "alerts never carry args"


def test_webhook_urls_are_never_logged(tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.fail_always = 500
    secret = "/services/T000/B000/SECRETPATHXYZ"
    config = AlertsConfig(
        webhooks=(WebhookConfig(url=receiver.url + secret, format="slack", timeout_s=2.0, max_attempts=2),),
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
    )
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        store = open_store(f"sqlite://{tmp_path / 'c.db'}")
        await store.start()
        fleet = FleetAlerts(FleetAlertsConfig(config), store, WITNESS.verifier, [])
        await fleet.start()
        try:
            await fleet.approval_opened(Approval())
            await eventually_async(lambda: receiver.attempts >= 2, message="two failed attempts")
        finally:
            await fleet.aclose()
            await store.aclose()

    asyncio.run(scenario())
    assert "not delivered" in caplog.text, "the failure is logged"
    assert "SECRETPATHXYZ" not in caplog.text


# --- configuration ---------------------------------------------------------------------------------------------


def load_alerts(tmp_path: Path, alerts: Any) -> FleetAlertsConfig:
    path = tmp_path / "collector.yaml"
    section = {"store": f"sqlite:///{tmp_path}/c.db", "witness_key": "w.key", "alerts": alerts}
    path.write_text(yaml.safe_dump({"collector": section}))
    return load_collector_config(path).alerts


def test_collector_alerts_take_the_sidecar_webhooks_and_the_fleet_keys(tmp_path: Path) -> None:
    cfg = load_alerts(
        tmp_path,
        {
            "webhooks": [{"url": "https://hooks.slack.com/services/T/B/X", "format": "slack"}],
            "silent_after_s": 600,
            "silent_check_s": 15,
            "approve_command": "https://console.example.com/approvals/{approval_id}",
        },
    )
    assert cfg.silent_after_s == 600 and cfg.silent_check_s == 15
    assert cfg.alerts.webhooks[0].format == "slack"
    assert cfg.alerts.approve_command == "https://console.example.com/approvals/{approval_id}"
    assert load_alerts(tmp_path, None) == FleetAlertsConfig()


@pytest.mark.parametrize(
    ("alerts", "message"),
    [
        pytest.param({"silent_after_s": -1}, "collector.alerts.silent_after_s", id="negative"),
        pytest.param({"silent_after_s": "5m"}, "collector.alerts.silent_after_s", id="not-a-number"),
        pytest.param({"silent_check_s": 0}, "collector.alerts.silent_check_s", id="zero-interval"),
        pytest.param({"colour": "red"}, "also silent_after_s, silent_check_s", id="unknown-key"),
        pytest.param(
            {"webhooks": [{"url": "ftp://x", "format": "slack"}]}, "collector.alerts.webhooks[0].url", id="url"
        ),
        pytest.param(["silent_after_s"], "collector.alerts: expected a mapping", id="not-a-mapping"),
    ],
)
def test_collector_alerts_mistakes_are_refused(tmp_path: Path, alerts: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_alerts(tmp_path, alerts)


def test_the_collector_alerts_block_in_docs_alerts_is_valid_as_written(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "alerts.md").read_text()
    section = text[text.index("## Collector alerts") :]
    block = section[section.index("```yaml\n") + len("```yaml\n") : section.index("```\n", section.index("```yaml"))]
    cfg = load_alerts(tmp_path, yaml.safe_load(block)["collector"]["alerts"])
    assert cfg.silent_after_s == 300 and len(cfg.alerts.webhooks) == 2
