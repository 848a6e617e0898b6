"""Ed25519 keys, C2SP signed-note key ids and key files.

Key files use the C2SP ``signed-note`` text encodings so that standard tooling can read them:

* verifier key (``signing.pub``): ``<name>+<key id hex>+<base64(0x01 || public key)>``
* signer key (``signing.key``, mode 0600): ``PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>``

The key name is the journal's ``origin``; the 4-byte key id is ``SHA-256(name || "\\n" || 0x01 || public)[:4]``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from gateway.errors import ConfigError, SigningKeyError

ED25519_ALG = b"\x01"  # C2SP signed-note signature type for Ed25519.
_PRIVATE_PREFIX = "PRIVATE+KEY+"


def key_id(name: str, public_key: bytes) -> bytes:
    """Returns the C2SP signed-note key id of an Ed25519 key."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519_ALG + public_key).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise ConfigError(f"key name {name!r} must be non-empty and contain no spaces or '+'")


@dataclass(frozen=True)
class Verifier:
    """An Ed25519 public key with its name (the origin) and key id."""

    name: str
    key_id: bytes
    public_key: bytes

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Reports whether ``signature`` is valid for ``message``; never raises on bad input."""
        try:
            nacl.signing.VerifyKey(self.public_key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
            return False
        return True

    def encode(self) -> str:
        """Returns the C2SP verifier key text."""
        b64 = base64.b64encode(ED25519_ALG + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{b64}"


class Ed25519Signer:
    """Signs journal entries; holds the private key in memory only."""

    def __init__(self, name: str, seed: bytes) -> None:
        _check_name(name)
        self._key = nacl.signing.SigningKey(seed)
        public = bytes(self._key.verify_key)
        self.verifier = Verifier(name=name, key_id=key_id(name, public), public_key=public)

    @property
    def name(self) -> str:
        """The key name, which is the journal origin."""
        return self.verifier.name

    @property
    def key_id(self) -> bytes:
        """The 4-byte C2SP key id."""
        return self.verifier.key_id

    def sign(self, message: bytes) -> bytes:
        """Returns the 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message).signature

    @classmethod
    def generate(cls, name: str) -> Ed25519Signer:
        """Creates a signer with a fresh random key."""
        return cls(name, os.urandom(32))

    def encode_private(self) -> str:
        """Returns the C2SP signer key text (secret: store with mode 0600)."""
        b64 = base64.b64encode(ED25519_ALG + bytes(self._key)).decode()
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id.hex()}+{b64}"


def _parse_key_text(text: str, what: str) -> tuple[str, bytes, bytes]:
    """Splits ``NAME+KEYID+BASE64`` into (name, key id, 32 key bytes), checking each part."""
    parts = text.split("+", 2)  # base64 may itself contain "+"
    if len(parts) != 3:
        raise SigningKeyError(f"{what} must have the form NAME+KEYID+BASE64")
    name, kid_hex, b64 = parts
    try:
        _check_name(name)
    except ConfigError as exc:
        raise SigningKeyError(f"{what} name: {exc}") from exc
    try:
        raw = base64.b64decode(b64, validate=True)
        kid = bytes.fromhex(kid_hex)
    except ValueError as exc:
        raise SigningKeyError(f"{what} is not valid hex/base64") from exc
    if len(raw) != 33 or raw[:1] != ED25519_ALG:
        raise SigningKeyError(f"{what} is not an Ed25519 key (expected 0x01 followed by 32 bytes)")
    return name, kid, raw[1:]


def parse_verifier(text: str) -> Verifier:
    """Parses a C2SP verifier key (``name+keyid+base64``)."""
    name, kid, public = _parse_key_text(text.strip(), "public key")
    if key_id(name, public) != kid:
        raise SigningKeyError("public key id does not match the key and name")
    return Verifier(name=name, key_id=kid, public_key=public)


def parse_signer(text: str) -> Ed25519Signer:
    """Parses a C2SP signer key (``PRIVATE+KEY+name+keyid+base64``)."""
    text = text.strip()
    if not text.startswith(_PRIVATE_PREFIX):
        raise SigningKeyError("private key must start with PRIVATE+KEY+")
    name, kid, seed = _parse_key_text(text[len(_PRIVATE_PREFIX) :], "private key")
    signer = Ed25519Signer(name, seed)
    if signer.key_id != kid:
        raise SigningKeyError("private key id does not match the key and name")
    return signer


def write_secret_file(path: Path, data: str | bytes) -> None:
    """Creates ``path`` with mode 0600 (never readable by others, even briefly); refuses to overwrite."""
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def read_secret_file(path: Path) -> bytes:
    """Reads a secret file, refusing one that group or others can read (like OpenSSH does)."""
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):o}); run chmod 600 {path}"
            )
        return path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from exc


def load_signer(path: Path) -> Ed25519Signer:
    """Loads the signing key file written by ``agentaudit keygen``."""
    return parse_signer(read_secret_file(path).decode("ascii", errors="replace"))


def load_verifier(path: Path) -> Verifier:
    """Loads a public key file."""
    try:
        return parse_verifier(path.read_text())
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from exc
