"""The event-filter flags (``--run-id`` ... ``--until``) that ``export``, ``search`` and ``tail`` share, written once.

Each flag's ``dest`` is a :class:`gateway.journal.query.EventFilter` field, so :func:`event_filter` builds the
filter from the parsed arguments by name (docs/investigate.md). The argument types here reject bad values at
parse time, with argparse's usage message and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses

from gateway.errors import ConfigError
from gateway.journal import query


def nonempty(value: str) -> str:
    """A string flag that must not be empty."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def actor(value: str) -> str:
    """``TYPE:ID`` (``user:u_1``) or a bare ``ID``."""
    kind, sep, ident = value.partition(":")
    if not value or (sep and not (kind and ident)):
        raise argparse.ArgumentTypeError(f"{value!r} is not an actor: use TYPE:ID (user:u_1) or ID")
    return value


def trace_id(value: str) -> str:
    """A W3C trace id."""
    if not query.is_trace_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a W3C trace id (32 lower-case hex digits)")
    return value


def time_ns(value: str) -> int:
    """RFC 3339 or a duration ago (``2h``), as unix nanoseconds."""
    try:
        return query.parse_time(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _whole(value: str, minimum: int) -> int:
    if not value.isdigit() or int(value) < minimum:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= {minimum}")
    return int(value)


def positive(value: str) -> int:
    """A whole number >= 1."""
    return _whole(value, 1)


def natural(value: str) -> int:
    """A whole number >= 0."""
    return _whole(value, 0)


def seconds(value: str) -> float:
    """A number of seconds in (0, 3600]."""
    try:
        parsed = float(value)
    except ValueError:
        parsed = 0.0
    if not 0.0 < parsed <= 3600.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds in (0, 3600]")
    return parsed


def journal_file_flag() -> argparse.ArgumentParser:
    """A parent parser with the positional JOURNAL file of the read-only commands."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "journal", nargs="?", help="journal database file (default: .agentaudit/journal.db); read-only, may be in use"
    )
    return parent


def event_filter_flags() -> argparse.ArgumentParser:
    """A parent parser with the event-filter flags; each dest is an EventFilter field."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--run-id", type=nonempty, metavar="RUN", help="only events of this run")
    flags.add_argument("--tenant", dest="tenant_id", type=nonempty, metavar="TENANT", help="only this tenant")
    flags.add_argument("--agent", dest="agent_id", type=nonempty, metavar="AGENT", help="only this agent")
    flags.add_argument("--action", type=nonempty, metavar="GLOB", help="action name glob, e.g. 'refund.*'")
    flags.add_argument("--decision", choices=query.DECISIONS, help="only this decision")
    flags.add_argument("--reason", type=nonempty, help="only this reason code, e.g. rate_limited_tenant")
    layers = "policy layer that decided: kill_switch, access, limits, approval, rules"
    flags.add_argument("--layer", dest="policy_layer", type=nonempty, metavar="LAYER", help=layers)
    flags.add_argument("--rule", dest="policy_rule", type=nonempty, metavar="RULE", help="policy rule that decided")
    flags.add_argument("--actor", type=actor, metavar="[TYPE:]ID", help="who initiated or performed it")
    flags.add_argument("--trace-id", type=trace_id, metavar="TRACE", help="events caused by this W3C trace")
    flags.add_argument("--kind", choices=query.KINDS, metavar="KIND", help="event kind: pre_exec, violation, ...")
    flags.add_argument("--since", dest="since_ns", type=time_ns, metavar="TIME", help="at or after (RFC 3339 or 2h)")
    flags.add_argument("--until", dest="until_ns", type=time_ns, metavar="TIME", help="before (RFC 3339 or 15m)")
    return flags


def event_filter(args: argparse.Namespace) -> query.EventFilter:
    """The filter the parsed flags describe; ConfigError when --since is not before --until."""
    flt = query.EventFilter(**{f.name: getattr(args, f.name) for f in dataclasses.fields(query.EventFilter)})
    if flt.since_ns is not None and flt.until_ns is not None and flt.since_ns >= flt.until_ns:
        raise ConfigError("--since must be earlier than --until")
    return flt
