"""The collector's refusal codes reach a forwarder as google.rpc.ErrorInfo, not inside the status message."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agentaudit.v1 import collector_pb2, collector_pb2_grpc
from gateway.collector.app import Collector
from gateway.config import CollectorConfig
from gateway.errors import FailedPreconditionError
from gateway.rpc.status import ERROR_DOMAIN, error_reason, to_status
from gateway.sidecar.forwarder import _upstream_error
from gateway.signing import Ed25519Signer, write_secret_file


def test_a_refused_batch_carries_its_code_as_error_info(tmp_path: Path) -> None:
    """A real collector refuses a batch for an unknown origin: the forwarder reads the code from ErrorInfo."""
    write_secret_file(tmp_path / "witness.key", Ed25519Signer.generate("witness.test").encode_private() + "\n")
    config = CollectorConfig(
        listen=("127.0.0.1:0",), store=f"sqlite://{tmp_path / 'c.db'}", witness_key=tmp_path / "witness.key"
    )

    async def scenario() -> grpc.aio.AioRpcError:
        collector = Collector(config)
        await collector.start()
        try:
            async with grpc.aio.insecure_channel(collector.bound[0]) as channel:
                request = collector_pb2.IngestRequest(
                    origin="nobody.example/x",
                    entries=[collector_pb2.JournalEntry(seq=0, entry=b"x", signature=b"y")],
                    checkpoint="nobody.example/x\n1\nAAAA\n",
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await collector_pb2_grpc.CollectorServiceStub(channel).Ingest(request, timeout=10)
                return refused.value
        finally:
            await collector.aclose()

    refused = asyncio.run(scenario())
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(refused.trailing_metadata()) == "unknown_origin"
    assert _upstream_error(refused).rejected == "unknown_origin"


def test_the_forwarder_ignores_a_code_spelled_only_in_the_message() -> None:
    """A message that merely looks like a refusal (no ErrorInfo) is a fault, not a rejection code."""
    status = to_status(FailedPreconditionError("rejected:rollback: forged text"))
    assert error_reason(status.trailing_metadata) == ""
    coded = to_status(FailedPreconditionError("refused", reason="rollback"))
    assert error_reason(coded.trailing_metadata) == "rollback"
    assert ERROR_DOMAIN == "agentaudit.dev"
