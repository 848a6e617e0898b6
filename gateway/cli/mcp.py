"""``agentaudit mcp stdio|http``: govern an MCP server's tool calls with no change to client or server."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

DEFAULT_SIDECAR = "unix://./.agentaudit/gateway.sock"


def _config(args: argparse.Namespace) -> Any:
    from gateway.mcp.proxy import Identity, ProxyConfig  # noqa: PLC0415 - keeps the mcp SDK off other commands

    env = os.environ.get
    tenant = args.tenant or env("AGENTAUDIT_TENANT_ID", "")
    if not tenant:
        from gateway.errors import ConfigError  # noqa: PLC0415

        raise ConfigError("agentaudit mcp needs a tenant: --tenant or AGENTAUDIT_TENANT_ID")
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
    )


def cmd_stdio(args: argparse.Namespace) -> int:
    from gateway import logs  # noqa: PLC0415
    from gateway.mcp import stdio  # noqa: PLC0415

    command = [c for c in args.command if c != "--"]
    if not command:
        from gateway.errors import ConfigError  # noqa: PLC0415

        raise ConfigError("agentaudit mcp stdio needs the server command after --")
    logs.setup(args.log_level, "text")  # stderr only: stdout is the MCP wire
    asyncio.run(stdio.serve(_config(args), command))
    return 0


def cmd_http(args: argparse.Namespace) -> int:
    from gateway import logs  # noqa: PLC0415
    from gateway.mcp import http  # noqa: PLC0415

    host, _, port = args.listen.rpartition(":")
    logs.setup(args.log_level, "text")
    config = _config(args)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await http.serve(config, args.upstream, host or "127.0.0.1", int(port), stop)

    asyncio.run(main())
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
    common.add_argument("--log-level", default="warning")
    mcp = subparsers.add_parser("mcp", help="govern an MCP server: stdio or Streamable HTTP proxy (docs/mcp.md)")
    modes = mcp.add_subparsers(dest="mcp_mode", required=True, metavar="MODE")
    p = modes.add_parser("stdio", parents=[common], help="proxy a stdio MCP server: ... -- COMMAND [ARGS...]")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the real server's command, after --")
    p.set_defaults(func=cmd_stdio)
    p = modes.add_parser("http", parents=[common], help="Streamable HTTP reverse proxy in front of --upstream")
    p.add_argument("--listen", default="127.0.0.1:7431", help="HOST:PORT to serve /mcp on")
    p.add_argument("--upstream", required=True, help="the real server's Streamable HTTP URL")
    p.set_defaults(func=cmd_http)
