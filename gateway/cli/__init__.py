"""The ``agentaudit`` command line: the only code that prints for humans or calls sys.exit.

Exit codes (:mod:`gateway.cli.exits`): 0 success; 1 tamper evidence (verify) or a runtime failure; 2 usage or
configuration error. The parser is in :mod:`gateway.cli.parser`, each command group in its own module, and
everything printed is rendered by :mod:`gateway.cli.render`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentaudit`` console script: runs one command and maps its failure to an exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["hook"]:
        # A coding agent starts the hook for every tool call: dispatch before importing the rest of the CLI.
        from gateway.cli.hook import run  # noqa: PLC0415

        return run(arguments[1:])
    # Imported here, not at the top, so that the hook path above loads none of them.
    from gateway.cli.connect import quiet_grpc_logging  # noqa: PLC0415
    from gateway.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, OperatorCallError  # noqa: PLC0415
    from gateway.cli.parser import build_parser  # noqa: PLC0415
    from gateway.errors import AgentAuditError, ConfigError, JournalError  # noqa: PLC0415

    quiet_grpc_logging()  # before any command imports gRPC: its core reads the variable once
    args = build_parser(arguments).parse_args(arguments)
    try:
        code: int = args.func(args)
        # Flushed here, inside the handler below: a reader that hung up (`| head`) ends the command quietly.
        sys.stdout.flush()
    except ConfigError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OperatorCallError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return exc.code
    except JournalError as exc:
        from gateway.cli.journal import READERS  # noqa: PLC0415 - a sidecar's start does not import the readers

        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_USAGE if args.command in READERS else EXIT_FAILURE
    except AgentAuditError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return code


def _discard_stdout() -> None:
    """Points stdout at /dev/null after the reader hung up, so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
