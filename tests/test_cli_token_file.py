"""The operator CLI refuses a bearer token file that group or others can read, as the server refuses loose keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("mode", [pytest.param(0o644, id="world-readable"), pytest.param(0o640, id="group-readable")])
def test_a_loose_operator_token_file_is_refused_with_the_chmod_to_run(tmp_path: Path, mode: int) -> None:
    token = tmp_path / "operator.token"
    token.write_text("a-secret-token\n")
    token.chmod(mode)

    result = run_cli("approvals", "--operator", f"unix://{tmp_path / 'none.sock'}", "--token-file", str(token))

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"is accessible by group or others (mode {mode:o}); run chmod 600 {token}" in result.stderr
    assert "a-secret-token" not in result.stdout + result.stderr


def test_a_private_operator_token_file_is_used(tmp_path: Path) -> None:
    token = tmp_path / "operator.token"
    token.write_text("a-secret-token\n")
    token.chmod(0o600)

    # Nobody listens there: the token passed the check and the call itself failed (exit 1, not 2).
    result = run_cli(
        "approvals", "--operator", f"unix://{tmp_path / 'none.sock'}", "--token-file", str(token), "--timeout", "2"
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "accessible by group or others" not in result.stderr
