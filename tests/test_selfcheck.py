"""The start-up self-check: a journal edited while the sidecar was down is reported loudly when it starts again.

A real sidecar journals a few decisions and stops; one byte of one stored entry is changed with plain SQL (what
``agentaudit journal tamper-demo`` does to a copy, here on the live file); the sidecar restarts on it. It must log
one ERROR block naming the seq and the finding, journal it once as ``gap_recovery``/``tamper_detected``, and with
``journal.on_tamper: stop`` answer ``journal_recovery_required`` until ``agentaudit recovery acknowledge``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agentaudit.v1 import operator_pb2, types_pb2
from gateway.journal.store import JournalReader, iter_bodies
from gateway.sidecar.selfcheck import check_tail
from gateway.signing import load_signer
from tests.conftest import RunningGateway, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.operator_helpers import TOKENS, auth, operator_stub, prepare_dir


def decide(gw: RunningGateway, run_id: str = "run_s") -> Any:
    channel, gateway = stub(gw.unix_target)
    with channel:
        return gateway.Decide(decide_request(run_id=run_id), timeout=10)


def splice_one_byte(journal: Path, seq: int) -> None:
    """tamper-demo's statements, on the live journal: the body's last quote becomes '#', so it is no longer JSON."""
    with sqlite3.connect(journal) as conn:
        conn.execute("DROP TRIGGER journal_no_update")
        changed = conn.execute(
            "UPDATE journal SET entry = CAST(substr(entry, 1, length(entry) - 2) || "
            "char((unicode(substr(entry, -2, 1)) + 1) % 128) || substr(entry, -1) AS BLOB) WHERE seq = ?",
            (seq,),
        ).rowcount
    assert changed == 1


def edit_reason(journal: Path, seq: int) -> None:
    """A subtler edit that keeps the body JSON: one letter of the signed reason changed in place."""
    with sqlite3.connect(journal) as conn:
        conn.execute("DROP TRIGGER journal_no_update")
        (entry,) = conn.execute("SELECT entry FROM journal WHERE seq = ?", (seq,)).fetchone()
        edited = bytes(entry).replace(b'"reason":"allowed"', b'"reason":"allowex"')
        assert edited != bytes(entry)
        conn.execute("UPDATE journal SET entry = ? WHERE seq = ?", (edited, seq))


def tamper_events(journal: Path) -> list[dict[str, Any]]:
    return [body for _, body in iter_bodies(journal, kind="gap_recovery") if body["operation"] == "tamper_detected"]


def journaled_then_tampered(directory: Path) -> int:
    """A sidecar's journal with a few decisions, one of them edited after it stopped; returns the edited seq."""
    prepare_dir(directory)
    gw = start_gateway(directory)
    try:
        for _ in range(3):
            decide(gw)
    finally:
        assert gw.stop() == 0
    seq = max(seq for seq, body in iter_bodies(gw.journal_path) if body["kind"] == "pre_exec")
    edit_reason(gw.journal_path, seq)
    return seq


def test_a_clean_journal_passes_the_self_check(tmp_path: Path) -> None:
    prepare_dir(tmp_path)
    gw = start_gateway(tmp_path)
    try:
        decide(gw)
    finally:
        gw.stop()
    gw = start_gateway(tmp_path)
    try:
        assert decide(gw).decision == types_pb2.DECISION_ALLOW
    finally:
        gw.stop()
    assert "start-up self-check: entries 0.." in gw.log()
    assert "TAMPERING" not in gw.log()
    assert tamper_events(gw.journal_path) == []


def test_tampering_is_logged_journaled_once_and_served_through_by_default(tmp_path: Path) -> None:
    seq = journaled_then_tampered(tmp_path)

    gw = start_gateway(tmp_path)
    try:
        assert decide(gw).decision == types_pb2.DECISION_ALLOW  # on_tamper: warn (the default) keeps serving
    finally:
        gw.stop()
    log = gw.log()
    assert "JOURNAL TAMPERING DETECTED at start" in log
    # The dev sidecar writes format v2: the edited entry has no signature of its own; the seal of its commit no
    # longer names its leaf hash (v1 would add bad_signature at the same seq).
    assert f"seq {seq}: leaf_hash_mismatch" in log
    assert f"seq {seq}: seal_mismatch" in log
    events = tamper_events(gw.journal_path)
    assert len(events) == 1
    assert {"seq": seq, "finding": "leaf_hash_mismatch"}.items() <= events[0]["findings"][0].items()
    assert events[0]["fail_closed"] is False

    # A second start finds the same and says so again, but journals nothing new.
    gw = start_gateway(tmp_path)
    gw.stop()
    assert gw.log().count("JOURNAL TAMPERING DETECTED at start") == 2
    assert len(tamper_events(gw.journal_path)) == 1


def test_on_tamper_stop_refuses_decide_until_an_operator_acknowledges(tmp_path: Path) -> None:
    journaled_then_tampered(tmp_path)

    gw = start_gateway(tmp_path, extra_env={"AGENTAUDIT_JOURNAL_ON_TAMPER": "stop"})
    try:
        refused = decide(gw)
        assert (refused.decision, refused.reason) == (types_pb2.DECISION_STOP, "journal_recovery_required")
        channel, op = operator_stub(gw.operator_target)
        with channel:
            reply = op.AcknowledgeRecovery(
                operator_pb2.AcknowledgeRecoveryRequest(comment="looked at it"),
                metadata=auth(TOKENS["root"][0]),
                timeout=10,
            )
        assert "journal tampering detected at start" in reply.detected
        assert decide(gw).decision == types_pb2.DECISION_ALLOW
    finally:
        gw.stop()
    assert tamper_events(gw.journal_path)[0]["fail_closed"] is True


def test_an_entry_edited_into_non_json_is_reported_before_the_start_fails(tmp_path: Path) -> None:
    prepare_dir(tmp_path)
    gw = start_gateway(tmp_path)
    try:
        decide(gw)
    finally:
        gw.stop()
    seq = max(seq for seq, body in iter_bodies(gw.journal_path) if body["kind"] == "pre_exec")
    splice_one_byte(gw.journal_path, seq)

    with pytest.raises(RuntimeError, match="sidecar failed to start") as failed:
        start_gateway(tmp_path)
    assert "JOURNAL TAMPERING DETECTED at start" in str(failed.value)
    assert f"seq {seq}: leaf_hash_mismatch" in str(failed.value)
    assert f"seq {seq}: seal_mismatch" in str(failed.value)
    assert f"seq {seq}: noncanonical_body" in str(failed.value)


@pytest.mark.parametrize("entries", [pytest.param(1000, id="default-window")])
def test_the_self_check_reads_only_the_tail(tmp_path: Path, entries: int) -> None:
    """An edit older than the window and the mark is left to `agentaudit verify`: the check stays bounded."""
    prepare_dir(tmp_path)
    gw = start_gateway(tmp_path)
    try:
        for _ in range(4):
            decide(gw)
    finally:
        gw.stop()
    edit_reason(gw.journal_path, 1)
    signer = load_signer(tmp_path / "signing.key")

    async def check(window: int) -> Any:
        reader = JournalReader(gw.journal_path)
        try:
            size = await reader.last_seq() + 1
            return await check_tail(reader, gw.journal_path, signer.verifier, size, entries=window)
        finally:
            await reader.aclose()

    assert {(f.seq, f.code) for f in asyncio.run(check(entries)).findings} == {
        (1, "seal_mismatch"),  # format v2 (v1: bad_signature)
        (1, "leaf_hash_mismatch"),
    }
    # With a window of two, seq 1 is outside it, unless the mark points before it (it points at the tail).
    narrow = asyncio.run(check(2))
    assert narrow.start >= 2 and narrow.ok
