"""The fast paths of redaction change nothing: the joined prefilter (``ValueScanner.candidates``) never hides a string
that ``find`` would find something in, and a whole redaction equals a straightforward reference implementation."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.redaction import FieldMatcher, Redactor
from gateway.redaction.detectors import _BENIGN, _UUID_SHAPE, BENIGN_SHAPES, DETECTORS, ValueScanner

SCANNER = ValueScanner()
# Shapes that open gates, benign shapes that close them, and the separator itself.
PIECES = st.sampled_from(
    [
        "ann@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "DE89370400440532013000", "Bearer abcdefgh12",
        "sk-proj-AbCdEfGhIjKlMnOpQr", "2024-01-15T10:00:00Z", "550e8400-e29b-41d4-a716-446655440000", "19.99",
        "ORD-20240115-0042", "1234567", "8", " ", "-", "@", "\x00", "eyJ", "٣٤٥٦٧٨٩٠", "+12345678", "a@b.co",
        "GB82 WEST 1234 5698 7654 32", "ghp_a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2", "AKIAIOSFODNN7EXAMPLE",
    ]
)  # fmt: skip
TEXTS = st.lists(st.lists(PIECES | st.text(max_size=8), max_size=5).map("".join), max_size=8)


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_every_string_find_reports_on_is_a_candidate(texts: list[str]) -> None:
    candidates = set(SCANNER.candidates(texts))
    assert {i for i, text in enumerate(texts) if SCANNER.find(text)} <= candidates


def test_benign_strings_are_not_candidates() -> None:
    texts = ["2024-01-15T10:00:00Z", "550e8400-e29b-41d4-a716-446655440000", "19.99", "SKU-10000-XL", "Ann Smith"]
    assert SCANNER.candidates(texts) == []


def test_candidates_name_the_strings_with_an_open_gate_in_order() -> None:
    texts = ["ok", "call +44 20 7946 0958", "2024-01-15", "ann@example.com", "plain"]
    assert SCANNER.candidates(texts) == [1, 3]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        PIECES | st.text(max_size=12) | st.sampled_from(["\ud800", "\u0663" * 9, "2024-01-15\u0663"]),
        min_size=4,
        max_size=14,
    )
)
def test_a_scan_of_many_texts_equals_scrubbing_each(texts: list[str]) -> None:
    # Past a few texts, scan goes through the joined prefilter and hands _found what it learnt (digits, no "@").
    expected = [(i, *SCANNER.scrub(text)) for i, text in enumerate(texts) if SCANNER.scrub(text)[1]]
    assert SCANNER.scan(texts) == expected


ASCII_BENIGN = st.from_regex(_BENIGN, fullmatch=True).filter(str.isascii)


def _shape(text: str) -> bytes:
    return bytes(ord("9") if c.isdigit() else ord(c) if c in "-:.+TZ " else ord("?") for c in text)


@settings(max_examples=300, deadline=None)
@given(ASCII_BENIGN)
def test_every_ascii_benign_string_has_a_benign_shape(text: str) -> None:
    uuid = bytes(ord("9") if c in "0123456789abcdefABCDEF" else ord(c) for c in text)
    assert _shape(text) in BENIGN_SHAPES or uuid == _UUID_SHAPE


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(BENIGN_SHAPES)), st.randoms())
def test_every_benign_shape_is_benign(shape: bytes, rng: object) -> None:
    text = "".join(str(rng.randrange(10)) if b == ord("9") else chr(b) for b in shape)  # type: ignore[attr-defined]
    assert _BENIGN.fullmatch(text)


def test_the_benign_shapes_are_not_taken_for_other_strings() -> None:
    texts = [
        "2024-01-15T10:00:00Z",
        "2024-01-15T10:00:00Y",
        "2024-01-15 ann@x.io",
        "550e8400-e29b-41d4-a716-44665544000g",
    ]
    texts += ["\u0663\u0664\u0665\u0666-01-15", "1234567890.5", "1234567890123.5"]
    assert SCANNER.candidates(texts) == [1, 2, 3, 6]


# --- the whole fast path against a straightforward reference -------------------------------------------------------
#
# The reference shares only what defines a detector (its pattern and check, ``Detector.spans``) and the name rules
# (``FieldMatcher``). Everything the fast path adds for speed is absent from it: no joined prefilter, no benign
# shapes, no gates beyond each detector's documented digit requirement (counted by hand), no length floor, no
# caches; a recursive walk; every string scanned by every detector.

RULES = ("email", "phone", "card_number")
_REQUIRED_DIGITS = {"card": 13, "phone": 8, "iban": 8}  # ASCII digits a string needs for the detector to run


def reference_scrub(text: str) -> tuple[str, list[str]]:
    digits = sum(char in "0123456789" for char in text)
    claimed: list[tuple[int, int, str]] = []
    for detector in DETECTORS:
        if digits < _REQUIRED_DIGITS.get(detector.name, 0):
            continue
        for start, end in detector.spans(text):
            if all(end <= s or e <= start for s, e, _ in claimed):
                claimed.append((start, end, detector.name))
    out, position = "", 0
    for start, end, name in sorted(claimed):
        out += text[position:start] + f"[redacted:{name}]"
        position = end
    return out + text[position:], sorted({name for _, _, name in claimed})


def reference_redact(value: object, path: str, matcher: FieldMatcher, found: list[str]) -> object:
    if isinstance(value, str):
        text, names = reference_scrub(value)
        found.extend(f"{path}#{name}" for name in names)
        return text
    if isinstance(value, list):
        return [reference_redact(child, f"{path}[{i}]", matcher, found) for i, child in enumerate(value)]
    if not isinstance(value, dict):
        return value
    out: dict[str, object] = {}
    for key, child in value.items():
        shown, names = reference_scrub(key)
        if names:
            while shown in out or shown in value:
                shown += "~"
            found.extend(f"{path}.{shown}#{name}" for name in names)
        rule = matcher._rule_for(key)
        if rule is not None:
            found.append(f"{path}.{shown}")
        else:
            out[shown] = reference_redact(child, f"{path}.{shown}", matcher, found)
    return out


REFERENCE_KEYS = st.sampled_from(
    ["id", "note", "email", "customerEmail", "phone_number", "emails", "card_no", "ann@example.com",
     "[redacted:email]", "bob@example.org", "+15557654321", "items"]
) | st.text(max_size=6)  # fmt: skip
STRINGS = st.lists(PIECES | st.text(max_size=8), max_size=4).map("".join)
SCALARS = STRINGS | st.integers() | st.floats(allow_nan=False) | st.booleans() | st.none()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(REFERENCE_KEYS, inner, max_size=4),
    max_leaves=24,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(REFERENCE_KEYS, VALUES, max_size=6) | st.lists(VALUES, max_size=4) | STRINGS)
@example({"phone": "+12345678", "x": ["+12345678", "a@b.co"], "a@b.co": {"[redacted:email]": "sk-proj-AbCdEfGhIjKl"}})
@example(["2024-01-15T10:00:00Z", "4111 1111 1111 1111 123", "+1234567", "GB82 WEST 1234 5698 7654 32"])
def test_redaction_equals_the_straightforward_reference(value: object) -> None:
    redactor = Redactor.create(bytes(32), RULES, hash_args=True)
    expected_paths: list[str] = []
    expected = reference_redact(value, "args", FieldMatcher(RULES), expected_paths)
    result = redactor.redact(value, "args")
    assert result.value == expected
    assert result.paths == sorted(set(expected_paths))
    # Twice: the remembered key decisions give the same answer as fresh ones.
    assert redactor.redact(value, "args").value == expected
