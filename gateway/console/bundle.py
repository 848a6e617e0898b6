"""A run's evidence bundle (docs/bundle.md) made from the collector's copy of the origin's journal.

The same format as ``agentaudit bundle`` on the sidecar: the run's entries exactly as signed, the newest
checkpoint the collector cosigned for the origin, an RFC 6962 inclusion proof per entry below it (from the leaf
hashes the collector holds), and the entries naming the policy versions that decided the run. ``agentaudit
verify run.aab --public-key K --witness-key W`` checks it offline. When retention pruned the origin's first
entries, proofs cannot be made here: the entries are included without them (their signatures still verify).
"""

from __future__ import annotations

import base64
from typing import Any

from gateway.collector.store import CollectorEventFilter, CollectorStore, SearchHit
from gateway.journal.bundle import FORMAT, ROLE_POLICY, ROLE_RUN
from gateway.journal.entry import leaf_hash
from gateway.journal.merkle import SubtreeHashes
from gateway.journal.note import Checkpoint, NoteError, SignedNote

_POLICY_KINDS = ("policy_changed", "journal_started")


def _size(note: str) -> int:
    try:
        return Checkpoint.parse(SignedNote.parse(note).text).size if note else 0
    except (NoteError, ValueError, AttributeError):
        return 0


async def collector_bundle(store: CollectorStore, origin: str, run_id: str) -> dict[str, Any]:
    """The bundle of ``run_id``'s entries from ``origin``.

    Raises:
        LookupError: the collector holds no entry of the run from that origin.
    """
    hits = await store.search(
        CollectorEventFilter(run_id=run_id, origin=origin), newest_first=False, after=None, limit=100_000
    )
    if not hits:
        raise LookupError(f"no entries of run {run_id!r} from {origin!r}")
    versions = {str(h.body.get("policy_version")) for h in hits if h.body.get("policy_version")}
    policy: dict[str, SearchHit] = {}
    for kind in _POLICY_KINDS:
        for h in await store.search(
            CollectorEventFilter(origin=origin, kind=kind, until_ns=hits[-1].unix_nanos + 1),
            newest_first=True,
            after=None,
            limit=1000,
        ):
            version = str(h.body.get("new_version") or h.body.get("policy_version") or "")
            if version in versions and version not in policy:
                policy[version] = h
    _, note = await store.latest(origin)
    size = _size(note)
    held = await store.entries(origin, 0, size) if size else []
    proofs: SubtreeHashes | None = None
    if held and held[0][0] == 0 and len(held) == size:
        proofs = SubtreeHashes([leaf_hash(bytes(e), bytes(s)) for _, e, s in held])

    def item(hit: SearchHit, role: str) -> dict[str, Any]:
        proof = None
        if proofs is not None and hit.seq < size:
            proof = [h.hex() for h in proofs.inclusion_proof(hit.seq, size)]
        return {
            "seq": hit.seq,
            "role": role,
            "entry": base64.b64encode(hit.entry).decode("ascii"),
            "signature": base64.b64encode(hit.signature).decode("ascii"),
            "inclusion_proof": proof,
        }

    run_seqs = {h.seq for h in hits}
    entries = [item(h, ROLE_RUN) for h in hits]
    entries += [item(h, ROLE_POLICY) for h in policy.values() if h.seq not in run_seqs]
    entries.sort(key=lambda e: int(e["seq"]))
    return {"format": FORMAT, "origin": origin, "run_id": run_id, "checkpoint": note, "entries": entries}
