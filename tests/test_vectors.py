"""The checked-in journal vectors (tests/vectors, made by make_vectors.py) verify exactly as expected.json says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.journal.verify import verify_journal
from gateway.signing import load_verifier

VECTORS = Path(__file__).parent / "vectors"
EXPECTED: dict[str, Any] = json.loads((VECTORS / "expected.json").read_text())


def test_every_vector_file_has_an_expectation() -> None:
    assert sorted(p.name for p in VECTORS.glob("*.db")) == sorted(EXPECTED)


def test_vectors_have_no_sqlite_sidecar_files() -> None:
    # A -wal or -journal file next to a vector would hold part of its content (or be stale); both must fold
    # into the .db when the vectors are made.
    assert [p.name for p in VECTORS.iterdir() if p.name.endswith(("-wal", "-shm", "-journal"))] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vector_verifies_to_its_expected_findings(tmp_path: Path, name: str) -> None:
    # Verify a copy: the checked-in file stays exactly as committed whatever SQLite does on open.
    path = tmp_path / name
    shutil.copy(VECTORS / name, path)
    expected = EXPECTED[name]

    report = verify_journal(path, [load_verifier(VECTORS / "signing.pub")])

    assert [{"seq": f.seq, "code": str(f.code)} for f in report.findings] == expected["findings"]
    assert report.ok is (expected["findings"] == [])
    if "root_hash" in expected:
        assert report.entries == expected["entries"]
        assert report.root_hash.hex() == expected["root_hash"]
        assert report.last_leaf_hash is not None
        assert report.last_leaf_hash.hex() == expected["last_leaf_hash"]
