"""The ``agentaudit`` command line: the only module that prints for humans or calls sys.exit.

Exit codes: 0 success; 1 tamper evidence (verify) or a runtime failure; 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.errors import AgentAuditError, ConfigError, JournalError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("agentaudit")


def _setup_logging(level: str, fmt: str = "text") -> None:
    from gateway import logs  # noqa: PLC0415

    logs.setup(level, fmt)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AGENTAUDIT_")}


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call from within the running loop): the servers' cue to stop in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _serve(cfg_loader: object, banner: bool, directory: Path | None = None) -> int:
    """Runs the sidecar until SIGINT/SIGTERM."""
    from gateway import app  # noqa: PLC0415 - keeps `verify`/`events` free of server imports

    assert callable(cfg_loader)
    cfg, created = cfg_loader()
    _setup_logging(cfg.log.level, cfg.log.format or ("text" if banner else "json"))
    app.install_event_loop_policy()

    async def main() -> None:
        stop = _stop_on_signals()
        sidecar = app.Sidecar(cfg)
        try:
            await sidecar.start_probes()
            if not await app.start_with_retries(sidecar, stop):
                return
            app.freeze_startup_objects()
            if banner:
                _print_dev_banner(cfg, sidecar.bound, sidecar.operator_bound, created, directory)
            await stop.wait()
            log.info("shutting down")
        finally:
            await sidecar.aclose()

    asyncio.run(main())
    return EXIT_OK


def _print_dev_banner(
    cfg: object, bound: Sequence[str], operator: Sequence[str], created: Sequence[str], directory: Path | None
) -> None:
    from gateway.config import Config  # noqa: PLC0415

    assert isinstance(cfg, Config) and directory is not None
    pub = directory / "signing.pub"
    print(f"agentaudit {__version__} dev sidecar is running (Ctrl-C to stop)")
    if created:
        print(f"  created in {directory}: {', '.join(created)}")
    print(f"  journal:   {cfg.journal.path}")
    print(f"  policy:    {cfg.policy.path}")
    for address in bound:
        print(f"  listening: {address}")
    print("connect:")
    print("  python: from agentaudit_client import GatewayClient; GatewayClient(" + repr(bound[0]) + ")")
    print(f"  example: python examples/support_agent.py --target {bound[0]}")
    print(f"  grpcurl: grpcurl -plaintext {next((b for b in bound if not b.startswith('unix')), bound[0])} list")
    if operator:
        token = directory / "operator.token"
        flags = f"--operator {operator[0]} --token-file {token}"
        print(f"operator API ({', '.join(operator)}; identity dev-operator, roles admin, approver, auditor):")
        print(f"  agentaudit approvals {flags}")
        print(f"  agentaudit approve APPROVAL_ID {flags}")
        print(f"  agentaudit kill-switch engage --scope tenant --target t_42 --reason drill {flags}")
        print("  (run from the directory holding .agentaudit/ and the flags can be left out)")
    print("verify:")
    witness = directory / "witness.pub"
    witnessed = f" --witness-key {witness}" if cfg.forward.target == "embedded" and witness.exists() else ""
    print(f"  agentaudit verify {cfg.journal.path} --public-key {pub}{witnessed}")
    if cfg.forward.target:
        print(f"  agentaudit forwarder status {cfg.journal.path}")
    print(f"  agentaudit events {cfg.journal.path}")
    sys.stdout.flush()


def cmd_dev(args: argparse.Namespace) -> int:
    from gateway import devenv  # noqa: PLC0415

    directory = Path(args.dir).resolve()
    return _serve(
        lambda: devenv.prepare(directory, args.listen, _env(), args.operator_listen), banner=True, directory=directory
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import config  # noqa: PLC0415

    return _serve(
        lambda: (
            config.load(Path(args.config), env=_env(), listen=args.listen, operator_listen=args.operator_listen),
            [],
        ),
        banner=False,
    )


# --- operator commands (clients of the OperatorService) -------------------------------------------------------

DEFAULT_OPERATOR_SOCKET = Path(".agentaudit") / "operator.sock"
DEFAULT_OPERATOR_TOKEN = Path(".agentaudit") / "operator.token"


class OperatorCallError(Exception):
    """An operator RPC failed; carries the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _operator_call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """Calls one OperatorService method with the configured credential; raises OperatorCallError."""
    import grpc  # noqa: PLC0415

    from agentaudit.v1 import operator_pb2_grpc  # noqa: PLC0415

    address = (
        args.operator or os.environ.get("AGENTAUDIT_OPERATOR_ADDRESS") or f"unix://{DEFAULT_OPERATOR_SOCKET.resolve()}"
    )
    token = os.environ.get("AGENTAUDIT_OPERATOR_TOKEN", "")
    token_file = Path(args.token_file) if args.token_file else DEFAULT_OPERATOR_TOKEN
    if args.token_file or (not token and token_file.exists()):
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {token_file}: {exc.strerror}") from exc
    metadata = [("authorization", f"Bearer {token}")] if token else []
    if args.tls_ca:
        try:
            ca, key, cert = (Path(p).read_bytes() if p else None for p in (args.tls_ca, args.tls_key, args.tls_cert))
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        try:
            return getattr(stub, method)(request, metadata=metadata, timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            exit_code = (
                EXIT_USAGE
                if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)
                else EXIT_FAILURE
            )
            raise OperatorCallError(f"{code.name}: {exc.details()}", exit_code) from None


def _when(ts: Any) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ") if ts.seconds else "-"


def cmd_approvals(args: argparse.Namespace) -> int:
    from google.protobuf import json_format  # noqa: PLC0415

    from agentaudit.v1 import gateway_pb2, operator_pb2  # noqa: PLC0415

    state = getattr(gateway_pb2, f"APPROVAL_STATE_{args.state.upper()}")
    reply = _operator_call(
        args,
        "ListApprovals",
        operator_pb2.ListApprovalsRequest(state=state, tenant_id=args.tenant or "", limit=args.limit),
    )
    if args.json:
        for approval in reply.approvals:
            print(json_format.MessageToJson(approval, indent=None, preserving_proto_field_name=True))
        return EXIT_OK
    if not reply.approvals:
        print(f"no {args.state} approvals")
        return EXIT_OK
    print(f"{'APPROVAL':<31} {'TENANT':<12} {'RUN':<20} {'ACTION':<18} {'RULE':<24} {'EXPIRES':<20} REQUESTED BY")
    for a in reply.approvals:
        print(
            f"{a.approval_id:<31} {a.tenant_id:<12} {a.run_id:<20} {a.action:<18} {a.policy_rule:<24} "
            f"{_when(a.expires_at):<20} {a.actor.id or '-'}"
        )
    return EXIT_OK


def cmd_resolve(args: argparse.Namespace) -> int:
    from agentaudit.v1 import operator_pb2  # noqa: PLC0415

    grant = args.command == "approve"
    method, request_type = (
        ("GrantApproval", operator_pb2.GrantApprovalRequest)
        if grant
        else (
            "DenyApproval",
            operator_pb2.DenyApprovalRequest,
        )
    )
    reply = _operator_call(args, method, request_type(approval_id=args.approval_id, comment=args.comment or ""))
    verb = "granted" if grant else "denied"
    print(f"{reply.approval.approval_id} {verb} by {reply.approval.resolved_by} (event {reply.event_id})")
    return EXIT_OK


def cmd_kill_switch(args: argparse.Namespace) -> int:
    from agentaudit.v1 import operator_pb2  # noqa: PLC0415

    if args.switch_command == "status":
        reply = _operator_call(args, "ListKillSwitches", operator_pb2.ListKillSwitchesRequest())
        if not reply.kill_switches:
            print("no kill switch engaged")
        for s in reply.kill_switches:
            scope = operator_pb2.KillSwitchScope.Name(s.scope).removeprefix("KILL_SWITCH_SCOPE_").lower()
            print(f"{scope:<7} {s.target or '*':<24} by {s.engaged_by:<24} since {_when(s.engaged_at):<20} {s.reason}")
        return EXIT_OK
    scope = getattr(operator_pb2, f"KILL_SWITCH_SCOPE_{args.scope.upper()}")
    fields = {"scope": scope, "target": args.target or "", "reason": args.reason or ""}
    if args.switch_command == "engage":
        reply = _operator_call(args, "EngageKillSwitch", operator_pb2.EngageKillSwitchRequest(**fields))
        print(f"kill switch engaged at {args.scope}:{args.target or '*'} (event {reply.event_id})")
    else:
        reply = _operator_call(args, "ReleaseKillSwitch", operator_pb2.ReleaseKillSwitchRequest(**fields))
        print(f"kill switch released at {args.scope}:{args.target or '*'} (event {reply.event_id})")
    return EXIT_OK


def cmd_recovery_acknowledge(args: argparse.Namespace) -> int:
    from agentaudit.v1 import operator_pb2  # noqa: PLC0415

    reply = _operator_call(args, "AcknowledgeRecovery", operator_pb2.AcknowledgeRecoveryRequest(comment=args.comment))
    what = reply.detected or "nothing was pending"
    print(f"recovery acknowledged ({what}); event {reply.event_id}")
    return EXIT_OK


def cmd_policy_reload(args: argparse.Namespace) -> int:
    from agentaudit.v1 import operator_pb2  # noqa: PLC0415

    document = ""
    if args.file:
        try:
            document = Path(args.file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
    reply = _operator_call(args, "ReloadPolicy", operator_pb2.ReloadPolicyRequest(document=document))
    if reply.changed:
        print(f"policy {reply.new_version} active (was {reply.old_version}; event {reply.event_id})")
    else:
        print(f"policy unchanged ({reply.new_version})")
    return EXIT_OK


def cmd_collector(args: argparse.Namespace) -> int:
    from gateway import app  # noqa: PLC0415
    from gateway.collector.app import Collector, load_collector_config  # noqa: PLC0415

    cfg = load_collector_config(Path(args.config), _env())
    if args.listen:
        cfg = dataclasses.replace(cfg, listen=tuple(args.listen))
    _setup_logging(args.log_level, args.log_format)
    app.install_event_loop_policy()

    async def main() -> None:
        from gateway import metrics  # noqa: PLC0415

        stop = _stop_on_signals()
        metrics.BUILD_INFO.info({"version": __version__})
        exposition = metrics.serve(cfg.metrics_listen)[0] if cfg.metrics_listen else None
        collector = Collector(cfg)
        try:
            await collector.start()
            await stop.wait()
        finally:
            await collector.aclose()
            if exposition is not None:
                exposition.shutdown()

    asyncio.run(main())
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """Asks a sidecar's or collector's grpc.health.v1 service; exit 0 only for SERVING (for scripts and probes)."""
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    try:
        with grpc.insecure_channel(args.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as exc:
        print(f"{args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_FAILURE
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return EXIT_OK if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILURE


def cmd_forwarder_status(args: argparse.Namespace) -> int:
    from gateway.journal.store import connect_readonly  # noqa: PLC0415

    conn = connect_readonly(Path(args.journal))
    try:
        (size,) = conn.execute("SELECT count(*) FROM journal").fetchone()
        rows = conn.execute("SELECT origin, acked_size FROM forwarder_state").fetchall()
        acked = rows[0][1] if rows else 0
        oldest = conn.execute("SELECT unix_nanos FROM journal WHERE seq = ?", (acked,)).fetchone()
    finally:
        conn.close()
    age_s = (time.time_ns() - oldest[0]) / 1e9 if oldest else 0.0
    report = {
        "journal_size": size,
        "acked_size": acked,
        "backlog": size - acked,
        "oldest_unsent_age_s": round(age_s, 3),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"forwarded {acked} of {size} entries; backlog {size - acked} (oldest unsent {age_s:.1f} s old)")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from gateway import devenv  # noqa: PLC0415

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    existing = [n for n in ("signing.key", "hmac.key") if (directory / n).exists()]
    if existing and not args.keep_existing:
        raise ConfigError(f"{', '.join(existing)} already exist in {directory}; refusing to overwrite keys")
    created = devenv.ensure_keys(directory, args.origin or devenv.default_origin())
    for name in created:
        print(directory / name)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.journal.verify import format_report, verify_journal  # noqa: PLC0415
    from gateway.signing import load_verifier  # noqa: PLC0415

    verifiers = [load_verifier(Path(p)) for p in args.public_key]
    witnesses = [load_verifier(Path(p)) for p in args.witness_key or []]
    anchors = []
    for anchor in args.anchor or []:
        try:
            anchors.append(Path(anchor).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read anchor {anchor}: {exc}") from exc
    report = verify_journal(Path(args.journal), verifiers, origin=args.origin, witnesses=witnesses, anchors=anchors)
    print(json.dumps(report.to_json()) if args.json else format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_events(args: argparse.Namespace) -> int:
    from gateway.journal.store import iter_bodies  # noqa: PLC0415

    for seq, body in iter_bodies(Path(args.journal), run_id=args.run_id, kind=args.kind):
        print(json.dumps({"seq": seq, **body}, ensure_ascii=False, separators=(",", ":")))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.errors import JournalUnavailableError  # noqa: PLC0415
    from gateway.journal import query  # noqa: PLC0415
    from gateway.journal.store import connect_readonly  # noqa: PLC0415

    flt = query.EventFilter(**{f.name: getattr(args, f.name) for f in dataclasses.fields(query.EventFilter)})
    if flt.since_ns is not None and flt.until_ns is not None and flt.since_ns >= flt.until_ns:
        raise ConfigError("--since must be earlier than --until")
    try:
        conn = connect_readonly(Path(args.journal))
    except JournalUnavailableError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        origin = query.journal_origin(conn)
        # A snapshot: entries appended while the export runs are left for the next one (resume after the last seq).
        events = query.select(conn, flt, limit=args.limit, through_seq=query.last_seq(conn))
        cloudevents = args.format == "cloudevents"
        for seq, body in events:
            print(query.cloudevent_line(seq, body, origin) if cloudevents else query.json_line(seq, body))
    finally:
        conn.close()
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from gateway.errors import JournalUnavailableError  # noqa: PLC0415
    from gateway.journal import query  # noqa: PLC0415
    from gateway.journal.store import connect_readonly  # noqa: PLC0415

    flt = query.EventFilter(**{f.name: getattr(args, f.name) for f in dataclasses.fields(query.EventFilter)})
    if flt.since_ns is not None and flt.until_ns is not None and flt.since_ns >= flt.until_ns:
        raise ConfigError("--since must be earlier than --until")
    if args.collector:
        if args.journal or args.after is not None:
            raise ConfigError("--collector searches the collector: give no JOURNAL file and no --after")
        return _search_collector(args, flt)
    if not args.journal or args.page_token or args.origin:
        raise ConfigError("give a JOURNAL file, or --collector ADDRESS (--page-token and --origin need --collector)")
    try:
        conn = connect_readonly(Path(args.journal))
    except JournalUnavailableError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        found = 0
        if not args.json:
            print(_search_header(with_origin=False))
        for seq, body in query.select(conn, flt, limit=args.limit, after_seq=args.after):
            found += 1
            print(query.json_line(seq, body) if args.json else _search_row(seq, body))
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


def _search_header(*, with_origin: bool) -> str:
    origin = f"{'ORIGIN':<24} " if with_origin else ""
    head = f"{'TIME':<24} {origin}{'SEQ':>7}  {'KIND':<16} {'RUN':<18} {'STEP':>5}  {'ACTION':<18} {'DECISION':<17}"
    return head + " REASON [LAYER/RULE]"


def _search_row(seq: int, body: dict[str, Any], origin: str | None = None) -> str:
    layer_rule = f"[{body.get('policy_layer', '')}/{body.get('policy_rule', '')}]" if body.get("policy_layer") else ""
    step = body.get("step_id")
    origin_cell = "" if origin is None else f"{origin[:24]:<24} "
    return (
        f"{str(body.get('timestamp', ''))[:23]:<24} {origin_cell}{seq:>7}  {body.get('kind', ''):<16} "
        f"{str(body.get('run_id') or '-')[:18]:<18} {'-' if step is None else step:>5}  "
        f"{str(body.get('action') or '-')[:18]:<18} {body.get('decision') or '-'!s:<17} "
        f"{body.get('reason') or '-'} {layer_rule}".rstrip()
    )


def _search_collector(args: argparse.Namespace, flt: Any) -> int:
    """``agentaudit search --collector ADDRESS``: every origin's events, in time order, page by page."""
    import grpc  # noqa: PLC0415

    from agentaudit.v1 import collector_pb2_grpc, operator_pb2  # noqa: PLC0415
    from gateway.journal.entry import HEADER_SIZE  # noqa: PLC0415

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
        print(_search_header(with_origin=True))
    found, token = 0, args.page_token or ""
    with grpc.insecure_channel(args.collector) as channel:
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
                raise OperatorCallError(
                    f"collector {args.collector}: {code.name}: {exc.details()}", exit_code
                ) from None
            for event in reply.events:
                found += 1
                # The signed body itself (the Struct copy would turn every number into a float).
                body = json.loads(event.entry[HEADER_SIZE:])
                if args.json:
                    print(
                        json.dumps(
                            {"origin": event.origin, "seq": event.seq, **body},
                            ensure_ascii=False,
                            separators=(",", ":"),
                        )
                    )
                else:
                    print(_search_row(event.seq, body, event.origin))
            token = reply.next_page_token
            if not token or found >= args.limit:
                break
    if not args.json:
        more = f" (more: --page-token {token})" if token else ""
        print(f"{found} events{more}")
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from gateway.errors import JournalUnavailableError  # noqa: PLC0415
    from gateway.journal import query  # noqa: PLC0415
    from gateway.journal.store import connect_readonly  # noqa: PLC0415

    flt = query.EventFilter(**{f.name: getattr(args, f.name) for f in dataclasses.fields(query.EventFilter)})
    if flt.since_ns is not None and flt.until_ns is not None and flt.since_ns >= flt.until_ns:
        raise ConfigError("--since must be earlier than --until")
    render = query.json_line if args.json else query.summary_line
    try:
        conn = connect_readonly(Path(args.journal))
    except JournalUnavailableError as exc:
        raise ConfigError(str(exc)) from exc
    stopping: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    if args.follow:
        # SIGINT/SIGTERM end the follow loop cleanly (exit 0) between polls, never halfway through a line.
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    try:
        seen = query.last_seq(conn)
        newest = dataclasses.replace(flt, newest_first=True)
        last = list(query.select(conn, newest, limit=args.lines, through_seq=seen))
        for seq, body in reversed(last):
            print(render(seq, body))
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
                    print(render(seq, body))
                sys.stdout.flush()
            seen = top
    finally:
        conn.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    import sqlite3  # noqa: PLC0415

    from gateway.journal.store import iter_bodies, iter_operator_context  # noqa: PLC0415
    from gateway.journal.trace import CONTEXT_KINDS, build_trace, format_trace, verification_from_report  # noqa: PLC0415
    from gateway.journal.verify import verify_journal  # noqa: PLC0415
    from gateway.signing import load_verifier  # noqa: PLC0415

    path = Path(args.journal)
    verifiers = [load_verifier(Path(p)) for p in args.public_key or []]
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
            verification_from_report(verify_journal(path, verifiers))
            if verifiers
            else (None, "not checked (no --public-key given)")
        )
    except (JournalError, sqlite3.Error, ValueError) as exc:
        print(f"agentaudit: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    trace = build_trace(events, run_id=args.run_id, verified=verified, context_events=context, journal_status=status)
    print(json.dumps(trace.to_json(), ensure_ascii=False) if args.json else format_trace(trace))
    return EXIT_FAILURE if trace.anomalies else EXIT_OK


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.sidecar.policy_manager import load_document  # noqa: PLC0415

    document = load_document(Path(args.file))
    layers = (
        f"{len(document.kill_switches)} kill switch(es), {len(document.access.bindings)} binding(s), "
        f"{len(document.limits)} limit(s), {len(document.approvals)} approval rule(s), {len(document.rules)} rule(s)"
    )
    print(f"{args.file}: OK, version {document.version}, mode {document.mode}: {layers}")
    return EXIT_OK


def cmd_policy_test(args: argparse.Namespace) -> int:
    from gateway.policy.testing import load_cases, run_cases  # noqa: PLC0415
    from gateway.sidecar.policy_manager import load_document  # noqa: PLC0415

    document = load_document(Path(args.file))
    tests_path = Path(args.tests)
    try:
        text = tests_path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {tests_path}: {exc.strerror}") from exc
    results = run_cases(document, load_cases(text, str(tests_path)), str(tests_path))
    width = max(len(r.name) for r in results)
    for result in results:
        status = "PASS" if result.passed else "FAIL"
        actual = result.actual
        print(f"{status}  {result.name:<{width}}  {actual['decision']:<17} {actual['reason']:<24} {actual['layer']}")
        if not result.passed:
            for key, want in result.expected.items():
                if actual.get(key) != want:
                    print(f"      {key}: expected {want!r}, got {actual.get(key)!r}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return EXIT_FAILURE if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every flag documented in --help and docs/cli.md)."""
    parser = argparse.ArgumentParser(prog="agentaudit", description="Policy-and-audit gRPC sidecar for AI agents.")
    parser.add_argument("--version", action="version", version=f"agentaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen_help = "address to serve on: unix:///path or HOST:PORT (repeatable; replaces the configured ones)"
    operator_listen_help = "operator API address: unix:///path or HOST:PORT (repeatable; replaces operator.listen)"
    p = sub.add_parser("dev", help="zero-configuration local sidecar (creates DIR with keys, policy, journal)")
    p.add_argument("--dir", default=".agentaudit", help="working directory (default: ./.agentaudit)")
    p.add_argument("--listen", action="append", metavar="ADDRESS", help=listen_help)
    p.add_argument("--operator-listen", action="append", metavar="ADDRESS", help=operator_listen_help)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("serve", help="run the sidecar from a configuration file")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML configuration (docs/configuration.md)")
    p.add_argument("--listen", action="append", metavar="ADDRESS", help=listen_help)
    p.add_argument("--operator-listen", action="append", metavar="ADDRESS", help=operator_listen_help)
    p.set_defaults(func=cmd_serve)

    operator_flags = argparse.ArgumentParser(add_help=False)
    operator_flags.add_argument(
        "--operator",
        metavar="ADDRESS",
        help="operator API (default: $AGENTAUDIT_OPERATOR_ADDRESS or unix://./.agentaudit/operator.sock)",
    )
    operator_flags.add_argument(
        "--token-file", help="bearer token file (default: $AGENTAUDIT_OPERATOR_TOKEN or ./.agentaudit/operator.token)"
    )
    operator_flags.add_argument("--tls-ca", help="CA certificate of the operator listener (enables TLS)")
    operator_flags.add_argument("--tls-cert", help="client certificate for mutual TLS")
    operator_flags.add_argument("--tls-key", help="client private key for mutual TLS")
    operator_flags.add_argument("--timeout", type=float, default=10.0, help="seconds before giving up (default 10)")

    p = sub.add_parser("approvals", parents=[operator_flags], help="list approvals (pending by default)")
    p.add_argument("--state", choices=["pending", "granted", "denied", "expired"], default="pending")
    p.add_argument("--tenant", help="only this tenant's approvals")
    p.add_argument("--limit", type=int, default=100, help="most approvals listed (default 100, max 1000)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_approvals)
    for name, verb in (("approve", "grant"), ("deny", "deny")):
        p = sub.add_parser(name, parents=[operator_flags], help=f"{verb} a pending approval")
        p.add_argument("approval_id", help="apr_... id from `agentaudit approvals`")
        p.add_argument("--comment", help="journaled with the decision")
        p.set_defaults(func=cmd_resolve)

    switch = sub.add_parser("kill-switch", help="engage, release or list kill switches").add_subparsers(
        dest="switch_command", required=True, metavar="SUBCOMMAND"
    )
    for name in ("engage", "release"):
        p = switch.add_parser(name, parents=[operator_flags], help=f"{name} a kill switch (role admin)")
        p.add_argument("--scope", choices=["global", "tenant", "agent", "run"], required=True)
        p.add_argument("--target", help="tenant, agent or run id (not for global)")
        p.add_argument("--reason", required=name == "engage", help="why (journaled)")
        p.set_defaults(func=cmd_kill_switch)
    p = switch.add_parser("status", parents=[operator_flags], help="list engaged kill switches")
    p.set_defaults(func=cmd_kill_switch)

    recovery = sub.add_parser("recovery", help="accept a detected journal rollback").add_subparsers(
        dest="recovery_command", required=True, metavar="SUBCOMMAND"
    )
    p = recovery.add_parser("acknowledge", parents=[operator_flags], help="let Decide answer again (role admin)")
    p.add_argument("--comment", required=True, help="why (journaled)")
    p.set_defaults(func=cmd_recovery_acknowledge)

    p = sub.add_parser("health", help="check a sidecar or collector health service (exit 0 only if SERVING)")
    p.add_argument("--target", required=True, metavar="ADDRESS", help="unix:///path or HOST:PORT")
    p.add_argument(
        "--service",
        default="",
        help='"" or agentaudit.v1.GatewayService: readiness (UNKNOWN while starting); liveness: liveness',
    )
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("collector", help="run the central collector (CollectorService) from a configuration file")
    p.add_argument("--config", required=True, metavar="FILE", help="collector YAML (docs/collector.md)")
    p.add_argument("--listen", action="append", metavar="ADDRESS", help="replaces collector.listen (repeatable)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="json", choices=["json", "text"], help="stderr log lines (default json)")
    p.set_defaults(func=cmd_collector)

    forwarder = sub.add_parser("forwarder", help="forwarding status").add_subparsers(
        dest="forwarder_command", required=True, metavar="SUBCOMMAND"
    )
    p = forwarder.add_parser("status", help="backlog of a journal: entries not yet acknowledged by the collector")
    p.add_argument("journal", help="journal database file (journal.db)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_forwarder_status)

    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair and an HMAC key")
    p.add_argument("--dir", default=".", help="where to write signing.key, signing.pub, hmac.key (default: .)")
    p.add_argument("--origin", help="journal origin, used as the key name (default: agentaudit-dev/HOSTNAME)")
    p.add_argument("--keep-existing", action="store_true", help="create only missing keys instead of failing")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("verify", help="verify a journal offline (exit 0 intact, 1 tamper evidence, 2 error)")
    p.add_argument("journal", help="journal database file (journal.db)")
    p.add_argument("--public-key", action="append", required=True, metavar="KEY", help="signing.pub (repeatable)")
    p.add_argument("--origin", help="expected origin (default: the public key's name)")
    p.add_argument(
        "--witness-key", action="append", metavar="KEY", help="collector (witness) public key file (repeatable)"
    )
    p.add_argument(
        "--anchor", action="append", metavar="NOTE", help="cosigned checkpoint note file the journal must contain"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("events", help="print journal events as JSON lines (signed bodies with their seq)")
    p.add_argument("journal", help="journal database file (journal.db)")
    p.add_argument("--run-id", help="only events of this run")
    p.add_argument("--kind", help="only events of this kind (pre_exec, post_exec, violation, ...)")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser(
        "trace",
        help="a run as a timeline with approvals, operator actions and anomalies "
        "(exit 0 clean, 1 anomalies, 2 unknown run or unreadable journal)",
        description="Print a run step by step: decision, reason, policy layer and rule, the approval chain, the "
        "result, operator actions that affected it (kill switches, policy changes), each event's verification "
        "status (✓ verified, ✗ finding, ? not checked) and anomalies (missing_result, result_without_allow, "
        "missing_steps, violation, unresolved_approval, verification_failed). Exit status: 0 no anomaly, "
        "1 the run has anomalies (gate scripts on it), 2 unknown run or unreadable journal.",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="the run to trace")
    p.add_argument("--journal", default=".agentaudit/journal.db", help="journal file (default: .agentaudit/journal.db)")
    p.add_argument(
        "--public-key", action="append", metavar="KEY", help="verify the journal with signing.pub (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (steps, operator actions, anomalies)")
    p.set_defaults(func=cmd_trace)

    # export and tail share the event filters (docs/investigate.md); each dest is a query.EventFilter field.
    from gateway.journal import query  # noqa: PLC0415 - the time syntax lives with the filter

    def nonempty(value: str) -> str:
        if not value:
            raise argparse.ArgumentTypeError("must not be empty")
        return value

    def actor(value: str) -> str:
        kind, sep, ident = value.partition(":")
        if not value or (sep and not (kind and ident)):
            raise argparse.ArgumentTypeError(f"{value!r} is not an actor: use TYPE:ID (user:u_1) or ID")
        return value

    def trace_id(value: str) -> str:
        if not query.is_trace_id(value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a W3C trace id (32 lower-case hex digits)")
        return value

    def time_ns(value: str) -> int:
        try:
            return query.parse_time(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def whole(value: str, minimum: int) -> int:
        if not value.isdigit() or int(value) < minimum:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= {minimum}")
        return int(value)

    def positive(value: str) -> int:
        return whole(value, 1)

    def natural(value: str) -> int:
        return whole(value, 0)

    def seconds(value: str) -> float:
        try:
            parsed = float(value)
        except ValueError:
            parsed = 0.0
        if not 0.0 < parsed <= 3600.0:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds in (0, 3600]")
        return parsed

    journal_file = argparse.ArgumentParser(add_help=False)
    journal_file.add_argument("journal", help="journal database file (journal.db); read-only, may be in use")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--run-id", type=nonempty, metavar="RUN", help="only events of this run")
    filters.add_argument("--tenant", dest="tenant_id", type=nonempty, metavar="TENANT", help="only this tenant")
    filters.add_argument("--agent", dest="agent_id", type=nonempty, metavar="AGENT", help="only this agent")
    filters.add_argument("--action", type=nonempty, metavar="GLOB", help="action name glob, e.g. 'refund.*'")
    filters.add_argument("--decision", choices=query.DECISIONS, help="only this decision")
    filters.add_argument("--reason", type=nonempty, help="only this reason code, e.g. rate_limited_tenant")
    layers = "policy layer that decided: kill_switch, access, limits, approval, rules"
    filters.add_argument("--layer", dest="policy_layer", type=nonempty, metavar="LAYER", help=layers)
    filters.add_argument("--rule", dest="policy_rule", type=nonempty, metavar="RULE", help="policy rule that decided")
    filters.add_argument("--actor", type=actor, metavar="[TYPE:]ID", help="who initiated or performed it")
    filters.add_argument("--trace-id", type=trace_id, metavar="TRACE", help="events caused by this W3C trace")
    filters.add_argument("--kind", choices=query.KINDS, metavar="KIND", help="event kind: pre_exec, violation, ...")
    filters.add_argument("--since", dest="since_ns", type=time_ns, metavar="TIME", help="at or after (RFC 3339 or 2h)")
    filters.add_argument("--until", dest="until_ns", type=time_ns, metavar="TIME", help="before (RFC 3339 or 15m)")

    p = sub.add_parser(
        "export", parents=[journal_file, filters], help="export matching events as JSON lines or CloudEvents"
    )
    p.add_argument("--format", choices=["jsonl", "cloudevents"], default="jsonl", help="output (default jsonl)")
    p.add_argument("--newest-first", action="store_true", help="newest event first (default: oldest first)")
    p.add_argument("--limit", type=positive, metavar="N", help="at most N events")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("search", parents=[filters], help="find events by run, tenant, decision, reason, time, ...")
    p.add_argument("journal", nargs="?", help="journal database file (journal.db); read-only, may be in use")
    p.add_argument("--collector", metavar="ADDRESS", help="search a collector (HOST:PORT) instead of a journal file")
    p.add_argument("--origin", type=nonempty, metavar="ORIGIN", help="only this journal (with --collector)")
    p.add_argument("--page-token", metavar="TOKEN", help="continue from a previous page (with --collector)")
    p.add_argument("--timeout", type=seconds, default=30.0, metavar="S", help="collector call timeout (default 30)")
    p.add_argument(
        "--token-file", help="collector search token file (default: the token in $AGENTAUDIT_COLLECTOR_TOKEN)"
    )
    p.add_argument("--newest-first", action="store_true", help="newest event first (default: oldest first)")
    p.add_argument("--limit", type=positive, default=100, metavar="N", help="at most N events (default 100)")
    p.add_argument("--after", type=int, metavar="SEQ", help="continue after this seq (the next page)")
    p.add_argument("--json", action="store_true", help="JSON lines (signed bodies with their seq)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "tail", parents=[journal_file, filters], help="print the last matching events; --follow for new ones"
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new matching events until Ctrl-C")
    p.add_argument("-n", "--lines", type=natural, default=10, metavar="N", help="last N events first (default 10)")
    p.add_argument("--interval", type=seconds, default=0.5, metavar="S", help="poll interval, seconds (default 0.5)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of one readable line per event")
    p.set_defaults(func=cmd_tail, newest_first=False)

    policy = sub.add_parser("policy", help="check or test a policy file offline").add_subparsers(
        dest="policy_command", required=True, metavar="SUBCOMMAND"
    )
    p = policy.add_parser("check", help="validate a policy (exit 0 valid, 2 invalid with file, line and rule)")
    p.add_argument("file", help="policy YAML file")
    p.set_defaults(func=cmd_policy_check)
    p = policy.add_parser("test", help="run YAML test cases against a policy (exit 1 if any fails)")
    p.add_argument("file", help="policy YAML file")
    p.add_argument("tests", help="test cases YAML (tests: [{name, request, expect, repeat, interval}])")
    p.set_defaults(func=cmd_policy_test)
    p = policy.add_parser("reload", parents=[operator_flags], help="reload a running sidecar's policy (role admin)")
    p.add_argument("--file", help="submit this policy document instead of re-reading the sidecar's own file")
    p.set_defaults(func=cmd_policy_reload)
    from gateway.cli import redact_check  # noqa: PLC0415

    redact_check.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentaudit`` console script."""
    args = build_parser().parse_args(argv)
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
        readers = ("verify", "events", "search", "export", "tail")
        return EXIT_USAGE if args.command in readers else EXIT_FAILURE
    except AgentAuditError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return code
