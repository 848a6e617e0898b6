"""The ``agentaudit`` command line: the only module that prints for humans or calls sys.exit.

Exit codes: 0 success; 1 tamper evidence (verify) or a runtime failure; 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.errors import AgentAuditError, ConfigError, JournalError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("agentaudit")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AGENTAUDIT_")}


def _serve(cfg_loader: object, banner: bool, directory: Path | None = None) -> int:
    """Runs the sidecar until SIGINT/SIGTERM."""
    from gateway import app  # noqa: PLC0415 - keeps `verify`/`events` free of server imports

    assert callable(cfg_loader)
    cfg, created = cfg_loader()
    _setup_logging(cfg.log.level)
    app.install_event_loop_policy()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        sidecar = app.Sidecar(cfg)
        await sidecar.start()
        app.freeze_startup_objects()
        try:
            if banner:
                _print_dev_banner(cfg, sidecar.bound, created, directory)
            await stop.wait()
            log.info("shutting down")
        finally:
            await sidecar.aclose()

    asyncio.run(main())
    return EXIT_OK


def _print_dev_banner(cfg: object, bound: Sequence[str], created: Sequence[str], directory: Path | None) -> None:
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
    print("verify:")
    print(f"  agentaudit verify {cfg.journal.path} --public-key {pub}")
    print(f"  agentaudit events {cfg.journal.path}")
    sys.stdout.flush()


def cmd_dev(args: argparse.Namespace) -> int:
    from gateway import devenv  # noqa: PLC0415

    directory = Path(args.dir).resolve()
    return _serve(lambda: devenv.prepare(directory, args.listen, _env()), banner=True, directory=directory)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import config  # noqa: PLC0415

    return _serve(lambda: (config.load(Path(args.config), env=_env(), listen=args.listen), []), banner=False)


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
    report = verify_journal(Path(args.journal), verifiers, origin=args.origin)
    print(json.dumps(report.to_json()) if args.json else format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_events(args: argparse.Namespace) -> int:
    from gateway.journal.store import iter_bodies  # noqa: PLC0415

    for seq, body in iter_bodies(Path(args.journal), run_id=args.run_id, kind=args.kind):
        print(json.dumps({"seq": seq, **body}, ensure_ascii=False, separators=(",", ":")))
    return EXIT_OK


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy_manager import load_document  # noqa: PLC0415

    document = load_document(Path(args.file))
    layers = (
        f"{len(document.kill_switches)} kill switch(es), {len(document.access.bindings)} binding(s), "
        f"{len(document.limits)} limit(s), {len(document.approvals)} approval rule(s), {len(document.rules)} rule(s)"
    )
    print(f"{args.file}: OK, version {document.version}, mode {document.mode}: {layers}")
    return EXIT_OK


def cmd_policy_test(args: argparse.Namespace) -> int:
    from gateway.policy.testing import load_cases, run_cases  # noqa: PLC0415
    from gateway.policy_manager import load_document  # noqa: PLC0415

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
    p = sub.add_parser("dev", help="zero-configuration local sidecar (creates DIR with keys, policy, journal)")
    p.add_argument("--dir", default=".agentaudit", help="working directory (default: ./.agentaudit)")
    p.add_argument("--listen", action="append", metavar="ADDRESS", help=listen_help)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("serve", help="run the sidecar from a configuration file")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML configuration (docs/configuration.md)")
    p.add_argument("--listen", action="append", metavar="ADDRESS", help=listen_help)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair and an HMAC key")
    p.add_argument("--dir", default=".", help="where to write signing.key, signing.pub, hmac.key (default: .)")
    p.add_argument("--origin", help="journal origin, used as the key name (default: agentaudit-dev/HOSTNAME)")
    p.add_argument("--keep-existing", action="store_true", help="create only missing keys instead of failing")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("verify", help="verify a journal offline (exit 0 intact, 1 tamper evidence, 2 error)")
    p.add_argument("journal", help="journal database file (journal.db)")
    p.add_argument("--public-key", action="append", required=True, metavar="KEY", help="signing.pub (repeatable)")
    p.add_argument("--origin", help="expected origin (default: the public key's name)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("events", help="print journal events as JSON lines (signed bodies with their seq)")
    p.add_argument("journal", help="journal database file (journal.db)")
    p.add_argument("--run-id", help="only events of this run")
    p.add_argument("--kind", help="only events of this kind (pre_exec, post_exec, violation, ...)")
    p.set_defaults(func=cmd_events)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentaudit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JournalError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_USAGE if args.command in ("verify", "events") else EXIT_FAILURE
    except AgentAuditError as exc:
        print(f"agentaudit: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return code


if __name__ == "__main__":
    sys.exit(main())
