"""C2SP key texts: round trips, precise refusals, and private files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import SigningKeyError
from gateway.signing import Ed25519Signer, load_signer, parse_signer, parse_verifier, write_secret_file


def test_key_texts_round_trip_and_key_id_follows_c2sp() -> None:
    signer = Ed25519Signer("agentaudit-dev/host", bytes(range(32)))
    assert parse_signer(signer.encode_private()).key_id == signer.key_id
    verifier = parse_verifier(signer.verifier.encode())
    assert verifier == signer.verifier
    assert verifier.verify(b"m", signer.sign(b"m"))
    assert not verifier.verify(b"other", signer.sign(b"m"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("nonsense", "NAME\\+KEYID\\+BASE64", id="no-parts"),
        pytest.param("a b+00000000+AQ==", "name", id="space-in-name"),
        pytest.param("name+zz+AQ==", "hex/base64", id="bad-hex"),
        pytest.param("name+00000000+AQ==", "not an Ed25519 key", id="short-key"),
    ],
)
def test_malformed_public_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(SigningKeyError, match=message):
        parse_verifier(text)


def test_a_public_key_with_a_wrong_key_id_is_refused() -> None:
    name, _, b64 = Ed25519Signer("o", bytes(32)).verifier.encode().split("+", 2)
    with pytest.raises(SigningKeyError, match="does not match"):
        parse_verifier(f"{name}+00000000+{b64}")


def test_secret_files_are_created_0600_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    write_secret_file(path, Ed25519Signer("o", bytes(32)).encode_private())
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signer(path).name == "o"
    with pytest.raises(FileExistsError):
        write_secret_file(path, "again")
    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_signer(path)
