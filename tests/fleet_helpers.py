"""Signed approval entries as a sidecar journals them, and fleet stores on both engines, for the fleet tests."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.canonical import canonical_json
from gateway.collector.fleet import FleetControl, open_fleet
from gateway.collector.sqlite_store import SqliteCollectorStore
from gateway.collector.store import CollectorStore
from gateway.journal.entry import ZERO_HASH, EventKind, encode_entry, leaf_hash, signature_payload
from gateway.signing import Ed25519Signer

POSTGRES_DSN = os.environ.get("AGENTAUDIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ORIGIN = "fleet.test/sidecar-1"
OTHER = "fleet.test/sidecar-2"
CONTROL = Ed25519Signer("fleet.test/control", bytes([7]) * 32)

Row = tuple[int, bytes, bytes]


def journal_key(origin: str = ORIGIN) -> Ed25519Signer:
    return Ed25519Signer(origin, (origin.encode() * 32)[:32])


@dataclass
class SidecarJournal:
    """Writes signed, chained entries the way the sidecar's writer does (kind byte, body kind, origin binding)."""

    key: Ed25519Signer
    rows: list[Row] = field(default_factory=list)
    prev: bytes = ZERO_HASH

    def append(self, kind: EventKind, fields: dict[str, Any], *, nanos: int | None = None) -> Row:
        seq = len(self.rows)
        body = canonical_json({"event_id": f"evt_{uuid.uuid4().hex}", "kind": kind.label, **fields})
        entry = encode_entry(kind, seq, nanos or time.time_ns(), self.prev, self.key.key_id, body)
        signature = self.key.sign(signature_payload(self.key.name, entry))
        self.prev = leaf_hash(entry, signature)
        row = (seq, entry, signature)
        self.rows.append(row)
        return row

    def open_approval(
        self,
        approval_id: str,
        *,
        actor: str = "agent-runner",
        tenant: str = "t_42",
        agent: str = "billing-bot",
        action: str = "payments.refund",
        rule: str = "big-refunds",
        approvers: tuple[str, ...] = (),
        required: int = 1,
        expires_in_s: int | str = 600,
        nanos: int | None = None,
    ) -> Row:
        return self.append(
            EventKind.PRE_EXEC,
            {
                "run_id": f"run-{approval_id}",
                "step_id": 3,
                "tenant_id": tenant,
                "agent_id": agent,
                "actor": {"type": "user", "id": actor},
                "action": action,
                "args": {"amount": 1200, "card": "[REDACTED]"},
                "redacted_paths": ["args.card"],
                "decision": "approval_required",
                "reason": "approval_required",
                "policy_rule": rule,
                "policy_version": "sha256:abc",
                "approvers": list(approvers),
                "approvals_required": required,
                "approval_expires_in_s": expires_in_s,
                "approval_id": approval_id,
                "resumed_approval_id": "",
            },
            nanos=nanos,
        )

    def resolve(self, kind: EventKind, approval_id: str, by: str, comment: str = "") -> Row:
        return self.append(
            kind,
            {
                "approval_id": approval_id,
                "run_id": f"run-{approval_id}",
                "step_id": 3,
                "tenant_id": "t_42",
                "agent_id": "billing-bot",
                "action": "payments.refund",
                "policy_rule": "big-refunds",
                "actor": {"type": "operator", "id": by},
                "comment": comment,
            },
        )

    def resume(self, approval_id: str) -> Row:
        return self.append(
            EventKind.PRE_EXEC,
            {"decision": "allow", "reason": "approved", "approval_id": "", "resumed_approval_id": approval_id},
        )


@dataclass
class Database:
    """One collector database; :meth:`replica` starts a store and a FleetControl on it (a collector replica)."""

    name: str
    new_store: Callable[[], CollectorStore]

    @asynccontextmanager
    async def replica(self, name: str = "replica-a") -> AsyncIterator[FleetControl]:
        store = self.new_store()
        await store.start()
        fleet = open_fleet(store, CONTROL, replica=name)
        try:
            await store.register_origin(ORIGIN, [journal_key(ORIGIN).verifier])
            await store.register_origin(OTHER, [journal_key(OTHER).verifier])
            await fleet.start()
            yield fleet
        finally:
            await fleet.aclose()
            await store.aclose()


def database(kind: str, tmp_path: Path, postgres_dsn: str) -> Database:
    if kind == "sqlite":
        path = tmp_path / "collector.db"
        return Database("sqlite", lambda: SqliteCollectorStore(path))
    from gateway.collector.postgres_store import PostgresCollectorStore  # noqa: PLC0415

    return Database("postgres", lambda: PostgresCollectorStore(postgres_dsn))


@pytest.fixture(params=["sqlite", "postgres"])
def fleet_db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    dsn = request.getfixturevalue("postgres_database") if request.param == "postgres" else ""
    return database(request.param, tmp_path, dsn)


def run(coro: Any, timeout_s: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))
