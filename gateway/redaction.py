"""Redaction and keyed digests of arguments and outputs (no raw secrets or PII in the journal).

Keys named in ``audit.redact_fields`` are removed at any depth, matched case-insensitively; the event lists each
removed path (``args.customer.email``, ``args.items[0].phone``). Digests are HMAC-SHA-256 under a secret key,
never a bare SHA-256: a plain hash of a low-entropy value such as a phone number is brute-forced in minutes.
Each digest is domain-separated so an args digest can never be confused with an action key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.canonical import canonical_json, encode_normalised
from gateway.errors import SigningKeyError
from gateway.signing import read_secret_file, write_secret_file

HMAC_KEY_BYTES = 32
_ARGS_DOMAIN = b"agentaudit args/v1\n"
_OUTPUT_DOMAIN = b"agentaudit output/v1\n"
_ACTION_KEY_DOMAIN = b"agentaudit action_key/v1\n"


def redact(value: Any, fields: frozenset[str], prefix: str) -> tuple[Any, list[str]]:
    """Returns a copy of ``value`` without the keys in ``fields`` (lower-case), and the removed paths."""
    removed: list[str] = []

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, child in node.items():
                child_path = f"{path}.{key}"
                if key.lower() in fields:
                    removed.append(child_path)
                else:
                    out[key] = walk(child, child_path)
            return out
        if isinstance(node, list):
            return [walk(child, f"{path}[{i}]") for i, child in enumerate(node)]
        return node

    redacted = walk(value, prefix)
    return redacted, sorted(removed)  # sorted: map order on the wire is not stable


@dataclass(frozen=True)
class Redactor:
    """Applies the configured redaction and digests."""

    hmac_key: bytes
    fields: frozenset[str]
    hash_args: bool

    @classmethod
    def create(cls, hmac_key: bytes, fields: Iterable[str], hash_args: bool) -> Redactor:
        """Builds a redactor; field names are matched case-insensitively."""
        return cls(hmac_key, frozenset(f.lower() for f in fields), hash_args)

    def _mac(self, domain: bytes, data: bytes) -> str:
        return hmac.digest(self.hmac_key, domain + data, hashlib.sha256).hex()

    def action_key(self, name: str, canonical_args: bytes) -> str:
        """Stable key for equal action name and canonical args (dedup across retries, approval binding)."""
        return "ak_" + self._mac(_ACTION_KEY_DOMAIN, name.encode() + b"\n" + canonical_args)[:32]

    def digest(self, canonical: bytes, *, output: bool = False) -> str:
        """HMAC-SHA-256 of canonical args (or output); empty when ``hash_args`` is off."""
        if not self.hash_args:
            return ""
        return "hmac-sha256:" + self._mac(_OUTPUT_DOMAIN if output else _ARGS_DOMAIN, canonical)

    def prepare(self, value: Mapping[str, Any], prefix: str, *, normalised: bool) -> tuple[bytes, Any, list[str]]:
        """Canonical bytes of the raw value, its redacted copy and the removed paths.

        ``normalised``: the value is JCS-normalised already (``gateway.canonical.encode_normalised`` applies).
        """
        redacted, paths = redact(value, self.fields, prefix) if self.fields else (dict(value), [])
        canonical = encode_normalised(value) if normalised else canonical_json(value)
        return canonical, redacted, paths


def create_hmac_key(path: Path) -> None:
    """Writes a fresh random HMAC key (hex) with mode 0600."""
    write_secret_file(path, os.urandom(HMAC_KEY_BYTES).hex() + "\n")


def load_hmac_key(path: Path) -> bytes:
    """Reads the HMAC key file (hex, at least 32 bytes)."""
    text = read_secret_file(path).decode("ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise SigningKeyError(f"{path}: HMAC key must be hex") from exc
    if len(key) < HMAC_KEY_BYTES:
        raise SigningKeyError(f"{path}: HMAC key must be at least {HMAC_KEY_BYTES} bytes")
    return key
