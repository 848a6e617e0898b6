"""The ``agentaudit`` argument parser, assembled from the command modules' ``register`` functions.

Every flag is documented in --help and docs/cli.md. The calls below run in the order ``agentaudit --help``
lists the commands, which is why some modules register in more than one place.
"""

from __future__ import annotations

import argparse

from gateway import __version__
from gateway.cli import evidence, health, hook, journal, mcp, operator, policy, redact_check, serve


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each sub-command sets ``func``, the function that runs it."""
    parser = argparse.ArgumentParser(prog="agentaudit", description="Policy-and-audit gRPC sidecar for AI agents.")
    parser.add_argument("--version", action="version", version=f"agentaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register_sidecar(sub)
    operator.register(sub)
    health.register(sub)
    serve.register_collector(sub)
    journal.register_forwarder(sub)
    serve.register_keygen(sub)
    journal.register(sub)
    evidence.register_bundle(sub)
    evidence.register_journal(sub)
    operator.register_policy_reload(policy.register(sub))
    redact_check.register(sub)
    mcp.register(sub)
    hook.register(sub)
    return parser
