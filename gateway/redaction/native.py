"""Whether the redaction modules run compiled (mypyc, ADR 0027) or as Python, and the stamp that decides it.

``scripts/build_native.py`` (run by ``make install``) compiles ``names``, ``detectors`` and ``redactor`` with
mypyc into ``gateway/redaction/_native/`` and writes ``_native/SOURCES``: a digest of exactly those sources, the
interpreter's extension suffix and the mypyc version. At import, ``gateway.redaction`` puts ``_native`` first on
its ``__path__`` only when that stamp equals the one computed from the sources present now, so a compiled module
is never older than its source: edit a module (or switch branches) without rebuilding and the package runs the
Python source again. ``AGENTAUDIT_NATIVE=0`` forces the Python source. Nothing else changes: the compiled
modules are the same source, and the tests run both (``tests/test_redaction_native.py``).

This module is never compiled itself (it decides whether the others are).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
from pathlib import Path

COMPILED = ("names", "detectors", "redactor")
"""The modules ``scripts/build_native.py`` compiles, in import order."""

PACKAGE_DIR = Path(__file__).resolve().parent
NATIVE_DIR = PACKAGE_DIR / "_native"
STAMP_FILE = NATIVE_DIR / "SOURCES"
ENV_SWITCH = "AGENTAUDIT_NATIVE"


def stamp(package_dir: Path = PACKAGE_DIR, compiler: str = "") -> str:
    """What a build of the sources in ``package_dir`` for this interpreter is stamped with.

    ``compiler``: the mypyc version the build used (the build writes it; the check reads it back from the stamp).
    """
    digest = hashlib.sha256()
    for name in COMPILED:
        source = (package_dir / f"{name}.py").read_bytes()
        digest.update(f"{name}.py {len(source)}\n".encode())
        digest.update(source)
    # The interpreter's own extension suffix (sysconfig's EXT_SUFFIX), without importing sysconfig and its build
    # data at every start (~0.2 MiB).
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return f"sources sha256:{digest.hexdigest()}\next_suffix {suffix}\nmypyc {compiler}\n"


def built_with(text: str) -> str:
    """The mypyc version a stamp's text names ("" when it names none)."""
    for line in text.splitlines():
        if line.startswith("mypyc "):
            return line[len("mypyc ") :]
    return ""


def usable(package_dir: Path = PACKAGE_DIR) -> bool:
    """The compiled modules in ``package_dir / "_native"`` exist, match the sources now and are not switched off."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    stamp_file = package_dir / "_native" / "SOURCES"
    try:
        text = stamp_file.read_text(encoding="utf-8")
        return text == stamp(package_dir, built_with(text))
    except (OSError, UnicodeDecodeError):
        return False


def active() -> bool:
    """The redaction modules loaded are the compiled ones (for the bench's and the health report's record)."""
    from gateway.redaction import detectors  # noqa: PLC0415 - imported by the package already

    return not str(getattr(detectors, "__file__", "")).endswith(".py")
