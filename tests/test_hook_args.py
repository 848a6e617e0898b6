"""``agentaudit hook AGENT`` reads its own flags without argparse (gateway.cli.hook._fast_args): it must read
every line exactly as the argparse parser does, and hand everything else to it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import pytest

from gateway.cli.hook import _fast_args, register
from tests.conftest import ROOT

FIELDS = ("agent_name", "sidecar", "tenant", "agent", "actor", "fail_open", "approval_wait", "on_approval", "timeout")


def _argparse(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="agentaudit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["hook", *argv])
    return {f: getattr(args, f) for f in FIELDS}


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["claude-code"], id="bare"),
        pytest.param(["codex", "--sidecar", "unix:///tmp/s.sock", "--tenant", "t_1"], id="spaced"),
        pytest.param(["cursor", "--sidecar=unix:///tmp/s.sock", "--timeout=0.5"], id="equals"),
        pytest.param(["gemini", "--approval-wait", "2", "--on-approval", "ask", "--fail-open", "read,web"], id="all"),
        pytest.param(["claude-code", "--tenant", "a", "--tenant", "b"], id="repeated: the last wins"),
        pytest.param(["claude-code", "--actor="], id="empty value"),
        pytest.param(["claude-code", "--agent", "x=y"], id="value with equals"),
        pytest.param(["claude-code", "--timeout", "1e-1"], id="float spelling"),
    ],
)
def test_the_fast_path_reads_a_line_as_argparse_does(argv: list[str]) -> None:
    fast = _fast_args(argv)
    assert fast is not None
    assert {f: getattr(fast, f) for f in FIELDS} == _argparse(argv)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no agent"),
        pytest.param(["install", "claude-code"], id="install"),
        pytest.param(["claude-code", "--help"], id="help"),
        pytest.param(["claude-code", "--tim", "3"], id="an abbreviation argparse accepts"),
        pytest.param(["claude-code", "--timeout", "-1"], id="a value that looks like a flag"),
        pytest.param(["claude-code", "--timeout", "soon"], id="not a number"),
        pytest.param(["claude-code", "--on-approval", "maybe"], id="not a choice"),
        pytest.param(["claude-code", "--tenant"], id="missing value"),
        pytest.param(["claude-code", "extra"], id="extra positional"),
        pytest.param(["aider"], id="unknown agent"),
    ],
)
def test_anything_else_goes_to_argparse(argv: list[str]) -> None:
    assert _fast_args(argv) is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["claude-code", "--on-approval", "maybe"], "invalid choice", id="bad choice"),
        pytest.param(["claude-code", "--timeout", "soon"], "invalid float value", id="bad float"),
        pytest.param(["claude-code", "--nope"], "unrecognized arguments", id="unknown flag"),
    ],
)
def test_a_bad_line_still_gets_argparses_error(argv: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "hook", *argv],
        input="{}",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and expected in done.stderr


def test_a_hook_call_imports_no_argparse(tmp_path: Any) -> None:
    probe = (
        "import io, sys; from gateway.cli import hook; hook.os._exit = lambda code: None; "
        "sys.stdin = io.StringIO('{}'); hook.run(['claude-code', '--timeout', '1']); "
        "print('argparse' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"
