"""Redaction keeps JCS-normalised args normalised, so the recorder may encode the redacted copy without the checking
walk (``AuditRecorder.prepare``): for any normalised value, ``encode_normalised`` of the redacted copy equals
``canonical_json`` of it."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.api.validation import struct_to_json
from gateway.canonical import canonical_json, encode_normalised
from gateway.redaction import Redactor

REDACTOR = Redactor.create(bytes(32), ["email", "phone", "card_number", "*_token"], hash_args=True)
PIECES = st.sampled_from(
    ["ann@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "DE89370400440532013000",
     "sk-proj-AbCdEfGhIjKlMnOpQr", "é", "\U0001f600", "\ue001", "ß", "2024-01-15", "x"]
)  # fmt: skip
TEXT = st.lists(PIECES | st.text(max_size=5), max_size=4).map("".join)
KEYS = TEXT.filter(lambda k: k != "" and "\x00" not in k) | st.sampled_from(
    ["email", "customerEmail", "auth_token", "ann@example.com", "phone"]
)
VALUES = st.recursive(
    TEXT | st.booleans() | st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=16,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=5))
def test_the_redacted_copy_of_normalised_args_encodes_canonically(value: dict[str, Any]) -> None:
    message = struct_pb2.Struct()
    message.update(value)
    payload = struct_to_json(message, 32)  # what Decide hands the recorder, with its normalised flag
    assume(payload.normalised)
    _canonical, redacted, _paths = REDACTOR.prepare(payload.value, "args", normalised=payload.normalised)
    assert encode_normalised(redacted) == canonical_json(redacted)
