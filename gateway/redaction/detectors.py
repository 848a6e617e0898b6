"""Value detectors: PII and credentials recognised by shape, whatever key (or free text) they arrive under.

Each detector is a precompiled regex (cards: windows of digit groups) plus, where the shape alone is too loose,
a checksum: payment cards pass Luhn and start with a card-network digit (2-6, so epoch timestamps in ms or ns
never qualify), IBANs pass ISO 13616 mod-97. Phone numbers are only recognised in forms that carry a phone's
punctuation (a leading ``+`` with 8-15 digits, or 10-11 digits in 3-4 groups split by spaces, dots, dashes or a
bracketed area code): a bare run of digits is an order id or an epoch timestamp as often as a phone, so it is
left to the name rules.

Cost: a string shorter than six characters, or wholly an ISO 8601 date or time, a UUID or a decimal amount, is
never scanned; otherwise cheap gates (an ``@``; a credential prefix; at least 8 or 13 digits; two capitals and
two digits) are computed once per string and only the detectors whose gate is open run their regex.
A detected substring is replaced in place with ``[redacted:NAME]`` (which no detector matches again).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
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


def _bounded(match: re.Match[str], before: frozenset[str], after: frozenset[str]) -> bool:
    """The characters around a match are none of ``before`` / ``after`` (checked here rather than with
    lookarounds in the pattern, so that patterns start with a character class and the regex engine can skip
    ahead to candidate positions)."""
    text, start, end = match.string, match.start(), match.end()
    return (start == 0 or text[start - 1] not in before) and (end == len(text) or text[end] not in after)


_DIGITS = "0123456789"
_ASCII_WORD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
# The characters that may not touch a phone number, as sets built once (a check runs per candidate match).
_PLUS_BEFORE = frozenset(_ASCII_WORD + "+")
_PLUS_AFTER = frozenset(_ASCII_WORD + "-")
_NATIONAL_AROUND = frozenset(_ASCII_WORD + ".-/:")
_PHONE_PUNCTUATION = str.maketrans("", "", " -.()+")


# Patterns that run on every candidate string start with one character class (``\d\d*``, not ``\d+``; the phone
# alternatives factored behind one ``[+(\d]``): only then does the regex engine skip, in C, the positions that
# cannot start a match, instead of trying the whole pattern at each (about twice as fast on a sentence).
_DIGIT_RUN = re.compile(r"\d\d*(?:[ \-]\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")


def _card_spans(text: str) -> list[tuple[int, int]]:
    """Card numbers: within each run of digit groups (split by single spaces or dashes), the first window of
    whole groups holding 13-19 digits that starts with a network digit (2-6) and passes Luhn. Windows, not the
    whole run, so a card followed by its CVV (``4111 1111 1111 1111 123``) is still found."""
    spans = []
    for run in _DIGIT_RUN.finditer(text):
        start, end = run.span()
        if end - start - text.count(" ", start, end) - text.count("-", start, end) < 13:
            continue  # fewer than 13 digits in the whole run: no window can hold a card number
        decimal = text[end : end + 1] == "." and text[end + 1 : end + 2].isdigit()
        if (start and text[start - 1] in "-.") or text[end : end + 1] == "-" or decimal:
            continue  # part of an id (ORD-4111...) or of a decimal; a sentence's full stop after it is fine
        groups = [g.span() for g in _DIGIT_GROUP.finditer(text, run.start(), run.end())]
        i = 0
        while i < len(groups):
            total, j = 0, i
            while j < len(groups):
                total += groups[j][1] - groups[j][0]
                if total > 19:
                    break
                if total >= 13:
                    digits = _DIGIT_GROUP.findall(text, groups[i][0], groups[j][1])
                    number = "".join(digits)
                    if number[0] in "23456" and _luhn(number):
                        break
                j += 1
            if j < len(groups) and 13 <= total <= 19:
                spans.append((groups[i][0], groups[j][1]))
                i = j + 1
            else:
                i += 1
    return spans


def _iban(match: re.Match[str]) -> bool:
    compact = match.group().replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    international = text[0] == "+"
    if not (
        _bounded(match, _PLUS_BEFORE, _PLUS_AFTER)
        if international
        else _bounded(match, _NATIONAL_AROUND, _NATIONAL_AROUND)
    ):
        return False
    # The pattern admits only digits (any script's, as \\d does) and this punctuation: removing it leaves the digits.
    digits = len(text.translate(_PHONE_PUNCTUATION))
    return 8 <= digits <= 15 if international else 10 <= digits <= 11


@dataclass(frozen=True)
class Detector:
    """One kind of sensitive value: the cheap gate it needs, a pattern and an optional check of each match."""

    name: str
    gate: str  # which of the gates computed once per string (``ValueScanner.find``) must be open
    pattern: re.Pattern[str] | Callable[[str], list[tuple[int, int]]]
    check: Callable[[re.Match[str]], bool] | None = None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where this detector finds values in ``text`` (whether its gate is open is the caller's business).

        A match its check rejects is retried one character later, so a rejected candidate cannot hide a real
        value that starts inside it."""
        if not isinstance(self.pattern, re.Pattern):
            return self.pattern(text)
        found, position = [], 0
        while (match := self.pattern.search(text, position)) is not None:
            if self.check is None or self.check(match):
                found.append(match.span())
                position = match.end()
            else:
                position = match.start() + 1
        return found


# The gates: one C-level operation each per string, deciding which detectors run at all. Digits are counted
# on bytes (latin-1, the rest dropped: only ASCII digits count), keeping only the digits: one C-level pass.
_NOT_DIGIT = bytes(b for b in range(256) if b not in b"0123456789")
_IBAN_GATE = re.compile(r"[A-Z][A-Z]\d\d")
# Every alternative starts with a literal, so the regex engine skips straight to the positions they start at.
_CREDENTIAL_GATE = re.compile(r"Bearer|sk[-_]|rk[-_]|gh[pousr]_|github_pat_|xox|AKIA|ASIA|-----BEGIN|eyJ")
# A whole string of one of these shapes holds no detectable value: the commonest business strings skip everything.
_BENIGN = re.compile(
    r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?(?:Z|[+\-]\d\d:?\d\d)?)?"  # ISO 8601 date or time
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|-?\d{1,12}\.\d{1,6}"  # an amount (not a bare integer: that may be a card number)
)

# The same gates for many strings at once, joined by a separator no gate can match across (none of these
# patterns matches it). The digit gate: one encode and one translate keep the digits and the separators, and a
# split gives each string's digit count. The "@" / credential gate: one substring test, one search of a looser
# credential gate (each alternative is a part of one of ``_CREDENTIAL_GATE``'s, chosen to start with a rarer
# character, so the engine stops at fewer positions), and only when either opens, which strings hold it.
_SEPARATOR = "\x00"
_FEW_TEXTS = 3  # up to this many texts, each goes straight to ``_found`` (see ``ValueScanner.scan``)
_NOT_DIGIT_OR_SEPARATOR = bytes(b for b in range(256) if b not in b"0123456789\x00")


def _shape_table(keep: bytes, to_nine: bytes) -> bytes:
    """A ``bytes.translate`` table: ``to_nine`` to ``9``, ``keep`` and the separator kept, every other byte to ``?``."""
    return bytes(
        ord("9") if b in to_nine else b if b in keep or b == 0 else ord("?") for b in range(256)
    )  # fmt: skip


# ``_BENIGN`` for many strings at once, by shape rather than by regex: the joined text's UTF-8 bytes translated
# once so that ASCII digits become ``9`` (and, for UUIDs, hex letters too) and every byte no benign shape has
# becomes ``?`` (so do the bytes of non-ASCII characters: a string holding one is never taken for benign); a
# string is benign when its shape is one of the finitely many a date, a time or an amount can take, or the one
# shape of a UUID. ``tests/test_redaction_prefilter.py`` checks the shapes against ``_BENIGN``.
_DATE_SHAPE_TABLE = _shape_table(b"-:.+TZ ", b"0123456789")
_UUID_SHAPE_TABLE = _shape_table(b"-", b"0123456789abcdefABCDEF")
_UUID_SHAPE = b"99999999-9999-9999-9999-999999999999"


def _benign_shapes() -> frozenset[bytes]:
    times = [b"99:99", b"99:99:99", *(b"99:99:99." + b"9" * n for n in range(1, 10))]
    zones = [b"", b"Z", b"+99:99", b"+9999", b"-99:99", b"-9999"]
    dates = [b"9999-99-99", *(b"9999-99-99" + sep + t + z for sep in (b"T", b" ") for t in times for z in zones)]
    amounts = [sign + b"9" * i + b"." + b"9" * f for sign in (b"", b"-") for i in range(1, 13) for f in range(1, 7)]
    return frozenset(dates + amounts)


BENIGN_SHAPES = _benign_shapes()
_LOOSE_CREDENTIAL_GATE = re.compile(r"B(?:earer|EGIN)|k[-_]|h[pousr]_|_pat_|xox|A(?:KIA|SIA)|yJ")
_GATE_8_DIGITS, _GATE_13_DIGITS, _GATE_AT, _GATE_CREDENTIAL, _GATE_IBAN = range(5)
_GATE_CODES = {
    "8 digits": _GATE_8_DIGITS,
    "13 digits": _GATE_13_DIGITS,
    "at": _GATE_AT,
    "credential": _GATE_CREDENTIAL,
    "iban": _GATE_IBAN,
}

# Order matters: earlier detectors claim their spans first (a card number is not also reported as a phone).
DETECTORS: tuple[Detector, ...] = (
    Detector(
        CREDENTIALS,
        "credential",
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
    Detector(EMAIL, "at", re.compile(r"[\w.%+'\-]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}")),
    Detector(
        IBAN,
        "iban",
        re.compile(r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)\b"),
        _iban,
    ),
    Detector(CARD, "13 digits", _card_spans),
    Detector(
        PHONE,
        "8 digits",
        # "+" and 8-15 digits; an area code in brackets or 2-4 digits, then two groups; 0 and five pairs. The
        # first character is matched once and each alternative checks it with a lookbehind (see _DIGIT_RUN).
        re.compile(
            r"[+(\d](?:"
            r"(?<=\+)\d[\d \-.()]{6,20}\d"
            r"|(?<=\()\d{2,4}\) ?\d{3,4}[ \-.]\d{3,4}"
            r"|(?<=\d)\d{1,3}[ \-.]\d{3,4}[ \-.]\d{3,4}"
            r"|(?<=0)\d(?:[ .\-]\d{2}){4}"
            r")"
        ),
        _phone,
    ),
)


def _segments_holding(joined: str, needle: str) -> list[int]:
    """Which ``_SEPARATOR``-delimited segments of ``joined`` (which starts with one) hold ``needle`` (C-level finds)."""
    found: list[int] = []
    separators, counted_to = 0, 0
    position = joined.find(needle)
    while position != -1:
        separators += joined.count(_SEPARATOR, counted_to, position)
        counted_to = position
        found.append(separators - 1)
        position = joined.find(needle, joined.index(_SEPARATOR, position))  # the next segment on
    return found


def _segments(joined: str, gate: re.Pattern[str]) -> list[int]:
    """Which ``_SEPARATOR``-delimited segments of ``joined`` (which starts with one) ``gate`` matches in."""
    found: list[int] = []
    separators, counted_to, position = 0, 0, 0
    while (match := gate.search(joined, position)) is not None:
        separators += joined.count(_SEPARATOR, counted_to, match.start())
        counted_to = match.start()
        found.append(separators - 1)
        position = joined.index(_SEPARATOR, match.end())  # one match is enough: find looks at the whole text
    return found


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
        # What ``_found`` runs per detector, in order: its gate as a small int, its bound ``spans``, its name.
        self._plan = tuple((_GATE_CODES[d.gate], d.spans, d.name) for d in self.detectors)

    def __bool__(self) -> bool:
        return bool(self.detectors)

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings in ``text``, in order."""
        return [Finding(name, start, end) for start, end, name in self._found(text)]

    def _found(self, text: str, digits: int = -1, keyed: bool = True) -> list[tuple[int, int, str]]:
        """``find``'s findings as ``(start, end, name)`` tuples, in order. From ``scan``, what its prefilter knows
        already: ``digits``, the ASCII digits in ``text``, and ``keyed`` false when ``text`` holds neither an
        ``@`` nor a credential prefix."""
        if len(text) < MIN_LENGTH:
            return []
        if digits < 0:
            digits = len(text.encode("latin-1", "ignore").translate(None, _NOT_DIGIT))
        if keyed:
            at = "@" in text
            # The loose gate first: its alternatives start with rarer characters, and a string it does not match
            # holds no credential prefix (each strict alternative contains a loose one).
            credential = _LOOSE_CREDENTIAL_GATE.search(text) is not None and _CREDENTIAL_GATE.search(text) is not None
        else:
            at = credential = False
        if not (at or credential) and (digits < 8 or _BENIGN.fullmatch(text)):
            return []  # the common case, decided in a few C-level operations
        found: list[tuple[int, int, str]] = []
        for gate, spans, name in self._plan:
            if gate == _GATE_8_DIGITS:
                if digits < 8:
                    continue
            elif gate == _GATE_13_DIGITS:
                if digits < 13:
                    continue
            elif gate == _GATE_AT:
                if not at:
                    continue
            elif gate == _GATE_CREDENTIAL:
                if not credential:
                    continue
            elif digits < 8 or _IBAN_GATE.search(text) is None:  # the IBAN gate
                continue
            for start, end in spans(text):
                for claimed_start, claimed_end, _ in found:
                    if start < claimed_end and claimed_start < end:
                        break  # an earlier detector claimed (part of) it
                else:
                    found.append((start, end, name))
        if len(found) > 1:
            found.sort()  # spans do not overlap, so by start
        return found

    def candidates(self, texts: Sequence[str]) -> list[int]:
        """Indices of the ``texts`` that ``find`` may find something in, in order; the others hold nothing.

        A superset of ``find``'s own gates (an ``@``, a credential prefix, or 8 digits in a string that is not
        wholly benign), decided by a few C-level passes over all the texts joined instead of Python-level work
        per string: most of a payload's strings are ids, dates and amounts that no detector needs to see.
        """
        return [index for index, _, _ in self._candidates(texts)]

    def _candidates(self, texts: Sequence[str]) -> list[tuple[int, int, bool]]:
        """``candidates`` with what ``_found`` need not work out again: each one's count of ASCII digits, and
        whether it may hold an ``@`` or a credential prefix."""
        joined = _SEPARATOR + _SEPARATOR.join(texts) + _SEPARATOR
        if joined.count(_SEPARATOR) != len(texts) + 1:
            # A text holds the separator itself: the segments would not line up. Every text is a candidate.
            return [(i, -1, True) for i in range(len(texts))]
        raw = joined.encode("utf-8", "surrogatepass")
        counts = list(map(len, raw.translate(None, _NOT_DIGIT_OR_SEPARATOR).split(b"\x00")))
        shapes = raw.translate(_DATE_SHAPE_TABLE).split(b"\x00")
        uuids = raw.translate(_UUID_SHAPE_TABLE).split(b"\x00")
        found = [
            (i - 1, digits, False)
            for i, digits in enumerate(counts)
            if digits >= 8 and shapes[i] not in BENIGN_SHAPES and uuids[i] != _UUID_SHAPE
        ]
        # The segments with an "@" by plain finds, those with a credential prefix by the loose gate (a superset of
        # the strict one, much cheaper over long text): only a few strings hold either.
        held = _segments(joined, _LOOSE_CREDENTIAL_GATE)
        if "@" in joined:
            held += _segments_holding(joined, "@")
        if not held:
            return found
        keyed = set(held)
        found = [(i, digits, False) for i, digits, _ in found if i not in keyed]
        found += [(i, counts[i + 1], True) for i in keyed]
        found.sort()
        return found

    def scan(self, texts: Sequence[str]) -> list[tuple[int, str, list[str]]]:
        """The ``texts`` a detector fires on, in order: each one's index, its scrubbed form (see ``scrub``) and the
        names of the detectors that fired. One prefilter over all of them (``candidates``), then each candidate
        scanned with what the prefilter learnt about it."""
        scrubbed = []
        # A few texts (labels, small args) cost less through ``_found``'s own gates than through the prefilter.
        candidates = self._candidates(texts) if len(texts) > _FEW_TEXTS else [(i, -1, True) for i in range(len(texts))]
        for index, digits, keyed in candidates:
            text = texts[index]
            found = self._found(text, digits, keyed)
            if found:
                scrubbed.append((index, _replaced(text, found), sorted({name for _, _, name in found})))
        return scrubbed

    def scrub(self, text: str) -> tuple[str, list[str]]:
        """``text`` with each detected value replaced by its marker, and the names of the detectors that fired."""
        found = self._found(text)
        if not found:
            return text, []
        return _replaced(text, found), sorted({name for _, _, name in found})


def _replaced(text: str, found: list[tuple[int, int, str]]) -> str:
    """``text`` with each finding (in order, not overlapping) replaced by its detector's marker."""
    parts, position = [], 0
    for start, end, name in found:
        parts.append(text[position:start])
        parts.append(marker(name))
        position = end
    parts.append(text[position:])
    return "".join(parts)
