"""``agentaudit health``: asks a sidecar's or collector's grpc.health.v1 service (for scripts and probes)."""

from __future__ import annotations

import argparse
import sys

from gateway.cli import connect, render
from gateway.cli.exits import EXIT_FAILURE, EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``health``."""
    p = sub.add_parser("health", help="check a sidecar or collector health service (exit 0 only if SERVING)")
    p.add_argument(
        "--target",
        required=True,
        metavar="ADDRESS",
        help="unix:///abs/path.sock, unix:relative/path.sock, unix://./relative/path.sock or HOST:PORT",
    )
    p.add_argument(
        "--service",
        default="",
        help='"" or agentaudit.v1.GatewayService: readiness (UNKNOWN while starting); liveness: liveness',
    )
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help='print one JSON object: {"target", "service", "status"}')
    p.set_defaults(func=cmd_health)


def cmd_health(args: argparse.Namespace) -> int:
    """Prints the serving status; exit 0 only for SERVING."""
    # Imported when the command runs: every command builds the parser, and the offline ones must not load gRPC.
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    channel_target = connect.target(args.target, "--target")
    try:
        with grpc.insecure_channel(channel_target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as exc:
        print(f"agentaudit: {connect.failure(exc, args.target)}", file=sys.stderr)
        return EXIT_FAILURE
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if args.json:
        print(render.json_object({"target": channel_target, "service": args.service, "status": status}))
    else:
        print(status)
    return EXIT_OK if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILURE
