"""Whether SQLite may store into a journal file now: writable, not immutable, not append-only.

SQLite maps the ``-shm`` file (the WAL index) shared and writable in every connection, the writer's and every
reader's. A store into a page of that mapping the kernel refuses (the file made immutable with ``chattr +i``,
which also writes its pages back and write-protects them at once) raises SIGBUS in the storing thread, and no
Python code can catch that: the process dies. So every connection asks :func:`why_unwritable` before each
transaction and fails closed instead of letting SQLite store (docs/adr/0014-shm-faults.md).

The attribute bits come from ``statx(2)`` by path, not from the ``FS_IOC_GETFLAGS`` ioctl: the ioctl needs an open
descriptor, and closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's WAL and
shared-memory locks included (https://sqlite.org/howtocorrupt.html, section 2.2). A kept-open descriptor would have
to outlive every connection of the process. Where ``statx`` is missing (not Linux, old libc) only ``access(2)`` is
asked, which still sees an immutable file and a read-only volume.
"""

from __future__ import annotations

import ctypes
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

# linux/stat.h: the two attributes under which a store into a mapped page faults or a new mapping is refused.
STATX_ATTR_IMMUTABLE = 0x10
STATX_ATTR_APPEND = 0x20
_AT_FDCWD = -100
_AT_STATX_SYNC_AS_STAT = 0
_STATX_INO = 0x100  # asked for something cheap; stx_attributes is filled whatever the mask
_STATX_SIZE = 256  # sizeof(struct statx)
_ATTRIBUTES_OFFSET = 8  # u32 stx_mask, u32 stx_blksize, then u64 stx_attributes


def _load_statx() -> Callable[..., int] | None:
    try:
        # The process's own symbols, libc's among them: no ctypes.util.find_library, which imports shutil,
        # tempfile and the compression modules to search for it (~0.3 MiB of every sidecar, issue 20 part 1).
        libc = ctypes.CDLL(None, use_errno=True)
        statx: Callable[..., int] = libc.statx
    except (OSError, AttributeError):
        return None
    statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]  # type: ignore[attr-defined]
    statx.restype = ctypes.c_int  # type: ignore[attr-defined]
    return statx


_statx = _load_statx()


def attributes(path: Path) -> int:
    """The file's ``statx`` attribute bits (``STATX_ATTR_*``); 0 where they cannot be read."""
    if _statx is None:
        return 0
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx(_AT_FDCWD, os.fsencode(path), _AT_STATX_SYNC_AS_STAT, _STATX_INO, buf) != 0:
        return 0  # missing file, or ENOSYS: access(2) and the identity checks speak for it
    return int.from_bytes(buf.raw[_ATTRIBUTES_OFFSET : _ATTRIBUTES_OFFSET + 8], sys.byteorder)


def why_unwritable(path: Path) -> str:
    """Why SQLite must not store into ``path`` now ("" if it may, or if the file does not exist).

    Two system calls on the happy path: ``access(2)`` (an immutable file answers EPERM even to root, a read-only
    volume EROFS) and ``statx(2)`` for the append-only bit, which ``access`` does not see.
    """
    if not os.access(path, os.W_OK):
        if not os.path.lexists(path):
            return ""
        if attributes(path) & STATX_ATTR_IMMUTABLE:
            return "immutable (chattr +i)"
        return "not writable (read-only volume or permissions)"
    flags = attributes(path)
    if flags & STATX_ATTR_IMMUTABLE:
        return "immutable (chattr +i)"
    if flags & STATX_ATTR_APPEND:
        return "append-only (chattr +a)"
    return ""


def abandon(conn: sqlite3.Connection) -> None:
    """Makes sure ``conn`` is never closed, not even when the interpreter finalises, for the process exit to drop.

    For a connection whose ``-shm`` is no longer writable: closing it (explicitly or by garbage collection)
    checkpoints and updates the WAL index through the mapping, which is SIGBUS (measured: ``Bus error`` on
    ``close()`` after ``chattr +i``). The reference taken here is never given back, so CPython never deallocates the
    object; the kernel unmaps and closes everything at exit without storing into the page.
    """
    _ABANDONED.append(conn)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


_ABANDONED: list[sqlite3.Connection] = []  # also visible to a debugger: what was left open on purpose
