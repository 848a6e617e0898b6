"""The redactor's digests are exactly HMAC-SHA-256 (RFC 2104) of the domain and the data under the key.

``Redactor._mac`` computes them from precomputed inner and outer SHA-256 states (a speed-up, not a new construction);
these tests hold it to ``hmac.digest`` for every domain, key length and message length that matters.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.redaction import Redactor
from gateway.redaction.redactor import _ACTION_KEY_DOMAIN, _ARGS_DOMAIN, _BINDING_DOMAIN, _OUTPUT_DOMAIN


def expected(key: bytes, domain: bytes, data: bytes) -> str:
    return hmac.digest(key, domain + data, hashlib.sha256).hex()


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(bytes(32), id="zeros-32"),
        pytest.param(bytes(range(32)), id="32-bytes"),
        pytest.param(b"\xff" * 64, id="one-block"),
        pytest.param(bytes(range(65)), id="block-plus-one-hashed-first"),
        pytest.param(bytes(range(200)) * 2, id="400-bytes"),
    ],
)
@pytest.mark.parametrize("domain", [_ARGS_DOMAIN, _OUTPUT_DOMAIN, _ACTION_KEY_DOMAIN, _BINDING_DOMAIN])
@pytest.mark.parametrize("size", [0, 1, 55, 64, 65, 1000])
def test_mac_equals_hmac_digest(key: bytes, domain: bytes, size: int) -> None:
    redactor = Redactor.create(key, ["email"], hash_args=True)
    data = bytes(i % 251 for i in range(size))
    assert redactor._mac(domain, data) == expected(key, domain, data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=160), st.binary(max_size=300))
def test_mac_equals_hmac_digest_for_any_key_and_data(key: bytes, data: bytes) -> None:
    redactor = Redactor.create(key, [], hash_args=True)
    assert redactor._mac(_ARGS_DOMAIN, data) == expected(key, _ARGS_DOMAIN, data)
    # Repeated calls do not disturb the stored states.
    assert redactor._mac(_ARGS_DOMAIN, data) == expected(key, _ARGS_DOMAIN, data)


def test_public_digests_keep_their_documented_form() -> None:
    key = bytes(range(32))
    redactor = Redactor.create(key, [], hash_args=True)
    canonical = b'{"a":1}'
    message = b"t_1\nkb.search\n" + canonical
    assert redactor.digest(canonical) == "hmac-sha256:" + expected(key, _ARGS_DOMAIN, canonical)
    assert redactor.digest(canonical, output=True) == "hmac-sha256:" + expected(key, _OUTPUT_DOMAIN, canonical)
    assert redactor.action_key("t_1", "kb.search", canonical) == "ak_" + expected(key, _ACTION_KEY_DOMAIN, message)[:32]
    assert (
        redactor.approval_binding("t_1", "kb.search", canonical) == "ab_" + expected(key, _BINDING_DOMAIN, message)[:32]
    )
    assert Redactor.create(key, [], hash_args=False).digest(canonical) == ""
