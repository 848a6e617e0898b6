"""Value detectors: PII and credentials recognised by shape, whatever key (or free text) they arrive under.

Each detector is a precompiled regex plus, where the shape alone is too loose, a checksum: payment cards pass
Luhn and start with a card-network digit (2-6, so epoch timestamps in ms or ns never qualify), IBANs pass ISO
13616 mod-97. Phone numbers are only recognised in forms that carry a phone's punctuation (a leading ``+`` with
8-15 digits, or 10-11 digits in 3-4 groups split by spaces, dots, dashes or a bracketed area code): a bare run of
digits is an order id or an epoch timestamp as often as a phone, so it is left to the name rules.

Cost: one cheap prefilter regex per string decides whether any detector could match (most business strings
fail it at once); each detector then has its own prefilter (a substring or a character test) before its regex.
A detected substring is replaced in place with ``[redacted:NAME]`` (which no detector matches again).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

EMAIL = "email"
PHONE = "phone"
CARD = "card"
IBAN = "iban"
CREDENTIALS = "credentials"
DETECTOR_NAMES = (EMAIL, PHONE, CARD, IBAN, CREDENTIALS)
MIN_LENGTH = 6  # the shortest detectable value ("a@b.co"); shorter strings are never scanned


def marker(name: str) -> str:
    """What replaces a detected value."""
    return f"[redacted:{name}]"


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"[ \-]", "", match.group())
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn(digits)


def _iban(match: re.Match[str]) -> bool:
    compact = match.group().replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    digits = sum(c.isdigit() for c in text)
    return 8 <= digits <= 15 if text.startswith("+") else 10 <= digits <= 11


@dataclass(frozen=True)
class Detector:
    """One kind of sensitive value: a prefilter, a pattern and an optional check of each match."""

    name: str
    prefilter: Callable[[str], bool]
    pattern: re.Pattern[str]
    check: Callable[[re.Match[str]], bool] | None = None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where this detector finds values in ``text``."""
        if not self.prefilter(text):
            return []
        return [m.span() for m in self.pattern.finditer(text) if self.check is None or self.check(m)]


_DIGITS_8 = re.compile(r"\d(?:[^\d]{0,3}\d){7}")  # eight digits, with at most short gaps: cards, phones, IBANs
_CREDENTIAL_HINTS = (
    *("Bearer", "sk-", "sk_", "rk_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox"),
    *("AKIA", "ASIA", "-----BEGIN", "eyJ"),
)

# Order matters: earlier detectors claim their spans first (a card number is not also reported as a phone).
DETECTORS: tuple[Detector, ...] = (
    Detector(
        CREDENTIALS,
        lambda t: any(h in t for h in _CREDENTIAL_HINTS),
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)"
            r"|\bBearer\s+[A-Za-z0-9\-._~+/]{8,}=*"
            r"|\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{8,}"
            r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}"
            r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
            r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
            r"|\bgithub_pat_[A-Za-z0-9_]{40,}"
            r"|\bxox[bpars]-[A-Za-z0-9\-]{10,}"
            r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
            re.DOTALL,
        ),
    ),
    Detector(
        EMAIL,
        lambda t: "@" in t,
        re.compile(r"[\w.%+'\-]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}"),
    ),
    Detector(
        IBAN,
        lambda t: _DIGITS_8.search(t) is not None,
        re.compile(r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)\b"),
        _iban,
    ),
    Detector(
        CARD,
        lambda t: _DIGITS_8.search(t) is not None,
        re.compile(r"(?<![\d\-.])\d(?:[ \-]?\d){12,18}(?![\d\-.])"),
        _card,
    ),
    Detector(
        PHONE,
        lambda t: _DIGITS_8.search(t) is not None,
        re.compile(
            r"(?<![\w+])\+\d[\d \-.()]{6,20}\d(?![\w\-])"
            r"|(?<![\w.\-/:])(?:\(\d{2,4}\) ?|\d{2,4}[ \-.])\d{3,4}[ \-.]\d{3,4}(?![\w.\-/:])"
            r"|(?<![\w.\-/:])0\d(?:[ .\-]\d{2}){4}(?![\w.\-/:])"
        ),
        _phone,
    ),
)


@dataclass(frozen=True)
class Finding:
    """A detected value: which detector and where."""

    name: str
    start: int
    end: int


class ValueScanner:
    """The enabled detectors, applied to one string at a time."""

    def __init__(self, enabled: Iterable[str] = DETECTOR_NAMES) -> None:
        names = set(enabled)
        unknown = names - set(DETECTOR_NAMES)
        if unknown:
            raise ValueError(f"unknown detector(s) {', '.join(sorted(unknown))} (known: {', '.join(DETECTOR_NAMES)})")
        self.detectors = tuple(d for d in DETECTORS if d.name in names)
        self.names = tuple(d.name for d in self.detectors)

    def __bool__(self) -> bool:
        return bool(self.detectors)

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings in ``text``, in order."""
        if len(text) < MIN_LENGTH:
            return []
        found: list[Finding] = []
        for detector in self.detectors:
            for start, end in detector.spans(text):
                if not any(start < f.end and f.start < end for f in found):
                    found.append(Finding(detector.name, start, end))
        return sorted(found, key=lambda f: f.start)

    def scrub(self, text: str) -> tuple[str, list[str]]:
        """``text`` with each detected value replaced by its marker, and the names of the detectors that fired."""
        found = self.find(text)
        if not found:
            return text, []
        parts, position = [], 0
        for finding in found:
            parts.append(text[position : finding.start])
            parts.append(marker(finding.name))
            position = finding.end
        parts.append(text[position:])
        return "".join(parts), sorted({f.name for f in found})
