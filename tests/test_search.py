"""SearchEvents over the operator API: every filter against a real sidecar, pagination stable under appends."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentaudit.v1 import operator_pb2, types_pb2
from gateway.journal.store import iter_bodies
from tests.conftest import RunningGateway, start_gateway
from tests.gateway_helpers import decide_request, stub
from tests.operator_helpers import TOKENS, auth, operator_stub, prepare_dir


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = Path(tmp_path_factory.mktemp("search"))
    prepare_dir(directory)
    gw = start_gateway(directory)
    channel, gateway = stub(gw.unix_target)
    with channel:
        for i in range(12):
            gateway.Decide(
                decide_request(run_id=f"run_{i % 3}", step_id=i, tenant_id=f"t_{i % 2}", action="kb.read"), timeout=10
            )
        gateway.Decide(decide_request(run_id="run_x", tenant_id="t_frozen", action="crm.lookup"), timeout=10)
        gateway.Decide(
            decide_request(run_id="run_x", step_id=2, action="refund.create", args={"amount": 500}), timeout=10
        )
        gateway.Decide(
            decide_request(
                run_id="run_y",
                action="crm.search",
                actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_SERVICE, id="svc_9"),
            ),
            timeout=10,
        )
    try:
        yield gw
    finally:
        gw.stop()


def search(
    gw: RunningGateway, page_size: int = 1000, newest_first: bool = False, token: str = "", **filters: Any
) -> Any:
    channel, op = operator_stub(gw.operator_target)
    with channel:
        return op.SearchEvents(
            operator_pb2.SearchEventsRequest(
                filter=operator_pb2.EventFilter(**filters),
                page_size=page_size,
                newest_first=newest_first,
                page_token=token,
            ),
            metadata=auth(TOKENS["bob"][0]),
            timeout=10,
        )


@pytest.mark.parametrize(
    ("filters", "predicate"),
    [
        pytest.param({"run_id": "run_1"}, lambda b: b.get("run_id") == "run_1", id="run"),
        pytest.param({"tenant_id": "t_0"}, lambda b: b.get("tenant_id") == "t_0", id="tenant"),
        pytest.param({"decision": "stop"}, lambda b: b.get("decision") == "stop", id="decision"),
        pytest.param(
            {"reason": "kill_switch_engaged"}, lambda b: b.get("reason") == "kill_switch_engaged", id="reason"
        ),
        pytest.param({"action": "crm.*"}, lambda b: str(b.get("action", "")).startswith("crm."), id="action-glob"),
        pytest.param({"kind": "journal_started"}, lambda b: b["kind"] == "journal_started", id="kind"),
        pytest.param({"policy_layer": "approval"}, lambda b: b.get("policy_layer") == "approval", id="layer"),
        pytest.param({"policy_rule": "frozen_tenant"}, lambda b: b.get("policy_rule") == "frozen_tenant", id="rule"),
        pytest.param(
            {"actor": "service:svc_9"}, lambda b: b.get("actor") == {"type": "service", "id": "svc_9"}, id="actor"
        ),
        pytest.param(
            {"tenant_id": "t_1", "run_id": "run_1"},
            lambda b: b.get("tenant_id") == "t_1" and b.get("run_id") == "run_1",
            id="combined",
        ),
    ],
)
def test_each_filter_returns_exactly_the_matching_signed_events(
    populated: RunningGateway, filters: dict[str, str], predicate: Any
) -> None:
    expected = [seq for seq, body in iter_bodies(populated.journal_path) if predicate(body)]
    reply = search(populated, **filters)
    assert [e.seq for e in reply.events] == expected
    assert expected, "the case selects something"
    first = reply.events[0]
    assert (first.entry, first.signature) == journaled(populated.journal_path, first.seq)
    assert first.body["event_id"]


def test_newest_first_and_pages_are_stable_while_the_journal_grows(tmp_path: Path) -> None:
    prepare_dir(tmp_path / "gw")
    gw = start_gateway(tmp_path / "gw")
    try:
        channel, gateway = stub(gw.unix_target)
        with channel:
            for i in range(10):
                gateway.Decide(decide_request(run_id="run_p", step_id=i), timeout=10)
            seen: list[int] = []
            token = ""
            while True:
                page = search(gw, page_size=3, token=token, run_id="run_p")
                seen += [e.seq for e in page.events]
                # Appends between pages must neither shift nor repeat what the next page returns.
                gateway.Decide(decide_request(run_id="run_p", step_id=100 + len(seen)), timeout=10)
                token = page.next_page_token
                if not token:
                    break
        assert seen == sorted(set(seen)), "no duplicates, in order"
        all_now = [seq for seq, b in iter_bodies(gw.journal_path, run_id="run_p")]
        assert seen == all_now[: len(seen)] and len(seen) >= 10
        newest = search(gw, newest_first=True, page_size=2, run_id="run_p")
        assert [e.seq for e in newest.events] == sorted(all_now, reverse=True)[:2]
    finally:
        gw.stop()


def test_search_needs_a_credential_and_refuses_bad_tokens(populated: RunningGateway) -> None:
    channel, op = operator_stub(populated.operator_target)
    with channel, pytest.raises(grpc.RpcError) as info:
        op.SearchEvents(operator_pb2.SearchEventsRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as bad:
        search(populated, token="not-a-token!")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_events_streams_new_matching_events_and_replays_after_a_seq(tmp_path: Path) -> None:
    prepare_dir(tmp_path / "gw")
    gw = start_gateway(tmp_path / "gw")
    try:
        channel, gateway = stub(gw.unix_target)
        op_channel, op = operator_stub(gw.operator_target)
        with channel, op_channel:
            gateway.Decide(decide_request(run_id="run_before"), timeout=10)
            # Start right after what is already journaled (deterministic, unlike "from now").
            now = search(gw, newest_first=True, page_size=1).events[0].seq
            stream = op.WatchEvents(
                operator_pb2.WatchEventsRequest(filter=operator_pb2.EventFilter(tenant_id="t_42"), after_seq=now),
                metadata=auth(TOKENS["bob"][0]),
                timeout=30,
            )
            gateway.Decide(decide_request(run_id="run_live", tenant_id="t_42"), timeout=10)
            gateway.Decide(decide_request(run_id="run_other", tenant_id="t_9"), timeout=10)
            gateway.Decide(decide_request(run_id="run_live", step_id=2, tenant_id="t_42"), timeout=10)
            received = [next(stream).event for _ in range(2)]
            stream.cancel()
            assert [(e.body["run_id"], e.body["step_id"]) for e in received] == [("run_live", 1), ("run_live", 2)]
            replay = op.WatchEvents(
                operator_pb2.WatchEventsRequest(filter=operator_pb2.EventFilter(run_id="run_before"), after_seq=0),
                metadata=auth(TOKENS["bob"][0]),
                timeout=30,
            )
            first = next(replay).event
            replay.cancel()
        assert first.body["run_id"] == "run_before"
        assert (first.entry, first.signature) == journaled(gw.journal_path, first.seq)
    finally:
        gw.stop()


def journaled(journal: Path, seq: int) -> tuple[bytes, bytes]:
    """The entry and signature bytes stored at ``seq``: a search answers them exactly as signed (a 64-byte
    signature in format v1; in v2, the dev sidecar's default, empty for a pre-event, which its commit's seal covers)."""
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        entry, signature = conn.execute("SELECT entry, signature FROM journal WHERE seq = ?", (seq,)).fetchone()
    assert len(signature) in (0, 64)
    return bytes(entry), bytes(signature)
