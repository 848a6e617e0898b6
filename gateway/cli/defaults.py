"""Where the journal-reading commands look when no file is named: ``./.agentaudit``, what ``agentaudit dev`` makes.

Every command that reads a journal (``verify``, ``events``, ``search``, ``export``, ``tail``, ``trace``, ``bundle``,
``forwarder status``, ``journal backup``) defaults to ``./.agentaudit/journal.db``, and the verifying ones to the
dev keys beside the journal (``signing.pub``, ``witness.pub``). A defaulted file is named on stderr, so the reader
always knows which journal the answer is about; stdout stays the command's output alone.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from gateway.errors import ConfigError

DEFAULT_DIR = Path(".agentaudit")
DEFAULT_JOURNAL = DEFAULT_DIR / "journal.db"
JOURNAL_HELP = f"journal database file (default: {DEFAULT_JOURNAL}); read-only, may be in use"


def journal(given: str | None) -> Path:
    """The journal to read: the one named, else ``./.agentaudit/journal.db`` (said on stderr)."""
    if given:
        return Path(given)
    if not DEFAULT_JOURNAL.exists():
        raise ConfigError(
            f"no journal at ./{DEFAULT_JOURNAL}: run the command where `agentaudit dev` ran, or name the JOURNAL file"
        )
    print(f"agentaudit: reading ./{DEFAULT_JOURNAL}", file=sys.stderr)
    return DEFAULT_JOURNAL


def dev_key(journal_path: Path, name: str) -> Path | None:
    """The dev key ``name`` (``signing.pub``, ``witness.pub``) beside the journal, if there is one (said on stderr)."""
    key = journal_path.parent / name
    if not key.is_file():
        return None
    print(f"agentaudit: using {key}", file=sys.stderr)
    return key


def explain_incomplete_copy(path: Path) -> str | None:
    """Why ``path`` cannot be read as a journal when it is a copy taken without its ``-wal`` file, else None.

    A live journal keeps its newest entries in ``journal.db-wal`` until a checkpoint; ``cp journal.db`` alone
    copies a main file that may have no journal table yet (or an older state). Detected as: no ``-wal`` beside the
    file (or an empty one) and a main file without the journal table.
    """
    wal = path.with_name(path.name + "-wal")
    if not path.is_file() or (wal.exists() and wal.stat().st_size > 0):
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if "journal" in tables:
        return None
    return (
        f"{path} has no journal table and no {wal.name} beside it: it looks like a copy of a live journal taken "
        f"without its -wal file (the entries were still in the WAL). Copy a journal with "
        f"`agentaudit journal backup OUT` (consistent, safe while the sidecar runs), or copy {wal.name} with it"
    )
