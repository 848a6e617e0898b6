"""CEL conditions: compiled at load time, checked as far as possible without data, evaluated fail-closed.

Uses the Rust-backed ``common-expression-language`` package (``cel``). The library has no type checker, so at
load time an expression is checked for syntax, for variables outside the documented set (names bound by
comprehension macros such as ``labels.exists(k, ...)`` are allowed), and, by a dry run on an empty request, for
operator type errors and a non-boolean result where the dry run gets that far. At evaluation time any error or a
non-boolean result raises :class:`ConditionError`, which the engine turns into ``stop`` / ``policy_error``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import AgentAuditError

# The variables a condition may read (documented in docs/policy.md).
VARIABLES = frozenset({"action", "args", "tenant", "agent", "actor", "scope", "labels", "run", "tool"})
_MACROS = ("all", "exists", "exists_one", "map", "filter")

DRY_RUN_CONTEXT: Mapping[str, Any] = {
    "action": "",
    "args": {},
    "tenant": "",
    "agent": "",
    "actor": {"type": "", "id": ""},
    "scope": "",
    "labels": {},
    "run": {"id": "", "steps": 0, "step_id": 0},
    "tool": {"changed": False, "annotations": {}},
}


class ConditionError(AgentAuditError):
    """A condition could not be compiled, or failed or returned a non-boolean when evaluated."""


@dataclass(frozen=True)
class Condition:
    """A compiled CEL boolean expression."""

    source: str
    program: Any
    variables: frozenset[str]  # the request variables it reads (the evaluation context holds only what is read)

    def evaluate(self, context: Any) -> bool:
        """Evaluates against a ``cel.Context`` (or dict); raises ConditionError on any failure."""
        try:
            result = self.program.execute(context)
        except Exception as exc:  # the binding raises KeyError, TypeError, RuntimeError, ValueError
            raise ConditionError(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(result, bool):
            raise ConditionError(f"condition returned {type(result).__name__}, not a boolean")
        return result


_LOADING = threading.Lock()  # a policy may first be compiled on a reload thread while the loop evaluates


@functools.cache
def _cel() -> Any:
    """The CEL binding (its Rust extension module ``cel.cel``), loaded on the first condition compiled or evaluated.

    Not at import: a policy without ``when`` never needs it. And not through ``import cel``: the package's
    ``__init__`` also imports its command line (typer, rich, prompt_toolkit: ~11 MiB of a sidecar's memory for
    nothing), so the extension is loaded from the package's directory by itself. A later ``import cel`` finds it in
    ``sys.modules`` and shares it. Falls back to ``import cel`` if the layout is not the expected one.
    """
    with _LOADING:
        return sys.modules.get("cel.cel") or _load_extension()


def _load_extension() -> Any:
    spec = importlib.util.find_spec("cel")  # locates the package without running its __init__
    for directory in (spec.submodule_search_locations or []) if spec is not None else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(directory) / f"cel{suffix}"
            if path.is_file():
                loader = importlib.machinery.ExtensionFileLoader("cel.cel", str(path))
                module_spec = importlib.util.spec_from_file_location("cel.cel", path, loader=loader)
                if module_spec is None:
                    continue
                module = importlib.util.module_from_spec(module_spec)
                loader.exec_module(module)
                sys.modules["cel.cel"] = module
                return module
    return importlib.import_module("cel")


def _macro_bound(name: str, source: str) -> bool:
    pattern = rf"\.\s*(?:{'|'.join(_MACROS)})\s*\(\s*{re.escape(name)}\s*,"
    return re.search(pattern, source) is not None


def compile_condition(source: Any) -> Condition:
    """Compiles and checks a condition.

    Raises:
        ConditionError: with a message that says what is wrong (the caller adds file, line and rule).
    """
    if not isinstance(source, str) or not source.strip():
        raise ConditionError("'when' must be a non-empty CEL expression string")
    try:
        program = _cel().compile(source)
    except ValueError as exc:
        raise ConditionError(f"CEL syntax error: {exc}") from None
    unknown = [v for v in program.variables() if v not in VARIABLES and not _macro_bound(v, source)]
    if unknown:
        raise ConditionError(
            f"unknown variable(s) {', '.join(unknown)} in {source!r} (available: {', '.join(sorted(VARIABLES))})"
        )
    condition = Condition(source, program, frozenset(program.variables()) & VARIABLES)
    try:
        result = program.execute(dict(DRY_RUN_CONTEXT))
    except KeyError:
        return condition  # reads a field the empty dry-run request lacks: only real data can tell
    except Exception as exc:
        raise ConditionError(f"{source!r} fails on any request: {type(exc).__name__}: {exc}") from None
    if not isinstance(result, bool):
        raise ConditionError(f"{source!r} returns {type(result).__name__}, not a boolean")
    return condition


def context(variables: Mapping[str, Any]) -> Any:
    """Builds a reusable evaluation context (converted once, shared by every condition of one request).

    Conversion into CEL values costs about 2.5 µs per variable here, so callers pass only what is read.
    """
    return _cel().Context(dict(variables))
