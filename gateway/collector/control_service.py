"""The collector's side of the fleet control channel: ``agentaudit.v1.ControlService.Connect`` (ADR 0016).

One long-lived bidirectional stream per sidecar, opened by the sidecar. On each stream, in order:

1. The collector sends a :class:`ControlChallenge`: 32 fresh random bytes and its control key's name.
2. The sidecar answers with a ``ControlHello`` signed by its journal key
   (:func:`gateway.control.message.verify_hello` against the keys registered for the origin it names). An
   unregistered origin is refused ``PERMISSION_DENIED``; a bad signature, a hello for another stream or origin,
   or a clock more than 120 s off ``UNAUTHENTICATED``; each is logged at WARNING naming the origin and why.
3. The collector sends the complete fleet kill-switch set (kind ``kill_switch_set``), then every act the sidecar
   has not applied (``control_log`` ids above the hello's ``applied_seq``, for this origin or for everyone) that
   the set does not already contain, then every later act as it is committed, by any replica.
4. Concurrently it reads the sidecar's messages: ``ControlReport`` entries go to
   :meth:`~gateway.collector.fleet.FleetControl.record_entries` (which verifies each), and each ``ControlAck``
   moves the origin's ``applied_seq`` in ``fleet_origins``; a refusal is logged at WARNING.

Every message is signed for the stream's origin by the control key (:func:`gateway.control.message.sign_control`)
and expires ``collector.control_ttl_s`` after it was sent.

**The set's sequence number.** The set is the state as of the head of ``control_log`` (field ``head``), but it
carries ``seq`` = the hello's ``applied_seq``: the acts that follow it are all above that, so a sidecar believes
each of them in turn. A sidecar believes a set whose seq *equals* its applied seq (the usual reconnect, nothing
new) and only on the stream it was issued for (field ``nonce`` = the stream's challenge); see
:class:`gateway.control.message.ControlVerifier`. Kill-switch acts up to ``head`` are not sent after the set:
the set already holds their outcome.

**One stream per origin per process.** A second stream for an origin replaces the first, which ends with
``ABORTED``. Across replicas, ``fleet_origins`` says which replica holds it; a stream that ends marks its origin
disconnected only if it still holds it there.

**One reader per process.** :class:`ActFeed` reads new acts once per wake (an act here, a PostgreSQL notification
from another replica, or the 1 s poll) and fans them out to every stream, so N streams cost one query per act.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from agentaudit.v1 import control_pb2
from gateway import metrics, reasons
from gateway.collector.fleet import MAX_ACTS, ControlAct, FleetControl
from gateway.collector.fleet_model import KIND_KILL_SWITCH
from gateway.collector.ingest import is_storable_text
from gateway.collector.store import CollectorUnavailableError
from gateway.control import message
from gateway.errors import (
    AgentAuditError,
    FieldViolation,
    InvalidRequestError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from gateway.rpc.handlers import Context
from gateway.rpc.status import to_status
from gateway.rpc.wire import Undecodable, deserializer
from gateway.signing import Ed25519Signer

log = logging.getLogger(__name__)

SERVICE_NAME = "agentaudit.v1.ControlService"

HELLO_TIMEOUT_S = 10.0
"""How long a new stream may take to answer the challenge."""
MAX_HELLO_BYTES = 4096
MAX_MESSAGE_BYTES = 4 << 20
"""The largest sidecar message accepted on a control stream (a report of approval entries is small)."""
MAX_REPORT_ENTRIES = 1000
MAX_ENTRY_BYTES = 1 << 20
SIGNATURE_BYTES = 64
MAX_REFUSED_BYTES = 64
MAX_ACK_MESSAGE_BYTES = 1024
FEED_KEEP = 4096
"""Acts the feed keeps for streams that lag; a stream further behind reads ``control_log`` itself."""
WAIT_S = 30.0
ACK_RECORD_S = 1.0
"""How often a stream's acks are written to ``fleet_origins`` at most (its end is written at once)."""

# Server options for the collector's listener: ping a quiet connection every 10 s and drop it when the ping is
# not answered within 10 s, so a sidecar that vanished without closing its stream (a killed pod, a cut network)
# is noticed within ~20 s; and allow the sidecars' own keepalive pings (at most one every 5 s) on idle streams.
KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Any unanswered ping closes the connection after this, BDP probes included (default 60 s: a keepalive ping
    # queued behind an unanswered BDP ping would otherwise wait for that one's minute).
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]

# ControlAck.refused words counted by name in agentaudit_collector_control_acks_refused_total; any other is "other"
# (the label must stay low-cardinality whatever a sidecar sends).
_ACK_WORDS = frozenset(
    {message.FORGED, message.WRONG_ORIGIN, message.STALE, message.REPLAYED}
    | {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
)
_WORD = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _printable(origin: str) -> str:
    """An origin as it may appear in a log line: bounded, repr-quoted."""
    return repr(origin[:128])


@dataclass
class _Stream:
    """One connected sidecar's stream."""

    origin: str
    nonce: bytes
    applied_seq: int
    replaced: asyncio.Event = field(default_factory=asyncio.Event)
    refused_entries: int = 0
    recorded_seq: int = -1  # the applied_seq last written to fleet_origins
    flush: asyncio.Task[None] | None = None  # a pending write of applied_seq (acks are coalesced)


class ActFeed:
    """Reads ``control_log`` once per wake for every stream of this process, and keeps the newest acts.

    ``head``: every act up to it has been read (the verified ones are kept; a row that fails verification is left
    out, logged at ERROR by :meth:`FleetControl.acts_since`, and never sent).
    """

    def __init__(self, fleet: FleetControl, *, keep: int = FEED_KEEP) -> None:
        self._fleet = fleet
        self._keep = keep
        self.head = 0
        self._low = 0  # acts above _low are all in _acts
        self._acts: list[ControlAct] = []
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.head = self._low = await self._fleet.head_seq()
        self._task = asyncio.create_task(self._run(), name="control-act-feed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await self._fleet.wait_for_act(self.head, WAIT_S)
            try:
                await self._read()
            except CollectorUnavailableError as exc:
                log.warning("control streams: cannot read control_log (retrying in 1 s): %s", exc)
                await asyncio.sleep(1.0)
            except Exception:  # the feed must outlive any one failure: every stream depends on it
                log.exception("control streams: reading control_log failed (retrying in 1 s)")
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        head = await self._fleet.head_seq()  # first: every act up to it is visible to the read below
        if head <= self.head:
            return
        new: list[ControlAct] = []
        after = self.head
        while after < head:
            page = await self._fleet.acts_since(after, "")
            if not page:
                break
            new += page
            after = page[-1].seq
            if len(page) < MAX_ACTS:  # a short page: the end (acts committed since the head read included)
                break
        self._acts += new
        self.head = max(head, after)
        if len(self._acts) > self._keep:
            dropped = self._acts[: len(self._acts) - self._keep]
            self._acts = self._acts[len(dropped) :]
            self._low = dropped[-1].seq
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    def since(self, cursor: int, origin: str) -> tuple[list[ControlAct], int] | None:
        """The kept acts above ``cursor`` for ``origin`` (or everyone) and the new cursor; None: ask the database."""
        if cursor < self._low:
            return None
        start = bisect.bisect_right(self._acts, cursor, key=lambda a: a.seq)  # kept in seq order
        return [a for a in self._acts[start:] if a.origin in ("", origin)], max(cursor, self.head)

    async def wait(self, cursor: int) -> None:
        """Returns once the feed has read past ``cursor`` (or after :data:`WAIT_S`)."""
        if self.head > cursor:
            return
        with contextlib.suppress(TimeoutError):  # not wait_for: it may lose a cancel that meets the wake
            async with asyncio.timeout(WAIT_S):
                await self._advanced.wait()


class ControlServicer:
    """``ControlService.Connect``: see the module docstring for the stream's order and rules.

    Args:
        fleet: the fleet tables (started).
        control_key: signs every message; its name is the ``collector`` of the challenge and of every message.
        ttl_s: how long a sent message stays valid (``collector.control_ttl_s``).
    """

    def __init__(self, fleet: FleetControl, control_key: Ed25519Signer, *, ttl_s: float) -> None:
        self._fleet = fleet
        self._key = control_key
        self._ttl_s = ttl_s
        self.feed = ActFeed(fleet)
        self._streams: dict[str, _Stream] = {}
        self._closing = False
        self._ending: set[asyncio.Task[None]] = set()  # streams' ends being recorded
        self.refused_hellos: dict[str, int] = {}

    async def start(self) -> None:
        """Starts the act feed (after :meth:`FleetControl.start`)."""
        await self.feed.start()

    async def aclose(self) -> None:
        """Ends every stream (UNAVAILABLE: the sidecars reconnect, to another replica if there is one)."""
        self._closing = True
        for stream in self._streams.values():
            stream.replaced.set()
        for _ in range(50):  # the streams end within a few event-loop turns; their ends are recorded
            if not self._streams and not self._ending:
                break
            await asyncio.sleep(0.02)
        await self.feed.aclose()

    def connected(self) -> list[str]:
        """The origins with a stream open on this process."""
        return sorted(self._streams)

    # --- one stream --------------------------------------------------------------------------------------------

    async def connect(self, requests: AsyncIterator[Any], context: Context) -> None:
        """The whole life of one stream; our errors end it with their status."""
        try:
            await self._connect(requests, context)
        except AgentAuditError as exc:
            status = to_status(exc)
            await context.abort(status.code, status.details, status.trailing_metadata)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("control stream failed")
            status = to_status(RuntimeError())
            await context.abort(status.code, status.details, status.trailing_metadata)

    async def _connect(self, requests: AsyncIterator[Any], context: Context) -> None:
        if self._closing:  # a reconnect during the shutdown would hold the server for its whole grace
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the collector is shutting down; reconnect")
        nonce = os.urandom(32)
        await context.write(
            control_pb2.ConnectResponse(challenge=control_pb2.ControlChallenge(nonce=nonce, collector=self._key.name))
        )
        hello = await self._hello(requests, nonce, context.peer())
        stream = _Stream(hello.origin, nonce, hello.applied_seq)
        older = self._streams.get(stream.origin)
        self._streams[stream.origin] = stream
        if older is None:
            metrics.COLLECTOR_CONTROL_STREAMS.inc()
        else:
            log.info("control stream from %s replaces the one it had open", _printable(stream.origin))
            older.replaced.set()
        reader = asyncio.create_task(self._read(stream, requests), name=f"control-read-{stream.origin[:40]}")
        try:
            await self._fleet.set_connected(stream.origin, True, stream.applied_seq)
            log.info(
                "control stream from %s (%s) connected, applied up to %d",
                _printable(stream.origin), context.peer(), stream.applied_seq,
            )  # fmt: skip
            await self._send(stream, context, reader)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if stream.flush is not None:
                stream.flush.cancel()  # the end records the last applied_seq itself
            if self._streams.get(stream.origin) is stream:
                del self._streams[stream.origin]
                metrics.COLLECTOR_CONTROL_STREAMS.dec()
                # Its own task: grpc cancels this handler when the sidecar goes away, and the end must be recorded.
                ended = asyncio.create_task(self._ended(stream))
                self._ending.add(ended)
                ended.add_done_callback(self._ending.discard)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(ended)

    async def _ended(self, stream: _Stream) -> None:
        try:
            await self._fleet.set_disconnected(stream.origin, stream.applied_seq)
        except Exception as exc:  # the stream is gone either way; the row says so at the next contact
            log.warning("control stream from %s: cannot record its end: %s", _printable(stream.origin), exc)
        log.info("control stream from %s ended (applied up to %d)", _printable(stream.origin), stream.applied_seq)

    async def _hello(self, requests: AsyncIterator[Any], nonce: bytes, peer: str) -> message.Hello:
        try:
            first = await asyncio.wait_for(anext(requests), HELLO_TIMEOUT_S)
        except StopAsyncIteration:
            raise InvalidRequestError([FieldViolation("hello", "the stream ended before the hello")]) from None
        except TimeoutError:
            self._refused_hello("timeout", "", peer, f"no hello within {HELLO_TIMEOUT_S:.0f} s")
            raise InvalidRequestError(
                [FieldViolation("hello", f"must answer the challenge within {HELLO_TIMEOUT_S:.0f} s")]
            ) from None
        if isinstance(first, Undecodable):
            raise InvalidRequestError(first.violations)
        if first.WhichOneof("message") != "hello":
            raise InvalidRequestError([FieldViolation("hello", "the first message on a control stream is the hello")])
        body, signature = first.hello.body, first.hello.signature
        violations = []
        if not body or len(body) > MAX_HELLO_BYTES:
            violations.append(FieldViolation("hello.body", f"is required (at most {MAX_HELLO_BYTES} bytes)"))
        if len(signature) != SIGNATURE_BYTES:
            violations.append(FieldViolation("hello.signature", f"must be {SIGNATURE_BYTES} bytes (Ed25519)"))
        origin = _claimed_origin(body) if not violations else ""
        if not violations and not origin:
            violations.append(FieldViolation("hello.body", "must be a JSON object naming its origin"))
        if violations:
            self._refused_hello("invalid", origin, peer, "; ".join(f"{v.field} {v.description}" for v in violations))
            raise InvalidRequestError(violations)
        keys = await self._fleet.origin_keys(origin)
        if not keys:
            self._refused_hello("unknown_origin", origin, peer, "the origin is not registered with this collector")
            raise PermissionDeniedError(f"origin {origin[:128]!r} is not registered with this collector")
        try:
            return message.verify_hello(body, signature, collector=self._key.name, nonce=nonce, verifiers=keys)
        except message.ControlRefusedError as exc:
            self._refused_hello(exc.refused, origin, peer, str(exc))
            raise UnauthenticatedError(f"{exc.refused}: {exc}") from None

    def _refused_hello(self, why: str, origin: str, peer: str, detail: str) -> None:
        self.refused_hellos[why] = self.refused_hellos.get(why, 0) + 1
        metrics.COLLECTOR_CONTROL_HELLOS_REFUSED.labels(why).inc()
        log.warning(
            "control stream from %s refused (%s): origin %s: %s", peer, why, _printable(origin) if origin else "?",
            detail,
        )  # fmt: skip

    # --- collector → sidecar -----------------------------------------------------------------------------------

    async def _write(self, stream: _Stream, context: Context, seq: int, kind: str, fields: dict[str, Any]) -> None:
        body, signature = message.sign_control(self._key, stream.origin, seq, kind, fields, ttl_s=self._ttl_s)
        await context.write(
            control_pb2.ConnectResponse(control=control_pb2.SignedControl(body=body, signature=signature))
        )
        metrics.COLLECTOR_CONTROL_MESSAGES_SENT.labels(kind).inc()

    async def _send(self, stream: _Stream, context: Context, reader: asyncio.Task[None]) -> None:
        """The set, what the sidecar missed, then every new act until the stream ends or is replaced."""
        head, switches = await self._fleet.switch_set()
        if stream.applied_seq > head:
            log.warning(
                "control stream from %s: it applied up to %d but control_log ends at %d (another fleet's database?)",
                _printable(stream.origin), stream.applied_seq, head,
            )  # fmt: skip
        fields = {
            "switches": [
                {
                    "scope": s.scope,
                    "target": s.target,
                    "reason": s.reason,
                    "operator": s.operator,
                    "channel": s.channel,
                    "engaged_ms": s.engaged_ms,
                }
                for s in switches
            ],
            "head": head,
            "nonce": stream.nonce.hex(),
        }
        await self._write(stream, context, stream.applied_seq, message.KILL_SWITCH_SET, fields)
        cursor = stream.applied_seq
        while True:  # what it missed: from the database (the feed may not reach back that far)
            acts = await self._fleet.acts_since(cursor, stream.origin)
            for act in acts:
                if not (act.kind == KIND_KILL_SWITCH and act.seq <= head):  # the set holds those
                    await self._write(stream, context, act.seq, act.kind, act.fields)
            cursor = max(cursor, acts[-1].seq) if acts else cursor
            if len(acts) < MAX_ACTS:
                break
        cursor = max(cursor, head)
        replaced = asyncio.create_task(stream.replaced.wait())
        try:
            while True:
                got = self.feed.since(cursor, stream.origin)
                if got is None:  # too far behind the feed: read the database
                    read_to = self.feed.head  # before the read: every act up to it is in the read
                    acts = await self._fleet.acts_since(cursor, stream.origin)
                    full = len(acts) >= MAX_ACTS
                    got = (acts, acts[-1].seq if full else max([cursor, read_to, *(a.seq for a in acts)]))
                for act in got[0]:
                    await self._write(stream, context, act.seq, act.kind, act.fields)
                cursor = got[1]
                waiting = asyncio.create_task(self.feed.wait(cursor))
                done, _ = await asyncio.wait({waiting, reader, replaced}, return_when=asyncio.FIRST_COMPLETED)
                if waiting not in done:
                    waiting.cancel()
                if replaced in done:
                    if self._closing:
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "the collector is shutting down; reconnect")
                    await context.abort(grpc.StatusCode.ABORTED, "replaced by a newer control stream for this origin")
                if reader in done:
                    reader.result()  # a bad message ends the stream with its status; else the sidecar closed it
                    return
        finally:
            replaced.cancel()

    # --- sidecar → collector -----------------------------------------------------------------------------------

    async def _read(self, stream: _Stream, requests: AsyncIterator[Any]) -> None:
        async for request in requests:
            if isinstance(request, Undecodable):
                raise InvalidRequestError(request.violations)
            if request.ByteSize() > MAX_MESSAGE_BYTES:
                raise InvalidRequestError([FieldViolation("message", f"is larger than {MAX_MESSAGE_BYTES} bytes")])
            which = request.WhichOneof("message")
            if which == "report":
                await self._report(stream, request.report)
            elif which == "ack":
                await self._ack(stream, request.ack)
            elif which == "hello":
                raise InvalidRequestError([FieldViolation("hello", "is only the first message of a stream")])
            else:
                raise InvalidRequestError([FieldViolation("message", "one of hello, report or ack is required")])

    async def _report(self, stream: _Stream, report: control_pb2.ControlReport) -> None:
        violations = []
        if len(report.entries) > MAX_REPORT_ENTRIES:
            violations.append(FieldViolation("report.entries", f"holds more than {MAX_REPORT_ENTRIES} entries"))
        for i, e in enumerate(report.entries[:MAX_REPORT_ENTRIES]):
            if not e.entry or len(e.entry) > MAX_ENTRY_BYTES:
                violations.append(FieldViolation(f"report.entries[{i}].entry", "is required (at most 1 MiB)"))
            if len(e.signature) != SIGNATURE_BYTES:
                violations.append(FieldViolation(f"report.entries[{i}].signature", "must be 64 bytes (Ed25519)"))
        if violations:
            raise InvalidRequestError(violations[:20])
        before = self._fleet.refused_entries
        applied = await self._fleet.record_entries(
            stream.origin, [(e.seq, e.entry, e.signature) for e in report.entries]
        )
        refused = self._fleet.refused_entries - before  # other streams' refusals may land here too: a count only
        metrics.COLLECTOR_CONTROL_REPORT_ENTRIES.labels("applied").inc(applied)
        if refused > 0:
            stream.refused_entries += refused
            metrics.COLLECTOR_CONTROL_REPORT_ENTRIES.labels("refused").inc(refused)
            log.warning(
                "control stream from %s: %d reported entr%s refused (not signed by its registered keys, or malformed)",
                _printable(stream.origin), refused, "y" if refused == 1 else "ies",
            )  # fmt: skip

    async def _ack(self, stream: _Stream, ack: control_pb2.ControlAck) -> None:
        violations = []
        if ack.refused and (len(ack.refused) > MAX_REFUSED_BYTES or not _WORD.fullmatch(ack.refused)):
            violations.append(FieldViolation("ack.refused", "must be a word of at most 64 lowercase letters and _"))
        if len(ack.message.encode()) > MAX_ACK_MESSAGE_BYTES or not is_storable_text(ack.message):
            violations.append(FieldViolation("ack.message", f"must be text of at most {MAX_ACK_MESSAGE_BYTES} bytes"))
        if ack.seq >= 2**63:
            violations.append(FieldViolation("ack.seq", "must be below 2**63"))
        if violations:
            raise InvalidRequestError(violations)
        if ack.refused:
            word = ack.refused if ack.refused in _ACK_WORDS else "other"
            metrics.COLLECTOR_CONTROL_ACKS_REFUSED.labels(word).inc()
            log.warning(
                "control stream from %s: message %d refused (%s): %s",
                _printable(stream.origin), ack.seq, ack.refused, ack.message[:300],
            )  # fmt: skip
        stream.applied_seq = max(stream.applied_seq, ack.seq)
        if stream.flush is None and stream.applied_seq != stream.recorded_seq:
            stream.flush = asyncio.create_task(self._record_applied(stream))

    async def _record_applied(self, stream: _Stream) -> None:
        """Writes the stream's applied_seq (and last contact) to ``fleet_origins`` at most every
        :data:`ACK_RECORD_S`: every fleet write takes the fleet-wide lock, and a thousand sidecars acking one act
        must not queue a thousand writes in front of the next operator act."""
        try:
            await asyncio.sleep(ACK_RECORD_S)
            seq = stream.applied_seq
            await self._fleet.set_connected(stream.origin, True, seq)
            stream.recorded_seq = seq
        except CollectorUnavailableError as exc:
            log.warning("control stream from %s: cannot record its acks: %s", _printable(stream.origin), exc)
        finally:
            stream.flush = None


def _claimed_origin(body: bytes) -> str:
    """The origin a hello claims (unverified: only to look up the keys it must be signed by)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    origin = value.get("origin") if isinstance(value, dict) else None
    return origin if isinstance(origin, str) and is_storable_text(origin) and len(origin.encode()) <= 256 else ""


def control_handler(servicer: ControlServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The ControlService handler (one bidirectional method)."""

    def serialize(response: Any) -> bytes:
        return bytes(response.SerializeToString())

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Connect": grpc.stream_stream_rpc_method_handler(
                servicer.connect,
                request_deserializer=deserializer(control_pb2.ConnectRequest),
                response_serializer=serialize,
            )
        },
    )
