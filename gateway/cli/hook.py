"""``agentaudit hook AGENT`` and ``agentaudit hook install AGENT``: coding-agent hooks (docs/integrations.md).

An agent starts the hook once per tool call, so ``gateway.cli.main`` hands ``hook`` to :func:`run` before it
builds the full parser, and :func:`run` reads a plain ``hook AGENT [--flag VALUE]...`` line itself
(:func:`_fast_args`): argparse and gettext are about 3 ms of every hook process. Anything else (``install``,
``--help``, an unknown flag, a value that does not parse) goes to the argparse parser, which answers as before.
When it runs, the hook imports ``agentaudit_client.hooks``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

AGENTS = ("claude-code", "codex", "cursor", "gemini")
# The flags of ``hook AGENT`` (see register) and how each value converts; argparse rejects what these do not.
_HOOK_FLAGS: dict[str, Any] = {
    "--sidecar": str,
    "--tenant": str,
    "--agent": str,
    "--actor": str,
    "--fail-open": str,
    "--approval-wait": float,
    "--on-approval": str,
    "--timeout": float,
}
_ON_APPROVAL = ("deny", "ask")


def _cmd_hook(args: argparse.Namespace | SimpleNamespace) -> int:
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
    from pathlib import Path  # noqa: PLC0415 - not at the top: the hook itself does without pathlib

    from agentaudit_client.hooks.install import SettingsError, install  # noqa: PLC0415

    try:
        path = install(args.agent_name, user=args.user, project_dir=Path(args.dir), command=args.command)
    except SettingsError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return 2
    print(f"agentaudit: {args.agent_name} hooks written to {path}")
    compile_hook_bytecode()
    return 0


def compile_hook_bytecode() -> bool:
    """Writes the bytecode of the modules every hook process imports, where Python may write it; True if all.

    A wheel's ``pip install`` does this already. An editable install under ``PYTHONDONTWRITEBYTECODE`` (common in
    containers and CI) never gets it, so every hook process would compile them again: about 15 ms of the hook's
    start-up on a 2-core machine (docs/performance.md). Best effort: a read-only install is left as it is.
    """
    import compileall  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import agentaudit  # noqa: PLC0415 - the generated code's package; imports nothing itself
    import agentaudit_client  # noqa: PLC0415
    import gateway  # noqa: PLC0415

    packages = [Path(agentaudit.__file__).parent, Path(agentaudit_client.__file__).parent, Path(__file__).parent]
    compiled = [compileall.compile_dir(d, quiet=2) for d in packages]
    compiled.append(compileall.compile_file(gateway.__file__, quiet=2))
    return all(compiled)


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
        p.add_argument("--on-approval", choices=_ON_APPROVAL, help="answer while an approval is pending")
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


def _fast_args(argv: Sequence[str]) -> SimpleNamespace | None:
    """What argparse would make of ``AGENT [--flag VALUE | --flag=VALUE]...``, or None for anything else."""
    if not argv or argv[0] not in AGENTS:
        return None
    values: dict[str, Any] = {flag[2:].replace("-", "_"): None for flag in _HOOK_FLAGS}
    rest = list(argv[1:])
    while rest:
        flag, sep, value = rest.pop(0).partition("=")
        if flag not in _HOOK_FLAGS:
            return None
        if not sep:
            if not rest or rest[0].startswith("-"):
                return None  # a missing value, or one argparse might read differently: let it say so
            value = rest.pop(0)
        try:
            values[flag[2:].replace("-", "_")] = _HOOK_FLAGS[flag](value)
        except ValueError:
            return None
    if values["on_approval"] not in (None, *_ON_APPROVAL):
        return None
    return SimpleNamespace(command="hook", hook_agent=argv[0], agent_name=argv[0], func=_cmd_hook, **values)


def run(argv: Sequence[str]) -> int:
    """Runs ``agentaudit hook ...`` with a parser of its own, so nothing else of the CLI is imported."""
    args: Any = _fast_args(argv)
    if args is None:
        import argparse  # noqa: PLC0415

        parser = argparse.ArgumentParser(prog="agentaudit")
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["hook", *argv])
    code: int = args.func(args)
    return code
