"""CollectorService: thin gRPC servicer over a CollectorStore (verification lives in ingest.py)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from agentaudit.v1 import collector_pb2, operator_pb2
from gateway import metrics
from gateway.collector.fleet import FleetControl
from gateway.collector.ingest import IngestRejected
from gateway.collector.store import CollectorEventFilter, CollectorStore, CollectorUnavailableError, SearchCursor
from gateway.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidRequestError,
    OverloadedError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from gateway.rpc.filters import INT64, parse_event_filter
from gateway.rpc.handlers import Context, service_handler
from gateway.signing import Ed25519Signer

log = logging.getLogger(__name__)

SERVICE_NAME = "agentaudit.v1.CollectorService"
MAX_ORIGIN_BYTES = 256
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class CollectorServicer:
    """Implements Ingest, GetCheckpoint and SearchEvents; ingest has bounded concurrency, with back-pressure."""

    def __init__(
        self,
        store: CollectorStore,
        witness: Ed25519Signer,
        *,
        max_batch_entries: int,
        max_inflight: int,
        search_tokens: tuple[str, ...] = (),
        on_store_health: Callable[[str], None] | None = None,
        fleet: FleetControl | None = None,
        on_evidence: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._store = store
        self._fleet = fleet
        # Told (origin, code, checkpoint note) of a refusal kept as rollback/fork evidence (the collector's alerts).
        self._on_evidence = on_evidence
        # Told the error when the store is unavailable and "" when it answers again (health readiness).
        self._on_store_health = on_store_health
        self._search_tokens = [bytes.fromhex(t) for t in search_tokens]
        self._witness = witness
        self._max_batch = max_batch_entries
        self._slots = asyncio.Semaphore(max_inflight)
        self.rejections: dict[str, int] = {}

    async def ingest(self, request: collector_pb2.IngestRequest, context: Context) -> collector_pb2.IngestResponse:
        """Verifies and stores a batch, then returns the cosigned checkpoint."""
        violations = []
        if not request.origin or len(request.origin.encode()) > MAX_ORIGIN_BYTES:
            violations.append(FieldViolation("origin", "is required (at most 256 bytes)"))
        if not request.entries:
            violations.append(FieldViolation("entries", "must hold at least one entry"))
        elif len(request.entries) > self._max_batch:
            violations.append(
                FieldViolation("entries", f"holds {len(request.entries)} entries, more than {self._max_batch}")
            )
        if not request.checkpoint:
            violations.append(FieldViolation("checkpoint", "is required"))
        if violations:
            metrics.COLLECTOR_REJECTIONS.labels("invalid").inc()
            raise InvalidRequestError(violations)
        if self._slots.locked():
            metrics.COLLECTOR_REJECTIONS.labels("overloaded").inc()
            raise OverloadedError("collector is busy; retry later", retry_after_s=0.5)
        async with self._slots:
            entries = [(e.seq, e.entry, e.signature) for e in request.entries]
            try:
                outcome = await self._store.ingest(
                    request.origin, entries, request.checkpoint, self._witness, int(time.time())
                )
            except CollectorUnavailableError as exc:
                self._store_health(str(exc))
                raise
            except IngestRejected as exc:
                self._store_health("")
                self.rejections[exc.code] = self.rejections.get(exc.code, 0) + 1
                metrics.COLLECTOR_REJECTIONS.labels(str(exc.code)).inc()
                if not exc.is_evidence:  # the store already logged rollback/fork evidence at ERROR
                    log.warning("refused a batch from %s: %s", request.origin, exc)
                elif self._on_evidence is not None:
                    self._on_evidence(request.origin, str(exc.code), request.checkpoint)
                # The code travels as ErrorInfo for the forwarder; the message keeps it for people reading logs.
                raise FailedPreconditionError(f"rejected:{exc.code}: {exc.detail}", reason=exc.code) from None
        self._store_health("")
        if self._fleet is not None:
            await self._mirror(request.origin, entries)
        metrics.COLLECTOR_BATCHES.inc()
        metrics.COLLECTOR_INGESTED_ENTRIES.inc(outcome.accepted)
        return collector_pb2.IngestResponse(
            size=outcome.size, cosigned_checkpoint=outcome.cosigned_note, accepted=outcome.accepted
        )

    async def _mirror(self, origin: str, entries: list[tuple[int, bytes, bytes]]) -> None:
        """Forwarded approval entries update the fleet's approvals too, so the fleet view is complete without a
        control stream. The batch is already stored and witnessed: a failure here is logged, never refused."""
        assert self._fleet is not None
        try:
            await self._fleet.record_entries(origin, entries)
        except Exception:
            log.exception("collector: could not record the approvals of a batch from %s in the fleet tables", origin)

    def _store_health(self, problem: str) -> None:
        if self._on_store_health is not None:
            self._on_store_health(problem)

    def _authorise_search(self, context: Context) -> None:
        if not self._search_tokens:
            raise PermissionDeniedError("search is disabled on this collector (no collector.search_tokens configured)")
        digest = _bearer_digest(context)
        if digest is None or not any(hmac.compare_digest(digest, t) for t in self._search_tokens):
            raise UnauthenticatedError("a search token is required (authorization: Bearer <token>)")

    async def get_checkpoint(
        self, request: collector_pb2.GetCheckpointRequest, context: Context
    ) -> collector_pb2.GetCheckpointResponse:
        """The latest cosigned checkpoint of an origin (the sidecar's restart handshake)."""
        if not request.origin:
            raise InvalidRequestError([FieldViolation("origin", "is required")])
        size, note = await self._store.latest(request.origin)
        return collector_pb2.GetCheckpointResponse(size=size, cosigned_checkpoint=note)

    async def search(
        self, request: operator_pb2.SearchEventsRequest, context: Context
    ) -> operator_pb2.SearchEventsResponse:
        """One page of matching events across every origin, in time order, with a keyset token for the next.

        Every journal the collector holds is readable here, so a bearer token listed in
        ``collector.search_tokens`` is required (compared by SHA-256 in constant time); with none configured,
        search is off. Ingest needs no token: it accepts only entries signed by registered keys.
        """
        self._authorise_search(context)
        fields, origin = parse_event_filter(request.filter)
        flt = CollectorEventFilter(**fields, origin=origin)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(request.page_token)
        hits = await self._store.search(flt, newest_first=request.newest_first, after=after, limit=page_size)
        events = []
        for hit in hits:
            event = operator_pb2.SearchedEvent(seq=hit.seq, entry=hit.entry, signature=hit.signature, origin=hit.origin)
            event.body.update(hit.body)
            events.append(event)
        token = ""
        if len(hits) == page_size:
            last = hits[-1]
            token = encode_page_token((last.unix_nanos, last.origin, last.seq))
        return operator_pb2.SearchEventsResponse(events=events, next_page_token=token)


def encode_page_token(cursor: SearchCursor) -> str:
    """``unix_nanos:origin:seq`` in URL-safe base64 (the origin may itself contain ``:``)."""
    nanos, origin, seq = cursor
    return base64.urlsafe_b64encode(f"{nanos}:{origin}:{seq}".encode()).decode()


def decode_page_token(token: str) -> SearchCursor | None:
    """The cursor of a token from :func:`encode_page_token`; None for an empty token.

    Raises:
        InvalidRequestError: the token is not one this service issued.
    """
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        nanos, rest = text.split(":", 1)
        origin, seq = rest.rsplit(":", 1)
        cursor = (int(nanos), origin, int(seq))
    except (ValueError, UnicodeError, binascii.Error):
        cursor = None
    if cursor is None or not origin or not INT64[0] <= cursor[0] <= INT64[1] or not 0 <= cursor[2] <= INT64[1]:
        raise InvalidRequestError([FieldViolation("page_token", "is not a token from a previous page")])
    return cursor


def _bearer_digest(context: Context) -> bytes | None:
    metadata: Any = context.invocation_metadata() or ()
    header = next((str(v) for k, v in metadata if k == "authorization"), "")
    if not header.lower().startswith("bearer "):
        return None
    return hashlib.sha256(header[len("bearer ") :].strip().encode()).digest()


def collector_handler(servicer: CollectorServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The CollectorService handlers."""
    return service_handler(
        SERVICE_NAME,
        {
            "Ingest": (servicer.ingest, collector_pb2.IngestRequest),
            "GetCheckpoint": (servicer.get_checkpoint, collector_pb2.GetCheckpointRequest),
            "SearchEvents": (servicer.search, operator_pb2.SearchEventsRequest),
        },
    )
