"""The sidecar's end of the fleet control channel (ADR 0016; docs/fleet.md, "The sidecar's side").

One task owns one long-lived ``ControlService.Connect`` stream to the collector, opened by the sidecar, and
reopens it after any failure with exponential backoff and full jitter (``control.backoff_initial_s`` doubling up
to ``control.backoff_max_s``). On each stream:

1. The collector sends a challenge naming its control key; a collector other than the pinned one is refused (the
   stream is closed and retried later).
2. The sidecar answers with a hello signed by its journal key, carrying ``applied_seq``: the highest control seq
   it has applied, derived on start from its own signed journal events (``state.SignedStateFold``), so a restart
   cannot be fed an old message again.
3. Every control message is checked by :class:`~gateway.control.message.ControlVerifier` (signed by the pinned
   key, for this origin, unexpired) and for replay by kind, then applied, journaled by the sidecar as its own
   signed event in the same transaction as the state change (``via`` = the collector, ``control_seq``), and only
   then acknowledged. A refused message changes nothing; it is logged at WARNING and acknowledged with its word.
4. Approval journal entries are pushed up as ``ControlReport`` right after they commit, from a bounded queue
   (full: the entry is left to forwarding, which delivers it anyway, and counted).

Replay, by kind. Sequence numbers are the fleet's, so a sidecar sees gaps but never a repeat. ``applied_seq``
counts votes and single switch changes; ``switch_seq`` how far the switch state applied reaches (a change, or a
complete set's ``head``). A ``kill_switch_set`` is a snapshot the collector makes for one stream: it carries the
hello's ``applied_seq`` as its seq (the acts sent after it are all above it) and the stream's challenge as its
``nonce``, so it is believed at that seq, only on that stream, and does not move ``applied_seq`` (votes issued
before its head may still be due). A ``kill_switch`` change must be newer than both; a vote newer than
``applied_seq``.

What Decide sees (:meth:`ControlClient.blocked`, one monotonic comparison): until the first complete set after
start has been applied, Decide waits up to ``control.connect_wait_s`` (:meth:`ControlClient.wait_ready`) and then
stops with ``control_plane_unreachable``; with ``control.max_staleness_s`` set, it also stops once the stream has
been down for longer than that, until the next set arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import grpc

from agentaudit.v1 import collector_pb2, control_pb2, control_pb2_grpc
from gateway import metrics
from gateway.config.sidecar import CollectorTlsClientConfig
from gateway.control.message import (
    APPROVAL_VOTE,
    KILL_SWITCH,
    KILL_SWITCH_SET,
    REPLAYED,
    ControlMessage,
    ControlRefusedError,
    ControlVerifier,
    sign_hello,
)
from gateway.errors import (
    AgentAuditError,
    FailedPreconditionError,
    InvalidRequestError,
    JournalUnavailableError,
    NotFoundError,
    PermissionDeniedError,
)
from gateway.identity import Operator
from gateway.journal.store import JournalReader
from gateway.rpc.net import collector_channel
from gateway.sidecar.approvals import ApprovalBook
from gateway.sidecar.killswitch import KillSwitchBoard
from gateway.signing import Ed25519Signer, Verifier

log = logging.getLogger(__name__)

REPORT_QUEUE_MAX = 10_000
"""Approval entries waiting to be pushed; beyond this, forwarding delivers them (counted as dropped)."""
REPORT_BATCH_MAX = 256
MAX_ACK_MESSAGE_BYTES = 1000
SCOPES = ("global", "tenant", "agent", "run")
HEALTH_COMPONENT = "control"
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # the stubs do not declare it


class _StreamError(Exception):
    """The stream cannot continue (protocol violation, wrong collector): close it and reconnect later."""


def _seq_of(body: bytes) -> int:
    """The seq a (possibly forged) message claims, to acknowledge it by (0 if it has none)."""
    try:
        seq = json.loads(body).get("seq", 0)
    except (ValueError, UnicodeDecodeError, AttributeError):
        return 0
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63 else 0


def _refusal_word(exc: AgentAuditError) -> str:
    """The ``ControlAck.refused`` word of a change the sidecar refused (``approval_already_resolved``, ...)."""
    reason = getattr(exc, "reason", "")
    if reason:
        return str(reason)
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, PermissionDeniedError):
        return "permission_denied"
    if isinstance(exc, InvalidRequestError):
        return "invalid"
    return "failed_precondition"


def keepalive_options(keepalive_s: float) -> list[tuple[str, int]]:
    """Channel options for the sidecar's own keepalive pings on the control stream.

    Without them a silent partition (nothing closed, nothing delivered) leaves the stream looking open forever:
    the collector's keepalive drops its end, but that close never reaches the sidecar, which goes on reporting
    ``connected`` and never applies ``max_staleness_s``. A ping unanswered within ``keepalive_s`` closes the
    connection (``http2.ping_timeout_ms`` too: a keepalive ping queued behind an unanswered BDP ping would otherwise
    wait for that one's default minute). The collector accepts a ping at most every 5 s on a quiet connection.
    """
    ms = int(keepalive_s * 1000)
    return [
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        ("grpc.http2.ping_timeout_ms", ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class ControlClient:
    """The control stream's owner: connects, applies what the collector relays, reports approval entries.

    Args:
        target: the collector's address (``unix:///path`` or ``HOST:PORT``).
        tls: ``forward.tls``, for a TCP target.
        pinned: the collector's control public key; its name is the collector's name (``via``).
        signer: the journal key (the hello proves this origin).
        applied_seq, switch_seq: what the journal says was applied from this collector (see the module doc).
    """

    def __init__(
        self,
        target: str,
        tls: CollectorTlsClientConfig | None,
        pinned: Verifier,
        signer: Ed25519Signer,
        reader: JournalReader,
        switches: KillSwitchBoard,
        approvals: ApprovalBook,
        *,
        applied_seq: int = 0,
        switch_seq: int = 0,
        max_staleness_s: float = 0.0,
        connect_wait_s: float = 5.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        keepalive_s: float = 10.0,
        on_health: Callable[[str], None] | None = None,
        report_queue_max: int = REPORT_QUEUE_MAX,
    ) -> None:
        self._target = target
        self._tls = tls
        self.collector = pinned.name
        self._signer = signer
        self._reader = reader
        self._switches = switches
        self._approvals = approvals
        # Signature, origin and expiry; replay is checked below by kind (a set may repeat the newest seq).
        self._verifier = ControlVerifier(pinned, signer.name, applied_seq=-1)
        self.applied_seq = applied_seq
        self.switch_seq = switch_seq
        self._stream_set_seq = -1  # the head of the set applied on the current stream (-1: none yet)
        self._stream_nonce = b""  # the current stream's challenge (a set must carry it)
        self._max_staleness_s = max_staleness_s
        self._connect_wait_s = connect_wait_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._channel_options = keepalive_options(keepalive_s)
        self._on_health = on_health
        self._reports: asyncio.Queue[int] = asyncio.Queue(report_queue_max)
        self._ready = asyncio.Event()
        self.ready = False  # the first complete set since start has been applied
        self.streaming = False  # a stream is open and its set applied: the collector is being heard
        self._last_contact = time.monotonic()
        self._ready_deadline = 0.0
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._health_timer: asyncio.TimerHandle | None = None
        self.applied = 0
        self.refused = 0
        self.reports_dropped = 0

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the stream task; Decide's connect wait counts from now."""
        self._ready_deadline = time.monotonic() + self._connect_wait_s
        self._last_contact = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="control-stream")
        self._health_timer = asyncio.get_running_loop().call_later(self._connect_wait_s, self._refresh_health)

    async def aclose(self) -> None:
        """Stops the stream task (queued reports are left to forwarding)."""
        if self._health_timer is not None:
            self._health_timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._set_streaming(False)

    # --- what Decide asks ----------------------------------------------------------------------------------

    def blocked(self) -> bool:
        """Whether Decide must stop with ``control_plane_unreachable`` now (cheap: flags and one clock read)."""
        if not self.ready:
            return True
        if self._max_staleness_s and not self.streaming:
            return time.monotonic() - self._last_contact > self._max_staleness_s
        return False

    async def wait_ready(self) -> None:
        """Waits (until ``connect_wait_s`` after start at most) for the first complete kill-switch set."""
        if self.ready:
            return
        remaining = self._ready_deadline - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), remaining)

    def seconds_since_contact(self) -> float:
        """0 while the stream is open and current; otherwise how long since the collector was last heard."""
        return 0.0 if self.streaming else time.monotonic() - self._last_contact

    def state(self) -> str:
        """``connected``, ``connecting`` (no set since start yet) or ``disconnected``, for health and status."""
        if self.streaming:
            return "connected"
        return "disconnected" if self.ready else "connecting"

    def _problem(self) -> str:
        if not self.ready and time.monotonic() >= self._ready_deadline:
            return f"no complete kill-switch set from collector {self.collector} since start"
        if self.ready and self.blocked():
            return f"control channel to collector {self.collector} down for more than {self._max_staleness_s:g}s"
        return ""

    def _refresh_health(self) -> None:
        if self._on_health is not None:
            self._on_health(self._problem())

    def _set_streaming(self, streaming: bool) -> None:
        if self.streaming == streaming:
            return
        self.streaming = streaming
        self._last_contact = time.monotonic()
        if self._health_timer is not None:
            self._health_timer.cancel()
            self._health_timer = None
        if not streaming and self._max_staleness_s:
            with contextlib.suppress(RuntimeError):  # no running loop: closing
                loop = asyncio.get_running_loop()
                self._health_timer = loop.call_later(self._max_staleness_s + 0.05, self._refresh_health)
        self._refresh_health()

    # --- reports up ----------------------------------------------------------------------------------------

    def report(self, seq: int) -> None:
        """Queues the committed approval entry ``seq`` for the collector; never blocks (full: left to forwarding)."""
        try:
            self._reports.put_nowait(seq)
        except asyncio.QueueFull:
            self.reports_dropped += 1
            metrics.CONTROL_REPORTS_DROPPED.inc()

    async def _drain_reports(self, call: Any) -> None:
        while True:
            seqs = [await self._reports.get()]
            while not self._reports.empty() and len(seqs) < REPORT_BATCH_MAX:
                seqs.append(self._reports.get_nowait())
            entries = []
            for seq in sorted(set(seqs)):
                for signed in await self._reader.signed_entries(seq, seq + 1):
                    entries.append(
                        collector_pb2.JournalEntry(seq=signed.seq, entry=signed.entry, signature=signed.signature)
                    )
            if entries:
                report = control_pb2.ControlReport(entries=entries)
                await self._write(call, control_pb2.ConnectRequest(report=report))
                metrics.CONTROL_REPORTED_ENTRIES.inc(len(entries))

    # --- the stream ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
                log.warning("control: collector %s closed the control stream; reconnecting", self.collector)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                level = logging.INFO if failures else logging.WARNING
                log.log(level, "control: stream to %s failed: %s %s", self.collector, exc.code().name, exc.details())
            except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:  # a write after the stream ended
                log.warning("control: stream to %s ended: %s", self.collector, exc)
            except (_StreamError, JournalUnavailableError) as exc:
                log.error("control: stream to %s closed: %s", self.collector, exc)
            except Exception:
                log.exception("control: stream to %s failed", self.collector)
            if self.streaming:
                failures = 0
            self._set_streaming(False)
            metrics.CONTROL_CONNECTED.set(0)
            failures += 1
            base, cap = self._backoff
            # Full jitter (not security-relevant randomness): spreads a fleet's reconnects apart.
            await asyncio.sleep(random.uniform(base / 2, min(cap, base * 2 ** min(failures - 1, 30))))  # noqa: S311

    async def _session(self) -> None:
        channel = collector_channel(self._target, self._tls, options=self._channel_options)
        drain: asyncio.Task[None] | None = None
        try:
            stub: Any = control_pb2_grpc.ControlServiceStub(channel)
            call = stub.Connect()
            first: Any = await call.read()
            if first is _EOF or not first.HasField("challenge"):
                raise _StreamError("the collector did not open with a challenge")
            challenge = first.challenge
            if challenge.collector != self.collector:
                raise _StreamError(
                    f"the collector's control key is {challenge.collector!r}, not the pinned {self.collector!r}"
                )
            body, signature = sign_hello(self._signer, challenge.collector, challenge.nonce, self.applied_seq)
            hello = control_pb2.ControlHello(body=body, signature=signature)
            await self._write(call, control_pb2.ConnectRequest(hello=hello))
            self._stream_set_seq, self._stream_nonce = -1, challenge.nonce
            drain = asyncio.create_task(self._drain_reports(call), name="control-reports")
            while True:
                response: Any = await call.read()
                if response is _EOF:
                    return
                if drain.done():
                    drain.result()  # a failed report write ends the stream
                if response.HasField("control"):
                    self._last_contact = time.monotonic()
                    await self._handle(call, response.control)
        finally:
            if drain is not None:
                drain.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.UsageError):
                    await drain
            await channel.close(None)

    async def _write(self, call: Any, request: control_pb2.ConnectRequest) -> None:
        async with self._write_lock:  # the reader loop (acks) and the report task share one stream
            await call.write(request)

    async def _ack(self, call: Any, seq: int, refused: str = "", message: str = "") -> None:
        # The collector takes at most 1024 bytes of text without NUL (ControlService refuses the stream otherwise).
        message = message.replace("\x00", "").encode()[:MAX_ACK_MESSAGE_BYTES].decode(errors="ignore")
        await self._write(
            call, control_pb2.ConnectRequest(ack=control_pb2.ControlAck(seq=seq, refused=refused, message=message))
        )

    # --- one message ---------------------------------------------------------------------------------------

    def _check(self, body: bytes, signature: bytes) -> ControlMessage:
        """The verifier's checks (forged, wrong_origin, stale), then replay by kind (the module doc)."""
        message = self._verifier.verify(body, signature)
        seq = message.seq
        if message.kind == KILL_SWITCH_SET:
            if not self._stream_nonce or message.body.get("nonce") != self._stream_nonce.hex():
                raise ControlRefusedError(REPLAYED, "control message: a kill-switch set issued for another stream")
            floor, newer = self.applied_seq, seq >= self.applied_seq
        elif message.kind == KILL_SWITCH:
            floor = max(self.applied_seq, self.switch_seq)
            newer = seq > floor
        else:
            floor, newer = self.applied_seq, seq > self.applied_seq
        if not newer:
            raise ControlRefusedError(REPLAYED, f"control message: {message.kind} {seq} is not newer than {floor}")
        return message

    async def _handle(self, call: Any, control: control_pb2.SignedControl) -> None:
        try:
            message = self._check(control.body, control.signature)
        except ControlRefusedError as exc:
            seq = _seq_of(control.body)
            self.refused += 1
            metrics.CONTROL_REFUSED.labels(exc.refused).inc()
            # A single switch change the stream's complete set already covered is expected after a reconnect.
            superseded = exc.refused == REPLAYED and 0 <= seq <= self._stream_set_seq
            log.log(
                logging.INFO if superseded else logging.WARNING,
                "control: refused message %d from %s: %s: %s",
                seq,
                self.collector,
                exc.refused,
                exc,
            )
            await self._ack(call, seq, exc.refused, str(exc))
            return
        try:
            await self._apply(message)
        except (FailedPreconditionError, NotFoundError, PermissionDeniedError, InvalidRequestError) as exc:
            # The change itself is refused (the sidecar's answer counts): done with, never tried again.
            word = _refusal_word(exc)
            self._moved(message)
            self.refused += 1
            metrics.CONTROL_REFUSED.labels(word).inc()
            log.warning("control: refused %s %d from %s: %s: %s", message.kind, message.seq, self.collector, word, exc)
            await self._ack(call, message.seq, word, str(exc))
            return
        self._moved(message)
        self.applied += 1
        metrics.CONTROL_APPLIED.labels(message.kind).inc()
        await self._ack(call, message.seq)

    def _moved(self, message: ControlMessage) -> None:
        if message.kind == KILL_SWITCH_SET:
            head = message.body.get("head")
            head = head if isinstance(head, int) and not isinstance(head, bool) else message.seq
            self.switch_seq = max(self.switch_seq, message.seq, head)
            self._stream_set_seq = max(message.seq, head)
            if not self.ready:
                self.ready = True
                self._ready.set()
            if not self.streaming:
                log.info(
                    "control: stream to collector %s current (applied seq %d, %d fleet switches)",
                    self.collector,
                    self.applied_seq,
                    len(self._fleet_switches()),
                )
            self._set_streaming(True)
            metrics.CONTROL_CONNECTED.set(1)
            return
        self.applied_seq = max(self.applied_seq, message.seq)
        if message.kind == KILL_SWITCH:
            self.switch_seq = max(self.switch_seq, message.seq)

    async def _apply(self, message: ControlMessage) -> None:
        """Applies one believed message; each change is journaled with ``via`` and ``control_seq``.

        Raises:
            InvalidRequestError, FailedPreconditionError, NotFoundError, PermissionDeniedError: refused, unchanged.
            JournalUnavailableError: not recorded, so not applied (the stream closes; the collector resends).
        """
        body = message.body
        if message.kind == KILL_SWITCH_SET:
            await self._apply_set(message, body.get("switches"))
        elif message.kind == KILL_SWITCH:
            await self._apply_switch(message, body)
        elif message.kind == APPROVAL_VOTE:
            await self._apply_vote(message, body)

    def _fleet_switches(self) -> dict[tuple[str, str], str]:
        return {(s.scope, s.target): s.reason for s in self._switches.engaged() if s.via == self.collector}

    async def _apply_set(self, message: ControlMessage, switches: Any) -> None:
        if not isinstance(switches, list):
            raise FailedPreconditionError("kill_switch_set: switches must be a list", reason="invalid")
        wanted: dict[tuple[str, str], tuple[str, str]] = {}
        for item in switches:
            scope, target, reason, operator = _switch_fields(item)
            wanted[(scope, target)] = (reason, operator)
        have = self._fleet_switches()
        for (scope, target), (reason, operator) in wanted.items():
            if have.get((scope, target)) == self._switches.scrubbed(reason):
                continue
            await self._switches.engage(
                scope,
                target,
                reason,
                operator,
                via=self.collector,
                control_seq=message.seq,
                control_kind=KILL_SWITCH_SET,
            )
            log.info(
                "control: fleet kill switch %s:%s engaged via %s (set %d)",
                scope,
                target or "*",
                self.collector,
                message.seq,
            )
        for scope, target in have.keys() - wanted.keys():
            await self._switches.release(
                scope,
                target,
                "not in the collector's kill-switch set",
                self.collector,
                via=self.collector,
                control_seq=message.seq,
                control_kind=KILL_SWITCH_SET,
            )
            log.info(
                "control: fleet kill switch %s:%s released via %s (set %d)",
                scope,
                target or "*",
                self.collector,
                message.seq,
            )

    async def _apply_switch(self, message: ControlMessage, body: dict[str, Any]) -> None:
        action = body.get("action")
        scope, target, reason, operator = _switch_fields(body)
        if action == "engage":
            current = self._switches.find_exact(scope, target)
            if (
                current is not None
                and current.via == self.collector
                and current.reason == self._switches.scrubbed(reason)
            ):
                return  # already as asked (a set on this stream carried it): nothing to journal
            await self._switches.engage(
                scope, target, reason, operator, via=self.collector, control_seq=message.seq, control_kind=KILL_SWITCH
            )
        elif action == "release":
            current = self._switches.find_exact(scope, target)
            if current is None:
                return  # already released (a set on this stream carried it)
            await self._switches.release(
                scope, target, reason, operator, via=self.collector, control_seq=message.seq, control_kind=KILL_SWITCH
            )
        else:
            raise FailedPreconditionError(f"kill_switch: unknown action {action!r}", reason="invalid")
        log.info(
            "control: fleet kill switch %s:%s %sd via %s (%d)",
            scope,
            target or "*",
            action,
            self.collector,
            message.seq,
        )

    async def _apply_vote(self, message: ControlMessage, body: dict[str, Any]) -> None:
        approval_id, grant = body.get("approval_id"), body.get("grant")
        approver, roles, comment = body.get("approver"), body.get("roles") or [], body.get("comment", "")
        if (
            not isinstance(approval_id, str)
            or not isinstance(grant, bool)
            or not isinstance(approver, str)
            or not approver
            or not isinstance(comment, str)
            or not isinstance(roles, list)
            or not all(isinstance(r, str) for r in roles)
        ):
            raise FailedPreconditionError("approval_vote: malformed fields", reason="invalid")
        channel = body.get("channel") or "cli"
        if not isinstance(channel, str):
            raise FailedPreconditionError("approval_vote: channel must be a string", reason="invalid")
        operator = Operator(identity=approver, roles=frozenset(roles))
        await self._approvals.resolve(
            approval_id, grant, operator, comment, channel=channel, via=self.collector, control_seq=message.seq
        )
        log.info(
            "control: approval %s: %s by %s via %s (%d)",
            approval_id,
            "grant" if grant else "denial",
            approver,
            self.collector,
            message.seq,
        )


def _switch_fields(item: Any) -> tuple[str, str, str, str]:
    """(scope, target, reason, operator) of a switch in a control message, checked."""
    if not isinstance(item, dict):
        raise FailedPreconditionError("kill switch: expected an object", reason="invalid")
    scope, target = item.get("scope"), item.get("target", "")
    reason, operator = item.get("reason", ""), item.get("operator", "")
    if scope not in SCOPES or not isinstance(target, str) or (scope == "global") != (target == ""):
        raise FailedPreconditionError(f"kill switch: bad scope/target {scope!r}:{target!r}", reason="invalid")
    if not isinstance(reason, str) or not isinstance(operator, str):
        raise FailedPreconditionError("kill switch: reason and operator must be strings", reason="invalid")
    return scope, target, reason, operator or "collector"
