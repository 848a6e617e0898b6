"""``agentaudit policy check`` and ``policy test``: a policy file checked or tested offline, with no sidecar.

(``policy reload``, which asks a running sidecar, is an operator command: :mod:`gateway.cli.operator`.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import render
from gateway.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.policy.document import PolicyDocument


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """``policy check`` and ``policy test``; returns the ``policy`` sub-commands for ``policy reload``."""
    policy = sub.add_parser(
        "policy", help="check or test a policy file offline; reload a running sidecar's"
    ).add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    p = policy.add_parser("check", help="validate a policy (exit 0 valid, 2 invalid with file, line and rule)")
    p.add_argument("file", help="policy YAML file")
    p.add_argument("--json", action="store_true", help="print one JSON object (valid, version, mode, counts)")
    p.set_defaults(func=cmd_policy_check)
    p = policy.add_parser("test", help="run YAML test cases against a policy (exit 1 if any fails)")
    p.add_argument("file", help="policy YAML file")
    p.add_argument("tests", help="test cases YAML (tests: [{name, request, expect, repeat, interval}])")
    p.add_argument("--json", action="store_true", help="one JSON object per case, then a summary object")
    p.set_defaults(func=cmd_policy_test)
    return policy


def _load(path: Path) -> PolicyDocument:
    """The parsed policy file (ConfigError with file, line and rule when it is invalid)."""
    # Imported when a policy command runs: the policy engine (CEL, YAML) is more than the offline journal
    # commands, which build the same parser, should load.
    from gateway.sidecar.policy_manager import load_document  # noqa: PLC0415

    return load_document(path)


def cmd_policy_check(args: argparse.Namespace) -> int:
    """``agentaudit policy check``: exit 0 valid, 2 invalid."""
    if args.json:
        return _check_json(args.file)
    document = _load(Path(args.file))
    layers = (
        f"{len(document.kill_switches)} kill switch(es), {len(document.access.bindings)} binding(s), "
        f"{len(document.limits)} limit(s), {len(document.approvals)} approval rule(s), {len(document.rules)} rule(s)"
    )
    print(f"{args.file}: OK, version {document.version}, mode {document.mode}: {layers}")
    return EXIT_OK


def _check_json(file: str) -> int:
    """``policy check --json``: the verdict as one object, invalid too (exit 2 then, with the error in it)."""
    try:
        document = _load(Path(file))
    except ConfigError as exc:
        print(render.json_object({"file": file, "valid": False, "error": str(exc)}))
        return EXIT_USAGE
    counts = {
        "kill_switches": len(document.kill_switches),
        "bindings": len(document.access.bindings),
        "limits": len(document.limits),
        "approval_rules": len(document.approvals),
        "rules": len(document.rules),
    }
    record = {"file": file, "valid": True, "version": document.version, "mode": document.mode, **counts}
    print(render.json_object(record))
    return EXIT_OK


def cmd_policy_test(args: argparse.Namespace) -> int:
    """``agentaudit policy test``: exit 1 if any case fails."""
    from gateway.policy.testing import load_cases, run_cases  # noqa: PLC0415 - as in _load

    document = _load(Path(args.file))
    tests_path = Path(args.tests)
    try:
        text = tests_path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {tests_path}: {exc.strerror}") from exc
    results = run_cases(document, load_cases(text, str(tests_path)), str(tests_path))
    failed = sum(not r.passed for r in results)
    lines = (
        [
            *(render.json_object(render.case_record(r)) for r in results),
            render.json_object({"passed": len(results) - failed, "failed": failed}),
        ]
        if args.json
        else render.policy_test_lines(results)
    )
    for line in lines:
        print(line)
    return EXIT_FAILURE if failed else EXIT_OK
