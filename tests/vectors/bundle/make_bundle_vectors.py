"""Regenerates the evidence-bundle test vectors in this directory.

    .venv/bin/python tests/vectors/bundle/make_bundle_vectors.py

Builds a bundle from first principles (entries encoded and signed here, the RFC 6962 root and audit paths
computed by the naive recursive definition below, a checkpoint note signed and cosigned with fixed keys), not
with ``gateway.journal.bundle.build_bundle``, so the vectors test the bundle verifier against the documented
format (docs/bundle.md) rather than against the code that writes bundles. Writes ``valid.aab``, one tampered copy
per attack, ``signing.pub``, ``witness.pub`` and ``expected.json`` (for each file, a phrase each expected finding
contains), stated by hand from the attack.

Deterministic: fixed key seeds, timestamps and ids. The keys are public test material: never use them for real.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from gateway.canonical import canonical_json
from gateway.journal.entry import ZERO_HASH, EventKind, encode_entry, leaf_hash, signature_payload
from gateway.journal.note import Checkpoint, cosign, sign_checkpoint
from gateway.signing import Ed25519Signer

HERE = Path(__file__).resolve().parent
ORIGIN = "bundle-vectors.agentaudit.example"
SIGNER = Ed25519Signer(ORIGIN, hashlib.sha256(b"agentaudit bundle vector origin key: public").digest())
WITNESS = Ed25519Signer("witness.agentaudit.example", hashlib.sha256(b"agentaudit bundle vector witness").digest())
BASE = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z
RUN = "run-b1"
VERSION = "sha256:" + "ab" * 32


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, by its definition."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n]), by its definition."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def bodies() -> list[tuple[EventKind, dict[str, Any]]]:
    started = {"kind": "journal_started", "event_id": "ev-b0", "origin": ORIGIN, "policy_version": VERSION}
    other = {"kind": "heartbeat", "event_id": "ev-b1", "origin": ORIGIN}
    common = {"run_id": RUN, "tenant_id": "acme", "agent_id": "billing-agent", "policy_version": VERSION}
    pre = {"kind": "pre_exec", "event_id": "ev-b2", "step_id": 1, "decision": "allow", "action": "crm.lookup", **common}
    post = {"kind": "post_exec", "event_id": "ev-b3", "pre_event_id": "ev-b2", "status": "succeeded", **common}
    late = {
        "kind": "pre_exec",
        "event_id": "ev-b5",
        "step_id": 2,
        "decision": "stop",
        "action": "refund.create",
        **common,
    }
    return [
        (EventKind.JOURNAL_STARTED, started),
        (EventKind.HEARTBEAT, other),
        (EventKind.PRE_EXEC, pre),
        (EventKind.POST_EXEC, post),
        (EventKind.HEARTBEAT, {**other, "event_id": "ev-b4"}),
        (EventKind.PRE_EXEC, late),  # after the checkpoint: in the bundle, not witnessed
    ]


def valid() -> dict[str, Any]:
    entries, leaves, prev = [], [], ZERO_HASH
    for seq, (kind, body) in enumerate(bodies()):
        raw = encode_entry(kind, seq, BASE + seq, prev, SIGNER.key_id, canonical_json(body))
        sig = SIGNER.sign(signature_payload(ORIGIN, raw))
        prev = leaf_hash(raw, sig)
        leaves.append(prev)
        entries.append((seq, raw, sig, body))
    size = 5  # the witness cosigned the first five entries
    note = sign_checkpoint(Checkpoint(ORIGIN, size, mth(leaves[:size])), SIGNER)
    note = note.with_signature(cosign(note, WITNESS, 1_735_689_700))
    listed = []
    for seq, raw, sig, body in entries:
        role = "run" if body.get("run_id") == RUN else "policy" if body["kind"] == "journal_started" else ""
        if not role:
            continue  # the heartbeats are in the journal (and the tree), not in the bundle
        proof = [h.hex() for h in path(seq, leaves[:size])] if seq < size else None
        listed.append(
            {
                "seq": seq,
                "role": role,
                "entry": base64.b64encode(raw).decode(),
                "signature": base64.b64encode(sig).decode(),
                "inclusion_proof": proof,
            }
        )
    return {
        "format": "agentaudit-bundle/v1",
        "origin": ORIGIN,
        "run_id": RUN,
        "checkpoint": note.encode(),
        "entries": listed,
    }


def tampered(valid_bundle: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    out: dict[str, tuple[dict[str, Any], list[str]]] = {}

    def variant(name: str, findings: list[str]) -> dict[str, Any]:
        data = copy.deepcopy(valid_bundle)
        out[name] = (data, findings)
        return data

    # One byte of seq 2 changed: its signature fails, and so its leaf hash changes: its proof no longer leads to the
    # root and seq 3 no longer chains to it.
    data = variant(
        "edited_body.aab",
        [
            "seq 2: the signature does not verify",
            "seq 2: the inclusion proof does not lead to the witnessed root",
            "seq 3: prev_leaf_hash does not chain to seq 2",
        ],
    )
    raw = bytearray(base64.b64decode(data["entries"][1]["entry"]))
    raw[raw.index(b"crm.lookup")] = ord("x")
    data["entries"][1]["entry"] = base64.b64encode(bytes(raw)).decode()
    data = variant("bad_proof.aab", ["seq 3: the inclusion proof does not lead to the witnessed root"])
    data["entries"][2]["inclusion_proof"][0] = "00" * 32
    data = variant("no_policy_entry.aab", ["decided the run but no entry in the bundle names it"])
    data["entries"] = [e for e in data["entries"] if e["role"] != "policy"]
    data = variant("uncosigned.aab", ["no given witness key cosigned the checkpoint"])
    data["checkpoint"] = data["checkpoint"].rsplit("\u2014 witness.agentaudit.example", 1)[0]
    data = variant("dropped_link.aab", ["seq 3: prev_leaf_hash does not chain to seq 2"])
    # seq 3 replaced by a validly signed entry that does not chain (a key holder rewriting history): the signature
    # holds, the chain and the proof do not.
    kind, body = bodies()[3]
    raw2 = encode_entry(kind, 3, BASE + 3, ZERO_HASH, SIGNER.key_id, canonical_json(body))
    data["entries"][2]["entry"] = base64.b64encode(raw2).decode()
    data["entries"][2]["signature"] = base64.b64encode(SIGNER.sign(signature_payload(ORIGIN, raw2))).decode()
    out["dropped_link.aab"][1].append("seq 3: the inclusion proof does not lead to the witnessed root")
    return out


def main() -> None:
    bundle = valid()
    expected: dict[str, Any] = {"valid.aab": {"findings": [], "entries": 4, "witnessed": 3, "tree_size": 5}}
    (HERE / "valid.aab").write_bytes(canonical_json(bundle) + b"\n")
    for name, (data, findings) in tampered(bundle).items():
        (HERE / name).write_bytes(canonical_json(data) + b"\n")
        expected[name] = {"findings": findings}
    (HERE / "signing.pub").write_text(SIGNER.verifier.encode() + "\n")
    (HERE / "witness.pub").write_text(WITNESS.verifier.encode() + "\n")
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    main()
