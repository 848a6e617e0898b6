"""The control channel's signed messages: every forged, replayed, stale or misaddressed one is refused by name."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.canonical import canonical_json
from gateway.control import message as m
from gateway.ids import now_nanos
from gateway.signing import Ed25519Signer

COLLECTOR = Ed25519Signer.generate("collector-control")
ORIGIN = Ed25519Signer.generate("sidecar-a")


def _verifier(applied: int = 0) -> m.ControlVerifier:
    return m.ControlVerifier(COLLECTOR.verifier, ORIGIN.name, applied)


def _vote(seq: int, **kw: object) -> tuple[bytes, bytes]:
    fields = {"approval_id": "ap_1", "grant": True, "approver": "alice", "channel": "cli", "comment": ""}
    return m.sign_control(COLLECTOR, kw.pop("origin", ORIGIN.name), seq, m.APPROVAL_VOTE, fields, **kw)  # type: ignore[arg-type]


def _refused(verifier: m.ControlVerifier, body: bytes, sig: bytes) -> str:
    with pytest.raises(m.ControlRefusedError) as info:
        verifier.verify(body, sig)
    return info.value.refused


def test_a_fresh_message_for_this_origin_is_believed_once() -> None:
    verifier = _verifier()
    body, sig = _vote(5)
    msg = verifier.verify(body, sig)
    assert (msg.seq, msg.kind, msg.body["approval_id"]) == (5, m.APPROVAL_VOTE, "ap_1")
    verifier.applied(msg.seq)
    assert _refused(verifier, body, sig) == m.REPLAYED
    assert _refused(verifier, *_vote(4)) == m.REPLAYED  # an older one, validly signed, is a replay too
    assert verifier.verify(*_vote(9)).seq == 9  # gaps are fine: other origins' changes


def test_forged_by_another_key_or_edited_body() -> None:
    other = Ed25519Signer("collector-control", b"\x07" * 32)
    body, sig = m.sign_control(other, ORIGIN.name, 1, m.KILL_SWITCH_SET, {"switches": []})
    assert _refused(_verifier(), body, sig) == m.FORGED
    body, sig = _vote(1)
    edited = body.replace(b'"grant":true', b'"grant":false')
    assert edited != body
    assert _refused(_verifier(), edited, sig) == m.FORGED


def test_for_another_origin_and_expired() -> None:
    assert _refused(_verifier(), *_vote(1, origin="sidecar-b")) == m.WRONG_ORIGIN
    assert _refused(_verifier(), *_vote(1, ttl_s=1, now_ns=now_nanos() - 5 * 10**9)) == m.STALE
    assert _refused(_verifier(), *_vote(1, now_ns=now_nanos() + 3600 * 10**9)) == m.STALE


def test_a_hello_or_journal_signature_is_not_a_control_message() -> None:
    body, sig = m.sign_hello(COLLECTOR, COLLECTOR.name, b"n" * 32, 0)  # signed with the right key, other domain
    assert _refused(_verifier(), body, sig) == m.FORGED
    raw = canonical_json({"type": m.CONTROL_TYPE, "v": 1, "kind": m.APPROVAL_VOTE, "origin": ORIGIN.name})
    assert _refused(_verifier(), raw, COLLECTOR.sign(raw)) == m.FORGED  # no domain separation: refused


def test_hello_answers_only_its_challenge_from_a_registered_key() -> None:
    nonce = b"\x01" * 32
    body, sig = m.sign_hello(ORIGIN, "collector-control", nonce, 7)
    hello = m.verify_hello(body, sig, collector="collector-control", nonce=nonce, verifiers=[ORIGIN.verifier])
    assert (hello.origin, hello.applied_seq) == (ORIGIN.name, 7)
    for kwargs in (
        {"collector": "collector-control", "nonce": b"\x02" * 32, "verifiers": [ORIGIN.verifier]},
        {"collector": "other", "nonce": nonce, "verifiers": [ORIGIN.verifier]},
        {"collector": "collector-control", "nonce": nonce, "verifiers": [COLLECTOR.verifier]},
    ):
        with pytest.raises(m.ControlRefusedError) as info:
            m.verify_hello(body, sig, **kwargs)  # type: ignore[arg-type]
        assert info.value.refused == m.FORGED
    with pytest.raises(m.ControlRefusedError) as info:
        m.verify_hello(
            body,
            sig,
            collector="collector-control",
            nonce=nonce,
            verifiers=[ORIGIN.verifier],
            now_ns=now_nanos() + 600 * 10**9,
        )
    assert info.value.refused == m.STALE


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_no_single_byte_change_is_believed(position: int, value: int) -> None:
    body, sig = _vote(3)
    blob = bytearray(body + sig)
    index = position % len(blob)
    if blob[index] == value:
        return
    blob[index] = value
    with pytest.raises(m.ControlRefusedError):
        _verifier().verify(bytes(blob[: len(body)]), bytes(blob[len(body) :]))


def test_the_body_is_canonical_json_naming_its_kind() -> None:
    body, _ = _vote(2)
    parsed = json.loads(body)
    assert canonical_json(parsed) == body
    assert parsed["kind"] == m.APPROVAL_VOTE and parsed["collector"] == COLLECTOR.name


def test_a_kill_switch_set_is_believed_at_the_applied_seq_on_its_own_stream_only() -> None:
    nonce = b"\x05" * 32
    verifier = _verifier(applied=7)

    def switch_set(seq: int, for_nonce: bytes) -> tuple[bytes, bytes]:
        return m.sign_control(
            COLLECTOR, ORIGIN.name, seq, m.KILL_SWITCH_SET, {"switches": [], "nonce": for_nonce.hex()}
        )

    # it answers the hello that said 7: the acts after it are above 7, so it does not move applied_seq
    assert verifier.verify(*switch_set(7, nonce), stream_nonce=nonce).kind == m.KILL_SWITCH_SET
    assert verifier.verify(*switch_set(9, nonce), stream_nonce=nonce).seq == 9
    assert _refused_set(verifier, switch_set(6, nonce), nonce) == m.REPLAYED  # as of before what was applied
    assert _refused_set(verifier, switch_set(7, b"\x06" * 32), nonce) == m.REPLAYED  # another stream's set
    assert verifier.verify(*switch_set(7, b"\x06" * 32)).seq == 7  # no stream nonce given: the caller checks it
    assert _refused(verifier, *_vote(7)) == m.REPLAYED  # every other kind must be above


def _refused_set(verifier: m.ControlVerifier, signed: tuple[bytes, bytes], nonce: bytes) -> str:
    with pytest.raises(m.ControlRefusedError) as info:
        verifier.verify(*signed, stream_nonce=nonce)
    return info.value.refused
