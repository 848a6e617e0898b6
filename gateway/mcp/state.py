"""The proxy's own small state: a SQLite file in its state directory, apart from any journal.

It holds what the proxy must remember across restarts and is not audit: the sealed ``requestState`` tokens
already spent (single use), the pinned digest of each tool definition, which changed definitions were reported
to the sidecar, and which of those its policy did not allow to be listed. The journal stays the sidecar's;
the proxy never writes one.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from pathlib import Path

from gateway.sqlite import enable_wal

STATE_FILE = "mcp-proxy.db"
STATE_LOCK_TIMEOUT_S = 5.0
"""How long opening the state file waits for another proxy's lock (sqlite3's own default busy timeout)."""
KEY_FILE = "mcp-state.key"
_KEY_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spent_states (nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tool_pins (
  server TEXT NOT NULL, tool TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (server, tool)
);
CREATE TABLE IF NOT EXISTS reported_changes (
  server TEXT NOT NULL, tool TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (server, tool, digest)
);
CREATE TABLE IF NOT EXISTS withheld_changes (
  server TEXT NOT NULL, tool TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (server, tool, digest)
);
"""


def load_or_create_key(directory: Path) -> bytes:
    """The proxy's HMAC key for sealed states, created (mode 0600) on first use."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        key = secrets.token_bytes(_KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key.hex())
        return key


class ProxyState:
    """The proxy's SQLite file. Each call is one short transaction (microseconds); a lock serialises threads."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(directory / STATE_FILE, check_same_thread=False, isolation_level=None)
        enable_wal(self._db, STATE_LOCK_TIMEOUT_S)  # several proxies may share a new state file
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Closes the file."""
        with self._lock:
            self._db.close()

    def spend(self, nonce: str, expires_at: float, now: float) -> bool:
        """Marks a sealed state used; False if it was used before (a replay)."""
        with self._lock:
            self._db.execute("DELETE FROM spent_states WHERE expires_at < ?", (now,))
            try:
                self._db.execute("INSERT INTO spent_states (nonce, expires_at) VALUES (?, ?)", (nonce, expires_at))
            except sqlite3.IntegrityError:
                return False
            return True

    def pin(self, server: str, tool: str, digest: str) -> str:
        """Pins ``digest`` if the tool has no pin yet; returns the pinned digest (the first one seen)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO tool_pins (server, tool, digest) VALUES (?, ?, ?)", (server, tool, digest)
            )
            row = self._db.execute(
                "SELECT digest FROM tool_pins WHERE server = ? AND tool = ?", (server, tool)
            ).fetchone()
        return str(row[0])

    def first_report(self, server: str, tool: str, digest: str) -> bool:
        """True the first time a changed definition (this digest) is reported to the sidecar."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO reported_changes (server, tool, digest) VALUES (?, ?, ?)", (server, tool, digest)
            )
            return cursor.rowcount == 1

    def forget_report(self, server: str, tool: str, digest: str) -> None:
        """Undoes :meth:`first_report` when the report did not reach the sidecar, so it is sent again."""
        with self._lock:
            self._db.execute(
                "DELETE FROM reported_changes WHERE server = ? AND tool = ? AND digest = ?", (server, tool, digest)
            )

    def withhold(self, server: str, tool: str, digest: str) -> None:
        """Remembers that the policy did not allow this changed definition to be listed."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO withheld_changes (server, tool, digest) VALUES (?, ?, ?)", (server, tool, digest)
            )

    def withheld(self, server: str, tool: str, digest: str) -> bool:
        """Whether this changed definition stays out of listings (see :meth:`withhold`)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM withheld_changes WHERE server = ? AND tool = ? AND digest = ?", (server, tool, digest)
            ).fetchone()
        return row is not None
