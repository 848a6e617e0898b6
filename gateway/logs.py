"""Debug logs: diagnostics for people, on stderr, through ``logging``, one JSON object (or one text line) each.

They are separate from the journal by construction: the journal is written only by ``JournalWriter`` into SQLite,
and nothing here can reach it; logs are never a record of what agents did (DESIGN: audit is not debug).

What may be logged: ids (run, step, event, approval), action names, decisions, reasons, layers, counts and
errors. What must never be: argument or output values, tokens, keys. Call sites pass only the former; a test
(tests/test_observability.py) drives every decision path with redacted values and checks that no line has them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is emitted as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339, UTC), level, logger, msg, then ``extra`` fields and any error."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z"
        line: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value if isinstance(value, str | int | float | bool) or value is None else str(value)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(level: str, fmt: str) -> None:
    """Sends every ``logging`` record at ``level`` or above to stderr, as ``json`` or ``text``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # gRPC's and httpx's own chatter at debug level is about connections, not decisions; keep it at info.
    for noisy in ("grpc", "httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
