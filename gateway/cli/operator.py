"""Operator commands, clients of a running sidecar's OperatorService: ``approvals``, ``approve``, ``deny``,
``kill-switch``, ``recovery acknowledge`` and ``policy reload``. With ``--collector ADDR``, ``approvals``, ``approve``,
``deny`` and ``kill-switch`` talk to the collector's fleet operator API instead (the same service, docs/fleet.md).

gRPC and the generated stubs are imported by :func:`_operator_call` when a command runs, not with this module:
every command builds the whole parser, and the offline ones (``verify``, ``events``, ...) must not load gRPC.
Requests are therefore named by method and built there from keyword fields (enum values by their names).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from gateway.cli import connect, render
from gateway.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, OperatorCallError
from gateway.errors import ConfigError, SigningKeyError
from gateway.signing import read_secret_file

DEFAULT_OPERATOR_SOCKET = Path(".agentaudit") / "operator.sock"
DEFAULT_OPERATOR_TOKEN = Path(".agentaudit") / "operator.token"


def _operator_flags() -> argparse.ArgumentParser:
    """The parent parser of every operator command: where the operator API is and how to authenticate."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--operator",
        metavar="ADDRESS",
        help="operator API: unix:///abs/path.sock, unix:relative/path.sock or HOST:PORT "
        "(default: $AGENTAUDIT_OPERATOR_ADDRESS or unix:.agentaudit/operator.sock)",
    )
    flags.add_argument(
        "--token-file", help="bearer token file (default: $AGENTAUDIT_OPERATOR_TOKEN or ./.agentaudit/operator.token)"
    )
    flags.add_argument("--tls-ca", help="CA certificate of the operator listener (enables TLS)")
    flags.add_argument("--tls-cert", help="client certificate for mutual TLS")
    flags.add_argument("--tls-key", help="client private key for mutual TLS")
    flags.add_argument("--timeout", type=float, default=10.0, help="seconds before giving up (default 10)")
    return flags


def _fleet_flags() -> argparse.ArgumentParser:
    """The parent parser of the commands the collector's fleet operator API serves too."""
    flags = argparse.ArgumentParser(add_help=False, parents=[_operator_flags()])
    flags.add_argument(
        "--collector",
        metavar="ADDRESS",
        help="the collector's fleet operator API (collector.operator.listen: HOST:PORT or unix:...) instead of a "
        "sidecar's: the whole fleet's approvals and kill switches",
    )
    return flags


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``approvals``, ``approve``, ``deny``, ``kill-switch`` and ``recovery``."""
    operator_flags, fleet_flags = _operator_flags(), _fleet_flags()
    p = sub.add_parser("approvals", parents=[fleet_flags], help="list approvals (pending by default)")
    p.add_argument("--state", choices=["pending", "granted", "denied", "expired", "abandoned"], default="pending")
    p.add_argument("--tenant", help="only this tenant's approvals")
    p.add_argument("--agent", help="only this agent's approvals")
    p.add_argument("--action", help="only approvals of this action (exact name)")
    p.add_argument("--rule", help="only approvals asked by this policy rule")
    p.add_argument("--origin", help="only approvals of this sidecar journal (with --collector)")
    p.add_argument("--min-age", type=int, default=0, metavar="SECONDS", help="only approvals open this long or more")
    p.add_argument("--limit", type=int, default=100, help="most approvals listed (default 100, max 1000)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_approvals)
    for name, verb in (("approve", "grant"), ("deny", "deny")):
        p = sub.add_parser(name, parents=[fleet_flags], help=f"{verb} a pending approval")
        p.add_argument("approval_id", help="apr_... id from `agentaudit approvals`")
        p.add_argument("--comment", help="journaled with the decision (required to deny through --collector)")
        p.set_defaults(func=cmd_resolve)

    switch = sub.add_parser("kill-switch", help="engage, release or list kill switches").add_subparsers(
        dest="switch_command", required=True, metavar="SUBCOMMAND"
    )
    for name in ("engage", "release"):
        p = switch.add_parser(name, parents=[fleet_flags], help=f"{name} a kill switch (role admin)")
        p.add_argument("--scope", choices=["global", "tenant", "agent", "run"], required=True)
        p.add_argument("--target", help="tenant, agent or run id (not for global)")
        p.add_argument("--reason", required=name == "engage", help="why (journaled)")
        p.set_defaults(func=cmd_kill_switch)
    for name in ("status", "list"):
        p = switch.add_parser(name, parents=[fleet_flags], help="list engaged kill switches")
        p.add_argument("--json", action="store_true", help="one JSON object per engaged switch, one a line")
        p.set_defaults(func=cmd_kill_switch)

    recovery = sub.add_parser("recovery", help="accept a detected journal rollback").add_subparsers(
        dest="recovery_command", required=True, metavar="SUBCOMMAND"
    )
    p = recovery.add_parser("acknowledge", parents=[operator_flags], help="let Decide answer again (role admin)")
    p.add_argument("--comment", required=True, help="why (journaled)")
    p.set_defaults(func=cmd_recovery_acknowledge)


def register_policy_reload(policy: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``policy reload``, beside the offline ``policy check`` and ``policy test``."""
    p = policy.add_parser("reload", parents=[_operator_flags()], help="reload a running sidecar's policy (role admin)")
    p.add_argument("--file", help="submit this policy document instead of re-reading the sidecar's own file")
    p.set_defaults(func=cmd_policy_reload)


def _token(args: argparse.Namespace) -> str:
    """The bearer token: --token-file, else $AGENTAUDIT_OPERATOR_TOKEN, else ./.agentaudit/operator.token if any."""
    token = os.environ.get("AGENTAUDIT_OPERATOR_TOKEN", "")
    token_file = Path(args.token_file) if args.token_file else DEFAULT_OPERATOR_TOKEN
    if args.token_file or (not token and token_file.exists()):
        token = _read_token_file(token_file)
    return token


def _read_token_file(path: Path) -> str:
    """A token file's text. A token grants approvals and kill switches, so a regular file that group or others can
    access is refused, as the server refuses a loose key file (the same rule, ``gateway.signing.read_secret_file``).
    Anything else (``/dev/null`` for "no token", a pipe from ``<(...)``) holds no stored secret and is read as is."""
    try:
        if path.is_file():
            return read_secret_file(path).decode("utf-8", errors="replace").strip()
        return path.read_text(errors="replace").strip()
    except SigningKeyError as exc:
        raise ConfigError(f"token file: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from exc


def _operator_call(args: argparse.Namespace, method: str, **fields: Any) -> Any:
    """Calls one OperatorService method (its request built from ``fields``) with the configured credential.

    Raises:
        ConfigError: a token or TLS file cannot be read.
        OperatorCallError: the call failed; exit 2 for a bad request or credential, else 1.
    """
    import grpc  # noqa: PLC0415 - see the module docstring

    from agentaudit.v1 import operator_pb2, operator_pb2_grpc  # noqa: PLC0415

    fleet = getattr(args, "collector", None)
    address = (
        fleet or args.operator or os.environ.get("AGENTAUDIT_OPERATOR_ADDRESS") or f"unix:{DEFAULT_OPERATOR_SOCKET}"
    )
    channel_target = connect.target(address, "--collector" if fleet else "--operator")
    token = _token(args)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    channel = connect.channel(channel_target, args.tls_ca or None, args.tls_cert or None, args.tls_key or None)
    request = getattr(operator_pb2, f"{method}Request")(**fields)
    with channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        try:
            return getattr(stub, method)(request, metadata=metadata, timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            exit_code = (
                EXIT_USAGE
                if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)
                else EXIT_FAILURE
            )
            raise OperatorCallError(connect.failure(exc, address), exit_code) from None


def cmd_approvals(args: argparse.Namespace) -> int:
    """``agentaudit approvals``: a table, or one JSON object per line."""
    reply = _operator_call(
        args,
        "ListApprovals",
        state=f"APPROVAL_STATE_{args.state.upper()}",
        tenant_id=args.tenant or "",
        agent_id=args.agent or "",
        action=args.action or "",
        policy_rule=args.rule or "",
        origin=args.origin or "",
        min_age_s=max(args.min_age, 0),
        limit=args.limit,
    )
    lines = (
        [render.approval_json_line(a) for a in reply.approvals]
        if args.json
        else render.approvals_table(reply.approvals, args.state)
    )
    for line in lines:
        print(line)
    return EXIT_OK


def cmd_resolve(args: argparse.Namespace) -> int:
    """``agentaudit approve`` and ``agentaudit deny``."""
    grant = args.command == "approve"
    method = "GrantApproval" if grant else "DenyApproval"
    reply = _operator_call(args, method, approval_id=args.approval_id, comment=args.comment or "")
    print(render.resolution_line(reply.approval, reply.event_id, grant=grant))
    return EXIT_OK


def cmd_kill_switch(args: argparse.Namespace) -> int:
    """``agentaudit kill-switch engage|release|status``."""
    if args.switch_command in ("status", "list"):
        reply = _operator_call(args, "ListKillSwitches")
        if args.json:
            for s in reply.kill_switches:
                print(render.json_object(render.kill_switch_record(s)))
            return EXIT_OK
        if not reply.kill_switches:
            print("no kill switch engaged")
        for s in reply.kill_switches:
            print(render.kill_switch_row(s))
        return EXIT_OK
    fields = {
        "scope": f"KILL_SWITCH_SCOPE_{args.scope.upper()}",
        "target": args.target or "",
        "reason": args.reason or "",
    }
    where = f"{args.scope}:{args.target or '*'}"
    if args.switch_command == "engage":
        reply = _operator_call(args, "EngageKillSwitch", **fields)
        print(f"kill switch engaged at {where} ({_recorded(reply.event_id, args)})")
    else:
        reply = _operator_call(args, "ReleaseKillSwitch", **fields)
        print(f"kill switch released at {where} ({_recorded(reply.event_id, args)})")
    return EXIT_OK


def _recorded(event_id: str, args: argparse.Namespace) -> str:
    """Where the act was journaled: the sidecar's event, or the collector's control_log (every sidecar journals
    its own event when it applies it)."""
    return f"event {event_id}" if event_id else f"recorded for the fleet by the collector at {args.collector}"


def cmd_recovery_acknowledge(args: argparse.Namespace) -> int:
    """``agentaudit recovery acknowledge``."""
    reply = _operator_call(args, "AcknowledgeRecovery", comment=args.comment)
    what = reply.detected or "nothing was pending"
    print(f"recovery acknowledged ({what}); event {reply.event_id}")
    return EXIT_OK


def cmd_policy_reload(args: argparse.Namespace) -> int:
    """``agentaudit policy reload``: the sidecar re-reads its file, or takes ``--file``'s document."""
    document = ""
    if args.file:
        try:
            document = Path(args.file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
    reply = _operator_call(args, "ReloadPolicy", document=document)
    if reply.changed:
        print(f"policy {reply.new_version} active (was {reply.old_version}; event {reply.event_id})")
    else:
        print(f"policy unchanged ({reply.new_version})")
    return EXIT_OK
