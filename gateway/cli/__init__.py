"""The ``agentaudit`` command line: the only code that prints for humans or calls sys.exit.

Exit codes (:mod:`gateway.cli.exits`): 0 success; 1 tamper evidence (verify) or a runtime failure; 2 usage or
configuration error. The parser is in :mod:`gateway.cli.parser`, each command group in its own module, and
everything printed is rendered by :mod:`gateway.cli.render`.
"""

from __future__ import annotations

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
    from gateway.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, OperatorCallError  # noqa: PLC0415
    from gateway.cli.journal import READERS  # noqa: PLC0415
    from gateway.cli.parser import build_parser  # noqa: PLC0415
    from gateway.errors import AgentAuditError, ConfigError, JournalError  # noqa: PLC0415

    args = build_parser().parse_args(arguments)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OperatorCallError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return exc.code
    except JournalError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_USAGE if args.command in READERS else EXIT_FAILURE
    except AgentAuditError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return code
