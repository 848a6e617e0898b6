"""Redacted values never reach the database file's bytes; digests are keyed; fail closed when unrecordable."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import grpc
import pytest

from agentaudit.v1 import gateway_pb2, types_pb2
from gateway.canonical import canonical_json
from gateway.journal.store import iter_bodies
from tests.conftest import RunningGateway, run_cli, start_gateway
from tests.gateway_helpers import decide_request, journal_count, stub

SECRETS = {
    "email": "ann.secret@example.com",
    "phone": "+15557654321",
    "card": "4111111111111111",
    "out_email": "bob.hidden@example.org",
}
ARGS = {
    "order_id": "o_1",
    "customer": {"Email": SECRETS["email"], "name": "Ann"},
    "contacts": [{"PHONE": SECRETS["phone"]}, {"kind": "home"}],
    "payment": {"details": {"card_number": SECRETS["card"]}},
}


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.glob("journal.db*") if p.is_file())


def test_redacted_values_never_reach_the_database_files(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        pre = gw.Decide(decide_request(args=ARGS), timeout=10)
        report = gateway_pb2.ReportResultRequest(event_id=pre.event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED)
        report.output.update({"receipt": {"email": SECRETS["out_email"]}, "ok": True})
        gw.ReportResult(report, timeout=10)
    # While running (WAL and shared memory files included) and after shutdown (checkpointed main file).
    for when in ("running", "stopped"):
        if when == "stopped":
            assert gateway_server.stop() == 0
        data = all_bytes(gateway_server.dir)
        for value in SECRETS.values():
            assert value.encode() not in data, f"{value} found in the journal files ({when})"
            assert value.encode("utf-16-le") not in data
    bodies = [b for _, b in iter_bodies(gateway_server.journal_path) if b["kind"] in ("pre_exec", "post_exec")]
    pre_body, post_body = bodies
    assert pre_body["redacted_paths"] == [
        "args.contacts[0].PHONE",
        "args.customer.Email",
        "args.payment.details.card_number",
    ]
    assert pre_body["args"] == {
        "order_id": "o_1",
        "customer": {"name": "Ann"},
        "contacts": [{}, {"kind": "home"}],
        "payment": {"details": {}},
    }
    assert post_body["redacted_paths"] == ["output.receipt.email"]


def test_args_digest_is_keyed_not_a_plain_hash(gateway_server: RunningGateway) -> None:
    args = {"phone": "+15550000000"}
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        reply = gw.Decide(decide_request(args=args), timeout=10)
    body = next(b for _, b in iter_bodies(gateway_server.journal_path) if b.get("event_id") == reply.event_id)
    digest = str(body["args_digest"])
    assert digest.startswith("hmac-sha256:")
    assert hashlib.sha256(canonical_json(args)).hexdigest() not in digest


def test_hash_args_false_records_no_digest(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "gw", extra_env={"AGENTAUDIT_AUDIT_HASH_ARGS": "false"})
    try:
        channel, stub_ = stub(gw.unix_target)
        with channel:
            reply = stub_.Decide(decide_request(args={"x": 1}), timeout=10)
        body = next(b for _, b in iter_bodies(gw.journal_path) if b.get("event_id") == reply.event_id)
        assert body["args_digest"] == ""
        assert reply.action_key.startswith("ak_"), "the action key is always computed (keyed)"
    finally:
        gw.stop()


def test_decide_fails_closed_when_the_journal_cannot_be_written(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "gw", extra_env={"AGENTAUDIT_JOURNAL_BUSY_TIMEOUT_MS": "100"})
    try:
        before = journal_count(gw.journal_path)
        # Another process holds the database's write lock: the sidecar cannot record anything.
        blocker = sqlite3.connect(gw.journal_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        channel, gw_stub = stub(gw.unix_target)
        with channel:
            for action in ("crm.lookup", "refund.create", "crm.search"):
                reply = gw_stub.Decide(decide_request(action=action), timeout=10)
                assert reply.decision == types_pb2.DECISION_STOP
                assert reply.reason == "audit_unavailable"
                assert reply.event_id == ""
            blocker.execute("ROLLBACK")
            blocker.close()
            recovered = gw_stub.Decide(decide_request(), timeout=10)
        assert recovered.decision == types_pb2.DECISION_ALLOW and recovered.event_id
        assert journal_count(gw.journal_path) == before + 1
    finally:
        gw.stop()
    result = run_cli("verify", str(gw.journal_path), "--public-key", str(gw.public_key_path))
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_sidecar_refuses_a_signing_key_others_can_read(tmp_path: Path, mode: int) -> None:
    gw = start_gateway(tmp_path / "gw")
    gw.stop()
    (tmp_path / "gw" / "signing.key").chmod(mode)
    result = run_cli("dev", "--dir", str(tmp_path / "gw"), "--listen", f"unix://{tmp_path}/gw/x.sock")
    assert result.returncode == 2
    assert "chmod 600" in result.stderr


def test_keys_are_created_private(gateway_server: RunningGateway) -> None:
    for name in ("signing.key", "hmac.key"):
        assert (gateway_server.dir / name).stat().st_mode & 0o077 == 0


def test_a_second_sidecar_on_the_same_journal_is_refused(gateway_server: RunningGateway, tmp_path: Path) -> None:
    result = run_cli("dev", "--dir", str(gateway_server.dir), "--listen", f"unix://{tmp_path}/other.sock")
    assert result.returncode == 2
    assert "in use by another agentaudit process" in result.stderr
    with grpc.insecure_channel(gateway_server.unix_target) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)
