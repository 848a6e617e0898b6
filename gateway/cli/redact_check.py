"""``agentaudit redact-check FILE.json``: what the journal would keep of a sample payload, and why.

Offline and read-only: it loads the ``audit`` settings (``--config``, else the defaults), redacts the payload as
the sidecar redacts a Decide's args (or, with ``--as``, an output or labels) and prints the redacted form with each
redacted path and the rule (``rule:email``) or detector (``detector:phone``) that redacted it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

_PARTS = ("args", "output", "labels")


def register(subparsers: Any) -> None:
    """Adds the ``redact-check`` command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "redact-check", help="print the redacted form of a sample JSON payload and what redacted each path"
    )
    p.add_argument("file", metavar="FILE.json", help="a JSON object, e.g. a Decide's args ('-': standard input)")
    p.add_argument("--config", metavar="FILE", help="YAML configuration whose audit section applies (default: none)")
    p.add_argument("--as", dest="part", choices=_PARTS, default="args", help="what the payload is (default args)")
    p.add_argument("--json", action="store_true", help="one JSON object: {redacted, redactions: [{path, by}]}")
    p.set_defaults(func=run)


def _payload(name: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {name}: {exc.strerror}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: invalid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a JSON object")
    return value


def run(args: argparse.Namespace) -> int:
    """Prints the redacted payload and its redactions; exit 0 (2 for an unreadable file or a bad config)."""
    from gateway import config  # noqa: PLC0415
    from gateway.redaction import Redactor  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if k.startswith("AGENTAUDIT_")}
    audit = config.load(Path(args.config) if args.config else None, env=env).audit
    redactor = Redactor.create(bytes(32), audit.redact_fields, hash_args=False, detectors=audit.detectors.enabled())
    result = redactor.redact(_payload(args.file), args.part)
    redactions = sorted({(r.path, r.by) for r in result.redactions})
    if args.json:
        print(json.dumps({"redacted": result.value, "redactions": [{"path": p, "by": b} for p, b in redactions]}))
        return 0
    print(json.dumps(result.value, indent=2, ensure_ascii=False))
    if not redactions:
        print("nothing redacted")
    width = max((len(p) for p, _ in redactions), default=0)
    for path, by in redactions:
        print(f"{path:<{width}}  {by}")
    return 0
