"""Which fast body answer a checker uses (the stdlib's or orjson's, gateway/canonical.py) changes its speed, never
what it finds: real entries, v1 and v2, with any byte changed, removed or added anywhere, or a body spelt anew, are
checked both ways and must give the same outcome, problem for problem."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.canonical import bulk_parse_canonical, canonical_json, parse_canonical
from gateway.journal.check import check_entry
from gateway.journal.entry import HEADER_SIZE, EventKind, decode_entry, encode_entry
from gateway.journal.schema import indexed_values
from gateway.journal.writer import JournalWriter
from tests.journal_helpers import fixed_signer

SIGNER = fixed_signer()
KEYS = {SIGNER.verifier.key_id: [SIGNER.verifier]}
BODIES = [
    {"kind": "pre_exec", "event_id": "evt_1", "run_id": "r", "step_id": 3, "args": {"q": "résumé", "n": [1, 2]}},
    {"kind": "pre_exec", "event_id": "evt_2", "labels": {"k": "\u2028\x7f\x00"}, "ok": True, "none": None},
    {"kind": "pre_exec", "event_id": "evt_3", "nested": [[[{"deep": "x" * 40}]]], "big": 2**53 - 1},
]


def written(tmp: Path, signing: str) -> list[tuple[int, bytes, bytes]]:
    path = tmp / f"{signing}.db"

    async def append_all() -> None:
        writer = JournalWriter(path, SIGNER, signing=signing)
        await writer.start()
        try:
            for body in BODIES:
                await writer.append(EventKind.PRE_EXEC, canonical_json(body), indexed_values(body), 1)
        finally:
            await writer.aclose()

    asyncio.run(append_all())
    with sqlite3.connect(path) as conn:
        return [(int(s), bytes(e), bytes(g)) for s, e, g in conn.execute("SELECT seq, entry, signature FROM journal")]


@pytest.fixture(scope="module", params=["per_entry", "per_commit"])
def rows(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, bytes, bytes]]:
    return written(tmp_path_factory.mktemp(request.param), request.param)


def both_ways(seq: int, raw: bytes, signature: bytes) -> None:
    outcomes = [
        check_entry(seq, raw, signature, origin=SIGNER.name, keys=KEYS, prev_leaf_hash=None, parse_body=parse)
        for parse in (parse_canonical, bulk_parse_canonical)
    ]
    assert outcomes[0] == outcomes[1], raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_change_of_the_bytes_is_judged_alike(rows: list[tuple[int, bytes, bytes]], data: st.DataObject) -> None:
    seq, raw, signature = data.draw(st.sampled_from(rows))
    at = data.draw(st.integers(0, len(raw) - 1))
    change = data.draw(st.sampled_from(["flip", "remove", "insert"]))
    byte = data.draw(st.integers(0, 255))
    if change == "flip":
        changed = raw[:at] + bytes([raw[at] ^ (byte or 1)]) + raw[at + 1 :]
    elif change == "remove":
        changed = raw[:at] + raw[at + 1 :]
    else:
        changed = raw[:at] + bytes([byte]) + raw[at:]
    both_ways(seq, changed, signature)


_RESPELLINGS = [
    lambda b: json.dumps(b).encode(),
    lambda b: json.dumps(b, sort_keys=True, separators=(",", ":")).encode(),
    lambda b: json.dumps(b, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(),
    lambda b: canonical_json(b).replace(b"}", b"} ", 1),
    lambda b: canonical_json({**b, "f": 1.5}),
    lambda b: canonical_json({**b, "f": 1e21}),
    lambda b: canonical_json(b)[:-1] + b',"kind":"post_exec"}',
    # Bytes orjson writes back unchanged but RFC 8785 spells otherwise: an integral float, an integer beyond 2**53.
    lambda b: canonical_json(b)[:-1] + b',"zz":1.0}',
    lambda b: canonical_json(b)[:-1] + b',"zz":9007199254740993}',
    lambda b: canonical_json(b)[:-1] + b',"zz":[1e16]}',
]


@pytest.mark.parametrize("respell", _RESPELLINGS)
def test_a_body_spelt_anew_is_judged_alike(rows: list[tuple[int, bytes, bytes]], respell: object) -> None:
    for seq, raw, signature in rows:
        entry = decode_entry(raw)
        body = json.loads(raw[HEADER_SIZE:])
        spelt = respell(body)  # type: ignore[operator]
        rebuilt = encode_entry(
            entry.kind, entry.seq, entry.unix_nanos, entry.prev_leaf_hash, entry.key_id, spelt, entry.version
        )
        both_ways(seq, rebuilt, signature)
