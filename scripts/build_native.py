"""Compiles the redaction modules with mypyc into ``gateway/redaction/_native/`` (ADR 0027); ``make install`` runs it.

``python scripts/build_native.py [--check]``. The modules of ``gateway.redaction.native.COMPILED`` are compiled
as one mypyc group (calls between them stay native) named inside the package (``gateway.redaction.compiled``, so
no top-level module is added), by ``setup.py build_ext --inplace`` in a scratch copy of the ``gateway`` package:
the source tree gets nothing but ``_native/``, the extensions and ``SOURCES``, the stamp ``gateway.redaction``
checks before it loads them. Without mypyc, setuptools or a C compiler it says so and exits 0: the package then
runs the same modules as Python, a little slower (docs/performance.md, "Redaction").
``--check`` only says whether the build present is the one the sources need (exit 1 when it is not).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _load_native() -> Any:
    """This checkout's ``gateway/redaction/native.py``, loaded by path: importing the package would import its
    dependencies, which the image's build stage does not install."""
    spec = importlib.util.spec_from_file_location("_agentaudit_native", ROOT / "gateway" / "redaction" / "native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native = _load_native()

GROUP = "gateway.redaction.compiled"
"""The mypyc group's name: its shared library is the module ``gateway/redaction/compiled__mypyc``."""

_SETUP = """\
from setuptools import setup
from mypyc.build import mypycify

# --ignore-missing-imports: the image's build stage compiles without the project's dependencies installed; what
# the compiled modules call of them is typed by the project's own annotations either way.
setup(name="agentaudit-native", ext_modules=mypycify(["--ignore-missing-imports", *{paths!r}], group_name={group!r}))
"""


def _missing() -> str:
    """Why a build cannot run here ("" when it can)."""
    for module, hint in (("mypyc", "it comes with mypy: pip install mypy"), ("setuptools", "pip install setuptools")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({hint})"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}) on the PATH"
    return ""


def _mypyc_version() -> str:
    from mypy.version import __version__  # noqa: PLC0415 - only with mypy installed

    return str(__version__)


def build() -> int:
    """Compiles into a scratch copy, then replaces ``_native/`` with the result and its stamp."""
    scratch_root = Path(tempfile.mkdtemp(prefix="agentaudit-native-"))
    try:
        shutil.copytree(
            ROOT / "gateway", scratch_root / "gateway", ignore=shutil.ignore_patterns("_native", "__pycache__")
        )
        package = scratch_root / "gateway" / "redaction"
        paths = [f"gateway/redaction/{name}.py" for name in native.COMPILED]
        (scratch_root / "setup.py").write_text(_SETUP.format(paths=paths, group=GROUP), encoding="utf-8")
        print(f"build_native: compiling {', '.join(paths)} (mypyc, one group)", flush=True)
        command = [sys.executable, "setup.py", "build_ext", "--inplace"]
        done = subprocess.run(command, cwd=scratch_root, capture_output=True, text=True, check=False)  # noqa: S603 - our interpreter, fixed argv
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            print("build_native: mypyc failed; the Python sources stay in use", file=sys.stderr)
            return 1
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        built = sorted(p for p in package.iterdir() if p.name.endswith(suffix))
        strays = [p.name for p in scratch_root.iterdir() if p.name.endswith(suffix)]
        if strays:  # a top-level module would not be found through the package's path: refuse half a build
            print(f"build_native: unexpected top-level extensions {strays}", file=sys.stderr)
            return 1
        staging = native.PACKAGE_DIR / "_native.new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for path in built:
            shutil.copy2(path, staging / path.name)
        # The stamp last and from the sources compiled (the scratch copy), so a source edited meanwhile shows.
        (staging / "SOURCES").write_text(native.stamp(package, _mypyc_version()), encoding="utf-8")
        shutil.rmtree(native.NATIVE_DIR, ignore_errors=True)
        staging.rename(native.NATIVE_DIR)
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    print(f"build_native: {len(built)} extensions in {native.NATIVE_DIR.relative_to(ROOT)}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only say whether the present build fits the sources")
    args = parser.parse_args(argv)
    if args.check:
        ok = native.usable()
        print(
            "build_native: the compiled modules match the sources" if ok else "build_native: no build for these sources"
        )
        return 0 if ok else 1
    why = _missing()
    if why:
        print(f"build_native: skipped, {why}; redaction runs as Python", file=sys.stderr)
        return 0
    return build()


if __name__ == "__main__":
    sys.exit(main())
