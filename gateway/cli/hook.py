"""``agentaudit hook AGENT`` and ``agentaudit hook install AGENT``: coding-agent hooks (docs/integrations.md).

An agent starts the hook once per tool call, so ``gateway.cli.main`` hands ``hook`` to :func:`run` before it
builds the full parser: this module imports only argparse and, when it runs, ``agentaudit_client.hooks``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

AGENTS = ("claude-code", "codex", "cursor", "gemini")


def _cmd_hook(args: argparse.Namespace) -> int:
    from agentaudit_client.hooks.runtime import HookConfig, main  # noqa: PLC0415

    config = HookConfig.from_env(
        os.environ,
        sidecar=args.sidecar,
        tenant=args.tenant,
        agent=args.agent,
        actor=args.actor,
        fail_open=args.fail_open,
        approval_wait=args.approval_wait,
        on_approval=args.on_approval,
        timeout=args.timeout,
    )
    code = main(args.agent_name, config, sys.stdin, sys.stdout)
    # The answer is printed and the pairing file written: skip the interpreter's teardown, where gRPC's core
    # shuts its threads down, since the agent waits for the process to exit, not just for its answer.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _cmd_install(args: argparse.Namespace) -> int:
    from agentaudit_client.hooks.install import SettingsError, install  # noqa: PLC0415

    try:
        path = install(args.agent_name, user=args.user, project_dir=Path(args.dir), command=args.command)
    except SettingsError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return 2
    print(f"agentaudit: {args.agent_name} hooks written to {path}")
    return 0


def register(subparsers: Any) -> None:
    """Adds ``hook AGENT`` (one per agent) and ``hook install AGENT`` to the CLI."""
    hook = subparsers.add_parser("hook", help="coding-agent hook: decide or report one tool call (stdin JSON)")
    agents = hook.add_subparsers(dest="hook_agent", required=True, metavar="AGENT")
    for name in AGENTS:
        p = agents.add_parser(name, help=f"{name}'s hook: reads its hook JSON on stdin, prints its answer")
        p.add_argument("--sidecar", help="sidecar address (default: $AGENTAUDIT_SIDECAR or ./.agentaudit/gateway.sock)")
        p.add_argument("--tenant", help="tenant id (default: $AGENTAUDIT_TENANT_ID or local)")
        p.add_argument("--agent", help=f"agent id (default: $AGENTAUDIT_AGENT_ID or {name})")
        p.add_argument("--actor", help="user id (default: $AGENTAUDIT_ACTOR_ID or $USER)")
        p.add_argument(
            "--fail-open",
            metavar="CLASSES",
            help="tool classes allowed when the sidecar is down, e.g. read,web (default: none: fail closed)",
        )
        p.add_argument("--approval-wait", type=float, help="seconds to wait for a human approval (default 0)")
        p.add_argument("--on-approval", choices=["deny", "ask"], help="answer while an approval is pending")
        p.add_argument("--timeout", type=float, help="seconds per sidecar call (default 3)")
        p.set_defaults(func=_cmd_hook, agent_name=name)
    p = agents.add_parser("install", help="write the hook into an agent's settings file, keeping the rest")
    p.add_argument("agent_name", choices=AGENTS, metavar="AGENT", help=", ".join(AGENTS))
    where = p.add_mutually_exclusive_group()
    where.add_argument("--project", dest="user", action="store_false", help="the project's settings (default)")
    where.add_argument("--user", dest="user", action="store_true", help="the user's settings in ~")
    p.add_argument("--dir", default=".", help="project directory (default: the current one)")
    p.add_argument("--command", default="", help="hook command to write (default: agentaudit hook AGENT)")
    p.set_defaults(func=_cmd_install, user=False)


def run(argv: Sequence[str]) -> int:
    """Runs ``agentaudit hook ...`` with a parser of its own, so nothing else of the CLI is imported."""
    parser = argparse.ArgumentParser(prog="agentaudit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["hook", *argv])
    code: int = args.func(args)
    return code
