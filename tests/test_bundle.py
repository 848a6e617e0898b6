"""Evidence bundles: a run's entries, proofs and checkpoint in one file that verifies offline and breaks when edited."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentaudit_client import GatewayClient
from gateway.journal.bundle import BundleError, build_bundle, load_bundle, verify_bundle
from gateway.signing import Ed25519Signer, load_verifier
from tests.conftest import RunningGateway, start_gateway


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """A dev sidecar (embedded collector witnessing) that played the approval and the allow scenario, stopped."""
    gw: RunningGateway = start_gateway(tmp_path_factory.mktemp("bundle"), forward=True)
    try:
        with GatewayClient(gw.unix_target, timeout=10) as client:
            run = client.run("run_bundle", tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))
            assert run.decide("refund.create", {"order_id": "o_1", "amount": 250}).decision == "approval_required"
            with run.guard("crm.lookup", {"customer_id": "c_7"}) as step:
                step.output = {"name": "Ann"}
    finally:
        assert gw.stop() == 0  # the forwarder's final flush: the run is witnessed
    return build_bundle(gw.journal_path, "run_bundle"), gw.dir


def keys(directory: Path) -> tuple[list[Any], list[Any]]:
    return [load_verifier(directory / "signing.pub")], [load_verifier(directory / "witness.pub")]


def test_a_bundle_of_a_witnessed_run_verifies_offline(played: tuple[dict[str, Any], Path]) -> None:
    bundle, directory = played
    verifiers, witnesses = keys(directory)
    report = verify_bundle(json.loads(json.dumps(bundle)), verifiers, witnesses)
    assert report.ok, report.findings
    run_entries = [e for e in bundle["entries"] if e["role"] == "run"]
    assert report.entries == len(bundle["entries"]) >= 4  # refund pre-event, lookup pre and post, a policy entry
    assert report.witnessed == report.entries, "every entry is below the cosigned checkpoint"
    assert report.cosigners and report.policy_versions
    assert len(run_entries) == 3


def _flip_entry_byte(b: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(b["entries"][0]["entry"]))
    raw[-3] ^= 1
    b["entries"][0]["entry"] = base64.b64encode(bytes(raw)).decode()


def _flip_proof(b: dict[str, Any]) -> None:
    proof = b["entries"][-1]["inclusion_proof"]
    proof[0] = ("0" if proof[0][0] != "0" else "1") + proof[0][1:]


def _drop_policy(b: dict[str, Any]) -> None:
    b["entries"] = [e for e in b["entries"] if e["role"] != "policy"]


def _other_run(b: dict[str, Any]) -> None:
    b["run_id"] = "run_other"


def _forge_checkpoint(b: dict[str, Any]) -> None:
    lines = b["checkpoint"].split("\n")
    lines[1] = str(int(lines[1]) + 1)
    b["checkpoint"] = "\n".join(lines)


def _swap_seq(b: dict[str, Any]) -> None:
    b["entries"][0]["seq"] += 1


@pytest.mark.parametrize(
    ("tamper", "finding"),
    [
        # v1: the entry's own signature fails; v2 (the dev sidecar's default): no proof leads to a signed root.
        pytest.param(
            _flip_entry_byte, ("signature does not verify", "no inclusion proof that leads"), id="edited-entry"
        ),
        pytest.param(_flip_proof, "inclusion proof does not lead", id="edited-proof"),
        pytest.param(_drop_policy, "no entry in the bundle names it", id="policy-entry-dropped"),
        pytest.param(_other_run, "another run", id="relabelled-run"),
        pytest.param(_forge_checkpoint, "no valid signature by the origin", id="forged-checkpoint"),
        pytest.param(_swap_seq, "the entry inside says seq", id="relisted-seq"),
    ],
)
def test_each_edit_of_a_bundle_is_a_finding(
    played: tuple[dict[str, Any], Path], tamper: Callable[[dict[str, Any]], None], finding: str | tuple[str, ...]
) -> None:
    bundle, directory = played
    edited = copy.deepcopy(bundle)
    tamper(edited)
    report = verify_bundle(edited, *keys(directory))
    assert not report.ok
    phrases = (finding,) if isinstance(finding, str) else finding
    assert any(phrase in f for f in report.findings for phrase in phrases), report.findings


def test_a_witness_key_that_did_not_cosign_is_a_finding(played: tuple[dict[str, Any], Path]) -> None:
    bundle, directory = played
    verifiers, _ = keys(directory)
    stranger = Ed25519Signer.generate("agentaudit-dev-collector/elsewhere").verifier
    report = verify_bundle(bundle, verifiers, [stranger])
    assert any("no given witness key cosigned" in f for f in report.findings)


def test_a_run_the_journal_does_not_hold_cannot_be_bundled(played: tuple[dict[str, Any], Path]) -> None:
    _, directory = played
    with pytest.raises(BundleError, match="no entry of run"):
        build_bundle(directory / "journal.db", "run_nobody")


VECTORS = Path(__file__).resolve().parent / "vectors" / "bundle"
EXPECTED = json.loads((VECTORS / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_checked_in_vectors_give_the_findings_stated_by_hand(name: str) -> None:
    """Vectors built from the format's definition (make_bundle_vectors.py), not by the bundle writer."""
    report = verify_bundle(
        load_bundle(VECTORS / name), [load_verifier(VECTORS / "signing.pub")], [load_verifier(VECTORS / "witness.pub")]
    )
    expected = EXPECTED[name]
    assert len(report.findings) == len(expected["findings"]), report.findings
    for phrase in expected["findings"]:
        assert any(phrase in f for f in report.findings), (phrase, report.findings)
    for key in ("entries", "witnessed", "tree_size"):
        if key in expected:
            assert getattr(report, key) == expected[key]


def test_the_vectors_are_reproducible(tmp_path: Path) -> None:
    """The generator is deterministic: regenerating gives the checked-in bytes."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    copy_dir = tmp_path / "bundle"
    shutil.copytree(VECTORS, copy_dir)
    subprocess.run([sys.executable, str(copy_dir / "make_bundle_vectors.py")], check=True)
    for path in VECTORS.glob("*.aab"):
        assert (copy_dir / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_v2_bundle_vouches_for_unwitnessed_entries_through_the_seal(played: tuple[dict[str, Any], Path]) -> None:
    """The dev sidecar writes format v2: entries carry no signature of their own; the bundle's seal (the last
    commit's) and each entry's seal_proof vouch for them, and a forged or dropped seal is a finding."""
    bundle, directory = played
    verifiers, _ = keys(directory)
    assert "seal" in bundle and all("seal_proof" in e for e in bundle["entries"])
    unwitnessed = copy.deepcopy(bundle)
    unwitnessed["checkpoint"] = ""  # as if nothing was cosigned yet: only the seal vouches
    assert verify_bundle(unwitnessed, verifiers).ok
    no_seal = copy.deepcopy(unwitnessed)
    del no_seal["seal"]
    report = verify_bundle(no_seal, verifiers)
    assert any("no inclusion proof that leads" in f for f in report.findings), report.findings
    forged = copy.deepcopy(unwitnessed)
    forged["seal"] = forged["seal"].replace("\n\n", "\n\n", 1)[:-6] + "AAAA=\n"
    report = verify_bundle(forged, verifiers)
    assert not report.ok
