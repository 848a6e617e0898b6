"""The collector's indexed column values (``storable_indexed_values``): text no column can hold (NUL, a lone
surrogate) is indexed as NULL, and the shortcut taken from the body's bytes (ASCII without a ``\\u`` escape:
nothing to look at) never changes a value."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.collector.ingest import is_storable_text, storable_indexed_values
from gateway.journal.schema import INDEXED_FIELDS, indexed_values

TEXT_FIELDS = [field for field, column in INDEXED_FIELDS if column != "step_id"]
# Plain ASCII mostly, with NUL, other control characters, non-ASCII, high planes and lone surrogates drawn too.
any_text = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=6)
texts = any_text | st.sampled_from(
    ["", "tenant-1", "a\x00b", "\x00", "caf\u00e9", "\ud800", "x\udfff", "\U0001f600", "\\u0000"]
)
bodies = st.fixed_dictionaries(
    {},
    optional={**{field: texts for field in TEXT_FIELDS}, "step_id": st.integers(-(2**64), 2**64) | texts},
)


def expected(body: dict[str, object]) -> tuple[object, ...]:
    return tuple(None if isinstance(v, str) and not is_storable_text(v) else v for v in indexed_values(body))


@settings(max_examples=500, deadline=None)
@given(bodies)
def test_values_from_any_spelling_of_the_body_are_the_storable_ones(body: dict[str, object]) -> None:
    want = expected(body)
    assert storable_indexed_values(body) == want
    # Both ways the bytes may be spelt: escaped (ASCII with \u) and raw UTF-8 where encodable.
    spellings = [json.dumps(body, ensure_ascii=True).encode()]
    with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate has no UTF-8 form
        spellings.append(json.dumps(body, ensure_ascii=False).encode("utf-8"))
    for source in spellings:
        assert storable_indexed_values(body, source) == want, source


def test_nul_and_surrogates_behind_escapes_are_never_indexed() -> None:
    body = {"tenant_id": "a\x00b", "agent_id": "\ud800", "action": "ok", "step_id": 3}
    source = json.dumps(body).encode()
    assert source.isascii() and b"\\u" in source
    values = dict(zip([f for f, _ in INDEXED_FIELDS], storable_indexed_values(body, source), strict=True))
    assert (values["tenant_id"], values["agent_id"], values["action"], values["step_id"]) == (None, None, "ok", 3)
