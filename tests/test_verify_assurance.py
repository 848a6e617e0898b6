"""Assurance levels demanded of ``agentaudit verify``: ``--require-witnessed[=N]`` and ``--min-size N``.

Journals are written with the real JournalWriter and the real key (tests/test_verify_witness.py builds them and
makes receipts the way the sidecar does); every case runs the real CLI and checks its exit code and message. The
last test forwards a real sidecar's journal to a real collector and shows that a healthy journal passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.journal.verify import witness_grace_end
from tests.conftest import run_cli, start_gateway
from tests.test_forwarding import CollectorProcess, load, sidecar_dir
from tests.test_verify_witness import Receipt, Step, build, key_files


def verify_cli(tmp_path: Path, path: Path, *flags: str) -> tuple[int, str, str]:
    pub, wpub = key_files(tmp_path)
    result = run_cli("verify", str(path), "--public-key", str(pub), "--witness-key", str(wpub), *flags)
    return result.returncode, result.stdout, result.stderr


# The healthy shapes a stopped or idle sidecar leaves: its last entry is the receipt of its last checkpoint, and
# entries written while that batch was in flight lie between the checkpoint's size and the receipt.
HEALTHY: list[object] = [
    pytest.param([5, Receipt(), 4, Receipt()], id="ends-with-a-receipt-for-everything-before-it"),
    pytest.param([3, 2, Receipt(size=3)], id="entries-written-while-the-batch-was-in-flight"),
    pytest.param([], id="empty-journal"),
]


@pytest.mark.parametrize("plan", HEALTHY)
def test_a_healthy_witnessed_journal_passes_require_witnessed(tmp_path: Path, plan: list[Step]) -> None:
    path = tmp_path / "j.db"
    build(path, plan)

    code, out, err = verify_cli(tmp_path, path, "--require-witnessed")

    assert code == 0, out + err
    assert "journal OK" in out
    assert "at most 0 unwitnessed beyond the last cosigned checkpoint" in out


def test_a_cut_tail_fails_require_witnessed_naming_the_unwitnessed_entries(tmp_path: Path) -> None:
    # The sidecar wrote [5 events, receipt, 4 events, receipt]; the last receipt and one event were cut off.
    path = tmp_path / "cut.db"
    build(path, [5, Receipt(), 3])

    intact = verify_cli(tmp_path, path)
    code, out, err = verify_cli(tmp_path, path, "--require-witnessed")

    assert intact[0] == 0, "without the flag a cut tail still verifies: only witnessed_size falls"
    assert code == 1, out + err
    assert (
        "journal: unwitnessed: 3 entries are beyond the last cosigned checkpoint (seq 6..8; the last cosigned "
        "checkpoint covers 5, its receipt is at seq 5), more than the 0 allowed" in out
    )
    assert "TAMPER EVIDENCE: 1 finding in 9 entries" in out


def test_a_tail_rewritten_by_the_key_holder_without_receipts_fails(tmp_path: Path) -> None:
    # Both journals are written by the real writer with the real key; their first 6 entries are byte-identical,
    # so the kept receipt still matches. The rewritten one then diverges and carries no receipt of its own.
    original, rewritten = tmp_path / "original.db", tmp_path / "rewritten.db"
    build(original, [5, Receipt(), 4, Receipt()])
    build(rewritten, [5, Receipt()])
    build(rewritten, [7], first=1000)

    assert verify_cli(tmp_path, original, "--require-witnessed")[0] == 0
    assert verify_cli(tmp_path, rewritten)[0] == 0
    code, out, err = verify_cli(tmp_path, rewritten, "--require-witnessed")

    assert code == 1, out + err
    assert "journal: unwitnessed: 7 entries are beyond the last cosigned checkpoint (seq 6..12;" in out


def test_require_witnessed_n_allows_n_entries_beyond_the_grace(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [5, Receipt(), 3])

    assert verify_cli(tmp_path, path, "--require-witnessed=3")[0] == 0
    code, out, _ = verify_cli(tmp_path, path, "--require-witnessed=2")

    assert code == 1
    assert "more than the 2 allowed" in out


def test_a_journal_never_witnessed_fails_require_witnessed(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [4])

    code, out, _ = verify_cli(tmp_path, path, "--require-witnessed")

    assert code == 1
    assert "4 entries are beyond the last cosigned checkpoint (seq 0..3; no checkpoint cosigned by a given" in out


def test_a_receipt_replayed_later_does_not_stretch_the_grace(tmp_path: Path) -> None:
    # The key holder rewrote the tail and appended a copy of the old cosigned checkpoint at the end, hoping the
    # entries before it pass as "written while the batch was in flight". The first receipt sets the grace.
    path = tmp_path / "j.db"
    build(path, [5, Receipt(), 4, Receipt(size=5)])

    code, out, _ = verify_cli(tmp_path, path, "--require-witnessed")

    assert code == 1
    assert "5 entries are beyond the last cosigned checkpoint (seq 6..10;" in out


def test_require_witnessed_without_a_witness_key_is_a_usage_error(tmp_path: Path) -> None:
    pub, _ = key_files(tmp_path)
    path = tmp_path / "j.db"
    build(path, [2])

    result = run_cli("verify", str(path), "--public-key", str(pub), "--require-witnessed")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "--require-witnessed needs the collector's public key (--witness-key KEY)" in result.stderr


@pytest.mark.parametrize(
    ("min_size", "code"),
    [
        pytest.param("11", 0, id="as-large-as-last-time"),
        pytest.param("9", 0, id="grown-since"),
        pytest.param("12", 1, id="shorter-than-last-time"),
    ],
)
def test_min_size_fails_a_journal_shorter_than_the_auditor_saw(tmp_path: Path, min_size: str, code: int) -> None:
    # A tail cut exactly after a receipt passes --require-witnessed; only the size seen before shows the loss.
    path = tmp_path / "j.db"
    build(path, [5, Receipt(), 4, Receipt()])

    result = verify_cli(tmp_path, path, "--require-witnessed", "--min-size", min_size)

    assert result[0] == code, result[1] + result[2]
    if code:
        assert (
            f"journal: below_min_size: journal holds 11 entries, fewer than --min-size {min_size}: 1 entry was "
            "removed, or this is another journal" in result[1]
        )


def test_json_carries_the_assurance_fields(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [3, 2, Receipt(size=3), 2])

    code, out, _ = verify_cli(tmp_path, path, "--require-witnessed", "--min-size", "20", "--json")

    document = json.loads(out)
    assert code == 1
    assert {
        key: document[key]
        for key in ("witnessed_size", "witnessed_receipt_seq", "unwitnessed_beyond_grace", "require_witnessed")
    } == {"witnessed_size": 3, "witnessed_receipt_seq": 5, "unwitnessed_beyond_grace": 2, "require_witnessed": 0}
    assert document["min_size"] == 20
    assert [f["code"] for f in document["findings"]] == ["below_min_size", "unwitnessed"]


@pytest.mark.parametrize(
    ("witnessed", "receipt_seq", "end"),
    [
        pytest.param(0, None, 0, id="nothing-witnessed"),
        pytest.param(5, None, 5, id="anchor-only"),
        pytest.param(5, 5, 6, id="receipt-right-after-its-checkpoint"),
        pytest.param(3, 5, 6, id="receipt-after-entries-in-flight"),
    ],
)
def test_the_grace_ends_after_the_receipt_of_the_witnessed_checkpoint(
    witnessed: int, receipt_seq: int | None, end: int
) -> None:
    assert witness_grace_end(witnessed, receipt_seq) == end


def test_a_real_sidecars_forwarded_journal_passes_require_witnessed(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "s").mkdir()
    directory, origin = sidecar_dir(tmp_path / "s", "127.0.0.1:1")
    collector = CollectorProcess(
        tmp_path / "c", [(origin, directory / "signing.pub")], f"sqlite:///{tmp_path / 'c' / 'collector.db'}"
    )
    sidecar_dir(directory, collector.target)
    collector.start()
    try:
        gateway = start_gateway(directory, forward=True)
        try:
            load(gateway, 40, "run_healthy")
        finally:
            gateway.stop()  # the final flush forwards everything and journals the last receipt
        result = run_cli(
            "verify",
            str(gateway.journal_path),
            "--public-key",
            str(directory / "signing.pub"),
            "--witness-key",
            str(collector.directory / "witness.pub"),
            "--require-witnessed",
            "--json",
        )
    finally:
        collector.stop()

    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["unwitnessed_beyond_grace"] == 0
    assert document["witnessed_size"] >= 40
    assert document["witnessed_by"] == ["collector.test"]


@pytest.mark.parametrize(
    ("plan", "witness", "says"),
    [
        pytest.param(
            [5, Receipt(), 3],
            True,
            "witnessed up to seq 4 by collector.agentaudit.example: not even the key holder can rewrite those; "
            "seq 5 on is not witnessed",
            id="witnessed-prefix",
        ),
        pytest.param([5], True, "not witnessed: no checkpoint cosigned by collector.agentaudit.example", id="none"),
        pytest.param([5, Receipt()], False, "witnessing not checked (no --witness-key)", id="no-witness-key"),
    ],
)
def test_trace_says_what_the_verification_proves(tmp_path: Path, plan: list[Step], witness: bool, says: str) -> None:
    pub, wpub = key_files(tmp_path)
    path = tmp_path / "j.db"
    build(path, plan)

    flags = ["--witness-key", str(wpub)] if witness else []
    result = run_cli("trace", "run_0", "--journal", str(path), "--public-key", str(pub), *flags)

    status = result.stdout.splitlines()[-1]
    assert status.startswith("verification: journal verified: "), result.stdout + result.stderr
    assert "signed: no entry was edited without the signing key; " + says in status
