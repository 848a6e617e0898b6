"""CollectorService: thin gRPC servicer over a CollectorStore (verification lives in ingest.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from agentaudit.v1 import collector_pb2
from gateway.api.rpc import Context, service_handler
from gateway.collector.ingest import IngestRejected
from gateway.collector.store import CollectorStore
from gateway.errors import FailedPreconditionError, FieldViolation, InvalidRequestError, OverloadedError
from gateway.signing import Ed25519Signer

log = logging.getLogger(__name__)

SERVICE_NAME = "agentaudit.v1.CollectorService"
MAX_ORIGIN_BYTES = 256


class CollectorServicer:
    """Implements Ingest and GetCheckpoint; bounded concurrency, with back-pressure instead of queueing forever."""

    def __init__(
        self, store: CollectorStore, witness: Ed25519Signer, *, max_batch_entries: int, max_inflight: int
    ) -> None:
        self._store = store
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
            raise InvalidRequestError(violations)
        if self._slots.locked():
            raise OverloadedError("collector is busy; retry later", retry_after_s=0.5)
        async with self._slots:
            entries = [(e.seq, e.entry, e.signature) for e in request.entries]
            try:
                outcome = await self._store.ingest(
                    request.origin, entries, request.checkpoint, self._witness, int(time.time())
                )
            except IngestRejected as exc:
                self.rejections[exc.code] = self.rejections.get(exc.code, 0) + 1
                if not exc.is_evidence:  # the store already logged rollback/fork evidence at ERROR
                    log.warning("refused a batch from %s: %s", request.origin, exc)
                # The "rejected:<code>:" prefix lets a forwarder tell a refusal from a fault.
                raise FailedPreconditionError(f"rejected:{exc.code}: {exc.detail}") from None
        return collector_pb2.IngestResponse(
            size=outcome.size, cosigned_checkpoint=outcome.cosigned_note, accepted=outcome.accepted
        )

    async def get_checkpoint(
        self, request: collector_pb2.GetCheckpointRequest, context: Context
    ) -> collector_pb2.GetCheckpointResponse:
        """The latest cosigned checkpoint of an origin (the sidecar's restart handshake)."""
        if not request.origin:
            raise InvalidRequestError([FieldViolation("origin", "is required")])
        size, note = await self._store.latest(request.origin)
        return collector_pb2.GetCheckpointResponse(size=size, cosigned_checkpoint=note)


def collector_handler(servicer: CollectorServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The CollectorService handlers."""
    return service_handler(
        SERVICE_NAME,
        {
            "Ingest": (servicer.ingest, collector_pb2.IngestRequest),
            "GetCheckpoint": (servicer.get_checkpoint, collector_pb2.GetCheckpointRequest),
        },
    )
