"""The ``agentaudit`` argument parser, assembled from the command modules' ``register`` functions.

Every flag is documented in --help and docs/cli.md. The calls below run in the order ``agentaudit --help``
lists the commands, which is why some modules register in more than one place.

The long-running sidecar commands (``dev``, ``serve``) get a parser holding only themselves: their sub-parser is
the same object either way, so their usage, help and errors are unchanged, but a sidecar then never imports the
other command modules and what they import (the journal readers, verify, bundles, traces, the renderer: ~3 MB of
a sidecar's start, issue 20 part 1; tests/test_footprint.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gateway import __version__

# Commands served by gateway.cli.serve.register_sidecar alone.
SIDECAR_COMMANDS = frozenset({"dev", "serve"})


def build_parser(arguments: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; each sub-command sets ``func``, the function that runs it.

    With ``arguments`` naming a sidecar command first (``dev``, ``serve``), the parser knows only the sidecar
    commands (see the module docstring); otherwise every command.
    """
    from gateway.cli import serve  # noqa: PLC0415 - the command modules are imported as needed (module docstring)

    parser = argparse.ArgumentParser(prog="agentaudit", description="Policy-and-audit gRPC sidecar for AI agents.")
    parser.add_argument("--version", action="version", version=f"agentaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register_sidecar(sub)
    if arguments is not None and arguments[:1] and arguments[0] in SIDECAR_COMMANDS:
        return parser
    from gateway.cli import evidence, health, hook, journal, mcp, operator, policy, redact_check  # noqa: PLC0415

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
