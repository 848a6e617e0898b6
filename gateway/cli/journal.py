"""Reading journals offline: ``verify``, ``events``, ``trace``, ``export``, ``search``, ``tail``, ``forwarder status``.

These run with nothing but the file (and public keys), on a machine with no sidecar, so this module imports only
``gateway.journal``, ``gateway.signing`` and the CLI's own helpers. The one exception, ``search --collector``, asks
a collector over gRPC: :func:`_search_collector` imports gRPC and the generated stubs when it runs, so that the
offline commands never load them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.cli import connect, defaults, evidence, render
from gateway.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, OperatorCallError
from gateway.cli.filters import (
    event_filter,
    event_filter_flags,
    journal_file_flag,
    natural,
    nonempty,
    positive,
    seconds,
)
from gateway.errors import ConfigError, JournalError, JournalUnavailableError
from gateway.journal import query
from gateway.journal.bundle import is_bundle
from gateway.journal.entry import HEADER_SIZE, EventKind
from gateway.journal.state import forwarder_backlog
from gateway.journal.store import connect_readonly, iter_bodies, iter_operator_context
from gateway.journal.trace import CONTEXT_KINDS, build_trace, verification_from_report
from gateway.journal.verify import verify_journal
from gateway.signing import load_verifier

log = logging.getLogger("agentaudit")

READERS = ("verify", "events", "search", "export", "tail")
"""Commands for which an unreadable journal is a usage error (exit 2): the file named is the input."""


def register_forwarder(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``agentaudit forwarder status``."""
    forwarder = sub.add_parser("forwarder", help="forwarding status").add_subparsers(
        dest="forwarder_command", required=True, metavar="SUBCOMMAND"
    )
    p = forwarder.add_parser("status", help="backlog of a journal: entries not yet acknowledged by the collector")
    p.add_argument("journal", nargs="?", help=defaults.JOURNAL_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_forwarder_status)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``verify``, ``events``, ``trace``, ``export``, ``search`` and ``tail``, in the order --help lists them."""
    _register_verify(sub)
    p = sub.add_parser("events", help="print journal events as JSON lines (signed bodies with their seq)")
    p.add_argument("journal", nargs="?", help=defaults.JOURNAL_HELP)
    p.add_argument("--run-id", help="only events of this run")
    p.add_argument("--kind", help="only events of this kind (pre_exec, post_exec, violation, ...)")
    p.set_defaults(func=cmd_events)
    _register_trace(sub)
    # export, search and tail share the event filters (docs/investigate.md).
    journal_file, filters = journal_file_flag(), event_filter_flags()
    p = sub.add_parser(
        "export", parents=[journal_file, filters], help="export matching events as JSON lines or CloudEvents"
    )
    p.add_argument("--format", choices=["jsonl", "cloudevents"], default="jsonl", help="output (default jsonl)")
    p.add_argument("--newest-first", action="store_true", help="newest event first (default: oldest first)")
    p.add_argument("--limit", type=positive, metavar="N", help="at most N events")
    p.set_defaults(func=cmd_export)
    _register_search(sub, filters)
    p = sub.add_parser(
        "tail", parents=[journal_file, filters], help="print the last matching events; --follow for new ones"
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new matching events until Ctrl-C")
    p.add_argument("-n", "--lines", type=natural, default=10, metavar="N", help="last N events first (default 10)")
    p.add_argument("--interval", type=seconds, default=0.5, metavar="S", help="poll interval, seconds (default 0.5)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of one readable line per event")
    p.set_defaults(func=cmd_tail, newest_first=False)


def _register_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify", help="verify a journal or an evidence bundle offline (exit 0 intact, 1 tamper evidence, 2 error)"
    )
    p.add_argument("journal", nargs="?", help=f"journal file or evidence bundle (default: {defaults.DEFAULT_JOURNAL})")
    p.add_argument(
        "--public-key",
        action="append",
        metavar="KEY",
        help="signing.pub (repeatable; default: signing.pub beside the journal, and then witness.pub too)",
    )
    p.add_argument("--origin", help="expected origin (default: the public key's name)")
    p.add_argument(
        "--witness-key", action="append", metavar="KEY", help="collector (witness) public key file (repeatable)"
    )
    p.add_argument(
        "--anchor", action="append", metavar="NOTE", help="cosigned checkpoint note file the journal must contain"
    )
    p.add_argument(
        "--require-witnessed",
        nargs="?",
        const=0,
        type=natural,
        metavar="N",
        help="fail (exit 1) when more than N entries (default 0) lie beyond the last cosigned checkpoint and its "
        "receipt; needs --witness-key (docs/verify.md, Assurance levels)",
    )
    p.add_argument(
        "--min-size",
        type=natural,
        metavar="N",
        help="fail (exit 1) when the journal holds fewer than N entries (e.g. the size you saw last time)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_verify)


def _register_trace(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "trace",
        help="a run as a timeline with approvals, operator actions and anomalies "
        "(exit 0 clean, 1 anomalies, 2 unknown run or unreadable journal)",
        description="Print a run step by step: decision, reason, policy layer and rule, the approval chain, the "
        "result, operator actions that affected it (kill switches, policy changes), each event's verification "
        "status (✓ verified, ✗ finding, ? not checked) and anomalies (missing_result, result_without_allow, "
        "missing_steps, violation, unresolved_approval, verification_failed, replayed_attempt). Exit status: "
        "0 no anomaly, 1 the run has anomalies (gate scripts on it), 2 unknown run or unreadable journal.",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="the run to trace")
    p.add_argument("--journal", help=f"journal file (default: {defaults.DEFAULT_JOURNAL}, and its dev signing.pub)")
    p.add_argument(
        "--public-key", action="append", metavar="KEY", help="verify the journal with signing.pub (repeatable)"
    )
    p.add_argument(
        "--witness-key",
        action="append",
        metavar="KEY",
        help="with --public-key: say how far the journal is witnessed by this collector key (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (steps, operator actions, anomalies)")
    p.set_defaults(func=cmd_trace)


def _register_search(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], filters: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("search", parents=[filters], help="find events by run, tenant, decision, reason, time, ...")
    p.add_argument("journal", nargs="?", help=defaults.JOURNAL_HELP)
    p.add_argument("--collector", metavar="ADDRESS", help="search a collector (HOST:PORT) instead of a journal file")
    p.add_argument("--origin", type=nonempty, metavar="ORIGIN", help="only this journal (with --collector)")
    p.add_argument("--page-token", metavar="TOKEN", help="continue from a previous page (with --collector)")
    p.add_argument("--timeout", type=seconds, default=30.0, metavar="S", help="collector call timeout (default 30)")
    p.add_argument(
        "--token-file", help="collector search token file (default: the token in $AGENTAUDIT_COLLECTOR_TOKEN)"
    )
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificate of the collector (enables TLS; with --collector)")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate for mutual TLS (with --tls-key)")
    p.add_argument("--tls-key", metavar="FILE", help="client private key for mutual TLS (with --tls-cert)")
    p.add_argument("--newest-first", action="store_true", help="newest event first (default: oldest first)")
    p.add_argument("--limit", type=positive, default=100, metavar="N", help="at most N events (default 100)")
    p.add_argument("--after", type=int, metavar="SEQ", help="continue after this seq (the next page)")
    p.add_argument("--json", action="store_true", help="JSON lines (signed bodies with their seq)")
    p.set_defaults(func=cmd_search)


def cmd_verify(args: argparse.Namespace) -> int:
    """``agentaudit verify``: exit 0 intact, 1 tamper evidence (a journal, or an evidence bundle)."""
    path = defaults.journal(args.journal)
    if is_bundle(path):
        return evidence.verify_bundle_file(path, args)
    public_keys, witness_keys = args.public_key or [], args.witness_key or []
    if not public_keys:  # the dev keys beside the journal, as `agentaudit dev` made them
        dev_keys = [
            defaults.dev_key(path, "signing.pub"),
            None if witness_keys else defaults.dev_key(path, "witness.pub"),
        ]
        if dev_keys[0] is None:
            raise ConfigError(f"give --public-key KEY (no signing.pub beside {path})")
        public_keys, witness_keys = [str(dev_keys[0])], witness_keys or [str(k) for k in dev_keys[1:] if k]
    verifiers = [load_verifier(Path(p)) for p in public_keys]
    witnesses = [load_verifier(Path(p)) for p in witness_keys]
    anchors = []
    for anchor in args.anchor or []:
        try:
            anchors.append(Path(anchor).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read anchor {anchor}: {exc}") from exc
    incomplete = defaults.explain_incomplete_copy(path)
    if incomplete:
        raise ConfigError(incomplete)
    report = verify_journal(
        path,
        verifiers,
        origin=args.origin,
        witnesses=witnesses,
        anchors=anchors,
        require_witnessed=args.require_witnessed,
        min_size=args.min_size,
    )
    print(json.dumps(report.to_json()) if args.json else render.format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_events(args: argparse.Namespace) -> int:
    """``agentaudit events``: every (matching) event as a JSON line."""
    for seq, body in iter_bodies(defaults.journal(args.journal), run_id=args.run_id, kind=args.kind):
        print(render.json_line(seq, body))
    return EXIT_OK


def _open(journal: str | None) -> sqlite3.Connection:
    """The journal (default ./.agentaudit/journal.db) opened read-only; one that cannot be opened is a usage error."""
    try:
        return connect_readonly(defaults.journal(journal))
    except JournalUnavailableError as exc:
        raise ConfigError(str(exc)) from exc


def cmd_export(args: argparse.Namespace) -> int:
    """``agentaudit export``: matching events as JSON lines or CloudEvents."""
    flt = event_filter(args)
    conn = _open(args.journal)
    try:
        origin = query.journal_origin(conn)
        # A snapshot: entries appended while the export runs are left for the next one (resume after the last seq).
        events = query.select(conn, flt, limit=args.limit, through_seq=query.last_seq(conn))
        cloudevents = args.format == "cloudevents"
        for seq, body in events:
            print(render.cloudevent_line(seq, body, origin) if cloudevents else render.json_line(seq, body))
    finally:
        conn.close()
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    """``agentaudit search``: a page of matching events from a journal file, or from a collector."""
    flt = event_filter(args)
    if args.collector:
        if args.journal or args.after is not None:
            raise ConfigError("--collector searches the collector: give no JOURNAL file and no --after")
        return _search_collector(args, flt)
    if args.page_token or args.origin:
        raise ConfigError("--page-token and --origin need --collector ADDRESS")
    if not args.journal and not defaults.DEFAULT_JOURNAL.exists():
        raise ConfigError(
            f"no journal at ./{defaults.DEFAULT_JOURNAL}: name the JOURNAL file, run where `agentaudit dev` ran, "
            "or search a collector with --collector ADDRESS"
        )
    conn = _open(args.journal)
    try:
        found = 0
        if not args.json:
            print(render.search_header(with_origin=False))
        for seq, body in query.select(conn, flt, limit=args.limit, after_seq=args.after):
            found += 1
            print(render.json_line(seq, body) if args.json else render.search_row(seq, body))
        if not args.json:
            more = f" (more after seq {seq}: --after {seq})" if args.limit and found == args.limit else ""
            print(f"{found} events{more}")
    finally:
        conn.close()
    return EXIT_OK


def _collector_auth(args: argparse.Namespace) -> tuple[tuple[str, str | bytes], ...]:
    """The bearer token for a collector search, from --token-file or $AGENTAUDIT_COLLECTOR_TOKEN."""
    token = os.environ.get("AGENTAUDIT_COLLECTOR_TOKEN", "")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {args.token_file}: {exc.strerror}") from exc
    return (("authorization", f"Bearer {token}"),) if token else ()


def _search_collector(args: argparse.Namespace, flt: query.EventFilter) -> int:
    """``agentaudit search --collector ADDRESS``: every origin's events, in time order, page by page."""
    # The only gRPC in this module, imported here so that the offline commands never load it.
    import grpc  # noqa: PLC0415

    from agentaudit.v1 import collector_pb2_grpc, operator_pb2  # noqa: PLC0415

    request_filter = operator_pb2.EventFilter(
        run_id=flt.run_id or "",
        tenant_id=flt.tenant_id or "",
        agent_id=flt.agent_id or "",
        action=flt.action or "",
        decision=flt.decision or "",
        reason=flt.reason or "",
        policy_layer=flt.policy_layer or "",
        policy_rule=flt.policy_rule or "",
        actor=flt.actor or "",
        kind=flt.kind or "",
        origin=args.origin or "",
        trace_id=flt.trace_id or "",
    )
    if flt.since_ns is not None:
        request_filter.since.FromNanoseconds(flt.since_ns)
    if flt.until_ns is not None:
        request_filter.until.FromNanoseconds(flt.until_ns)
    if not args.json:
        print(render.search_header(with_origin=True))
    found, token = 0, args.page_token or ""
    collector = connect.channel(connect.target(args.collector, "--collector"), args.tls_ca, args.tls_cert, args.tls_key)
    with collector as channel:
        stub = collector_pb2_grpc.CollectorServiceStub(channel)
        while True:
            request = operator_pb2.SearchEventsRequest(
                filter=request_filter,
                newest_first=args.newest_first,
                page_size=min(args.limit - found, 1000),
                page_token=token,
            )
            try:
                reply = stub.SearchEvents(request, timeout=args.timeout, metadata=_collector_auth(args))
            except grpc.RpcError as exc:
                code = exc.code()
                exit_code = EXIT_USAGE if code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILURE
                raise OperatorCallError(f"collector {connect.failure(exc, args.collector)}", exit_code) from None
            for event in reply.events:
                found += 1
                # The signed body itself (the Struct copy would turn every number into a float).
                body = json.loads(event.entry[HEADER_SIZE:])
                if args.json:
                    print(render.collector_json_line(event.origin, event.seq, body))
                else:
                    print(render.search_row(event.seq, body, event.origin))
            token = reply.next_page_token
            if not token or found >= args.limit:
                break
    if not args.json:
        more = f" (more: --page-token {token})" if token else ""
        print(f"{found} events{more}")
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    """``agentaudit tail``: the last matching events, then (``--follow``) new ones as they are appended."""
    flt = event_filter(args)
    line = render.json_line if args.json else render.summary_line
    conn = _open(args.journal)
    stopping: list[int] = []
    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    if args.follow:
        # SIGINT/SIGTERM end the follow loop cleanly (exit 0) between polls, never halfway through a line.
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop)
    try:
        seen = query.last_seq(conn)
        newest = dataclasses.replace(flt, newest_first=True)
        last = list(query.select(conn, newest, limit=args.lines, through_seq=seen))
        for seq, body in reversed(last):
            print(line(seq, body))
        sys.stdout.flush()
        while args.follow and not stopping:
            # Sleep in short slices so a signal ends the wait promptly whatever the interval.
            deadline = time.monotonic() + args.interval
            while not stopping and (remaining := deadline - time.monotonic()) > 0:
                time.sleep(min(remaining, 0.1))
            if stopping:
                break
            # One short read per poll (no transaction stays open), so the sidecar's WAL checkpoints go on.
            top = query.last_seq(conn)
            if top < seen:
                log.warning("journal shrank from %d to %d entries (replaced or rolled back?)", seen + 1, top + 1)
            elif top > seen:
                for seq, body in query.select(conn, flt, after_seq=seen, through_seq=top):
                    print(line(seq, body))
                sys.stdout.flush()
            seen = top
    finally:
        conn.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    """``agentaudit trace``: exit 0 clean, 1 the run has anomalies, 2 unknown run or unreadable journal."""
    path = defaults.journal(args.journal)
    public_keys = args.public_key or []
    if not public_keys and not args.journal:  # the dev journal: verify with its dev key
        public_keys = [str(key)] if (key := defaults.dev_key(path, "signing.pub")) else []
    verifiers = [load_verifier(Path(p)) for p in public_keys]
    witnesses = [load_verifier(Path(p)) for p in args.witness_key or []]
    if witnesses and not verifiers:
        raise ConfigError("--witness-key needs --public-key: witnessing is checked while verifying the journal")
    try:
        # The run_id index serves the run; operator events (few) come through their partial index.
        events = [{"seq": seq, **body} for seq, body in iter_bodies(path, run_id=args.run_id)]
        # A run-scoped kill switch carries the run id too, but alone it does not make a run.
        if all(event.get("kind") in CONTEXT_KINDS for event in events):
            print(f"agentaudit: no events for run {args.run_id!r} in {path}", file=sys.stderr)
            return EXIT_USAGE
        last = events[-1]["seq"]
        context = [{"seq": seq, **body} for seq, body in iter_operator_context(path) if seq <= last]
        # Verified after reading: the journal is append-only, so every event read is in the verified snapshot.
        verified, status = (
            verification_from_report(verify_journal(path, verifiers, witnesses=witnesses))
            if verifiers
            else (None, "not checked (no --public-key given)")
        )
    except (JournalError, sqlite3.Error, ValueError) as exc:
        print(f"agentaudit: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    trace = build_trace(events, run_id=args.run_id, verified=verified, context_events=context, journal_status=status)
    print(json.dumps(trace.to_json(), ensure_ascii=False) if args.json else render.format_trace(trace))
    return EXIT_FAILURE if trace.anomalies else EXIT_OK


def cmd_forwarder_status(args: argparse.Namespace) -> int:
    """``agentaudit forwarder status``: how far the collector has acknowledged this journal."""
    conn = connect_readonly(defaults.journal(args.journal))
    try:
        progress = forwarder_backlog(conn)
        # The collector's cosignature of the last batch is journaled after that batch was acknowledged, so the
        # newest entry is usually such a receipt waiting for the next batch: counted, and said, apart.
        unsent_kinds = [
            row[0] for row in conn.execute("SELECT kind FROM journal WHERE seq >= ?", (progress.acked_size,))
        ]
    finally:
        conn.close()
    receipts = sum(kind == EventKind.COSIGNATURE.label for kind in unsent_kinds)
    size, acked = progress.journal_size, progress.acked_size
    oldest = progress.oldest_unsent_ns
    age_s = (time.time_ns() - oldest) / 1e9 if oldest is not None else 0.0
    report = {
        "journal_size": size,
        "acked_size": acked,
        "backlog": progress.backlog,
        "oldest_unsent_age_s": round(age_s, 3),
        "unsent_receipts": receipts,
    }
    if args.json:
        print(json.dumps(report))
    else:
        line = f"forwarded {acked} of {size} entries; backlog {progress.backlog} (oldest unsent {age_s:.1f} s old)"
        if receipts and receipts == progress.backlog:
            line += (
                f"\n  {'the unsent entry is' if receipts == 1 else f'all {receipts} unsent entries are'} the "
                "collector's cosignature receipt of what it acknowledged; it is forwarded with the next batch"
            )
        print(line)
    return EXIT_OK
