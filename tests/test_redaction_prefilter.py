"""The joined prefilter (``ValueScanner.candidates``) never hides a string that ``find`` would find something in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.redaction.detectors import ValueScanner

SCANNER = ValueScanner()
# Shapes that open gates, benign shapes that close them, and the separator itself.
PIECES = st.sampled_from(
    [
        "ann@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "DE89370400440532013000", "Bearer abcdefgh12",
        "sk-proj-AbCdEfGhIjKlMnOpQr", "2024-01-15T10:00:00Z", "550e8400-e29b-41d4-a716-446655440000", "19.99",
        "ORD-20240115-0042", "1234567", "8", " ", "-", "@", "\x00", "eyJ", "٣٤٥٦٧٨٩٠",
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
