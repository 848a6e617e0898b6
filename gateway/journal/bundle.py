"""Evidence bundles: one run's signed entries with everything needed to check them offline, in one file.

A bundle (``agentaudit bundle RUN_ID -o run.aab``) holds the run's entries exactly as stored (envelope bytes and
signatures), each with an RFC 6962 inclusion proof against the latest checkpoint a witness cosigned, that
cosigned checkpoint note, and the entries that name the policy versions which decided the run (``policy_changed``
and ``journal_started``). ``agentaudit verify run.aab --public-key K --witness-key W`` checks it with nothing else:
no journal, no database, no network. The format is docs/bundle.md; test vectors are in tests/vectors/bundle/.

What a valid bundle proves: each entry was signed by the origin's key, is canonical, belongs to the run, and (for
entries below the checkpoint's size) is in the journal whose head the witness cosigned, so it cannot have been
edited, dropped or reordered there later. What it cannot prove: that it holds *every* entry of the run (its
maker chose which to include); the journal itself (``agentaudit verify journal.db``) or the collector answers that.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.canonical import CanonicalizationError, canonical_json, parse_json
from gateway.errors import MalformedEntryError
from gateway.journal.entry import FORMAT_V1, EventKind, decode_entry, leaf_hash, signature_payload
from gateway.journal.merkle import HASH_SIZE, SubtreeHashes, decode_state, root_from_inclusion_proof
from gateway.journal.note import Checkpoint, NoteError, SignedNote, verify_cosignature, verify_note, witness_key_id
from gateway.journal.schema import RARE_KINDS_WHERE
from gateway.journal.seal import has_seals_table, parse_seal, seal_signed
from gateway.signing import Verifier

FORMAT = "agentaudit-bundle/v1"
ROLE_RUN = "run"
ROLE_POLICY = "policy"
_POLICY_KINDS = (EventKind.POLICY_CHANGED.label, EventKind.JOURNAL_STARTED.label)


class BundleError(Exception):
    """A bundle cannot be made (no such run, unreadable journal) or is not a bundle at all."""


# --- making a bundle ---------------------------------------------------------------------------------------


def build_bundle(journal: Path, run_id: str) -> dict[str, Any]:
    """The bundle of ``run_id`` from a journal file (read-only; safe while the sidecar writes).

    Raises:
        BundleError: the journal cannot be read, holds no entry of the run, or a proof cannot be made.
    """
    try:
        conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BundleError(f"cannot open {journal}: {exc}") from exc
    try:
        with conn:
            return _build(conn, run_id)
    except sqlite3.Error as exc:
        raise BundleError(f"cannot read {journal}: {exc}") from exc
    finally:
        conn.close()


def _build(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    origin_row = conn.execute("SELECT value FROM journal_meta WHERE key = 'origin'").fetchone()
    if origin_row is None:
        raise BundleError("not an agentaudit journal (no origin)")
    rows = conn.execute("SELECT seq, entry, signature FROM journal WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
    if not rows:
        raise BundleError(f"the journal has no entry of run {run_id!r}")
    versions = {_body(raw).get("policy_version") for _, raw, _ in rows} - {None, ""}
    context = _policy_entries(conn, versions, before=rows[-1][0])
    note, size = _latest_cosigned(conn)
    proofs = _Proofs(conn, size)
    # Format v2: entries carry no signature of their own, so each also gets an inclusion proof against the
    # journal's latest seal (signed by the origin key at the last commit), which vouches for the entries the
    # witnessed checkpoint does not cover yet. A v1 journal's bundle stays as it was.
    seal_row = (
        conn.execute("SELECT size, note FROM journal_seals ORDER BY size DESC LIMIT 1").fetchone()
        if has_seals_table(conn)
        else None
    )
    sealed = None if seal_row is None else _Proofs(conn, int(seal_row[0]))
    entries = [_entry(seq, raw, sig, ROLE_RUN, proofs, sealed) for seq, raw, sig in rows]
    entries += [_entry(seq, raw, sig, ROLE_POLICY, proofs, sealed) for seq, raw, sig in context]
    entries.sort(key=lambda e: int(e["seq"]))
    bundle = {"format": FORMAT, "origin": origin_row[0], "run_id": run_id, "checkpoint": note, "entries": entries}
    if seal_row is not None:
        bundle["seal"] = str(seal_row[1])
    return bundle


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(decode_entry(bytes(raw)).body)
    except (MalformedEntryError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _policy_entries(conn: sqlite3.Connection, versions: set[Any], before: int) -> list[tuple[int, bytes, bytes]]:
    """For each policy version, the newest entry at or before ``before`` that names it as the active one."""
    found: dict[str, tuple[int, bytes, bytes]] = {}
    query = (
        f"SELECT seq, entry, signature FROM journal WHERE kind IN (?, ?) AND seq <= ? AND {RARE_KINDS_WHERE} "  # noqa: S608
        "ORDER BY seq DESC"
    )
    for seq, raw, sig in conn.execute(query, (*_POLICY_KINDS, before)):
        body = _body(raw)
        version = str(body.get("new_version") or body.get("policy_version") or "")
        if version in versions and version not in found:
            found[version] = (seq, raw, sig)
        if len(found) == len(versions):
            break
    return list(found.values())


def _latest_cosigned(conn: sqlite3.Connection) -> tuple[str, int]:
    """The newest cosignature receipt's note and tree size ("" and 0 when the journal was never witnessed)."""
    latest = f"SELECT entry FROM journal WHERE kind = 'cosignature' AND {RARE_KINDS_WHERE} ORDER BY seq DESC LIMIT 1"  # noqa: S608
    for (raw,) in conn.execute(latest):
        body = _body(raw)
        if isinstance(body.get("checkpoint"), str) and isinstance(body.get("tree_size"), int):
            return body["checkpoint"], body["tree_size"]
    return "", 0


class _Proofs:
    """Inclusion proofs in the tree of ``size`` leaves, from the stored leaf hashes (and a prune frontier)."""

    def __init__(self, conn: sqlite3.Connection, size: int) -> None:
        self.size = size
        first_row = conn.execute("SELECT min(seq) FROM journal").fetchone()
        first = int(first_row[0] or 0)
        known: dict[tuple[int, int], bytes] = {}
        if first > 0:
            state = conn.execute("SELECT tree_state FROM prune_state").fetchone()
            if state is not None:
                tree = decode_state(bytes(state[0]))
                offset = 0
                for height, digest in tree.state():
                    known[(offset, offset + (1 << height))] = digest
                    offset += 1 << height
        leaves = [
            bytes(r[0])
            for r in conn.execute(
                "SELECT leaf_hash FROM journal WHERE seq >= ? AND seq < ? ORDER BY seq", (first, size)
            )
        ]
        self._hashes = SubtreeHashes(leaves, first, known)

    def proof(self, seq: int) -> list[str] | None:
        if seq >= self.size:
            return None  # not yet witnessed: only its signature can be checked
        try:
            return [h.hex() for h in self._hashes.inclusion_proof(seq, self.size)]
        except LookupError as exc:
            raise BundleError(f"cannot prove entry {seq}: {exc}") from exc


def _entry(
    seq: int, raw: bytes, signature: bytes, role: str, proofs: _Proofs, sealed: _Proofs | None
) -> dict[str, Any]:
    item = {
        "seq": seq,
        "role": role,
        "entry": base64.b64encode(bytes(raw)).decode("ascii"),
        "signature": base64.b64encode(bytes(signature)).decode("ascii"),
        "inclusion_proof": proofs.proof(seq),
    }
    if sealed is not None:
        item["seal_proof"] = sealed.proof(seq)
    return item


def write_bundle(bundle: dict[str, Any], out: Path) -> None:
    """Writes a bundle as canonical JSON (so its own bytes are stable and diffable)."""
    out.write_bytes(canonical_json(bundle) + b"\n")


# --- checking a bundle -------------------------------------------------------------------------------------


@dataclass
class BundleReport:
    """What ``verify_bundle`` found. ``ok`` is False on any finding."""

    origin: str = ""
    run_id: str = ""
    entries: int = 0
    witnessed: int = 0
    tree_size: int = 0
    cosigners: tuple[str, ...] = ()
    policy_versions: tuple[str, ...] = ()
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No tamper evidence or inconsistency was found."""
        return not self.findings


def load_bundle(path: Path) -> dict[str, Any]:
    """Reads a bundle file.

    Raises:
        BundleError: not JSON, or not an agentaudit bundle.
    """
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable bundle: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path} is not an {FORMAT} file")
    return data


def is_bundle(path: Path) -> bool:
    """Whether the file starts like a bundle (JSON) rather than an SQLite journal."""
    try:
        with path.open("rb") as handle:
            return handle.read(1) == b"{"
    except OSError:
        return False


def verify_bundle(
    data: dict[str, Any], verifiers: Sequence[Verifier], witnesses: Sequence[Verifier] = ()
) -> BundleReport:
    """Checks a bundle offline against the origin's public key(s) and, if given, witness keys.

    The procedure (each step reports and goes on; nothing in the bundle is trusted before it is checked):

    1. The bundle names an origin for which a public key was given.
    2. The checkpoint note parses, is for that origin, carries a valid signature by the origin's key, and, when
       witness keys are given, a valid cosignature by at least one of them (forged lines are findings).
    3. Each entry decodes, its seq is the one listed, its key id is the origin key's, its signature verifies over
       the domain-separated payload, its body is canonical RFC 8785 JSON of the header's kind. A format v2
       entry without a signature of its own must instead have an inclusion proof (step 5) that leads to the
       signed checkpoint's root or, through ``seal_proof``, to the root of the bundle's ``seal`` (the journal's
       last commit seal, signed by the origin key).
    4. A run entry names the bundle's run; a policy entry is a ``policy_changed`` or ``journal_started``.
    5. An entry below the checkpoint's size has an inclusion proof that leads to the checkpoint's root; above it,
       the entry is counted as not witnessed.
    6. Entries at consecutive seqs are chained (prev_leaf_hash is the previous leaf hash).
    7. Every policy version that decided a run entry is named by a policy entry in the bundle.
    """
    report = BundleReport(origin=str(data.get("origin", "")), run_id=str(data.get("run_id", "")))
    keys = [v for v in verifiers if v.name == report.origin]
    if not keys:  # 1.
        report.findings.append(f"no public key given for origin {report.origin!r}")
        return report
    root = _check_checkpoint(data.get("checkpoint", ""), report, keys, witnesses)
    seal = _check_seal(data.get("seal"), report, keys)
    previous: tuple[int, bytes] | None = None
    decided: set[str] = set()
    named: set[str] = set()
    for item in data.get("entries") or []:
        checked = _check_entry(item, report, keys, root, seal)
        if checked is None:
            previous = None
            continue
        seq, leaf, prev_hash, body, role = checked
        if previous is not None and previous[0] == seq - 1 and prev_hash != previous[1]:  # 6.
            report.findings.append(f"seq {seq}: prev_leaf_hash does not chain to seq {seq - 1}")
        previous = (seq, leaf)
        if role == ROLE_RUN and body.get("policy_version"):
            decided.add(str(body["policy_version"]))
        if role == ROLE_POLICY:
            named.add(str(body.get("new_version") or body.get("policy_version") or ""))
    for version in sorted(decided - named):  # 7.
        report.findings.append(f"policy version {version[:16]}… decided the run but no entry in the bundle names it")
    report.policy_versions = tuple(sorted(decided))
    return report


def _check_checkpoint(
    text: Any, report: BundleReport, keys: Sequence[Verifier], witnesses: Sequence[Verifier]
) -> bytes | None:
    """Step 2; returns the checkpoint's root, or None when there is no usable checkpoint."""
    if not text:
        if witnesses:
            report.findings.append("the bundle has no witnessed checkpoint")
        return None
    try:
        note = SignedNote.parse(str(text))
        checkpoint = Checkpoint.parse(note.text)
    except (NoteError, ValueError) as exc:
        report.findings.append(f"the checkpoint note is malformed: {exc}")
        return None
    if checkpoint.origin != report.origin:
        report.findings.append(f"the checkpoint is for origin {checkpoint.origin!r}, not {report.origin!r}")
        return None
    if not any(verify_note(note, key) for key in keys):
        report.findings.append("the checkpoint note has no valid signature by the origin's key")
        return None
    cosigners: list[str] = []
    for witness in witnesses:
        wid = witness_key_id(witness.name, witness.public_key)
        lines = [s for s in note.signatures if s.name == witness.name and s.key_id == wid]
        for line in lines:
            if verify_cosignature(SignedNote(note.text, (line,)), witness) is not None:
                cosigners.append(witness.name)
            else:
                report.findings.append(f"the cosignature by {witness.name} does not verify")
    if witnesses and not cosigners:
        report.findings.append("no given witness key cosigned the checkpoint")
    report.cosigners = tuple(dict.fromkeys(cosigners))
    report.tree_size = checkpoint.size
    return checkpoint.root


def _check_seal(text: Any, report: BundleReport, keys: Sequence[Verifier]) -> tuple[int, bytes] | None:
    """Format v2: the bundle's seal, if any, parsed and signed by the origin's key: its (size, root)."""
    if text is None:
        return None
    try:
        seal = parse_seal(str(text))
    except NoteError as exc:
        report.findings.append(f"the seal is malformed: {exc}")
        return None
    if not seal_signed(seal, report.origin, lambda m, s: any(k.verify(m, s) for k in keys), {k.key_id for k in keys}):
        report.findings.append("the seal has no valid signature by the origin's key")
        return None
    return seal.size, seal.checkpoint.root


def _check_entry(
    item: Any, report: BundleReport, keys: Sequence[Verifier], root: bytes | None, seal: tuple[int, bytes] | None
) -> tuple[int, bytes, bytes, dict[str, Any], str] | None:
    """Steps 3 to 5 for one listed entry; None when it could not be decoded at all."""
    try:
        listed = int(item["seq"])
        raw = base64.b64decode(item["entry"], validate=True)
        signature = base64.b64decode(item["signature"], validate=True)
        entry = decode_entry(raw)
    except (KeyError, TypeError, ValueError, binascii.Error, MalformedEntryError) as exc:
        report.findings.append(f"an entry does not decode: {exc}")
        return None
    seq, role = entry.seq, str(item.get("role", ""))
    report.entries += 1
    if seq != listed:
        report.findings.append(f"seq {listed}: the entry inside says seq {seq}")
    key = next((k for k in keys if k.key_id == entry.key_id), None)
    own_signature = entry.version == FORMAT_V1 or bool(signature)  # else a v2 entry vouched for by a proof
    if key is None:
        report.findings.append(f"seq {seq}: the entry's key id is not the origin key's")
    elif own_signature and not key.verify(signature_payload(report.origin, raw), signature):
        report.findings.append(f"seq {seq}: the signature does not verify under the origin's key")
    body = _canonical_body(seq, entry.body, entry.kind, report)
    if role == ROLE_RUN and body.get("run_id") != report.run_id:
        report.findings.append(f"seq {seq}: a run entry of another run ({body.get('run_id')!r})")
    elif role == ROLE_POLICY and body.get("kind") not in _POLICY_KINDS:
        report.findings.append(f"seq {seq}: a policy entry of kind {body.get('kind')!r}")
    elif role not in (ROLE_RUN, ROLE_POLICY):
        report.findings.append(f"seq {seq}: unknown role {role!r}")
    leaf = leaf_hash(raw, signature)
    witnessed = _check_inclusion(seq, leaf, item.get("inclusion_proof"), report, root)
    if not own_signature and not witnessed and not _in_seal(seq, leaf, item.get("seal_proof"), report, seal):
        report.findings.append(
            f"seq {seq}: the entry has no signature of its own (format v2) and no inclusion proof that leads to "
            "the signed checkpoint or seal"
        )
    return seq, leaf, entry.prev_leaf_hash, body, role


def _in_seal(seq: int, leaf: bytes, proof: Any, report: BundleReport, seal: tuple[int, bytes] | None) -> bool:
    if seal is None or not isinstance(proof, list) or seq >= seal[0]:
        return False
    try:
        hashes = [bytes.fromhex(h) for h in proof]
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError("a proof hash is not 32 bytes")
        return root_from_inclusion_proof(seq, seal[0], leaf, hashes) == seal[1]
    except (TypeError, ValueError) as exc:
        report.findings.append(f"seq {seq}: the seal inclusion proof is malformed: {exc}")
        return False


def _canonical_body(seq: int, body_bytes: bytes, kind: int, report: BundleReport) -> dict[str, Any]:
    try:
        body = parse_json(body_bytes.decode("utf-8"))  # numbers as doubles, as RFC 8785 reads them
        canonical = canonical_json(body) == body_bytes
    except (ValueError, RecursionError, CanonicalizationError):
        body, canonical = None, False
    if not isinstance(body, dict) or not canonical:
        report.findings.append(f"seq {seq}: the body is not canonical RFC 8785 JSON")
        return {}
    try:
        label = EventKind(kind).label
    except ValueError:
        label = ""
    if body.get("kind") != label:
        report.findings.append(f"seq {seq}: the body's kind {body.get('kind')!r} is not the header's ({label!r})")
    return body


def _check_inclusion(seq: int, leaf: bytes, proof: Any, report: BundleReport, root: bytes | None) -> bool:
    """Step 5: whether the entry's inclusion proof leads to the witnessed checkpoint's root."""
    if root is None or seq >= report.tree_size:
        return False  # not witnessed: counted by what is missing from ``witnessed``
    try:
        hashes = [bytes.fromhex(h) for h in proof]
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError("a proof hash is not 32 bytes")
        derived = root_from_inclusion_proof(seq, report.tree_size, leaf, hashes)
    except (TypeError, ValueError) as exc:
        report.findings.append(f"seq {seq}: the inclusion proof is malformed: {exc}")
        return False
    if derived != root:
        report.findings.append(f"seq {seq}: the inclusion proof does not lead to the witnessed root")
        return False
    report.witnessed += 1
    return True


def format_bundle_report(report: BundleReport) -> str:
    """The human-readable result, as ``agentaudit verify`` prints it."""
    lines = [f"{finding}" for finding in report.findings]
    witnessed = (
        f"; {report.witnessed} of {report.entries} in the checkpoint of size {report.tree_size}"
        + (f" cosigned by {', '.join(report.cosigners)}" if report.cosigners else "")
        if report.tree_size
        else "; none witnessed"
    )
    verdict = "bundle OK" if report.ok else f"bundle FAILED ({len(report.findings)} findings)"
    lines.append(f"{verdict}: run {report.run_id}, {report.entries} entries{witnessed}")
    return "\n".join(lines)
