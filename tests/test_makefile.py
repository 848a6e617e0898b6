"""A cold `make dev` says what it is doing before each quiet step (the steps themselves are not run here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_cold_make_dev_announces_each_step(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not on PATH")
    venv = tmp_path / "venv"  # absent: the cold path, printed by -n without running it
    planned = subprocess.run(
        [make, "-n", "dev", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    steps = [
        ("-m venv", "creating"),
        ("install --quiet --upgrade pip", "upgrading pip"),
        ("install --quiet -e clients/python", "installing agentaudit and its dependencies"),
        ("agentaudit dev", "starting the sidecar"),
    ]
    for command, message in steps:
        index = next(i for i, line in enumerate(planned) if command in line and not line.startswith("echo"))
        assert planned[index - 1].startswith("echo") and message in planned[index - 1], (command, planned)
    assert "about a minute on a cold cache" in "\n".join(planned)
