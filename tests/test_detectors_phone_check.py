"""The phone detector's check (``detectors._phone``, rewritten with precomputed sets) accepts exactly the matches the
original check accepted, and its pattern and the digit-run pattern (rewritten to start with one character class)
match exactly where the originals did. The originals are copied here verbatim, since the whole-redaction reference
test shares the detectors' own patterns and checks and so cannot catch a change in one."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.redaction import detectors
from gateway.redaction.detectors import DETECTORS

_ASCII_WORD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
PHONE = next(d for d in DETECTORS if d.name == "phone")
assert isinstance(PHONE.pattern, re.Pattern)


def original_bounded(match: re.Match[str], before: str, after: str) -> bool:
    text, start, end = match.string, match.start(), match.end()
    return (start == 0 or text[start - 1] not in before) and (end == len(text) or text[end] not in after)


def original_phone(match: re.Match[str]) -> bool:
    text = match.group()
    if text.startswith("+"):
        if not original_bounded(match, _ASCII_WORD + "+", _ASCII_WORD + "-"):
            return False
    elif not original_bounded(match, _ASCII_WORD + ".-/:", _ASCII_WORD + ".-/:"):
        return False
    digits = len(text) - sum(text.count(c) for c in " -.()+")
    return 8 <= digits <= 15 if text.startswith("+") else 10 <= digits <= 11


PIECES = st.sampled_from(
    ["+44 20 7946 0958", "(020) 7946 0958", "020.7946.0958", "06 12 34 56 78", "+1234567", "+123456789012345678",
     "٣٤٥٦٧٨٩٠١٢", "+٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨", "a", "_", "-", ".", "/", ":", "+", " ", "(", ")", "5", "12", "x9"]
)  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.lists(PIECES | st.text(alphabet="0123456789 -.()+aZ_:/", max_size=6), max_size=7).map("".join))
@example("call +44 20 7946 0958.")
@example("+٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨")
@example("x+4420794609")
def test_the_check_accepts_what_the_original_accepted(text: str) -> None:
    position = 0
    while (match := PHONE.pattern.search(text, position)) is not None:
        assert detectors._phone(match) == original_phone(match), match
        position = match.start() + 1


ORIGINAL_PHONE_PATTERN = re.compile(
    r"\+\d[\d \-.()]{6,20}\d|(?:\(\d{2,4}\) ?|\d{2,4}[ \-.])\d{3,4}[ \-.]\d{3,4}|0\d(?:[ .\-]\d{2}){4}"
)
ORIGINAL_DIGIT_RUN = re.compile(r"\d+(?:[ \-]\d+)*")


@settings(max_examples=1000, deadline=None)
@given(st.lists(PIECES | st.text(alphabet="0123456789 -.()+aZ_:/٣", max_size=6), max_size=7).map("".join))
@example("(020) 7946 0958 and 06 12 34 56 78")
def test_the_patterns_match_where_the_originals_did(text: str) -> None:
    for position in range(len(text) + 1):
        old, new = ORIGINAL_PHONE_PATTERN.search(text, position), PHONE.pattern.search(text, position)
        assert (old and old.span()) == (new and new.span()), (text, position)
    runs = [m.span() for m in detectors._DIGIT_RUN.finditer(text)]
    assert runs == [m.span() for m in ORIGINAL_DIGIT_RUN.finditer(text)]
