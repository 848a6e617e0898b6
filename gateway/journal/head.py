"""The journal's high-water mark: a small file beside it recording the last entry this sidecar acknowledged.

A journal that was deleted, restored from an old copy or truncated looks, on its own, like a fresh or shorter but
perfectly valid journal: every entry still verifies. The mark (``journal.db.head``) is what the sidecar's own
state says existed, so at start a missing journal, one shorter than the mark, or one whose entry at the mark's seq
has another leaf hash is refused as a rollback rather than taken for a fresh start (docs/journal.md).

The file is JSON, ``{"origin", "seq", "leaf_hash"}``, replaced atomically (write a temporary file, fsync, rename,
fsync the directory) so a crash leaves the old mark or the new one, never a torn one. It is written after a
commit, not before, so it never claims more than the journal durably holds; it may lag behind it (see the writer).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError

HEAD_SUFFIX = ".head"


@dataclass(frozen=True)
class HeadMark:
    """The last acknowledged entry of a journal: its origin, seq and leaf hash."""

    origin: str
    seq: int
    leaf_hash: bytes


def head_path(journal: Path) -> Path:
    """Where the mark of ``journal`` lives."""
    return journal.with_name(journal.name + HEAD_SUFFIX)


def read_head(journal: Path) -> HeadMark | None:
    """The mark beside ``journal``, or None if there is none.

    Raises:
        ConfigError: the file exists but is not a mark (the operator must look at it, not the sidecar guess).
    """
    path = head_path(journal)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the journal's high-water mark {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
        return HeadMark(str(data["origin"]), int(data["seq"]), bytes.fromhex(str(data["leaf_hash"])))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the journal's high-water mark {path} is not readable ({exc}); {_ACCEPT.format(path=path)}"
        ) from exc


def write_head(journal: Path, mark: HeadMark) -> None:
    """Replaces the mark atomically and durably (temporary file, fsync, rename, fsync of the directory)."""
    path = head_path(journal)
    temporary = path.with_name(path.name + ".tmp")
    data = json.dumps({"origin": mark.origin, "seq": mark.seq, "leaf_hash": mark.leaf_hash.hex()}).encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


_ACCEPT = (
    "if you reset or restored the journal on purpose, move {path} aside (keep it: it records what existed) "
    "and start again"
)


def rollback_error(journal: Path, mark: HeadMark, found: str) -> ConfigError:
    """The refusal to start on a journal younger than its mark, telling the operator how to accept it."""
    path = head_path(journal)
    return ConfigError(
        f"journal rollback: {journal} {found}, but this sidecar acknowledged entries up to seq {mark.seq} "
        f"(leaf hash {mark.leaf_hash.hex()[:16]}…, recorded in {path}); refusing to start on a journal that lost "
        f"acknowledged entries. Restore the journal that matches, or, {_ACCEPT.format(path=path)}"
    )
