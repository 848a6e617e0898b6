"""A scripted collector end of the control stream (a real grpc.aio server) and a real in-process sidecar for it.

:class:`ScriptedCollector` speaks ``ControlService.Connect`` exactly as the protocol says (challenge, verified
hello, signed messages) but sends only what a test puts in front of it, so a test can send forged, replayed and
expired messages that no real collector would. It records every hello, acknowledgement and report it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from agentaudit.v1 import control_pb2, control_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from gateway import devenv
from gateway.app import Sidecar
from gateway.collector.control_service import KEEPALIVE_OPTIONS
from gateway.config import Config, ControlConfig
from gateway.control.message import KILL_SWITCH_SET, Hello, sign_control, verify_hello
from gateway.signing import Ed25519Signer, load_signer
from tests.gateway_helpers import decide_request
from tests.helpers import eventually_async

CONTROL_KEY = Ed25519Signer("control.test/collector", bytes([9]) * 32)
FORGER = Ed25519Signer("control.test/collector", bytes([8]) * 32)  # same name, another key


class ScriptedCollector(control_pb2_grpc.ControlServiceServicer):
    """One ControlService whose streams send what :meth:`send` queues; :meth:`cut` ends every open stream."""

    def __init__(self, key: Ed25519Signer = CONTROL_KEY) -> None:
        self.key = key
        self.origin_keys: list[Any] = []
        self.hellos: list[Hello] = []
        self.acks: list[control_pb2.ControlAck] = []
        self.reports: list[control_pb2.JournalEntry] = []
        self.streams = 0
        self.open_streams = 0
        # Sent first on every stream: a complete set with these switches, as of the hello's applied seq.
        self.initial_set: list[tuple[str, str, str]] | None = None
        self.head = 0
        self.nonces: list[bytes] = []
        self._outboxes: list[asyncio.Queue[tuple[bytes, bytes] | None]] = []
        self.accepting = True

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        if not self.accepting:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: not accepting")
        nonce = os.urandom(32)
        await context.write(
            control_pb2.ConnectResponse(challenge=control_pb2.ControlChallenge(nonce=nonce, collector=self.key.name))
        )
        first = await context.read()
        hello = verify_hello(
            first.hello.body, first.hello.signature, collector=self.key.name, nonce=nonce, verifiers=self.origin_keys
        )
        self.hellos.append(hello)
        self.nonces.append(nonce)
        outbox: asyncio.Queue[tuple[bytes, bytes] | None] = asyncio.Queue()
        self._outboxes.append(outbox)
        self.streams += 1
        self.open_streams += 1
        reader = asyncio.create_task(self._read(context))
        try:
            if self.initial_set is not None:
                fields = {**switch_set(*self.initial_set), "head": self.head, "nonce": nonce.hex()}
                body, signature = self.message(hello.origin, hello.applied_seq, KILL_SWITCH_SET, fields)
                await context.write(
                    control_pb2.ConnectResponse(control=control_pb2.SignedControl(body=body, signature=signature))
                )
            while True:
                item = await outbox.get()
                if item is None:
                    return
                await context.write(
                    control_pb2.ConnectResponse(control=control_pb2.SignedControl(body=item[0], signature=item[1]))
                )
        finally:
            self.open_streams -= 1
            self._outboxes.remove(outbox)
            reader.cancel()

    async def _read(self, context: grpc.aio.ServicerContext) -> None:
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            if request.HasField("ack"):
                self.acks.append(request.ack)
            elif request.HasField("report"):
                self.reports.extend(request.report.entries)

    def message(
        self,
        origin: str,
        seq: int,
        kind: str,
        fields: dict[str, Any],
        *,
        signer: Ed25519Signer | None = None,
        ttl_s: float = 60.0,
        now_ns: int = 0,
    ) -> tuple[bytes, bytes]:
        return sign_control(signer or self.key, origin, seq, kind, fields, ttl_s=ttl_s, now_ns=now_ns)

    def set_message(
        self, origin: str, seq: int, *switches: tuple[str, str, str], head: int = 0, nonce: bytes | None = None
    ) -> tuple[bytes, bytes]:
        """A complete set for the newest stream (or the stream of ``nonce``)."""
        fields = {**switch_set(*switches), "head": head or seq, "nonce": (nonce or self.nonces[-1]).hex()}
        return self.message(origin, seq, KILL_SWITCH_SET, fields)

    def send(self, item: tuple[bytes, bytes]) -> None:
        """Sends one signed message on every open stream."""
        for outbox in self._outboxes:
            outbox.put_nowait(item)

    def cut(self) -> None:
        """Ends every open stream (the collector going away, from the sidecar's point of view)."""
        for outbox in list(self._outboxes):
            outbox.put_nowait(None)

    def acked(self, seq: int) -> list[control_pb2.ControlAck]:
        return [a for a in self.acks if a.seq == seq]

    async def ack_of(self, seq: int, count: int = 1) -> control_pb2.ControlAck:
        await eventually_async(lambda: len(self.acked(seq)) >= count, message=f"ack {count} of seq {seq}")
        return self.acked(seq)[count - 1]


@asynccontextmanager
async def scripted_server(directory: Path, collector: ScriptedCollector, *, tcp: bool = False) -> AsyncIterator[str]:
    """Serves ``collector`` on a unix socket in ``directory`` (or loopback TCP); yields its address. The server
    takes pings as the collector's listener does (``KEEPALIVE_OPTIONS``)."""
    server = grpc.aio.server(options=KEEPALIVE_OPTIONS)
    control_pb2_grpc.add_ControlServiceServicer_to_server(collector, server)
    address = f"unix://{directory / 'control.sock'}"
    if tcp:
        address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    else:
        server.add_insecure_port(address)
    await server.start()
    try:
        yield address
    finally:
        collector.cut()
        await server.stop(0.5)


def switch_set(*switches: tuple[str, str, str]) -> dict[str, Any]:
    """A kill_switch_set's fields: (scope, target, reason) each."""
    return {
        "switches": [
            {"scope": s, "target": t, "reason": r, "operator": "ops@example.com", "channel": "cli", "engaged_ms": 1}
            for s, t, r in switches
        ]
    }


def sidecar_config(directory: Path, collector_address: str, **control: Any) -> Config:
    """A dev directory's configuration with forwarding off and the control channel to ``collector_address``."""
    cfg, _ = devenv.prepare(
        directory,
        [f"unix://{directory / 'gw.sock'}"],
        {"AGENTAUDIT_FORWARD_TARGET": ""},
        operator_listen=[f"unix://{directory / 'op.sock'}"],
    )
    settings = {
        "enabled": True,
        "collector": collector_address,
        "control_key": CONTROL_KEY.verifier.encode(),
        "connect_wait_s": 5.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        **control,
    }
    return dataclasses.replace(cfg, control=ControlConfig(**settings))


def origin_signer(directory: Path) -> Ed25519Signer:
    return load_signer(directory / "signing.key")


@asynccontextmanager
async def running_sidecar(cfg: Config) -> AsyncIterator[Sidecar]:
    sidecar = Sidecar(cfg)
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.aclose()


async def decide(sidecar: Sidecar, **fields: Any) -> gateway_pb2.DecideResponse:
    async with grpc.aio.insecure_channel(sidecar.bound[0]) as channel:
        reply: gateway_pb2.DecideResponse = await gateway_pb2_grpc.GatewayServiceStub(channel).Decide(
            decide_request(**fields), timeout=30
        )
        return reply


class Partition:
    """A TCP relay to the collector that can go silent without closing anything: a network partition (a hand-
    written stand-in for the network, the one thing outside the project here)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.silent = False
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.tasks.add(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if not self.silent:  # silent: bytes are swallowed, no side learns anything
                    dst.write(data)
                    await dst.drain()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.server is not None:
            self.server.close()
