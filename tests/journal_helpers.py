"""Helpers to write real journals with the real writer in tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.canonical import canonical_json
from gateway.journal.entry import EventKind
from gateway.journal.schema import indexed_values
from gateway.journal.writer import JournalWriter, Receipt
from gateway.signing import Ed25519Signer

SEED = bytes(range(32))


def fixed_signer(origin: str = "test/origin") -> Ed25519Signer:
    return Ed25519Signer(origin, SEED)


def body(i: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": f"evt_{i:06d}",
        "kind": "pre_exec",
        "run_id": f"run_{i % 3}",
        "step_id": i,
        "tenant_id": "t_42",
        "action": "crm.lookup",
        "decision": "allow",
        "reason": "allowed",
        "timestamp": "2026-11-27T00:00:00.000000000Z",
        **extra,
    }


async def append_bodies(writer: JournalWriter, bodies: list[dict[str, object]]) -> list[Receipt]:
    """Appends all bodies concurrently (so they group-commit) and returns the receipts in order."""
    return await asyncio.gather(
        *(
            writer.append(EventKind.PRE_EXEC, canonical_json(b), indexed_values(b), 1_700_000_000_000_000_000 + i)
            for i, b in enumerate(bodies)
        )
    )


def write_journal(path: Path, n: int, signer: Ed25519Signer | None = None, first: int = 0) -> list[Receipt]:
    """Appends n pre_exec entries (event ids numbered from ``first``), creating the journal if needed."""

    async def run() -> list[Receipt]:
        writer = JournalWriter(path, signer or fixed_signer())
        await writer.start()
        try:
            return await append_bodies(writer, [body(i) for i in range(first, first + n)])
        finally:
            await writer.aclose()

    return asyncio.run(run())
