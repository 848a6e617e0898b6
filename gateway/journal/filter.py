"""Which events a search selects, and that choice as SQL: one filter for the sidecar's journal and the collector.

:class:`EventFilter` is what ``agentaudit export``/``tail``, the operator search and the collector search ask
for. :func:`sql_conditions` turns its indexed fields into WHERE conditions for a :class:`SqlDialect` (SQLite for
the journal and the embedded collector, PostgreSQL for the production collector); :func:`body_predicate` turns the
rest into one test on the parsed body. Only constants enter the SQL text; every value is a placeholder parameter.
Pure functions: the callers own their connections, statements and paging.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EventFilter:
    """Which events to select; every field left ``None`` matches everything.

    String filters match the body field exactly (an event without the field never matches), except ``action``,
    an fnmatch-style glob like the policy's (``*``, ``?``, ``[abc]``, ``[!abc]``; case-sensitive). ``actor`` is
    ``type:id`` (``user:u_1``, ``operator:alice``) or a bare ``id`` of any type; an id containing ``:`` needs its
    type. ``since_ns`` (inclusive) and ``until_ns`` (exclusive) bound the entry's signed time (unix nanoseconds).
    """

    run_id: str | None = None
    tenant_id: str | None = None
    agent_id: str | None = None
    action: str | None = None
    decision: str | None = None
    reason: str | None = None
    kind: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    policy_layer: str | None = None
    policy_rule: str | None = None
    actor: str | None = None
    trace_id: str | None = None
    newest_first: bool = False


EQUALITY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "run_id"),
    ("tenant_id", "tenant_id"),
    ("agent_id", "agent_id"),
    ("decision", "decision"),
    ("reason", "reason"),
    ("kind", "kind"),
)
"""Filters with an indexed column in both the journal and the collector, compared for equality (field → column)."""

# Filters without a column, compared for equality with the body field of the same name.
_BODY_EQUALITY_FIELDS = ("policy_layer", "policy_rule", "trace_id")
_GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class SqlDialect:
    """Where SQLite and PostgreSQL differ for a search: placeholders and the glob operator.

    ``placeholder(i)`` writes the ``i``-th parameter (1-based): ``?`` in SQLite, ``$i`` in PostgreSQL (asyncpg).
    """

    name: str
    placeholder: Callable[[int], str]


SQLITE = SqlDialect("sqlite", lambda _: "?")
POSTGRES = SqlDialect("postgres", lambda i: f"${i}")


def sql_conditions(
    flt: EventFilter,
    dialect: SqlDialect,
    *,
    columns: tuple[tuple[str, str], ...] = EQUALITY_COLUMNS,
    first_param: int = 1,
) -> tuple[list[str], list[Any]]:
    """SQL conditions (constants with placeholders) and their parameters for the indexed filters of ``flt``.

    ``columns`` is the equality-column table (a caller with more columns, like the collector's ``origin``, passes
    a longer one; a field ``flt`` lacks is skipped); ``first_param`` is the number of the first placeholder, for
    statements with parameters before these. The action glob becomes ``GLOB`` in SQLite and ``LIKE`` (with ``\\``
    escapes) in PostgreSQL, both case-sensitive; a bracket class selects a superset that :func:`body_predicate`
    confirms with fnmatch (see :func:`glob_to_sqlite`).
    """
    where: list[str] = []
    params: list[Any] = []

    def add(condition: str, value: Any) -> None:
        where.append(condition.format(dialect.placeholder(first_param + len(params))))
        params.append(value)

    for field, column in columns:
        value = getattr(flt, field, None)
        if value is not None:
            add(f"{column} = {{}}", value)
    if flt.action is not None:
        if not any(c in flt.action for c in _GLOB_CHARACTERS):
            add("action = {}", flt.action)
        elif dialect.name == SQLITE.name:
            add("action GLOB {}", glob_to_sqlite(flt.action)[0])
        else:
            add("action LIKE {} ESCAPE '\\'", glob_to_like(flt.action))
    if flt.since_ns is not None:
        add("unix_nanos >= {}", flt.since_ns)
    if flt.until_ns is not None:
        add("unix_nanos < {}", flt.until_ns)
    return where, params


def glob_to_sqlite(pattern: str) -> tuple[str, bool]:
    """Translates an fnmatch glob to a SQLite ``GLOB`` pattern; the flag says whether it is exact.

    ``*`` and ``?`` mean the same in both; every other character outside a bracket class is literal in fnmatch, so
    the only one SQLite would misread, ``[``, is written ``[[]``. Bracket classes differ in corner cases (a
    leading ``^``, unusual ranges), so a class becomes ``?`` (any one character): the SQL then selects a superset
    and the flag is False, telling the caller to confirm each candidate with :func:`fnmatch.fnmatchcase`.
    """
    out: list[str] = []
    exact = True
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c in "*?":
            out.append(c)
        elif c == "[":
            # Where fnmatch's class ends (same scan as fnmatch.translate); unclosed means a literal "[".
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append("[[]")
            else:
                out.append("?")
                exact = False
                i = j + 1
        else:
            out.append(c)
    return "".join(out), exact


def glob_to_like(pattern: str) -> str:
    """An fnmatch glob as a ``LIKE ... ESCAPE '\\'`` pattern: ``*`` → ``%``, ``?`` and a bracket class → ``_``
    (a superset, confirmed on the body), ``%``, ``_`` and ``\\`` escaped, every other character literal."""
    sqlite_glob, _ = glob_to_sqlite(pattern)
    out: list[str] = []
    i = 0
    while i < len(sqlite_glob):
        if sqlite_glob.startswith("[[]", i):
            out.append("[")
            i += 3
            continue
        c = sqlite_glob[i]
        i += 1
        out.append("%" if c == "*" else "_" if c == "?" else "\\" + c if c in "%_\\" else c)
    return "".join(out)


def _body_field_is(field: str, wanted: str) -> Callable[[dict[str, Any]], bool]:
    return lambda body: body.get(field) == wanted


def body_predicate(flt: EventFilter) -> Callable[[dict[str, Any]], bool] | None:
    """The filters without a column, as one test on the parsed body; None when there are none."""
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for field in _BODY_EQUALITY_FIELDS:
        wanted = getattr(flt, field)
        if wanted is not None:
            checks.append(_body_field_is(field, wanted))
    if flt.actor is not None:
        actor_type, sep, actor_id = flt.actor.partition(":")
        if not sep:
            actor_type, actor_id = "", flt.actor

        def actor_matches(body: dict[str, Any]) -> bool:
            actor = body.get("actor")
            return (
                isinstance(actor, dict)
                and actor.get("id") == actor_id
                and (not actor_type or actor.get("type") == actor_type)
            )

        checks.append(actor_matches)
    if flt.action is not None and not glob_to_sqlite(flt.action)[1]:
        pattern = flt.action
        checks.append(lambda body: isinstance(body.get("action"), str) and fnmatch.fnmatchcase(body["action"], pattern))
    if not checks:
        return None
    return lambda body: all(check(body) for check in checks)
