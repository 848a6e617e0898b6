"""A real collector (SQLite or PostgreSQL store) serving the web console on a free port, with signed runs in its
store, for the console tests; and a signed-in HTTP client of it."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.collector.app import Collector
from gateway.config import CollectorConfig, OperatorConfig
from gateway.config.collector import CollectorTlsConfig, ConsoleConfig
from gateway.config.sidecar import OperatorTokenConfig
from gateway.console.server import ConsoleServer
from gateway.journal.entry import EventKind
from gateway.signing import Ed25519Signer, write_secret_file
from tests.fleet_helpers import ORIGIN, SidecarJournal, journal_key
from tests.test_collector_store import checkpoint

WITNESS = Ed25519Signer("console.test/witness", bytes([5]) * 32)
TOKENS = {
    "alice": "alice-token-approver",
    "audrey": "audrey-token-auditor",
    "root": "root-token-admin",
    "bob": "bob-token-approver",
}
ROLES = {"alice": ("approver",), "audrey": ("auditor",), "root": ("admin",), "bob": ("approver",)}
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
LOGIN_CSRF_RE = re.compile(r'name="login_csrf" value="([^"]+)"')


@dataclass
class Env:
    """The running collector, its console and the sidecar journal feeding it."""

    collector: Collector
    console: ConsoleServer
    journal: SidecarJournal
    ingested: int = 0

    @property
    def url(self) -> str:
        return self.console.url

    async def feed(self) -> None:
        """Ingests the journal's new rows (verified and cosigned) and mirrors its approvals into the fleet."""
        store, fleet = self.collector.store, self.collector.fleet
        assert store is not None and fleet is not None
        rows = self.journal.rows
        await store.ingest(ORIGIN, rows[self.ingested :], checkpoint(rows, self.journal.key), WITNESS, int(time.time()))
        await fleet.record_entries(ORIGIN, rows[self.ingested :])
        self.ingested = len(rows)


def operator_config() -> OperatorConfig:
    return OperatorConfig(
        tokens=tuple(
            OperatorTokenConfig(name, ROLES[name], hashlib.sha256(token.encode()).hexdigest())
            for name, token in TOKENS.items()
        )
    )


@asynccontextmanager
async def console_collector(
    tmp_path: Path, *, store: str = "", console: ConsoleConfig | None = None, tls: CollectorTlsConfig | None = None
) -> AsyncIterator[Env]:
    """A collector with the console on 127.0.0.1 (over HTTPS with ``tls``)."""
    key = tmp_path / "witness.key"
    if not key.exists():
        write_secret_file(key, WITNESS.encode_private() + "\n")
    listen = ("127.0.0.1:0",)
    cfg = CollectorConfig(
        listen=(f"unix://{tmp_path / 'collector.sock'}",),
        store=store or f"sqlite:///{tmp_path / 'collector.db'}",
        witness_key=key,
        operator=operator_config(),
        console_listen=listen,
        console=console or ConsoleConfig(),
        tls=tls,
    )
    server = ConsoleServer()
    collector = Collector(cfg, surfaces=[server])
    await collector.start()
    try:
        assert collector.store is not None
        await collector.store.register_origin(ORIGIN, [journal_key(ORIGIN).verifier])
        yield Env(collector, server, SidecarJournal(journal_key(ORIGIN)))
    finally:
        await collector.aclose()


async def sign_in(env: Env, who: str) -> httpx.AsyncClient:
    """A client signed in with ``who``'s operator token through the /login form."""
    client = httpx.AsyncClient(base_url=env.url, follow_redirects=False, timeout=30)
    page = await client.get("/login")
    nonce = LOGIN_CSRF_RE.search(page.text)
    assert nonce is not None
    answer = await client.post("/login", data={"token": TOKENS[who], "login_csrf": nonce.group(1)})
    assert answer.status_code == 303, answer.text
    return client


async def csrf_of(client: httpx.AsyncClient, path: str = "/approvals") -> str:
    page = await client.get(path)
    found = CSRF_RE.search(page.text)
    assert found is not None, page.text[:400]
    return found.group(1)


def write_run(
    journal: SidecarJournal,
    run_id: str,
    steps: int,
    *,
    tenant: str = "t_42",
    action: str = "crm.lookup",
    start_ns: int | None = None,
) -> None:
    """``steps`` allowed steps of a run, each with its succeeded result."""
    nanos = start_ns or time.time_ns()
    for step in range(1, steps + 1):
        event_id = f"evt_{uuid.uuid4().hex}"
        base = {
            "run_id": run_id,
            "step_id": step,
            "tenant_id": tenant,
            "agent_id": "support-bot",
            "actor": {"type": "user", "id": "u_1"},
            "action": action,
        }
        journal.append(
            EventKind.PRE_EXEC,
            {
                **base,
                "event_id": event_id,
                "decision": "allow",
                "reason": "allowed",
                "args": {"n": step},
                "redacted_paths": [],
                "approval_id": "",
                "resumed_approval_id": "",
                "policy_version": "sha256:abc",
                "trace_id": f"{step:032x}",
            },
            nanos=nanos + step * 2_000_000,
        )
        journal.append(
            EventKind.POST_EXEC,
            {**base, "pre_event_id": event_id, "status": "succeeded", "duration_ns": 1_000_000 * step},
            nanos=nanos + step * 2_000_000 + 1_000_000,
        )


def open_refund(
    journal: SidecarJournal,
    approval_id: str,
    *,
    amount: Any = 250,
    action: str = "refund.create",
    extra: dict[str, Any] | None = None,
    required: int = 1,
) -> None:
    """The seed's refund asking for an approval, the customer's email redacted by a name rule."""
    journal.append(
        EventKind.PRE_EXEC,
        {
            "run_id": f"run-{approval_id}",
            "step_id": 1,
            "tenant_id": "t_42",
            "agent_id": "billing-bot",
            "actor": {"type": "user", "id": "agent-runner"},
            "action": action,
            "args": {"order_id": "o_1", "amount": amount, "customer": {}, **(extra or {})},
            "redacted_paths": ["args.customer.email"],
            "decision": "approval_required",
            "reason": "approval_required",
            "policy_rule": "big-refunds",
            "policy_version": "sha256:abc",
            "approvers": [],
            "approvals_required": required,
            "approval_expires_in_s": 600,
            "approval_id": approval_id,
            "resumed_approval_id": "",
        },
    )
