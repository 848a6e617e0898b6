"""Copies and evidence for an auditor: ``journal backup``, ``journal tamper-demo``, ``bundle`` and verifying a bundle.

Offline like :mod:`gateway.cli.journal`: SQLite, the journal package and signing keys, never gRPC.

A live journal keeps its newest entries in ``journal.db-wal``, so ``cp journal.db`` copies an incomplete (often
empty) file. ``journal backup`` uses SQLite's online backup API instead: a consistent snapshot taken while the
sidecar writes, written as one self-contained file (rollback journal mode, no ``-wal``), then verified.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

from gateway.cli import defaults, render
from gateway.cli.exits import EXIT_FAILURE, EXIT_OK
from gateway.errors import ConfigError
from gateway.journal.bundle import BundleError, build_bundle, format_bundle_report, load_bundle, verify_bundle
from gateway.journal.verify import verify_journal
from gateway.signing import load_verifier

DEFAULT_TAMPER_COPY = defaults.DEFAULT_DIR / "tamper-demo.db"


def register_bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``bundle``."""
    p = sub.add_parser(
        "bundle",
        help="write one run's evidence bundle: entries, inclusion proofs, cosigned checkpoint, policy versions",
        description="Writes RUN_ID's entries with their Merkle inclusion proofs against the latest witnessed "
        "checkpoint, its cosignatures and the entries naming the policy versions that decided them, in one file "
        "(docs/bundle.md). `agentaudit verify FILE --public-key K --witness-key W` checks it with nothing else.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="bundle file to write (e.g. run.aab)")
    p.add_argument("--journal", help=f"journal file (default: {defaults.DEFAULT_JOURNAL})")
    p.set_defaults(func=cmd_bundle)


def register_journal(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``journal backup`` and ``journal tamper-demo``."""
    journal = sub.add_parser("journal", help="copy a journal safely, or see tamper evidence on a copy").add_subparsers(
        dest="journal_command", required=True, metavar="SUBCOMMAND"
    )
    p = journal.add_parser("backup", help="a consistent copy of a journal, safe while the sidecar runs (then verified)")
    p.add_argument("output", metavar="OUT", help="file to write (refused if it exists)")
    p.add_argument("--journal", help=f"journal to copy (default: {defaults.DEFAULT_JOURNAL})")
    p.add_argument("--public-key", metavar="KEY", help="verify the copy with this key (default: signing.pub beside)")
    p.set_defaults(func=cmd_backup)
    p = journal.add_parser(
        "tamper-demo", help="change one byte of one entry in a copy of the journal and show what verify says"
    )
    p.add_argument("--journal", help=f"journal to copy (default: {defaults.DEFAULT_JOURNAL}); never modified")
    p.add_argument("--output", metavar="FILE", help=f"the tampered copy (default: {DEFAULT_TAMPER_COPY})")
    p.add_argument("--seq", type=int, metavar="SEQ", help="the entry to change (default: the middle one)")
    p.add_argument("--public-key", metavar="KEY", help="signing.pub (default: the one beside the journal)")
    p.set_defaults(func=cmd_tamper_demo)


def _copy(source: Path, out: Path) -> int:
    """Copies a journal with SQLite's online backup API into one self-contained file; returns its entry count."""
    if out.exists():
        raise ConfigError(f"{out} exists; refusing to overwrite it")
    incomplete = defaults.explain_incomplete_copy(source)
    if incomplete:
        raise ConfigError(incomplete)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(out)
            try:
                src.backup(dst)  # page by page, each step a consistent read: safe beside the live writer
                # One file for the auditor: no -wal to forget when it is copied again.
                dst.execute("PRAGMA journal_mode=DELETE")
                (count,) = dst.execute("SELECT count(*) FROM journal").fetchone()
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        out.unlink(missing_ok=True)
        raise ConfigError(f"cannot copy {source}: {exc}") from exc
    return int(count)


def _public_key(journal: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    key = defaults.dev_key(journal, "signing.pub")
    if key is None:
        raise ConfigError(f"give --public-key KEY (no signing.pub beside {journal})")
    return key


def cmd_backup(args: argparse.Namespace) -> int:
    """``agentaudit journal backup OUT``: exit 0 when the copy verifies, 1 when it shows tamper evidence."""
    source, out = defaults.journal(args.journal), Path(args.output)
    key = args.public_key or defaults.dev_key(source, "signing.pub")
    witness = None if args.public_key else defaults.dev_key(source, "witness.pub")
    count = _copy(source, out)
    print(f"copied {count} entries from {source} to {out}")
    if key is None:
        print(f"not verified (no signing.pub beside {source}): agentaudit verify {out} --public-key KEY")
        return EXIT_OK
    witnesses = [load_verifier(witness)] if witness else []
    report = verify_journal(out, [load_verifier(Path(key))], witnesses=witnesses)
    print(render.format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_tamper_demo(args: argparse.Namespace) -> int:
    """``agentaudit journal tamper-demo``: the byte splice an attacker would make, on a copy, and verify's answer.

    Exit 0 when verify caught it (the expected outcome), 1 if the tampered copy still verified.
    """
    source = defaults.journal(args.journal)
    out = Path(args.output) if args.output else DEFAULT_TAMPER_COPY
    key = _public_key(source, args.public_key)
    out.unlink(missing_ok=True)  # the demo's own scratch file
    count = _copy(source, out)
    if count == 0:
        raise ConfigError(f"{source} has no entries to tamper with")
    seq = count // 2 if args.seq is None else args.seq
    # The exact statements, printed so that the demo is also the recipe: the append-only triggers must go first,
    # and the entry is a BLOB, so the changed bytes are cast back to one.
    statements = [
        "DROP TRIGGER journal_no_update",
        "UPDATE journal SET entry = CAST(substr(entry, 1, length(entry) - 2) || "  # noqa: S608 - seq is an int
        f"char((unicode(substr(entry, -2, 1)) + 1) % 128) || substr(entry, -1) AS BLOB) WHERE seq = {seq}",
    ]
    conn = sqlite3.connect(out)
    try:
        with conn:
            for statement in statements:
                conn.execute(statement)
            changed = conn.execute("SELECT changes()").fetchone()[0]
    finally:
        conn.close()
    if not changed:
        raise ConfigError(f"{source} has no entry at seq {seq} (it has {count}: seq 0..{count - 1})")
    print(f"copied {source} to {out} ({count} entries) and changed one byte of seq {seq} there:")
    print(f"  sqlite3 {out} \\")
    for statement in statements:
        print(f'    "{statement};" \\')
    print("    ''")
    print(f"\n$ agentaudit verify {out} --public-key {key}")
    report = verify_journal(out, [load_verifier(key)])
    print(render.format_report(report))
    print(f"\n(the journal itself, {source}, was only read; delete {out} when done)")
    return EXIT_FAILURE if report.ok else EXIT_OK


def cmd_bundle(args: argparse.Namespace) -> int:
    """``agentaudit bundle RUN_ID -o FILE``."""
    journal, out = defaults.journal(args.journal), Path(args.output)
    try:
        bundle = build_bundle(journal, args.run_id)
    except BundleError as exc:
        raise ConfigError(str(exc)) from exc
    from gateway.journal.bundle import write_bundle  # noqa: PLC0415

    write_bundle(bundle, out)
    entries = len(bundle.get("entries") or [])
    witnessed = "a witnessed checkpoint" if bundle.get("checkpoint") else "no witnessed checkpoint yet"
    print(f"wrote {out}: run {args.run_id}, {entries} entries, {witnessed}")
    return EXIT_OK


def verify_bundle_file(path: Path, args: argparse.Namespace) -> int:
    """``agentaudit verify FILE.aab``: exit 0 intact, 1 findings (the bundle needs its keys named)."""
    if not args.public_key:
        raise ConfigError("verifying a bundle needs --public-key KEY (and --witness-key W for its checkpoint)")
    try:
        data = load_bundle(path)
    except BundleError as exc:
        raise ConfigError(str(exc)) from exc
    verifiers = [load_verifier(Path(p)) for p in args.public_key]
    witnesses = [load_verifier(Path(p)) for p in args.witness_key or []]
    report = verify_bundle(data, verifiers, witnesses)
    if args.json:
        record = {
            "ok": report.ok,
            "origin": report.origin,
            "run_id": report.run_id,
            "entries": report.entries,
            "witnessed": report.witnessed,
            "tree_size": report.tree_size,
            "cosigners": list(report.cosigners),
            "policy_versions": list(report.policy_versions),
            "findings": list(report.findings),
        }
        print(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    else:
        print(format_bundle_report(report))
    return EXIT_OK if report.ok else EXIT_FAILURE
