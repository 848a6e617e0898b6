"""The compiled redaction modules (mypyc, ADR 0027): loaded only when built from exactly the sources present, and
doing exactly what the sources do (the redaction tests that compare against references also run as Python here).

The build comes from ``make install`` (``scripts/build_native.py``); without a C compiler there is none, and the
tests that need one are skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.redaction import detectors, native

ROOT = Path(__file__).resolve().parents[1]
BUILT = (native.NATIVE_DIR / "SOURCES").is_file()
needs_build = pytest.mark.skipif(not BUILT, reason="no compiled build here (make install builds it with mypyc)")


def _loaded_from(root: Path, **env: str) -> str:
    """Where ``gateway.redaction.detectors`` is loaded from, in a fresh interpreter with ``root`` first."""
    code = "import gateway.redaction.detectors as d, gateway.redaction.native as n; print(d.__file__, n.active())"
    environment = {**os.environ, "PYTHONPATH": str(root), **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=environment, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


@needs_build
def test_a_build_for_these_sources_is_loaded() -> None:
    assert native.usable()
    where, active = _loaded_from(ROOT).split()
    assert "/_native/" in where and not where.endswith(".py")
    assert active == "True"


@needs_build
def test_the_switch_loads_the_sources() -> None:
    where, active = _loaded_from(ROOT, AGENTAUDIT_NATIVE="0").split()
    assert where == str(ROOT / "gateway" / "redaction" / "detectors.py")
    assert active == "False"


@needs_build
@pytest.mark.parametrize("module", native.COMPILED)
def test_a_build_older_than_its_source_is_never_loaded(tmp_path: Path, module: str) -> None:
    # A copy of the package with its build, then one source edited without rebuilding (a branch switch, a pull).
    shutil.copytree(ROOT / "gateway", tmp_path / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    assert _loaded_from(tmp_path).split()[1] == "True"  # the copy's build fits its sources
    source = tmp_path / "gateway" / "redaction" / f"{module}.py"
    source.write_text(source.read_text(encoding="utf-8") + "\n# edited after the build\n", encoding="utf-8")
    where, active = _loaded_from(tmp_path).split()
    assert where == str(tmp_path / "gateway" / "redaction" / "detectors.py")
    assert active == "False"


@needs_build
def test_a_tampered_or_foreign_stamp_is_not_trusted(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "gateway", tmp_path / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    stamp = tmp_path / "gateway" / "redaction" / "_native" / "SOURCES"
    text = stamp.read_text(encoding="utf-8")
    for changed in (text.replace(".cpython-311", ".cpython-312"), text.replace("sha256:", "sha256:0"), "", "\xff"):
        stamp.write_text(changed, encoding="utf-8")
        assert _loaded_from(tmp_path).split()[1] == "False", changed


def test_the_stamp_covers_every_byte_of_the_compiled_sources(tmp_path: Path) -> None:
    for name in native.COMPILED:
        shutil.copy2(native.PACKAGE_DIR / f"{name}.py", tmp_path / f"{name}.py")
    before = native.stamp(tmp_path, "2.4.1")
    assert before == native.stamp(native.PACKAGE_DIR, "2.4.1")
    assert native.built_with(before) == "2.4.1"
    for name in native.COMPILED:
        path = tmp_path / f"{name}.py"
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert native.stamp(tmp_path, "2.4.1") != before, name
        path.write_bytes(original)
    assert native.stamp(tmp_path, "2.4.0") != before  # another compiler's build is another build


def test_this_process_runs_what_the_stamp_says() -> None:
    compiled = not str(detectors.__file__).endswith(".py")
    assert compiled == native.active() == (native.usable() and os.environ.get(native.ENV_SWITCH, "1") != "0")


@needs_build
def test_the_reference_and_equivalence_tests_pass_as_python_too() -> None:
    # This run uses the build; the same property tests against the straightforward references, once more on the
    # sources, so both implementations are checked by every run.
    tests = ["tests/test_redaction_prefilter.py", "tests/test_detectors.py", "tests/test_detectors_phone_check.py"]
    environment = {**os.environ, "AGENTAUDIT_NATIVE": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout
