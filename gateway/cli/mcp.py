"""``agentaudit mcp stdio|http``: govern an MCP server's tool calls with no change to client or server."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

DEFAULT_SIDECAR = "unix://./.agentaudit/gateway.sock"


def _claims(args: argparse.Namespace) -> dict[str, str]:
    from gateway.errors import ConfigError  # noqa: PLC0415
    from gateway.mcp.bearer import parse_claim_mapping  # noqa: PLC0415

    try:
        return parse_claim_mapping(getattr(args, "claim", None) or [])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _bearer(args: argparse.Namespace) -> Any:
    """The JWT verification of ``mcp http``, or None when no ``--jwt-*`` flag is given."""
    from gateway.errors import ConfigError  # noqa: PLC0415
    from gateway.mcp.bearer import BearerConfig  # noqa: PLC0415

    given = [args.jwt_issuer, args.jwt_audience, args.jwt_jwks, args.jwt_key]
    if not any(given):
        if args.claim:
            raise ConfigError("--claim maps claims of a verified token: add --jwt-issuer, --jwt-audience and a key")
        return None
    if not (args.jwt_issuer and args.jwt_audience) or bool(args.jwt_jwks) == bool(args.jwt_key):
        raise ConfigError("JWT verification needs --jwt-issuer, --jwt-audience and one of --jwt-jwks or --jwt-key")
    return BearerConfig(
        issuer=args.jwt_issuer,
        audience=args.jwt_audience,
        jwks_path=Path(args.jwt_jwks) if args.jwt_jwks else None,
        key_path=Path(args.jwt_key) if args.jwt_key else None,
        claims=_claims(args),
    )


def _config(args: argparse.Namespace) -> Any:
    from gateway.mcp.listing import Identity  # noqa: PLC0415 - keeps the mcp SDK off other commands
    from gateway.mcp.proxy import ProxyConfig  # noqa: PLC0415

    env = os.environ.get
    tenant = args.tenant or env("AGENTAUDIT_TENANT_ID", "")
    if not tenant and "tenant" not in _claims(args):
        from gateway.errors import ConfigError  # noqa: PLC0415

        raise ConfigError("agentaudit mcp needs a tenant: --tenant, AGENTAUDIT_TENANT_ID, or --claim tenant=CLAIM")
    labels = dict(item.split("=", 1) for item in args.label or [])
    return ProxyConfig(
        sidecar=args.sidecar or env("AGENTAUDIT_SIDECAR", DEFAULT_SIDECAR),
        server_name=args.server_name,
        identity=Identity(
            tenant_id=tenant,
            agent_id=args.agent or env("AGENTAUDIT_AGENT_ID", ""),
            actor_type=args.actor_type,
            actor_id=args.actor or env("AGENTAUDIT_ACTOR_ID", ""),
        ),
        state_dir=Path(args.state_dir),
        run_id=args.run_id or env("AGENTAUDIT_RUN_ID", ""),
        policy_path=Path(args.policy) if args.policy else None,
        approval_url_template=args.approval_url_template,
        approval_wait_s=args.approval_wait,
        labels=labels,
        report_before_answer=args.report_before_answer,
    )


def _run(main: Any) -> None:
    """Runs the proxy on uvloop when it is installed (the sidecar does the same, ``gateway.app``).

    uvloop does the event loop's work (callbacks, pipe and socket I/O) in C: it cuts the proxy's CPU per
    ``tools/call`` measurably (docs/mcp.md, Performance). Objects allocated at start-up are frozen out of the
    garbage collector's view once the proxy is built, as the sidecar does.
    """
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def cmd_stdio(args: argparse.Namespace) -> int:
    from gateway import logs  # noqa: PLC0415
    from gateway.mcp import stdio  # noqa: PLC0415

    command = [c for c in args.command if c != "--"]
    if not command:
        from gateway.errors import ConfigError  # noqa: PLC0415

        raise ConfigError("agentaudit mcp stdio needs the server command after --")
    logs.setup(args.log_level, "text")  # stderr only: stdout is the MCP wire
    _run(stdio.serve(_config(args), command))
    return 0


def cmd_http(args: argparse.Namespace) -> int:
    from gateway import logs  # noqa: PLC0415
    from gateway.mcp import http  # noqa: PLC0415

    host, _, port = args.listen.rpartition(":")
    logs.setup(args.log_level, "text")
    config = _config(args)
    bearer = _bearer(args)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await http.serve(config, args.upstream, host or "127.0.0.1", int(port), stop, bearer)

    _run(main())
    return 0


def register(subparsers: Any) -> None:
    """Adds ``mcp stdio`` and ``mcp http`` to the CLI."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--sidecar", help=f"sidecar address (default: $AGENTAUDIT_SIDECAR or {DEFAULT_SIDECAR})")
    common.add_argument("--server-name", default="server", help="the <server> in action names mcp.<server>.<tool>")
    common.add_argument("--tenant", help="tenant id (default: $AGENTAUDIT_TENANT_ID)")
    common.add_argument("--agent", help="agent id (default: $AGENTAUDIT_AGENT_ID)")
    common.add_argument("--actor", help="actor id (default: $AGENTAUDIT_ACTOR_ID, else the agent id)")
    common.add_argument("--actor-type", default="agent", choices=["user", "service", "agent"])
    common.add_argument("--run-id", help="fixed run id (default: $AGENTAUDIT_RUN_ID, _meta, header, or per session)")
    common.add_argument("--policy", help="the sidecar's policy file: tools it never allows are hidden from tools/list")
    common.add_argument(
        "--approval-url-template",
        default="",
        help="approval page, {approval_id} substituted (default: a text naming `agentaudit approve ID`)",
    )
    common.add_argument("--approval-wait", type=float, default=300.0, help="seconds to wait for a human (2025-11-25)")
    common.add_argument("--state-dir", default=".agentaudit/mcp", help="the proxy's key and state file")
    common.add_argument("--label", action="append", metavar="KEY=VALUE", help="label on every Decide (repeatable)")
    common.add_argument(
        "--report-before-answer",
        action="store_true",
        help="hold each tools/call result until the sidecar has journaled it (default: the report goes beside it)",
    )
    common.add_argument("--log-level", default="warning")
    mcp = subparsers.add_parser("mcp", help="govern an MCP server: stdio or Streamable HTTP proxy (docs/mcp.md)")
    modes = mcp.add_subparsers(dest="mcp_mode", required=True, metavar="MODE")
    p = modes.add_parser("stdio", parents=[common], help="proxy a stdio MCP server: ... -- COMMAND [ARGS...]")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the real server's command, after --")
    p.set_defaults(func=cmd_stdio)
    p = modes.add_parser("http", parents=[common], help="Streamable HTTP reverse proxy in front of --upstream")
    p.add_argument("--listen", default="127.0.0.1:7431", help="HOST:PORT to serve /mcp on")
    p.add_argument("--upstream", required=True, help="the real server's Streamable HTTP URL")
    jwt = p.add_argument_group("identity from a verified bearer JWT (every request then needs one, else 401)")
    jwt.add_argument("--jwt-issuer", help="the token issuer (iss) to accept")
    jwt.add_argument("--jwt-audience", help="the audience (aud) tokens must name: this proxy")
    jwt.add_argument("--jwt-jwks", metavar="FILE", help="the issuer's public keys as a JWKS file")
    jwt.add_argument("--jwt-key", metavar="PEM", help="the issuer's public key as a PEM file")
    jwt.add_argument(
        "--claim",
        action="append",
        metavar="FIELD=CLAIM",
        help="identity from a claim, FIELD one of tenant, agent, actor, actor_type (e.g. tenant=org_id, actor=sub)",
    )
    p.set_defaults(func=cmd_http)
