"""State that outlives one hook process: the pre-event a PostToolUse reports against, and pending approvals.

Each PreToolUse and PostToolUse is its own process, so the allowed pre-event's id waits in a file named by a
digest of the agent's pairing key (its tool-use id where it has one). One small file per key, written atomically
(``os.replace``) and readable only by the user (0600), so concurrent hooks never contend for a lock; the
PostToolUse removes it. The files live in ``<project>/.agentaudit/hooks/`` when the project has a
``.agentaudit/`` directory, else in a per-user temporary directory. Files left behind by a tool that never
finished are pruned after a day.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

STALE_AFTER_S = 24 * 3600.0


def state_dir(cwd: str) -> Path:
    """Where this project's pairing files live (created 0700 on first use)."""
    project = Path(cwd or ".") / ".agentaudit"
    if project.is_dir():
        base = project / "hooks"
    else:
        import tempfile  # noqa: PLC0415 - only here: it imports shutil, random and more, at every hook start

        base = Path(tempfile.gettempdir()) / f"agentaudit-hooks-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def _path(directory: Path, kind: str, key: str) -> Path:
    return directory / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"


def put(directory: Path, kind: str, key: str, value: dict[str, Any]) -> None:
    """Stores ``value`` under (kind, key), atomically, readable by the user only."""
    target = _path(directory, kind, key)
    # What tempfile.mkstemp does (a fresh name, created exclusively, 0600, not followed if a link), without
    # importing tempfile.
    tmp = directory / f".tmp-{os.urandom(8).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
    os.replace(tmp, target)


def take(directory: Path, kind: str, key: str) -> dict[str, Any] | None:
    """Returns and removes the value under (kind, key), or None."""
    target = _path(directory, kind, key)
    try:
        value = json.loads(target.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    with contextlib.suppress(OSError):
        target.unlink()
    return value if isinstance(value, dict) else None


def prune(directory: Path, now: float | None = None) -> int:
    """Removes pairing files older than a day (a tool that never reported); returns how many."""
    cutoff = (now if now is not None else time.time()) - STALE_AFTER_S
    removed = 0
    for path in directory.glob("*.json"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed
