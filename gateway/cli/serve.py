"""The long-running commands and their setup: ``dev``, ``serve``, ``collector`` and ``keygen``.

Each command imports the server it runs (``gateway.app``, ``gateway.devenv``, ``gateway.config``, the collector)
once, at its start, not with this module: every command builds the whole parser, and the offline ones
(``verify``, ``events``, ...) must not load gRPC or the server's dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__, logs
from gateway.cli.exits import EXIT_OK
from gateway.errors import ConfigError

if TYPE_CHECKING:
    import sqlite3

    from gateway.config import Config

log = logging.getLogger("agentaudit")


_LISTEN_HELP = (
    "address to serve on: unix:///abs/path.sock, unix:relative/path.sock or HOST:PORT "
    "(repeatable; replaces the configured ones)"
)
_OPERATOR_LISTEN_HELP = "operator API address, in the same forms (repeatable; replaces operator.listen)"
# How often `agentaudit dev` looks for new decisions to print: fast enough to read as live.
_DECISION_POLL_S = 0.2
# The printer's SQLite page cache (KiB): it reads each new page once, so SQLite's default 2 MiB a connection would
# only fill up under load (issue 20 part 1: the sidecar's peak memory).
_PRINTER_CACHE_KIB = 64


def register_sidecar(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dev`` and ``serve``."""
    p = sub.add_parser("dev", help="zero-configuration local sidecar (creates DIR with keys, policy, journal)")
    p.add_argument("--dir", default=".agentaudit", help="working directory (default: ./.agentaudit)")
    p.add_argument("--listen", action="append", metavar="ADDRESS", help=_LISTEN_HELP)
    p.add_argument("--operator-listen", action="append", metavar="ADDRESS", help=_OPERATOR_LISTEN_HELP)
    p.add_argument(
        "--console-listen",
        action="append",
        metavar="HOST:PORT",
        help="the web console's address (repeatable; default 127.0.0.1:7421; 'off' for none)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not print a line per decision")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("serve", help="run the sidecar from a configuration file")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML configuration (docs/configuration.md)")
    p.add_argument("--listen", action="append", metavar="ADDRESS", help=_LISTEN_HELP)
    p.add_argument("--operator-listen", action="append", metavar="ADDRESS", help=_OPERATOR_LISTEN_HELP)
    p.set_defaults(func=cmd_serve)


def register_collector(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``collector``."""
    p = sub.add_parser("collector", help="run the central collector (CollectorService) from a configuration file")
    p.add_argument("--config", required=True, metavar="FILE", help="collector YAML (docs/collector.md)")
    p.add_argument("--listen", action="append", metavar="ADDRESS", help="replaces collector.listen (repeatable)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="json", choices=["json", "text"], help="stderr log lines (default json)")
    p.set_defaults(func=cmd_collector)


def register_keygen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``keygen``."""
    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair and an HMAC key")
    p.add_argument("--dir", default=".", help="where to write signing.key, signing.pub, hmac.key (default: .)")
    p.add_argument("--origin", help="journal origin, used as the key name (default: agentaudit-dev/HOSTNAME)")
    p.add_argument("--keep-existing", action="store_true", help="create only missing keys instead of failing")
    p.set_defaults(func=cmd_keygen)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AGENTAUDIT_")}


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call from within the running loop): the servers' cue to stop in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def cmd_dev(args: argparse.Namespace) -> int:
    """``agentaudit dev``: prepares DIR (keys, policy, configuration) and runs a sidecar with a banner."""
    from gateway import devenv  # noqa: PLC0415 - see the module docstring

    directory = Path(args.dir).resolve()
    return _serve(
        lambda: devenv.prepare(directory, args.listen, _env(), args.operator_listen),
        banner=True,
        directory=directory,
        decisions=not args.quiet,
        console_listen=devenv.console_listen(args.console_listen),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """``agentaudit serve``: runs a sidecar from a configuration file."""
    from gateway import config  # noqa: PLC0415 - see the module docstring

    return _serve(
        lambda: (
            config.load(Path(args.config), env=_env(), listen=args.listen, operator_listen=args.operator_listen),
            [],
        ),
        banner=False,
    )


def _serve(
    cfg_loader: Callable[[], tuple[Config, Sequence[str]]],
    banner: bool,
    directory: Path | None = None,
    decisions: bool = False,
    console_listen: tuple[str, ...] | None = (),
) -> int:
    """Runs the sidecar until SIGINT/SIGTERM."""
    from gateway import app  # noqa: PLC0415 - see the module docstring

    cfg, created = cfg_loader()
    logs.setup(cfg.log.level, cfg.log.format or ("text" if banner else "json"))
    app.install_event_loop_policy()

    async def main() -> None:
        stop = _stop_on_signals()
        sidecar = app.Sidecar(cfg, console_listen=console_listen)
        try:
            await sidecar.start_probes()
            if not await app.start_with_retries(sidecar, stop):
                return
            app.freeze_startup_objects()
            if banner:
                assert directory is not None
                _print_dev_banner(cfg, sidecar.bound, sidecar.operator_bound, created, directory)
                await _print_console(sidecar)
            printer = asyncio.create_task(_print_decisions(cfg.journal.path, stop)) if decisions else None
            await stop.wait()
            log.info("shutting down")
            if printer is not None:
                await printer
        finally:
            await sidecar.aclose()

    asyncio.run(main())
    return EXIT_OK


def _print_dev_banner(
    cfg: Config, bound: Sequence[str], operator: Sequence[str], created: Sequence[str], directory: Path
) -> None:
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
    tcp = next((b for b in bound if not b.startswith("unix")), None)
    if tcp:  # buf ships in the venv (the buf-bin wheel); grpcurl usually is not installed
        buf = Path(sys.executable).parent / "buf"
        print(f"  buf curl: {buf} curl --protocol grpc --http2-prior-knowledge --list-methods http://{tcp}")
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


async def _print_console(sidecar: Any) -> None:
    """The console's URL and a one-time sign-in link for the dev operator (admin)."""
    from gateway.devenv import DEV_OPERATOR  # noqa: PLC0415
    from gateway.identity import Operator  # noqa: PLC0415

    console = sidecar.console
    if console is None or not console.url:
        return
    link = await console.one_time_link(Operator(DEV_OPERATOR, frozenset({"admin", "approver", "auditor"})))
    print(f"console:   {console.url}")
    print(f"  sign in once (works one time, 10 minutes): {link}")
    if not sidecar.config.control.enabled:
        print(
            "  answers and kill switches given there reach this sidecar with `control: {enabled: true}` in its "
            "config (docs/console.md)"
        )
    sys.stdout.flush()


async def _print_decisions(journal: Path, stop: asyncio.Event) -> None:
    """Prints one line per decision journaled from now on (``agentaudit dev`` without ``--quiet``) until ``stop``.

    Read back from the journal like ``tail --follow``: what is printed is what was recorded, and the sidecar's
    decision path is not touched.
    """
    from gateway.cli import render  # noqa: PLC0415 - see the module docstring
    from gateway.journal import query  # noqa: PLC0415
    from gateway.journal.fileguard import abandon, why_unwritable  # noqa: PLC0415
    from gateway.journal.store import connect_readonly  # noqa: PLC0415

    def connect() -> sqlite3.Connection:
        opened = connect_readonly(journal)
        opened.execute(f"PRAGMA cache_size=-{_PRINTER_CACHE_KIB}")
        return opened

    conn = await asyncio.to_thread(connect)
    decisions = query.EventFilter(kind="pre_exec")
    shm = journal.with_name(journal.name + "-shm")

    def new_lines(after: int) -> tuple[int, list[str]]:
        # A read transaction stores read marks into the mapped -shm: with the file unwritable that is SIGBUS, so
        # nothing is read until it is writable again (the writer fails closed and says why; ADR 0014).
        if why_unwritable(shm):
            return after, []
        top = query.last_seq(conn)
        rows = list(query.select(conn, decisions, after_seq=after, through_seq=top)) if top > after else []
        return top, [render.decision_line(body) for _seq, body in rows]

    try:
        seen, _ = await asyncio.to_thread(new_lines, 2**62)  # start at the current end
        print("decisions (one line each; --quiet to stop them):", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # the poll interval passed: look again
                await asyncio.wait_for(stop.wait(), _DECISION_POLL_S)
            seen, lines = await asyncio.to_thread(new_lines, seen)
            for line in lines:
                print(line, flush=True)
    finally:
        if why_unwritable(shm):
            abandon(conn)  # closing would checkpoint through the mapped -shm: SIGBUS
        else:
            conn.close()


def cmd_collector(args: argparse.Namespace) -> int:
    """``agentaudit collector``: runs the central collector until SIGINT/SIGTERM."""
    from gateway import app, metrics  # noqa: PLC0415 - see the module docstring
    from gateway.collector.app import Collector  # noqa: PLC0415
    from gateway.config import load_collector_config  # noqa: PLC0415

    cfg = load_collector_config(Path(args.config), _env())
    if args.listen:
        cfg = dataclasses.replace(cfg, listen=tuple(args.listen))
    logs.setup(args.log_level, args.log_format)
    app.install_event_loop_policy()

    async def main() -> None:
        stop = _stop_on_signals()
        metrics.BUILD_INFO.info({"version": __version__})
        exposition = metrics.serve(cfg.metrics_listen)[0] if cfg.metrics_listen else None
        collector = Collector(cfg, surfaces=_console_surfaces(cfg))
        try:
            await collector.start()
            await stop.wait()
        finally:
            await collector.aclose()
            if exposition is not None:
                exposition.shutdown()

    asyncio.run(main())
    return EXIT_OK


def _console_surfaces(cfg: Any) -> list[Any]:
    """The collector's web console, when configured (by default when the console extra is installed), and the
    Slack bridge, whose ``/slack/interactions`` route the console's listener serves (so it needs the console).

    The bridge comes first: the collector starts surfaces in order and stops them in reverse, and the console's
    routes answer 503 until the bridge has started.
    """
    from gateway.config.collector import console_available  # noqa: PLC0415

    console_off = cfg.console_listen == () or (cfg.console_listen is None and not console_available())
    if console_off:
        if cfg.slack is not None:
            raise ConfigError(
                "collector.slack needs the web console: Slack posts its interactions to the console's listener "
                "(set collector.console_listen and install the console extra)"
            )
        return []
    if not console_available():
        raise ConfigError("collector.console_listen needs the console extra: pip install 'agentaudit[console]'")
    from gateway.console.server import ConsoleServer  # noqa: PLC0415

    if cfg.slack is None:
        return [ConsoleServer()]
    try:
        from gateway.slack import SlackBridge, slack_routes  # noqa: PLC0415 - the slack extra is optional
    except ImportError as exc:
        raise ConfigError(f"collector.slack needs the slack extra: pip install 'agentaudit[slack]' ({exc})") from None
    bridge = SlackBridge(cfg.slack)
    return [bridge, ConsoleServer(extra_routes=slack_routes(bridge))]


def cmd_keygen(args: argparse.Namespace) -> int:
    """``agentaudit keygen``: signing and HMAC keys in DIR, refusing to overwrite existing ones."""
    from gateway import devenv  # noqa: PLC0415 - see the module docstring

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    existing = [n for n in ("signing.key", "hmac.key") if (directory / n).exists()]
    if existing and not args.keep_existing:
        raise ConfigError(f"{', '.join(existing)} already exist in {directory}; refusing to overwrite keys")
    created = devenv.ensure_keys(directory, args.origin or devenv.default_origin())
    for name in created:
        print(directory / name)
    return EXIT_OK
