"""Redaction and keyed digests of arguments, outputs, labels and free text (no raw secrets or PII in the journal).

Two mechanisms, both on every recorded value:

- **Name rules** (``audit.redact_fields``, see :mod:`gateway.redaction.names`): a key they name is removed at any
  depth; the event lists each removed path (``args.customer.email``, ``args.items[0].phone``).
- **Value detectors** (``audit.detectors``, see :mod:`gateway.redaction.detectors`): a detected value inside any
  string (or key) is replaced in place with ``[redacted:NAME]``; the event lists the path with the detector's
  name after ``#`` (``args.note#phone``, ``labels.ticket#email``, ``error#email``).

``redacted_paths`` stays a sorted list of strings, so existing readers keep working. Digests are HMAC-SHA-256
under a secret key, never a bare SHA-256: a plain hash of a low-entropy value such as a phone number is
brute-forced in minutes. Each digest is domain-separated so an args digest can never be confused with an action
key. Digests and the action key are computed over the raw value (two equal calls share them).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.canonical import canonical_json, encode_normalised
from gateway.errors import SigningKeyError
from gateway.redaction.detectors import DETECTOR_NAMES, MIN_LENGTH, ValueScanner
from gateway.redaction.names import FieldMatcher
from gateway.signing import read_secret_file, write_secret_file

HMAC_KEY_BYTES = 32
_ARGS_DOMAIN = b"agentaudit args/v1\n"
_OUTPUT_DOMAIN = b"agentaudit output/v1\n"
_ACTION_KEY_DOMAIN = b"agentaudit action_key/v2\n"
_BINDING_DOMAIN = b"agentaudit approval_binding/v1\n"


@dataclass(frozen=True)
class Redaction:
    """One redacted path and what redacted it (``rule:email`` or ``detector:phone``)."""

    path: str
    by: str


@dataclass(frozen=True)
class Redacted:
    """A redacted copy of a value and what was redacted in it."""

    value: Any
    redactions: list[Redaction]

    @property
    def paths(self) -> list[str]:
        """The journal's ``redacted_paths``: sorted, since map order on the wire is not stable."""
        return sorted({r.path for r in self.redactions})


_DOMAINS = (_ARGS_DOMAIN, _OUTPUT_DOMAIN, _ACTION_KEY_DOMAIN, _BINDING_DOMAIN)
_SHA256_BLOCK = 64
_IPAD = bytes(b ^ 0x36 for b in range(256))  # translation tables: each key byte XOR the RFC 2104 pads
_OPAD = bytes(b ^ 0x5C for b in range(256))


def _hmac_states(key: bytes, domain: bytes) -> tuple[Any, Any]:
    """HMAC-SHA-256 (RFC 2104) under ``key`` as two SHA-256 states, the inner one having absorbed ``domain``.

    A digest then costs two ``copy`` calls and three updates instead of a new HMAC (OpenSSL 3 looks the digest up
    and sets up the key on every ``hmac.digest``: about three times as long). ``tests/test_redaction_digests.py``
    checks it against ``hmac.digest`` for keys shorter than, equal to and longer than a block.
    """
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_SHA256_BLOCK, b"\0")
    inner = hashlib.sha256(padded.translate(_IPAD))
    inner.update(domain)
    return inner, hashlib.sha256(padded.translate(_OPAD))


_KEY_CACHE = 8192  # distinct keys whose decisions are remembered (bounded: keys come from agents)
_KeyDecision = tuple[str, tuple[str, ...], str | None]


class KeyDecisions:
    """Per key, all the walk needs: how it is shown (detected values in it scrubbed), which detectors fired on
    it, and the name rule that removes it, if any. Remembered per key (keys repeat in every line item, and
    one cache lookup is cheaper than two) in a plain dict the walk reads with one C-level ``get``, bounded to
    ``_KEY_CACHE`` keys (emptied when full: keys come from agents). Thread-safe: each dict operation is atomic
    and a decision depends only on its key."""

    def __init__(self, matcher: FieldMatcher, scanner: ValueScanner) -> None:
        self._rule_for = matcher.rule_for if matcher else None
        self._scrub = scanner.scrub if scanner else None
        self.remembered: dict[str, _KeyDecision] = {}

    def __call__(self, key: str) -> _KeyDecision:
        decision = self.remembered.get(key)
        if decision is None:
            shown, names = self._scrub(key) if self._scrub is not None else (key, [])
            decision = shown, tuple(names), self._rule_for(key) if self._rule_for is not None else None
            if len(self.remembered) >= _KEY_CACHE:
                self.remembered.clear()
            self.remembered[key] = decision
        return decision


def key_decisions(matcher: FieldMatcher, scanner: ValueScanner) -> KeyDecisions:
    """The remembered key decisions of a matcher and a scanner (see :class:`KeyDecisions`)."""
    return KeyDecisions(matcher, scanner)


def _walk(
    matcher: FieldMatcher,
    scanner: ValueScanner,
    value: Any,
    prefix: str,
    keys: KeyDecisions | None = None,
) -> Redacted:
    """The redacted copy and its redactions. Paths are built only for containers and for what is redacted:
    formatting one per leaf would cost more than the scan itself.

    One loop over an explicit stack of ``(source, copy, path)`` containers, no recursion: each container's copy
    is put in its parent's place when met (so keys keep their order) and filled when its turn comes. String
    values are not scanned one by one as the copy is built: each is noted with its place in the copy, and after
    the walk ``ValueScanner.scan`` picks, in one pass over all of them, the few a detector may fire on;
    only those are scrubbed and written back. Keys are decided as they are met (``keys``: the caller's
    remembered decisions, else fresh ones). The order of the redactions is not significant (``paths`` sorts)."""
    if isinstance(value, dict):
        copy: Any = {}
    elif isinstance(value, list):
        copy = []
    elif isinstance(value, str) and scanner:
        text, names = scanner.scrub(value)
        return Redacted(text, [Redaction(f"{prefix}#{name}", f"detector:{name}") for name in names])
    else:
        return Redacted(value, [])
    decide_key = keys if keys is not None else key_decisions(matcher, scanner)
    # Written for mypyc (ADR 0027) as much as for the interpreter: typed locals, containers narrowed by
    # isinstance and direct method calls let the compiled walk use native list and dict operations.
    remembered: dict[str, _KeyDecision] = decide_key.remembered
    scanning = bool(scanner)
    found: list[Redaction] = []
    texts: list[str] = []  # strings to scan, and where each sits: its container in the copy, slot, parent path
    places: list[tuple[dict[str, Any] | list[Any], str | int, str]] = []
    stack: list[tuple[Any, Any, str]] = [(value, copy, prefix)]
    while stack:
        node, out, path = stack.pop()
        if isinstance(node, dict) and isinstance(out, dict):
            source: dict[str, Any] = node
            target: dict[str, Any] = out
            for key, child in source.items():
                # A key can itself be an e-mail address; its path would leak it, so keys are scrubbed too.
                decision = remembered.get(key)
                if decision is None:
                    decision = decide_key(key)
                shown, key_names, rule = decision
                if key_names:
                    while shown in target or shown in source:
                        shown += "~"
                    found.extend([Redaction(f"{path}.{shown}#{name}", f"detector:{name}") for name in key_names])
                if rule is not None:
                    found.append(Redaction(f"{path}.{shown}", f"rule:{rule}"))
                elif isinstance(child, str):
                    target[shown] = child
                    if scanning and len(child) >= MIN_LENGTH:
                        texts.append(child)
                        places.append((target, shown, path))
                elif isinstance(child, dict):
                    sub_dict: dict[str, Any] = {}
                    target[shown] = sub_dict
                    stack.append((child, sub_dict, f"{path}.{shown}"))
                elif isinstance(child, list):
                    sub_list: list[Any] = []
                    target[shown] = sub_list
                    stack.append((child, sub_list, f"{path}.{shown}"))
                else:
                    target[shown] = child
        elif isinstance(node, list) and isinstance(out, list):
            items: list[Any] = node
            copied: list[Any] = out
            for i, child in enumerate(items):
                if isinstance(child, str):
                    if scanning and len(child) >= MIN_LENGTH:
                        texts.append(child)
                        places.append((copied, i, path))
                    copied.append(child)
                elif isinstance(child, dict):
                    sub_dict = {}
                    copied.append(sub_dict)
                    stack.append((child, sub_dict, f"{path}[{i}]"))
                elif isinstance(child, list):
                    sub_list = []
                    copied.append(sub_list)
                    stack.append((child, sub_list, f"{path}[{i}]"))
                else:
                    copied.append(child)
    if texts:
        for index, text, names in scanner.scan(texts):
            container, slot, where_in = places[index]
            container[slot] = text  # type: ignore[index] # the redacted value replaces the raw one
            where = f"{where_in}[{slot}]" if isinstance(slot, int) else f"{where_in}.{slot}"
            found.extend([Redaction(f"{where}#{name}", f"detector:{name}") for name in names])
    return Redacted(copy, found)


def redact(value: Any, fields: Iterable[str], prefix: str) -> tuple[Any, list[str]]:
    """Returns a copy of ``value`` without the keys the name rules ``fields`` match, and the removed paths."""
    result = _walk(FieldMatcher(fields), ValueScanner(()), value, prefix)
    return result.value, result.paths


@dataclass(frozen=True)
class Redactor:
    """Applies the configured redaction and digests."""

    hmac_key: bytes
    fields: FieldMatcher
    hash_args: bool
    scanner: ValueScanner = field(default_factory=ValueScanner)
    keys: KeyDecisions = field(init=False, repr=False, compare=False)
    _macs: dict[bytes, tuple[Any, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen: set once, here.
        object.__setattr__(self, "keys", key_decisions(self.fields, self.scanner))
        object.__setattr__(self, "_macs", {domain: _hmac_states(self.hmac_key, domain) for domain in _DOMAINS})

    @classmethod
    def create(
        cls, hmac_key: bytes, fields: Iterable[str], hash_args: bool, detectors: Iterable[str] = DETECTOR_NAMES
    ) -> Redactor:
        """Builds a redactor from name rules (see :mod:`gateway.redaction.names`) and the enabled detectors."""
        return cls(hmac_key, FieldMatcher(fields), hash_args, ValueScanner(detectors))

    def _mac(self, domain: bytes, data: bytes) -> str:
        """HMAC-SHA-256 of ``domain + data`` under the key, hex (``hmac.digest``'s value, from the states)."""
        inner, outer = self._macs[domain]
        inner = inner.copy()
        inner.update(data)
        outer = outer.copy()
        outer.update(inner.digest())
        return str(outer.hexdigest())

    def action_key(self, tenant_id: str, name: str, canonical_redacted_args: bytes) -> str:
        """The key Decide returns and the journal indexes: equal for the same tenant, action and *redacted* args.

        It is computed over the redacted args, so it says nothing about a redacted value: a caller who tries
        guesses for a redacted field gets the same key for every guess (the oracle of docs/adr/0013). It still
        dedups retries of the same action. Keyed per tenant, so keys do not link tenants' actions.
        """
        message = tenant_id.encode() + b"\n" + name.encode() + b"\n" + canonical_redacted_args
        return "ak_" + self._mac(_ACTION_KEY_DOMAIN, message)[:32]

    def approval_binding(self, tenant_id: str, name: str, canonical_args: bytes) -> str:
        """The digest an approval is bound to: the tenant, action and the exact *raw* args. Never returned to a
        caller (only journaled, keyed), so it cannot serve as an oracle for redacted values."""
        message = tenant_id.encode() + b"\n" + name.encode() + b"\n" + canonical_args
        return "ab_" + self._mac(_BINDING_DOMAIN, message)[:32]

    def digest(self, canonical: bytes, *, output: bool = False) -> str:
        """HMAC-SHA-256 of canonical args (or output); empty when ``hash_args`` is off."""
        if not self.hash_args:
            return ""
        return "hmac-sha256:" + self._mac(_OUTPUT_DOMAIN if output else _ARGS_DOMAIN, canonical)

    def redact(self, value: Any, prefix: str) -> Redacted:
        """A redacted copy of ``value`` (a mapping, list or string) by name and by value, with what was redacted."""
        if not self.fields and not self.scanner:
            return Redacted(dict(value) if isinstance(value, Mapping) else value, [])
        return _walk(self.fields, self.scanner, value, prefix, self.keys)

    def prepare(self, value: Mapping[str, Any], prefix: str, *, normalised: bool) -> tuple[bytes, Any, list[str]]:
        """Canonical bytes of the raw value, its redacted copy and the redacted paths (``[]``: the copy is the value).

        ``normalised``: the value is JCS-normalised already (``gateway.canonical.encode_normalised`` applies).
        """
        result = self.redact(value, prefix)
        canonical = encode_normalised(value) if normalised else canonical_json(value)
        return canonical, result.value, result.paths

    def scrub_text(self, text: str, path: str) -> tuple[str, list[str]]:
        """Free text (an error, a comment, a reason) with detected values replaced in place, and the paths."""
        if not self.scanner:
            return text, []
        scrubbed, names = self.scanner.scrub(text)
        return scrubbed, [f"{path}#{name}" for name in names]


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
