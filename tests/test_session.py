"""GatewayService.Session against a real sidecar: per-message semantics equal the unary calls'.

Raw stubs, so what is tested is the protocol (docs/adr/0025-stream-session.md); the client's session has its own tests.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import signal
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from gateway.api.session import SessionHub, _Stream
from tests.conftest import RunningGateway, start_gateway
from tests.gateway_helpers import decide_request, stub

TIMEOUT_S = 20.0


class RawSession:
    """One Session stream driven by hand: requests go in through a queue, one per stream message unless batched
    with :meth:`send_batch`; answers are read one at a time, whatever stream message carried them."""

    def __init__(self, target: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel, self.stub = stub(target)
        self._requests: queue.Queue[gateway_pb2.SessionRequest | None] = queue.Queue()
        self._answers: collections.deque[gateway_pb2.SessionAnswer] = collections.deque()
        self.call = self.stub.Session(self._iterate(), timeout=TIMEOUT_S, metadata=metadata)

    def _iterate(self) -> Iterator[gateway_pb2.SessionRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def send(self, rid: int, message: gateway_pb2.DecideRequest | gateway_pb2.ReportResultRequest) -> None:
        self.send_raw(session_message(rid, message))

    def send_raw(self, message: gateway_pb2.SessionMessage) -> None:
        self._requests.put(gateway_pb2.SessionRequest(messages=[message]))

    def send_batch(self, messages: list[gateway_pb2.SessionMessage]) -> None:
        self._requests.put(gateway_pb2.SessionRequest(messages=messages))

    def receive(self) -> gateway_pb2.SessionAnswer:
        while not self._answers:
            self._answers.extend(next(self.call).answers)
        return self._answers.popleft()

    def close(self) -> None:
        self._requests.put(None)

    def rest(self) -> list[gateway_pb2.SessionAnswer]:
        """Half-closes and reads every remaining answer until the stream ends."""
        self.close()
        return [*self._answers, *(answer for response in self.call for answer in response.answers)]

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.call.cancel()
        self.channel.close()


def session_message(
    rid: int, message: gateway_pb2.DecideRequest | gateway_pb2.ReportResultRequest
) -> gateway_pb2.SessionMessage:
    if isinstance(message, gateway_pb2.DecideRequest):
        return gateway_pb2.SessionMessage(id=rid, decide=message)
    return gateway_pb2.SessionMessage(id=rid, report=message)


def one(message: gateway_pb2.SessionMessage) -> gateway_pb2.SessionRequest:
    return gateway_pb2.SessionRequest(messages=[message])


def report(event_id: str) -> gateway_pb2.ReportResultRequest:
    return gateway_pb2.ReportResultRequest(event_id=event_id, status=types_pb2.RESULT_STATUS_SUCCEEDED)


def bad_fields(status: gateway_pb2.SessionStatus) -> list[str]:
    decoded = status_pb2.Status.FromString(status.SerializeToString())  # wire-compatible with google.rpc.Status
    fields = []
    for detail in decoded.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


def journal_rows(path: Path) -> list[tuple[str, str, int, str, str]]:
    """(kind, run_id, step_id, decision, action) of every pre- and post-event, in journal order."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT kind, run_id, step_id, decision, action FROM journal "
            "WHERE kind IN ('pre_exec', 'post_exec', 'violation') ORDER BY seq"
        ).fetchall()
    return [tuple(row) for row in rows]


def count(path: Path, where: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM journal WHERE {where}").fetchone()[0])


def test_decide_and_report_are_answered_by_id(gateway_server: RunningGateway) -> None:
    with RawSession(gateway_server.unix_target) as session:
        session.send(7, decide_request(run_id="run_s1"))
        decided = session.receive()
        assert decided.id == 7 and decided.WhichOneof("result") == "decide"
        assert decided.decide.decision == types_pb2.DECISION_ALLOW and decided.decide.event_id
        session.send(8, report(decided.decide.event_id))
        reported = session.receive()
        assert reported.id == 8 and reported.report.event_id and not reported.report.duplicate
        session.send(9, report(decided.decide.event_id))
        again = session.receive()
        assert again.report.duplicate and again.report.event_id == reported.report.event_id
        assert session.rest() == []
    assert count(gateway_server.journal_path, f"event_id = '{reported.report.event_id}'") == 1


def test_session_and_unary_journal_the_same_events(tmp_path: Path) -> None:
    steps = [
        ("crm.lookup", {"customer_id": "c_1"}),
        ("crm.lookup", {"email": "ann@example.com"}),
        ("refund.create", {"order_id": "o_1", "amount": 5000}),
        ("shell.exec", {"cmd": "rm -rf /"}),
    ]
    journals = {}
    for mode in ("unary", "session"):
        gw = start_gateway(tmp_path / mode)
        try:
            if mode == "unary":
                channel, gateway = stub(gw.unix_target)
                with channel:
                    for n, (action, args) in enumerate(steps, 1):
                        answer = gateway.Decide(decide_request(run_id="run_eq", step_id=n, action=action, args=args))
                        if answer.decision == types_pb2.DECISION_ALLOW:
                            gateway.ReportResult(report(answer.event_id))
            else:
                with RawSession(gw.unix_target) as session:
                    for n, (action, args) in enumerate(steps, 1):
                        session.send(n, decide_request(run_id="run_eq", step_id=n, action=action, args=args))
                        answer = session.receive().decide
                        if answer.decision == types_pb2.DECISION_ALLOW:
                            session.send(100 + n, report(answer.event_id))
                            assert session.receive().WhichOneof("result") == "report"
            journals[mode] = journal_rows(gw.journal_path)
        finally:
            gw.stop()
    assert journals["unary"] == journals["session"]
    assert {row[3] for row in journals["session"]} >= {"allow", "stop"}


def test_concurrent_messages_are_all_answered_once_by_id(gateway_server: RunningGateway) -> None:
    n = 200
    with RawSession(gateway_server.unix_target) as session:
        for i in range(n):
            session.send(i, decide_request(run_id=f"run_c{i % 5}", step_id=i // 5 + 1))
        responses = session.rest()
    ids = [r.id for r in responses]
    assert sorted(ids) == list(range(n))
    assert all(r.WhichOneof("result") == "decide" and r.decide.event_id for r in responses)
    assert count(gateway_server.journal_path, "kind = 'pre_exec' AND run_id LIKE 'run_c%'") == n


def test_invalid_message_gets_its_own_invalid_argument_and_the_stream_goes_on(gateway_server: RunningGateway) -> None:
    with RawSession(gateway_server.unix_target) as session:
        session.send(1, decide_request(run_id=""))
        refused = session.receive()
        assert refused.id == 1 and refused.error.code == code_pb2.INVALID_ARGUMENT
        assert "run_id" in bad_fields(refused.error)
        session.send(2, report("no-such-event"))
        missing = session.receive()
        assert missing.error.code == code_pb2.NOT_FOUND
        session.send(3, decide_request(run_id="run_after_invalid"))
        assert session.receive().decide.decision == types_pb2.DECISION_ALLOW


def test_unary_and_session_name_the_same_violations(gateway_server: RunningGateway) -> None:
    bad = decide_request(run_id="", tenant_id="", action="")
    channel, gateway = stub(gateway_server.unix_target)
    with channel, pytest.raises(grpc.RpcError) as unary:
        gateway.Decide(bad)
    with RawSession(gateway_server.unix_target) as session:
        session.send(1, bad)
        error = session.receive().error
    unary_status = status_pb2.Status.FromString(
        dict(unary.value.trailing_metadata())["grpc-status-details-bin"]  # type: ignore[attr-defined]
    )
    assert error.code == unary_status.code and error.message == unary_status.message
    assert error.SerializeToString() == unary_status.SerializeToString()


def test_invalid_utf8_inside_a_message_is_named_per_message(gateway_server: RunningGateway) -> None:
    def message(rid: int, run_id: str) -> gateway_pb2.SessionMessage:
        return gateway_pb2.SessionMessage(id=rid, decide=decide_request(run_id=run_id))

    def spoiled(request: gateway_pb2.SessionRequest) -> bytes:
        return request.SerializeToString().replace(b"RRRRRRRR", b"RRRRRRR\xff")

    frames = [
        spoiled(gateway_pb2.SessionRequest(messages=[message(5, "R" * 8)])),  # alone in its stream message
        gateway_pb2.SessionRequest(messages=[message(6, "S" * 8)]).SerializeToString(),
        # Beside a good request in one stream message: each element is decoded on its own.
        spoiled(gateway_pb2.SessionRequest(messages=[message(7, "R" * 8), message(8, "T" * 8)])),
    ]
    channel, _ = stub(gateway_server.unix_target)
    with channel:
        call = channel.stream_stream(
            "/agentaudit.v1.GatewayService/Session",
            request_serializer=lambda b: b,
            response_deserializer=gateway_pb2.SessionResponse.FromString,
        )
        answers = {a.id: a for r in call(iter(frames), timeout=TIMEOUT_S) for a in r.answers}
    assert sorted(answers) == [5, 6, 7, 8]
    for refused in (answers[5], answers[7]):
        assert refused.error.code == code_pb2.INVALID_ARGUMENT and bad_fields(refused.error) == ["run_id"]
    assert answers[6].decide.decision == answers[8].decide.decision == types_pb2.DECISION_ALLOW


def test_a_batch_is_processed_as_its_requests_sent_one_by_one(gateway_server: RunningGateway) -> None:
    with RawSession(gateway_server.unix_target) as session:
        session.send_batch([session_message(i, decide_request(run_id="run_batch", step_id=i + 1)) for i in range(20)])
        decided = [session.receive() for _ in range(20)]
        assert sorted(a.id for a in decided) == list(range(20))
        by_id = {a.id: a.decide.event_id for a in decided}
        session.send_batch([session_message(100 + i, report(by_id[i])) for i in range(20)])
        reported = [session.receive() for _ in range(20)]
        assert sorted(a.id for a in reported) == [100 + i for i in range(20)]
        assert all(a.WhichOneof("result") == "report" and not a.report.duplicate for a in reported)
        assert session.rest() == []
    rows = journal_rows(gateway_server.journal_path)
    pre = [row for row in rows if row[1] == "run_batch" and row[0] == "pre_exec"]
    assert [row[2] for row in pre] == list(range(1, 21))  # journaled in the batch's order
    assert count(gateway_server.journal_path, "kind = 'post_exec' AND run_id = 'run_batch'") == 20


def test_an_empty_or_unframed_stream_message_ends_the_stream_invalid_argument(gateway_server: RunningGateway) -> None:
    channel, _ = stub(gateway_server.unix_target)
    with channel:
        call = channel.stream_stream(
            "/agentaudit.v1.GatewayService/Session",
            request_serializer=lambda b: b,
            response_deserializer=gateway_pb2.SessionResponse.FromString,
        )
        for bad in (b"", b"\x0a\x7f\x01"):  # no request at all; a length that runs past the end
            with pytest.raises(grpc.RpcError) as failed:
                list(call(iter([bad]), timeout=TIMEOUT_S))
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_a_request_with_no_message_ends_the_stream_invalid_argument_after_answering_in_flight(
    gateway_server: RunningGateway,
) -> None:
    with RawSession(gateway_server.unix_target) as session:
        session.send_raw(gateway_pb2.SessionMessage(id=1, decide=decide_request(run_id="run_nomsg")))
        session.send_raw(gateway_pb2.SessionMessage(id=2))
        assert session.receive().id == 1  # the message read before the malformed one is answered first
        with pytest.raises(grpc.RpcError) as failed:
            session.receive()
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert count(gateway_server.journal_path, "kind = 'pre_exec' AND run_id = 'run_nomsg'") == 1


def test_an_id_repeated_while_in_flight_ends_the_stream_invalid_argument_after_answering_it(
    gateway_server: RunningGateway,
) -> None:
    # The client sends the same id twice back to back. The repeat is malformed only if the first is still in flight
    # when the server reads it; on a loaded machine the first can be answered before the repeat arrives (then the
    # repeat is a new message, correctly answered). Such an attempt tests nothing, so it is tried again.
    for attempt in range(20):
        run_id = f"run_dup{attempt}"
        first = gateway_pb2.SessionMessage(id=1, decide=decide_request(run_id=run_id))
        with RawSession(gateway_server.unix_target) as session:
            session.send_raw(first)
            session.send_raw(first)
            assert session.receive().id == 1  # the message in flight is answered first
            try:
                again = session.receive()
            except grpc.RpcError as failed:
                assert failed.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
                assert "already in flight" in (failed.details() or "")  # type: ignore[attr-defined]
                # Only the first was processed and journaled.
                assert count(gateway_server.journal_path, f"kind = 'pre_exec' AND run_id = '{run_id}'") == 1
                return
            assert again.id == 1 and again.WhichOneof("result") == "decide"
            assert session.rest() == []
    pytest.fail("in 20 tries the repeated id never arrived while the first was in flight")


def test_server_session_max_in_flight_is_read_and_every_message_still_answered(tmp_path: Path) -> None:
    # The bound itself is tested in process (test_the_reader_stops_reading_at_the_in_flight_bound); here the config
    # key reaches the sidecar (1 in flight) and a client sending 50 at once is held back, never refused.
    gw = start_gateway(tmp_path / "bp", {"AGENTAUDIT_SERVER_SESSION_MAX_IN_FLIGHT": "1"})
    try:
        with RawSession(gw.unix_target) as session:
            for i in range(50):
                session.send(i, decide_request(run_id="run_bp", step_id=i + 1))
            got = [session.receive() for _ in range(50)]
            # With one message in flight the answers come strictly in order.
            assert [r.id for r in got] == list(range(50))
            assert all(r.WhichOneof("result") == "decide" for r in got)
    finally:
        gw.stop()
    assert count(gw.journal_path, "kind = 'pre_exec' AND run_id = 'run_bp'") == 50


def test_sigterm_ends_an_open_session_cleanly_and_refuses_new_ones(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "drain")
    with RawSession(gw.unix_target) as session:
        session.send(1, decide_request(run_id="run_drain"))
        assert session.receive().decide.event_id
        gw.proc.send_signal(signal.SIGTERM)
        ended = threading.Event()
        rest: list[gateway_pb2.SessionAnswer] = []

        def drain() -> None:
            rest.extend(a for response in session.call for a in response.answers)  # ends OK, well before the grace
            ended.set()

        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        assert ended.wait(8.0), "the stream was not ended by the drain"
        assert all(r.error.code == code_pb2.UNAVAILABLE for r in rest)
    assert gw.proc.wait(15) == 0


def test_sigkill_mid_session_loses_no_acknowledged_message(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "kill")
    acked: set[str] = set()
    with RawSession(gw.unix_target) as session:
        for i in range(40):
            session.send(i, decide_request(run_id="run_kill", step_id=i + 1))
        for _ in range(20):
            response = session.receive()
            acked.add(response.decide.event_id)
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        with pytest.raises(grpc.RpcError):
            while True:
                response = session.receive()
                acked.add(response.decide.event_id)
    restarted = start_gateway(tmp_path / "kill")
    try:
        with sqlite3.connect(f"file:{restarted.journal_path}?mode=ro", uri=True) as conn:
            journaled = {row[0] for row in conn.execute("SELECT event_id FROM journal WHERE kind = 'pre_exec'")}
        assert acked and acked <= journaled
    finally:
        restarted.stop()


class _BlockedServicer:
    """Stands in for GatewayServicer: every decide waits until released, so messages stay in flight."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def decide_message(self, request: gateway_pb2.DecideRequest, traceparent: str) -> gateway_pb2.DecideResponse:
        self.calls += 1
        await self.release.wait()
        return gateway_pb2.DecideResponse(event_id=f"evt_{request.step_id}")


def test_the_reader_stops_reading_at_the_in_flight_bound() -> None:
    async def scenario() -> tuple[int, int, int]:
        servicer = _BlockedServicer()
        hub = SessionHub(servicer, max_in_flight=3)  # type: ignore[arg-type]
        stream = _Stream(hub, servicer, "")  # type: ignore[arg-type]
        produced = 0

        async def requests() -> AsyncIterator[list[gateway_pb2.SessionMessage]]:
            nonlocal produced
            for i in range(10):
                produced += 1
                yield [gateway_pb2.SessionMessage(id=i, decide=decide_request(step_id=i + 1))]

        reader = asyncio.create_task(stream.read(requests()))
        for _ in range(100):  # let the reader run as far as it can
            await asyncio.sleep(0)
        at_bound = produced
        servicer.release.set()
        for _ in range(100):
            await asyncio.sleep(0)
        answered_before_release = stream.out.qsize()
        for _ in range(10):  # the handler's part: each answer written frees a slot
            await stream.out.get()
            stream.slots.release()
            for _ in range(20):
                await asyncio.sleep(0)
        await asyncio.wait_for(reader, 5)
        return at_bound, answered_before_release, produced

    at_bound, answered, produced = asyncio.run(scenario())
    assert at_bound == 3  # three in flight, and the fourth not even read
    assert answered == 3
    assert produced == 10


async def _until(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    for _ in range(int(deadline_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_messages_in_flight_when_the_client_hangs_up_still_complete() -> None:
    """A real grpc.aio server with the real hub; the use case blocks until the client has gone."""
    from gateway.api.session import SESSION_METHOD, decode_request  # noqa: PLC0415
    from gateway.rpc.handlers import service_handler  # noqa: PLC0415

    class Servicer(_BlockedServicer):
        completed = 0

        async def decide_message(
            self, request: gateway_pb2.DecideRequest, traceparent: str
        ) -> gateway_pb2.DecideResponse:
            response = await super().decide_message(request, traceparent)
            self.completed += 1  # where the real use case's journal commit would be
            return response

    async def scenario() -> tuple[int, int]:
        servicer = Servicer()
        hub = SessionHub(servicer)  # type: ignore[arg-type]
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [service_handler("agentaudit.v1.GatewayService", {}, bidi={SESSION_METHOD: (hub.handle, decode_request)})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = gateway_pb2_grpc.GatewayServiceStub(channel).Session()
                for i in range(3):
                    await call.write(one(gateway_pb2.SessionMessage(id=i, decide=decide_request(step_id=i + 1))))
                await _until(lambda: servicer.calls == 3)
                call.cancel()
                await _until(lambda: hub.open_streams == 0)  # the server saw the client go
            servicer.release.set()
            async with asyncio.timeout(10):
                await hub.aclose()
            return servicer.calls, servicer.completed
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) == (3, 3)


def test_a_stream_opened_while_the_hub_drains_is_refused_unavailable() -> None:
    """Between SIGTERM's drain and the server's stop a client may still open a stream: it is refused, not served."""
    from gateway.api.session import SESSION_METHOD, decode_request  # noqa: PLC0415
    from gateway.rpc.handlers import service_handler  # noqa: PLC0415

    async def scenario() -> tuple[grpc.StatusCode, int]:
        servicer = _BlockedServicer()
        servicer.release.set()
        hub = SessionHub(servicer)  # type: ignore[arg-type]
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [service_handler("agentaudit.v1.GatewayService", {}, bidi={SESSION_METHOD: (hub.handle, decode_request)})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                hub.drain()
                call = gateway_pb2_grpc.GatewayServiceStub(channel).Session()
                await call.write(one(gateway_pb2.SessionMessage(id=1, decide=decide_request(step_id=1))))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await asyncio.wait_for(call.read(), 10)
                return refused.value.code(), servicer.calls
        finally:
            await server.stop(None)

    code, processed = asyncio.run(scenario())
    assert code is grpc.StatusCode.UNAVAILABLE
    assert processed == 0


_MIX_RUNS = itertools.count()
_KINDS = st.sampled_from(["decide", "decide", "decide", "bad_decide", "unknown_report", "spoiled"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.lists(_KINDS, min_size=1, max_size=12), min_size=1, max_size=8))
def test_any_mix_of_batches_is_answered_once_per_request_as_the_unary_calls_would(
    gateway_server: RunningGateway, frames: list[list[str]]
) -> None:
    """Hypothesis over how requests are cut into stream messages and what they are: every request is answered
    exactly once by its id with the unary call's outcome, every valid decide is journaled once, the rest never."""
    run_id = f"run_mix_{next(_MIX_RUNS)}"  # one run per example, replays included
    expected: dict[int, str] = {}
    wire: list[bytes] = []
    rid = 0
    for frame in frames:
        parts = []
        for kind in frame:
            rid += 1
            expected[rid] = kind
            if kind == "unknown_report":
                message = gateway_pb2.SessionMessage(id=rid, report=report(f"evt_nothing_{rid}"))
            else:
                valid_run = run_id if kind != "bad_decide" else ""  # run_id is required
                spoil = "X" * 8 if kind == "spoiled" else ""
                request = decide_request(run_id=valid_run, step_id=rid, labels={"mark": spoil} if spoil else {})
                message = gateway_pb2.SessionMessage(id=rid, decide=request)
            encoded = message.SerializeToString()
            if kind == "spoiled":  # invalid UTF-8 inside a label: this element alone does not decode
                encoded = encoded.replace(b"XXXXXXXX", b"XXXXXXX\xff")
            parts.append(b"\x0a" + _varint(len(encoded)) + encoded)
        wire.append(b"".join(parts))
    channel, _ = stub(gateway_server.unix_target)
    with channel:
        call = channel.stream_stream(
            "/agentaudit.v1.GatewayService/Session",
            request_serializer=lambda b: b,
            response_deserializer=gateway_pb2.SessionResponse.FromString,
        )
        answers = [a for response in call(iter(wire), timeout=TIMEOUT_S) for a in response.answers]
    assert sorted(a.id for a in answers) == sorted(expected)  # each once
    for answer in answers:
        kind = expected[answer.id]
        if kind == "decide":
            assert answer.WhichOneof("result") == "decide" and answer.decide.event_id
        elif kind == "unknown_report":
            assert answer.error.code == code_pb2.NOT_FOUND
        else:
            assert answer.error.code == code_pb2.INVALID_ARGUMENT
    journaled = count(gateway_server.journal_path, f"kind = 'pre_exec' AND run_id = '{run_id}'")
    assert journaled == sum(kind == "decide" for kind in expected.values())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_a_stream_message_of_more_than_1024_requests_ends_the_stream_invalid_argument(
    gateway_server: RunningGateway,
) -> None:
    with RawSession(gateway_server.unix_target) as session:
        session.send_batch([session_message(i, report(f"evt_none_{i}")) for i in range(1025)])
        with pytest.raises(grpc.RpcError) as failed:
            session.receive()
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "1 to 1024" in (failed.value.details() or "")  # type: ignore[attr-defined]


def test_a_decide_after_a_report_on_the_stream_is_journaled_after_its_post_event(tmp_path: Path) -> None:
    """Step 4's journal half: the report below reads the journal first (its pre-events were decided before a
    restart, so the sidecar caches none), and the decides in the same stream message must not overtake it."""
    directory = tmp_path / "order"
    first = start_gateway(directory)
    try:
        channel, unary = stub(first.unix_target)
        with channel:
            decided = [unary.Decide(decide_request(run_id=f"run_o{i}"), timeout=TIMEOUT_S) for i in range(8)]
    finally:
        first.stop()
    gw = start_gateway(directory)
    try:
        with RawSession(gw.unix_target) as session:
            messages: list[gateway_pb2.SessionMessage] = []
            for i, earlier in enumerate(decided):  # report i, then a decide of run i's next step, and so on
                messages.append(session_message(2 * i + 1, report(earlier.event_id)))
                messages.append(session_message(2 * i + 2, decide_request(run_id=f"run_o{i}", step_id=2)))
            session.send_batch(messages)
            answers = {a.id: a for a in (session.receive() for _ in messages)}
            assert all(a.WhichOneof("result") != "error" for a in answers.values()), answers
        with sqlite3.connect(f"file:{gw.journal_path}?mode=ro", uri=True) as conn:
            seq = dict(conn.execute("SELECT event_id, seq FROM journal"))
        for i in range(len(decided)):
            post, later = answers[2 * i + 1].report.event_id, answers[2 * i + 2].decide.event_id
            assert seq[post] < seq[later], f"run_o{i}: the decide read after the report was journaled before it"
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def restarted_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, list[str]]]:
    """A sidecar restarted after deciding 400 allowed pre-events it never saw reported: it caches none of them, so
    each report of one reads the journal before it appends (the order hole step 4 closes)."""
    directory = tmp_path_factory.mktemp("restarted")
    first = start_gateway(directory)
    try:
        channel, unary = stub(first.unix_target)
        with channel:
            # A tenant each: the example policy limits crm.lookup per tenant, and only allowed steps are reported.
            requests = (decide_request(run_id=f"run_pool_{i}", tenant_id=f"t_pool_{i}") for i in range(400))
            decided = [unary.Decide(request, timeout=TIMEOUT_S) for request in requests]
            pool = [d.event_id for d in decided if d.decision == types_pb2.DECISION_ALLOW]
            assert len(pool) == 400
    finally:
        first.stop()
    gw = start_gateway(directory)
    try:
        yield gw, pool
    finally:
        gw.stop()


_ORDER_KINDS = st.sampled_from(["report_new", "report_new", "report_again", "decide", "decide"])
_ORDER_RUNS = itertools.count()


@settings(max_examples=15, deadline=None)
@given(frames=st.lists(st.lists(_ORDER_KINDS, min_size=1, max_size=8), min_size=1, max_size=6))
def test_every_decide_is_journaled_after_every_report_read_before_it(
    restarted_gateway: tuple[RunningGateway, list[str]], frames: list[list[str]]
) -> None:
    """Hypothesis over how reports (of uncached pre-events, and repeats) and decides are cut into stream messages:
    a decide's pre-event always follows, in the journal, the post-event of every report read before it."""
    gw, pool = restarted_gateway
    run_id = f"run_order_{next(_ORDER_RUNS)}"
    reported: list[str] = []
    batches: list[list[gateway_pb2.SessionMessage]] = []
    kinds: dict[int, str] = {}
    rid = 0
    for frame in frames:
        batch = []
        for drawn in frame:
            kind = drawn
            if kind == "report_again" and not reported:
                kind = "report_new"
            if kind == "report_new" and not pool:
                kind = "decide"
            rid += 1
            kinds[rid] = kind
            if kind == "decide":
                batch.append(session_message(rid, decide_request(run_id=run_id, step_id=rid)))
            else:
                event_id = pool.pop() if kind == "report_new" else reported[-1]
                if kind == "report_new":
                    reported.append(event_id)
                batch.append(session_message(rid, report(event_id)))
        batches.append(batch)
    with RawSession(gw.unix_target) as session:
        for batch in batches:
            session.send_batch(batch)
        answers = {a.id: a for a in (session.receive() for _ in kinds)}
    assert all(a.WhichOneof("result") != "error" for a in answers.values()), answers
    with sqlite3.connect(f"file:{gw.journal_path}?mode=ro", uri=True) as conn:
        seq = dict(conn.execute("SELECT event_id, seq FROM journal"))
    latest_post = -1  # the highest post-event seq of the reports read so far on this stream
    for rid in sorted(kinds):
        answer = answers[rid]
        if kinds[rid] == "decide":
            assert seq[answer.decide.event_id] > latest_post, f"decide {rid} journaled before an earlier report"
        else:
            latest_post = max(latest_post, seq[answer.report.event_id])
