"""Which keys ``audit.redact_fields`` names: rules matched on a normalised form of each key, not its spelling.

Agents spell one field many ways (``customer_email``, ``emailAddress``, ``e-mail``, ``CARD_NUMBER``,
fullwidth ``EMAIL``), so a key is first normalised:

1. Unicode NFKC (fullwidth and compatibility forms become their plain letters);
2. split into words at every non-alphanumeric character (``_ - . space`` and any other punctuation), at
   camelCase boundaries, at the end of an acronym (``HTTPAuthToken`` → ``http auth token``,
   ``userEMailAddr`` → ``user e mail addr``) and between letters and digits (``phone2`` → ``phone 2``);
3. each word case-folded (``ß`` → ``ss``).

A rule is one of three forms:

- **plain** (``email``, ``card_number``): normalised the same way; it matches when some run of adjacent key words,
  joined, spells the rule's words joined (``card_number`` matches ``cardNumber``, ``card-number``,
  ``billing_card_number`` and ``cardnumber``; ``email`` matches ``e-mail`` and ``userEMailAddr``) or that plus a
  plural ``s`` (``emails``). Runs start and end at word boundaries, so ``email`` never matches ``emailer``, and
  ``phone`` never matches ``iphone``. A few synonyms ride along (``SYNONYMS``): ``phone`` also means ``mobile``
  and ``telephone``; ``card_number`` also ``card_no`` and ``cc_number``.
- **exact** (``exact:email``): the whole key, NFKC-normalised and case-folded, equals the rest of the rule.
- **glob** (any rule with ``*``, ``?`` or ``[``: ``*_token``, ``secret*``): matched (``fnmatch``) against the key's
  words joined with ``_`` (``HTTPAuthToken`` → ``http_auth_token``); the pattern is case-folded and its ``-``,
  ``.`` and spaces read as ``_``.

The table of examples users read is in docs/policy.md ("Redaction"); tests/test_redaction_names.py checks it.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

EXACT_PREFIX = "exact:"
# Kept small on purpose: each synonym is a field name people expect a default rule to cover.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "phone": ("mobile", "telephone"),
    "card_number": ("card_no", "cc_number"),
}
_MAX_RUN_WORDS = 6  # longer rules are split into at most this many words; runs beyond it are never needed
_KEY_CACHE = 8192  # distinct keys remembered (bounded: keys come from agents)
_GLOB_CHARS = frozenset("*?[")
_PATTERN_SEPARATORS = re.compile(r"[\-. ]")


def _char_class(char: str) -> str:
    if char.isdigit():
        return "digit"
    if char.isupper():
        return "upper"
    if char.isalpha() or unicodedata.category(char) in ("Mn", "Mc"):
        return "lower"  # caseless letters (CJK, marks) join the word they are in
    return "separator"


@lru_cache(maxsize=_KEY_CACHE)
def key_words(key: str) -> tuple[str, ...]:
    """The normalised words of a key (see the module docstring)."""
    text = unicodedata.normalize("NFKC", key)
    words: list[str] = []
    current: list[str] = []
    classes = [_char_class(c) for c in text]
    for i, (char, kind) in enumerate(zip(text, classes, strict=True)):
        if kind == "separator":
            if current:
                words.append("".join(current))
                current = []
            continue
        if current:
            previous = classes[i - 1]
            following = classes[i + 1] if i + 1 < len(classes) else "separator"
            boundary = (
                (previous == "digit") != (kind == "digit")  # letters ↔ digits
                or (previous == "lower" and kind == "upper")  # camelCase
                or (previous == "upper" and kind == "upper" and following == "lower")  # end of an acronym
            )
            if boundary:
                words.append("".join(current))
                current = []
        current.append(char)
    if current:
        words.append("".join(current))
    return tuple(w.casefold() for w in words)


def normalised_key(key: str) -> str:
    """The key's words joined with ``_`` (what glob rules match against)."""
    return "_".join(key_words(key))


def _joined_runs(words: tuple[str, ...]) -> list[str]:
    """Every run of adjacent words, joined, longest-first from each start (deterministic: the reported rule)."""
    return [
        "".join(words[start:end])
        for start in range(len(words))
        for end in range(min(len(words), start + _MAX_RUN_WORDS), start, -1)
    ]


class FieldMatcher:
    """Decides, per key, which ``redact_fields`` rule (if any) names it; answers are cached per key (bounded)."""

    def __init__(self, rules: Iterable[str]) -> None:
        self.rules = tuple(dict.fromkeys(r.strip() for r in rules if r.strip()))
        self._plain: dict[str, str] = {}  # joined words → the rule that introduced them
        self._exact: dict[str, str] = {}
        self._globs: list[tuple[str, str]] = []
        for rule in self.rules:
            if rule.lower().startswith(EXACT_PREFIX):
                self._exact.setdefault(unicodedata.normalize("NFKC", rule[len(EXACT_PREFIX) :]).casefold(), rule)
            elif _GLOB_CHARS & set(rule):
                pattern = _PATTERN_SEPARATORS.sub("_", unicodedata.normalize("NFKC", rule).casefold())
                self._globs.append((pattern, rule))
            else:
                for spelling in (rule, *SYNONYMS.get(normalised_key(rule), ())):
                    joined = "".join(key_words(spelling))
                    if joined:
                        self._plain.setdefault(joined, rule)
        self.rule_for = lru_cache(maxsize=_KEY_CACHE)(self._rule_for)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _rule_for(self, key: str) -> str | None:
        """The rule naming ``key``, or None."""
        if self._exact:
            rule = self._exact.get(unicodedata.normalize("NFKC", key).casefold())
            if rule is not None:
                return rule
        words = key_words(key)
        if self._plain and words:
            for run in _joined_runs(words):
                rule = self._plain.get(run) or (self._plain.get(run[:-1]) if run.endswith("s") else None)
                if rule is not None:
                    return rule
        if self._globs:
            joined = "_".join(words)
            for pattern, rule in self._globs:
                if fnmatch.fnmatchcase(joined, pattern):
                    return rule
        return None
