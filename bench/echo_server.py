"""A bare gRPC server whose Decide does no work: the transport's ceiling on this machine.

``python -m bench.echo_server --listen unix:///path/echo.sock``

It answers every ``agentaudit.v1.GatewayService/Decide`` with one constant, pre-built ``DecideResponse``, on
the same stack as the real sidecar (``grpc.aio``, uvloop, unix socket), so the difference between the two is
the cost of the sidecar's own work: policy, signing, journaling. It also serves ``grpc.health.v1.Health``
so the harness waits for both servers the same way. It stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from bench._loop import current_loop_name, install_event_loop_policy

_log = logging.getLogger("bench.echo_server")

# Built once: serialising a constant is all the per-request work this server may do.
ECHO_RESPONSE = gateway_pb2.DecideResponse(
    decision=types_pb2.DECISION_ALLOW,
    reason="allowed",
    policy_layer="access",
    policy_rule="bench_echo",
    policy_version="bench-echo",
    event_id="evt_00000000000000000000000000",
    action_key="ak_bench_echo",
)


class EchoGatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Answers Decide with ``ECHO_RESPONSE``; the other methods answer UNIMPLEMENTED."""

    async def Decide(
        self, request: gateway_pb2.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.DecideResponse:
        """Returns the constant response without looking at the request."""
        return ECHO_RESPONSE

    async def ReportResult(
        self, request: gateway_pb2.ReportResultRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.ReportResultResponse:
        """Not benchmarked."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the echo server only implements Decide")

    async def WaitApproval(
        self, request: gateway_pb2.WaitApprovalRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.WaitApprovalResponse:
        """Not benchmarked."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the echo server only implements Decide")


async def serve(listen: str) -> None:
    """Serves on ``listen`` (a gRPC address such as ``unix:///tmp/x.sock``) until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(EchoGatewayServicer(), server)
    # grpc-stubs does not describe health.aio, the asyncio servicer a grpc.aio server needs.
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise RuntimeError(f"cannot listen on {listen}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    await server.start()
    _log.info("echo server listening on %s (loop: %s)", listen, current_loop_name())
    await stop.wait()
    # Nothing is worth draining here: in-flight calls are benchmark traffic that is already over.
    await server.stop(grace=0.5)


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and serves until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.echo_server", description="Bare gRPC echo server (Decide does no work)."
    )
    parser.add_argument("--listen", required=True, help="gRPC address, for example unix:///tmp/echo.sock")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    install_event_loop_policy()
    asyncio.run(serve(args.listen))


if __name__ == "__main__":
    main()
