"""docs/cli.md stays complete: every sub-command `agentaudit --help` lists, and every flag of its help, is in it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from gateway.cli.parser import build_parser
from tests.conftest import ROOT, run_cli

CLI_DOC = (ROOT / "docs" / "cli.md").read_text()


def sub_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path below ``parser`` (``("kill-switch", "engage")``), the parent before its children."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name)
                yield from sub_commands(child, (*path, name))


def parser_of(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    return parser


COMMANDS = list(sub_commands(build_parser()))


def test_the_commands_walked_are_the_ones_help_lists() -> None:
    listed = run_cli("--help", check=True).stdout
    top = {path[0] for path in COMMANDS}
    assert top == set(re.findall(r"^ {4}([a-z][a-z-]+)", listed, re.MULTILINE))


@pytest.mark.parametrize("path", [pytest.param(p, id=" ".join(p)) for p in COMMANDS])
def test_every_sub_command_is_in_docs_cli(path: tuple[str, ...]) -> None:
    assert f"agentaudit {' '.join(path)}" in CLI_DOC


@pytest.mark.parametrize("path", [pytest.param(p, id=" ".join(p)) for p in COMMANDS])
def test_every_flag_of_a_sub_command_is_in_docs_cli(path: tuple[str, ...]) -> None:
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", parser_of(path).format_help())) - {"--help"}
    assert sorted(f for f in flags if f not in CLI_DOC) == []


@pytest.mark.parametrize("name", ["cli.md", "operator.md", "investigate.md"])
def test_the_docs_print_only_address_forms_that_work(name: str) -> None:
    """`unix://.agentaudit/x.sock` names a host, not a path: only unix:REL, unix:///ABS, unix://./REL work."""
    text = (ROOT / "docs" / name).read_text()
    broken = re.findall(r"unix://(?!/|\./|DIR/)[^\s`'\"]+", text)  # DIR: the placeholder of an absolute directory
    assert broken == []
