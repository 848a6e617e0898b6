"""The console's pure read-model helpers: the args table, cursors, CSV cells, chart bars."""

from __future__ import annotations

import pytest

from gateway.console import pages


def test_the_args_table_lists_each_leaf_and_what_redacted_it() -> None:
    rows = pages.arg_rows(
        {"amount": 250, "customer": {}, "note": "call [redacted:phone]", "items": [{"sku": "a"}]},
        ("args.customer.email", "args.note#phone"),
    )
    assert [(r.path, r.value, r.redacted_by) for r in rows] == [
        ("args.amount", "250", ""),
        ("args.customer.email", "(removed)", "name rule (email)"),
        ("args.items[0].sku", "a", ""),
        ("args.note", "call [redacted:phone]", "detector phone"),
    ]


def test_an_empty_object_not_emptied_by_redaction_is_shown() -> None:
    assert [(r.path, r.value) for r in pages.arg_rows({"opts": {}}, ())] == [("args.opts", "{}")]


@pytest.mark.parametrize("cursor", [(1, "o", 2), (1_800_000_000_000_000_000, "agentaudit-dev/h/ab\n=", 0)])
def test_a_search_cursor_survives_the_url(cursor: tuple[int, str, int]) -> None:
    assert pages.decode_cursor(pages.encode_cursor(cursor)) == cursor


@pytest.mark.parametrize("text", ["", "not-base64!", "aGVsbG8"])
def test_a_cursor_that_is_not_ours_is_ignored(text: str) -> None:
    assert pages.decode_cursor(text) is None


@pytest.mark.parametrize(
    ("text", "cell"),
    [("=1+1", "'=1+1"), ("+x", "'+x"), ("-2", "'-2"), ("@a", "'@a"), ("ok", "ok"), ("", "")],
)
def test_csv_cells_never_start_a_formula(text: str, cell: str) -> None:
    assert pages._cell(text) == cell


def test_chart_bars_stack_outcomes_to_the_busiest_bucket() -> None:
    bars = pages.chart_bars([{"allow": 2, "stop": 2}, {}, {"allow": 1}], ("allow", "stop"), 300, 100)
    assert [(b["bucket"], b["outcome"], b["h"]) for b in bars] == [(0, "allow", 50.0), (0, "stop", 50.0),
                                                                   (2, "allow", 25.0)]  # fmt: skip
    assert bars[1]["y"] == 0.0 and bars[2]["y"] == 75.0


def test_times_in_the_url_are_utc_minutes() -> None:
    assert pages.parse_time("2026-12-02T10:30") == 1_796_207_400 * 10**9
    assert pages.parse_time("") is None
    with pytest.raises(ValueError, match="YYYY-MM-DDTHH:MM"):
        pages.parse_time("yesterday")
