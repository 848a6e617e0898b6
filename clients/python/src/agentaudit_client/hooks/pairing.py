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
from typing import Any

STALE_AFTER_S = 24 * 3600.0


# Plain os.path, not pathlib: pathlib imports urllib.parse and ipaddress, ~5 ms of every hook process.


def state_dir(cwd: str) -> str:
    """Where this project's pairing files live (created 0700 on first use)."""
    project = os.path.join(cwd or ".", ".agentaudit")
    if os.path.isdir(project):
        base = os.path.join(project, "hooks")
    else:
        import tempfile  # noqa: PLC0415 - only here: it imports shutil, random and more, at every hook start

        base = os.path.join(tempfile.gettempdir(), f"agentaudit-hooks-{os.getuid()}")
    os.makedirs(base, mode=0o700, exist_ok=True)  # the mode applies to the last directory only, as Path.mkdir's
    return base


def _path(directory: str, kind: str, key: str) -> str:
    return os.path.join(directory, f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:40]}.json")


def put(directory: str, kind: str, key: str, value: dict[str, Any]) -> None:
    """Stores ``value`` under (kind, key), atomically, readable by the user only."""
    target = _path(directory, kind, key)
    # What tempfile.mkstemp does (a fresh name, created exclusively, 0600, not followed if a link), without
    # importing tempfile.
    tmp = os.path.join(directory, f".tmp-{os.urandom(8).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
    os.replace(tmp, target)


def take(directory: str, kind: str, key: str) -> dict[str, Any] | None:
    """Returns and removes the value under (kind, key), or None."""
    target = _path(directory, kind, key)
    try:
        with open(target) as f:
            value = json.loads(f.read())
    except (OSError, json.JSONDecodeError):
        return None
    with contextlib.suppress(OSError):
        os.unlink(target)
    return value if isinstance(value, dict) else None


def prune(directory: str, now: float | None = None) -> int:
    """Removes pairing files older than a day (a tool that never reported); returns how many."""
    cutoff = (now if now is not None else time.time()) - STALE_AFTER_S
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith(".json"):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
    return removed
