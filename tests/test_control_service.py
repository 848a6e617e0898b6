"""The collector's control stream (ControlService.Connect), against a real in-process :class:`Collector` on SQLite
and PostgreSQL, with a scripted sidecar end written here on :mod:`gateway.control.message`: the hello and its
refusals, the kill-switch set first, acts as they happen (votes only to their origin), resends after a
reconnect, reports, two replicas on one database, and a stream replaced by the next one for its origin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentaudit.v1 import collector_pb2, control_pb2, control_pb2_grpc
from gateway.canonical import canonical_json
from gateway.collector.app import Collector
from gateway.collector.control_service import SERVICE_NAME
from gateway.collector.fleet import FleetControl
from gateway.config import CollectorConfig
from gateway.control import message as m
from gateway.identity import Operator
from gateway.signing import Ed25519Signer, write_secret_file
from tests.control_helpers import Partition
from tests.fleet_helpers import CONTROL, ORIGIN, OTHER, SidecarJournal, journal_key
from tests.gateway_helpers import bad_request_fields

WITNESS = Ed25519Signer("fleet.test/witness", bytes([5]) * 32)
ADMIN = Operator("carol", frozenset({"admin"}))
ALICE = Operator("alice", frozenset({"approver"}))
TIMEOUT_S = 20.0  # generous: the machine is shared; a delay is printed, never a pass/fail


def collector_config(directory: Path, store: str) -> CollectorConfig:
    """Keys and the two sidecars' public keys in ``directory``; the collector's configuration."""
    directory.mkdir(exist_ok=True)
    write_secret_file(directory / "witness.key", WITNESS.encode_private() + "\n")
    write_secret_file(directory / "control.key", CONTROL.encode_private() + "\n")
    origins = []
    for i, origin in enumerate((ORIGIN, OTHER)):
        (directory / f"sidecar-{i}.pub").write_text(journal_key(origin).verifier.encode() + "\n")
        origins.append((origin, (directory / f"sidecar-{i}.pub",)))
    return CollectorConfig(
        listen=("127.0.0.1:0",),
        store=store,
        witness_key=directory / "witness.key",
        control_key=directory / "control.key",
        origins=tuple(origins),
    )


@asynccontextmanager
async def collector(directory: Path, store: str) -> AsyncIterator[Collector]:
    """A real collector (gRPC listener, fleet tables, control streams) on this event loop."""
    c = Collector(collector_config(directory, store))
    await c.start()
    try:
        yield c
    finally:
        await c.aclose()


def fleet_of(c: Collector) -> FleetControl:
    assert c.fleet is not None
    return c.fleet


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_database"))
    return f"sqlite:///{tmp_path / 'collector.db'}"


class Sidecar:
    """The sidecar's end of one control stream, scripted: it believes only what ControlVerifier believes.

    After the challenge, one task reads the stream into a queue (a message, or the stream's final status)."""

    def __init__(self, target: str, origin: str = ORIGIN, *, applied_seq: int = 0) -> None:
        self.key = journal_key(origin)
        self.channel = grpc.aio.insecure_channel(target)
        self.call: Any = control_pb2_grpc.ControlServiceStub(self.channel).Connect()
        self.verifier = m.ControlVerifier(CONTROL.verifier, origin, applied_seq)
        self.nonce = b""
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def challenge(self) -> control_pb2.ControlChallenge:
        first = await asyncio.wait_for(self.call.read(), TIMEOUT_S)
        assert first.WhichOneof("message") == "challenge"
        assert len(first.challenge.nonce) == 32 and first.challenge.collector == CONTROL.name
        self.nonce = first.challenge.nonce
        self._reader = asyncio.create_task(self._read())
        return first.challenge  # type: ignore[no-any-return]

    async def _read(self) -> None:
        try:
            while (got := await self.call.read()) is not grpc.aio.EOF:
                await self.inbox.put(got)
            await self.inbox.put((grpc.StatusCode.OK, ""))
        except grpc.aio.AioRpcError as exc:
            await self.inbox.put(exc)

    async def hello(self, key: Ed25519Signer | None = None, **overrides: Any) -> None:
        """Answers the challenge (signed by ``key``, by default the origin's journal key)."""
        challenge = await self.challenge()
        signer = key or self.key
        body, sig = m.sign_hello(signer, challenge.collector, challenge.nonce, self.verifier.applied_seq)
        if overrides:  # a body the real signer would not write, signed as the sidecar would
            body = canonical_json({**json.loads(body), **overrides})
            sig = signer.sign(m._HELLO_DOMAIN + body)  # forging a hello on purpose
        await self.call.write(control_pb2.ConnectRequest(hello=control_pb2.ControlHello(body=body, signature=sig)))

    async def connect(self) -> m.ControlMessage:
        """Hello, then the kill-switch set (which must come first)."""
        await self.hello()
        first = await self.receive()
        assert first.kind == m.KILL_SWITCH_SET, first
        return first

    async def receive(self, timeout_s: float = TIMEOUT_S, *, ack: bool = True) -> m.ControlMessage:
        response = await asyncio.wait_for(self.inbox.get(), timeout_s)
        assert isinstance(response, control_pb2.ConnectResponse), f"the stream ended: {response}"
        assert response.WhichOneof("message") == "control"
        msg = self.verifier.verify(response.control.body, response.control.signature, stream_nonce=self.nonce)
        self.verifier.applied(msg.seq)
        if ack:
            await self.ack(msg.seq)
        return msg

    async def nothing_within(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self.inbox.empty(), f"unexpected: {self.inbox.get_nowait()}"

    async def ack(self, seq: int, refused: str = "", message: str = "") -> None:
        ack = control_pb2.ControlAck(seq=seq, refused=refused, message=message)
        await self.call.write(control_pb2.ConnectRequest(ack=ack))

    async def report(self, rows: list[tuple[int, bytes, bytes]]) -> None:
        entries = [collector_pb2.JournalEntry(seq=s, entry=e, signature=g) for s, e, g in rows]
        await self.call.write(control_pb2.ConnectRequest(report=control_pb2.ControlReport(entries=entries)))

    async def end(self) -> grpc.aio.AioRpcError | tuple[grpc.StatusCode, str]:
        """Skips messages to the end of the stream: the error it ended with (or OK)."""
        while True:
            got = await asyncio.wait_for(self.inbox.get(), TIMEOUT_S)
            if not isinstance(got, control_pb2.ConnectResponse):
                return got  # type: ignore[no-any-return]

    async def status(self) -> tuple[grpc.StatusCode, str]:
        got = await self.end()
        return got if isinstance(got, tuple) else (got.code(), str(got.details()))

    async def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.channel.close()


@asynccontextmanager
async def sidecar(target: str, origin: str = ORIGIN, *, applied_seq: int = 0) -> AsyncIterator[Sidecar]:
    s = Sidecar(target, origin, applied_seq=applied_seq)
    try:
        yield s
    finally:
        await s.close()


async def until(check: Any, what: str, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} after {timeout_s} s")


async def connected(fleet: FleetControl, origin: str, expected: bool = True) -> Any:
    async def check() -> Any:
        return next((o for o in await fleet.origins() if o.origin == origin and o.connected is expected), None)

    return await until(check, f"{origin} connected is not {expected}")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 180))


# --- the hello ----------------------------------------------------------------------------------------------------


def test_hello_accepted_and_the_complete_set_comes_first(tmp_path: Path, store_url: str) -> None:
    async def scenario() -> None:
        async with collector(tmp_path / "c", store_url) as c:
            fleet = fleet_of(c)
            await fleet.engage_switch("tenant", "t_42", "fraud wave", ADMIN, "cli")
            await fleet.engage_switch("global", "", "all stop", ADMIN, "cli")
            async with sidecar(c.bound[0]) as s:
                first = await s.connect()
                assert first.seq == 0 and first.body["head"] == 2 and first.body["nonce"] == s.nonce.hex()
                assert [(w["scope"], w["target"], w["reason"], w["operator"]) for w in first.body["switches"]] == [
                    ("global", "", "all stop", "carol"),
                    ("tenant", "t_42", "fraud wave", "carol"),
                ]
                # the switches engaged before are in the set: they are not sent again after it
                await s.nothing_within(1.5)
                status = await connected(fleet, ORIGIN)
                assert status.replica == fleet.replica
                assert c.control is not None and c.control.connected() == [ORIGIN]
            await connected(fleet, ORIGIN, False)
            assert c.control.connected() == []

    run(scenario())


def test_refused_hellos_get_precise_statuses_and_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.collector.control_service")

    async def refused(target: str, **hello: Any) -> tuple[grpc.StatusCode, str]:
        async with sidecar(target) as s:
            await s.hello(**hello)
            return await s.status()

    async def scenario() -> None:
        async with collector(tmp_path / "c", f"sqlite:///{tmp_path / 'c.db'}") as c:
            target = c.bound[0]
            # signed by a key that is not the origin's
            forged = Ed25519Signer(ORIGIN, bytes([9]) * 32)
            code, details = await refused(target, key=forged)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "forged" in details and ORIGIN in details
            # the other sidecar's key, claiming this origin
            impostor = Ed25519Signer(ORIGIN, (OTHER.encode() * 32)[:32])
            assert (await refused(target, key=impostor))[0] == grpc.StatusCode.UNAUTHENTICATED
            # the real key, claiming the other origin
            code, details = await refused(target, origin=OTHER)
            assert code == grpc.StatusCode.UNAUTHENTICATED and OTHER in details
            # an origin the collector does not know
            code, details = await refused(target, key=Ed25519Signer("fleet.test/nobody", bytes([3]) * 32))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "not registered" in details
            # a clock ten minutes off
            code, details = await refused(target, time_ms=int(time.time() * 1000) - 600_000)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "stale" in details
            # an answer to another stream's challenge
            code, details = await refused(target, nonce=(b"\x00" * 32).hex())
            assert code == grpc.StatusCode.UNAUTHENTICATED and "challenge" in details
            assert c.control is not None and c.control.connected() == []
            assert c.control.refused_hellos == {"forged": 4, "unknown_origin": 1, "stale": 1}
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("refused (forged)" in line and repr(ORIGIN) in line for line in lines) == 3
        assert any("refused (forged)" in line and repr(OTHER) in line for line in lines)
        assert any("refused (unknown_origin)" in line and "fleet.test/nobody" in line for line in lines)
        assert any("refused (stale)" in line and "120 s" in line for line in lines)
        secrets = [k.encode_private() for k in (forged, impostor, journal_key(ORIGIN), CONTROL)]
        assert not any(secret in caplog.text for secret in secrets)

    run(scenario())


def test_malformed_first_messages_are_invalid_argument_naming_the_field(tmp_path: Path) -> None:
    async def first_message(target: str, request: control_pb2.ConnectRequest) -> list[str]:
        async with sidecar(target) as s:
            await s.challenge()
            await s.call.write(request)
            error = await s.end()
            assert isinstance(error, grpc.aio.AioRpcError), error
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            return bad_request_fields(error)

    async def scenario() -> None:
        async with collector(tmp_path / "c", f"sqlite:///{tmp_path / 'c.db'}") as c:
            target = c.bound[0]
            ack = control_pb2.ConnectRequest(ack=control_pb2.ControlAck(seq=1))
            assert await first_message(target, ack) == ["hello"]
            bad = control_pb2.ControlHello(body=b"", signature=b"short")
            assert await first_message(target, control_pb2.ConnectRequest(hello=bad)) == [
                "hello.body", "hello.signature",
            ]  # fmt: skip
            not_json = control_pb2.ControlHello(body=b"[1]", signature=b"s" * 64)
            assert await first_message(target, control_pb2.ConnectRequest(hello=not_json)) == ["hello.body"]

    run(scenario())


# --- collector → sidecar ------------------------------------------------------------------------------------------


def test_an_engage_reaches_the_stream_and_votes_go_only_to_their_origin(tmp_path: Path, store_url: str) -> None:
    async def scenario() -> None:
        async with collector(tmp_path / "c", store_url) as c:
            fleet = fleet_of(c)
            async with sidecar(c.bound[0]) as one, sidecar(c.bound[0], OTHER) as two:
                await one.connect()
                await two.connect()
                await connected(fleet, OTHER)

                started = time.perf_counter()
                await fleet.engage_switch("tenant", "t_42", "fraud wave", ADMIN, "cli")
                got = [await one.receive(), await two.receive()]
                delay = time.perf_counter() - started
                print(f"\nengage → both streams ({store_url.split(':', 1)[0]}): {delay * 1000:.1f} ms")
                for msg in got:
                    assert msg.kind == m.KILL_SWITCH
                    assert (msg.body["action"], msg.body["scope"], msg.body["target"]) == ("engage", "tenant", "t_42")
                    assert msg.body["operator"] == "carol" and msg.body["act"] == msg.seq == 1
                assert delay < TIMEOUT_S

                # an approval of sidecar one, reported on its stream, answered centrally
                journal = SidecarJournal(journal_key(ORIGIN))
                await one.report([journal.open_approval("apr_1")])
                await until(fleet.list_approvals, "the reported approval is not listed")
                await fleet.vote("apr_1", grant=True, operator=ALICE, comment="ok", channel="cli")
                vote = await one.receive()
                assert vote.kind == m.APPROVAL_VOTE and vote.seq == 2
                assert (vote.body["approval_id"], vote.body["grant"], vote.body["approver"]) == ("apr_1", True, "alice")
                await fleet.release_switch("tenant", "t_42", "", ADMIN, "cli")
                released = await two.receive()  # the vote was not for two: its next message is the release
                assert (released.kind, released.seq, released.body["action"]) == (m.KILL_SWITCH, 3, "release")
                assert (await one.receive()).seq == 3

    run(scenario())


def test_a_reconnect_gets_only_what_it_has_not_applied(tmp_path: Path, store_url: str) -> None:
    async def scenario() -> None:
        async with collector(tmp_path / "c", store_url) as c:
            fleet = fleet_of(c)
            journal = SidecarJournal(journal_key(ORIGIN))
            await fleet.record_entries(ORIGIN, [journal.open_approval("apr_1"), journal.open_approval("apr_2")])
            await fleet.engage_switch("tenant", "t_1", "one", ADMIN, "cli")  # act 1
            await fleet.vote("apr_1", grant=True, operator=ALICE, comment="", channel="cli")  # act 2
            await fleet.engage_switch("tenant", "t_2", "two", ADMIN, "cli")  # act 3
            await fleet.vote("apr_2", grant=False, operator=ALICE, comment="no", channel="cli")  # act 4
            await fleet.release_switch("tenant", "t_1", "", ADMIN, "cli")  # act 5

            async with sidecar(c.bound[0], applied_seq=0) as fresh:
                first = await fresh.connect()
                assert (first.seq, first.body["head"]) == (0, 5)
                assert [w["target"] for w in first.body["switches"]] == ["t_2"]
                # both votes (the set does not hold votes); none of the kill-switch acts (the set holds them)
                assert [(x.seq, x.kind) for x in [await fresh.receive(), await fresh.receive()]] == [
                    (2, m.APPROVAL_VOTE), (4, m.APPROVAL_VOTE),
                ]  # fmt: skip
                await fresh.nothing_within(1.0)

                async def applied_recorded() -> bool:  # acks are written at most every ACK_RECORD_S
                    return any(o.applied_seq == 4 and o.connected for o in await fleet.origins())

                await until(applied_recorded, "the acks are not recorded in fleet_origins")
            await connected(fleet, ORIGIN, False)
            status = next(o for o in await fleet.origins() if o.origin == ORIGIN)
            assert status.applied_seq == 4  # from its acks

            async with sidecar(c.bound[0], applied_seq=2) as again:
                first = await again.connect()  # believed at seq 2 == applied_seq (ControlVerifier's set rule)
                assert (first.seq, first.body["head"]) == (2, 5)
                assert (await again.receive()).seq == 4  # only the newer vote
                await again.nothing_within(1.0)
                await fleet.engage_switch("agent", "billing-bot", "three", ADMIN, "cli")
                assert (await again.receive()).seq == 6

            async with sidecar(c.bound[0], applied_seq=6) as current:
                first = await current.connect()
                assert (first.seq, first.body["head"]) == (6, 6)
                await current.nothing_within(1.0)

    run(scenario())


# --- sidecar → collector ------------------------------------------------------------------------------------------


def test_reports_are_recorded_and_forged_entries_refused(
    tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "gateway.collector.control_service")

    async def scenario() -> None:
        async with collector(tmp_path / "c", store_url) as c:
            fleet = fleet_of(c)
            async with sidecar(c.bound[0]) as s:
                await s.connect()
                journal = SidecarJournal(journal_key(ORIGIN))
                await s.report([journal.open_approval("apr_real")])
                listed = await until(fleet.list_approvals, "the reported approval is not listed")
                assert [(a.approval_id, a.origin, a.state) for a in listed] == [("apr_real", ORIGIN, "pending")]

                forger = SidecarJournal(Ed25519Signer(ORIGIN, bytes([9]) * 32))
                await s.report([forger.open_approval("apr_forged")])
                await until(lambda: _true(fleet.refused_entries >= 1), "the forged entry is not refused")
                assert [a.approval_id for a in await fleet.list_approvals(state="")] == ["apr_real"]

                await s.ack(77, "approval_already_resolved", "resolved locally first")
                await s.ack(78, "Bad Word!")  # not a word: the stream ends INVALID_ARGUMENT
                code, details = await s.status()
                assert code == grpc.StatusCode.INVALID_ARGUMENT and "ack.refused" in details
        assert any("1 reported entry refused" in r.getMessage() for r in caplog.records)
        assert any(
            "message 77 refused (approval_already_resolved): resolved locally first" in r.getMessage()
            for r in caplog.records
        )

    run(scenario())


async def _true(value: bool) -> bool:
    return value


# --- replicas and replacement -------------------------------------------------------------------------------------


def test_an_act_through_replica_a_reaches_a_stream_on_replica_b(tmp_path: Path, postgres_database: str) -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(collector(tmp_path / "a", postgres_database))
            b = await stack.enter_async_context(collector(tmp_path / "b", postgres_database))
            fleet_a, fleet_b = fleet_of(a), fleet_of(b)
            fleet_b.replica = "replica-b"  # two collectors in one process: tell their rows apart
            s = await stack.enter_async_context(sidecar(b.bound[0]))
            await s.connect()
            assert (await connected(fleet_a, ORIGIN)).replica == "replica-b"
            delays = []
            for i in range(5):
                started = time.perf_counter()
                await fleet_a.engage_switch("tenant", f"t_{i}", "via a", ADMIN, "cli")
                msg = await s.receive()
                delays.append(time.perf_counter() - started)
                assert (msg.kind, msg.body["target"]) == (m.KILL_SWITCH, f"t_{i}")
            delays.sort()
            print(
                f"\nengage on replica A → stream on replica B (LISTEN/NOTIFY), 5 acts: "
                f"median {delays[2] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms"
            )

    run(scenario())


def test_a_second_stream_for_an_origin_replaces_the_first(tmp_path: Path, store_url: str) -> None:
    async def scenario() -> None:
        async with collector(tmp_path / "c", store_url) as c:
            fleet = fleet_of(c)
            async with sidecar(c.bound[0]) as old, sidecar(c.bound[0]) as new:
                await old.connect()
                await connected(fleet, ORIGIN)
                await new.connect()
                code, details = await old.status()
                assert code == grpc.StatusCode.ABORTED and "replaced" in details
                assert c.control is not None and c.control.connected() == [ORIGIN]
                await asyncio.sleep(0.2)
                assert (await connected(fleet, ORIGIN)).connected  # the old one's end did not mark it gone
                await fleet.engage_switch("global", "", "stop", ADMIN, "cli")
                assert (await new.receive()).kind == m.KILL_SWITCH

    run(scenario())


def test_the_control_service_is_in_health_and_reflection(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: PLC0415

    async def scenario() -> None:
        async with (
            collector(tmp_path / "c", f"sqlite:///{tmp_path / 'c.db'}") as c,
            grpc.aio.insecure_channel(c.bound[0]) as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT_S)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            async for reply in call:
                names = {s.name for s in reply.list_services_response.service}
                assert SERVICE_NAME in names and "agentaudit.v1.CollectorService" in names
                break

    run(scenario())


def test_a_sidecar_behind_a_silent_partition_is_noticed_by_keepalive(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with collector(tmp_path / "c", f"sqlite:///{tmp_path / 'c.db'}") as c:
            fleet = fleet_of(c)
            partition = Partition(c.bound[0])
            try:
                async with sidecar(await partition.start()) as s:
                    await s.connect()
                    await connected(fleet, ORIGIN)
                    partition.silent = True
                    cut = time.perf_counter()
                    await until(
                        lambda: _true(c.control is not None and c.control.connected() == []),
                        "the collector still holds the partitioned stream",
                        timeout_s=45,  # keepalive 10 s + 10 s; gRPC's defaults (2 h, or a 60 s ping timeout) fail
                    )
                    noticed = time.perf_counter() - cut
                    await connected(fleet, ORIGIN, False)
                    print(f"\nsilent partition noticed by the collector's keepalive after {noticed:.1f} s")
            finally:
                await partition.close()

    run(scenario())
