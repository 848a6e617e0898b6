"""Listener helpers shared by the sidecar and the collector."""

from __future__ import annotations

import socket
from pathlib import Path

from gateway.errors import ConfigError


def prepare_unix_socket(path: Path) -> None:
    """Removes a stale socket file; refuses if another process is listening on it."""
    if len(str(path).encode()) > 107:
        raise ConfigError(f"unix socket path {path} is longer than the 107-byte limit; use a shorter --dir")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: left over from a crash
    else:
        raise ConfigError(f"another process is already listening on {path}")
    finally:
        probe.close()
