"""Value detectors: PII and credentials are redacted by shape under any key, in free text too, everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.redaction import DETECTOR_NAMES, Redactor, ValueScanner
from tests.redaction_helpers import leaks, record_everywhere

# (value, detector): each must be found when it is the whole string and when it sits inside a sentence.
DETECTED = [
    pytest.param("ann.smith@example.com", "email", id="email"),
    pytest.param("Ann.O'Neil+billing@mail.example.co.uk", "email", id="email-plus-subdomain"),
    pytest.param("jörg@exämple.de", "email", id="email-unicode"),
    pytest.param("+15557654321", "phone", id="e164"),
    pytest.param("+44 20 7946 0958", "phone", id="e164-spaced"),
    pytest.param("+1 (555) 765-4321", "phone", id="e164-us-punctuated"),
    pytest.param("(555) 765-4321", "phone", id="us-national"),
    pytest.param("555-765-4321", "phone", id="us-dashed"),
    pytest.param("555.765.4321", "phone", id="us-dotted"),
    pytest.param("020 7946 0958", "phone", id="uk-national"),
    pytest.param("01 23 45 67 89", "phone", id="fr-national"),
    pytest.param("4111111111111111", "card", id="visa-bare"),
    pytest.param("4111 1111 1111 1111", "card", id="visa-spaced"),
    pytest.param("5500-0000-0000-0004", "card", id="mastercard-dashed"),
    pytest.param("378282246310005", "card", id="amex"),
    pytest.param("6011111111111117", "card", id="discover"),
    pytest.param("DE89370400440532013000", "iban", id="iban-compact"),
    pytest.param("GB82 WEST 1234 5698 7654 32", "iban", id="iban-grouped"),
    pytest.param("FR1420041010050500013M02606", "iban", id="iban-fr"),
    pytest.param("Bearer eyJhbGciOiJIUzI1NiJ9abc.def", "credentials", id="bearer"),
    pytest.param("sk-proj-AbCdEfGhIjKlMnOpQrStUvWx", "credentials", id="openai-key"),
    pytest.param("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "credentials", id="stripe-key"),
    pytest.param("ghp_" + "a1B2" * 9, "credentials", id="github-token"),
    pytest.param("github_pat_" + "11ABCDEFG0" * 5, "credentials", id="github-pat"),
    pytest.param("xoxb-123456789012-abcdefABCDEF", "credentials", id="slack-token"),
    pytest.param("AKIAIOSFODNN7EXAMPLE", "credentials", id="aws-key-id"),
    pytest.param(
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "credentials",
        id="jwt",
    ),
    pytest.param(
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\nabc==\n-----END RSA PRIVATE KEY-----",
        "credentials",
        id="pem-private-key",
    ),
]

# Ordinary business values: none may be flagged.
BUSINESS_VALUES = [
    "ORD-20240115-0042",
    "o_1234567890",
    "order 1234567890123",
    "INV-2024-000123",
    "SKU-12345-XL",
    "SKU 4006381333931",  # an EAN-13 barcode: passes Luhn? it must still not read as a card
    "1234567.89",
    "USD 1,234,567.89",
    "-42.50",
    "12 345 678",
    "2024-01-15",
    "2024-01-15T10:30:00Z",
    "2024-01-15T10:30:00.123456789+02:00",
    "2024-01-15 10:30:00",
    "15/01/2024",
    "1705314600",
    "1705314600000",
    "1705314600123456789",
    "550e8400-e29b-41d4-a716-446655440000",
    "01HQZ8X5N6W1V2K3J4H5G6F7E8",
    "192.168.100.200",
    "10.0.0.1:8080",
    "v1.2.3-rc.4",
    "https://shop.example.com/orders/ORD-20240115-0042?page=2",
    "tracking 1Z999AA10123456784",
    "ref: 2024/00123/45",
    "qty 3 x 19.99 = 59.97",
    "price_usd=120000",
    "Thanks for your order! It ships in 3-5 business days.",
    "support ticket #48213",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx public key",
    "evt_01HQZ8X5N6W1V2K3J4H5G6F7E8",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "The skeleton key skeptic asked about sk-ills.",
    "lat 51.5074, lon -0.1278",
    "+5%",
    "call back at 14:30",
    "2 x 1234 5678",
    "batch 2024-0001-0002-0003",
    "DE is our largest market (42%)",
]


def scanner() -> ValueScanner:
    return ValueScanner(DETECTOR_NAMES)


@pytest.mark.parametrize(("value", "detector"), DETECTED)
def test_each_detector_finds_its_values_alone_and_in_text(value: str, detector: str) -> None:
    assert scanner().scrub(value) == (f"[redacted:{detector}]", [detector])
    text = f"please use {value} for this"
    assert scanner().scrub(text) == (f"please use [redacted:{detector}] for this", [detector])


@pytest.mark.parametrize("value", BUSINESS_VALUES)
def test_ordinary_business_values_are_not_flagged(value: str) -> None:
    assert scanner().find(value) == []


def test_false_positive_rate_on_business_payloads() -> None:
    flagged = [v for v in BUSINESS_VALUES if scanner().find(v)]
    rate = len(flagged) / len(BUSINESS_VALUES)
    assert rate == 0.0, flagged  # the figure docs/policy.md reports (0 of 40)


def test_cards_and_ibans_need_their_checksum() -> None:
    assert scanner().find("4111111111111112") == []  # Luhn fails
    assert scanner().find("DE89370400440532013001") == []  # mod-97 fails


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        pytest.param("4111 1111 1111 1111 123", "[redacted:card] 123", id="card-then-cvv"),
        pytest.param("card: 4111-1111-1111-1111.", "card: [redacted:card].", id="card-then-full-stop"),
        pytest.param("12-4111 1111 1111 1111", "12-[redacted:card]", id="digits-before-a-card"),
        pytest.param("ORD-4111111111111111", "ORD-4111111111111111", id="inside-an-id"),
        pytest.param("4111111111111111.5", "4111111111111111.5", id="an-amount"),
    ],
)
def test_card_numbers_are_found_by_their_groups_not_their_surroundings(text: str, scrubbed: str) -> None:
    assert scanner().scrub(text)[0] == scrubbed


def test_detectors_can_be_turned_off_one_by_one() -> None:
    only_cards = ValueScanner(["card"])
    assert only_cards.scrub("ann@example.com 4111111111111111") == ("ann@example.com [redacted:card]", ["card"])
    assert not ValueScanner([])
    with pytest.raises(ValueError, match="unknown detector"):
        ValueScanner(["ssn"])


def test_a_marker_is_never_detected_again() -> None:
    for name in DETECTOR_NAMES:
        assert scanner().find(f"[redacted:{name}]") == []


def test_detected_values_are_replaced_in_place_and_listed_with_the_detector() -> None:
    redactor = Redactor.create(bytes(32), ["email"], hash_args=True)
    result = redactor.redact(
        {"note": "call +15557654321 or mail ann@example.com", "items": ["4111111111111111", "ok"], "email": "x"},
        "args",
    )
    assert result.value == {
        "note": "call [redacted:phone] or mail [redacted:email]",
        "items": ["[redacted:card]", "ok"],
    }
    assert result.paths == ["args.email", "args.items[0]#card", "args.note#email", "args.note#phone"]


def test_a_key_that_is_itself_pii_is_scrubbed_and_its_path_does_not_leak_it() -> None:
    result = Redactor.create(bytes(32), [], hash_args=True).redact({"ann@example.com": 1}, "args")
    assert result.value == {"[redacted:email]": 1}
    assert result.paths == ["args.[redacted:email]#email"]


def test_digests_and_action_keys_are_of_the_raw_args() -> None:
    redactor = Redactor.create(bytes(32), [], hash_args=True)
    canonical, redacted, _ = redactor.prepare({"to": "ann@example.com"}, "args", normalised=False)
    assert canonical == b'{"to":"ann@example.com"}' and redacted == {"to": "[redacted:email]"}


SHAPED = st.sampled_from([p.values[0] for p in DETECTED])
KEYS = st.text(min_size=1, max_size=12)
FILLER = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "Zs"]), max_size=12)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[dict[str, object], list[str]]:
    """A nested payload with detector-shaped values (alone or inside text) under arbitrary keys."""
    secrets: list[str] = []

    def leaf() -> str:
        value = draw(SHAPED)
        secrets.append(value)
        return f"{draw(FILLER)} {value} {draw(FILLER)}" if draw(st.booleans()) else value

    def node(depth: int) -> object:
        kind = draw(st.sampled_from(["leaf", "dict", "list"] if depth < 3 else ["leaf"]))
        if kind == "leaf":
            return leaf()
        if kind == "list":
            return [node(depth + 1) for _ in range(draw(st.integers(1, 3)))]
        return {draw(KEYS): node(depth + 1) for _ in range(draw(st.integers(1, 3)))}

    return {draw(KEYS): node(0) for _ in range(draw(st.integers(1, 3)))}, secrets


@settings(max_examples=300, deadline=None)
@given(payloads())
def test_no_detector_shaped_value_survives_under_any_key(case: tuple[dict[str, object], list[str]]) -> None:
    payload, secrets = case
    redactor = Redactor.create(bytes(32), ["email", "phone", "card_number"], hash_args=True)
    result = redactor.redact(payload, "args")
    stored = json.dumps(result.value, ensure_ascii=False) + json.dumps(result.paths, ensure_ascii=False)
    for secret in secrets:
        assert secret not in stored


def test_detected_values_are_absent_from_every_byte_written(tmp_path: Path) -> None:
    values = [p.values[0] for p in DETECTED]
    sentence = "reach me at +15557654321 or ann.smith@example.com, token ghp_" + "a1B2" * 9
    written = record_everywhere(
        tmp_path / "gw",
        args={f"field_{i}": value for i, value in enumerate(values)} | {"note": sentence, "order_id": "o_77"},
        labels={"ticket": "from ann.smith@example.com", "channel": "+44 20 7946 0958", "team": "billing"},
        output={"receipt": {"memo": sentence, "card": "4111 1111 1111 1111"}},
        error=f"upstream rejected {sentence}",
        free_text=f"customer asked to call {sentence}",
    )
    assert leaks(written, [*values, "7946 0958", "ann.smith"]) == []
    pre = next(b for b in written.bodies if b["kind"] == "pre_exec" and b["action"] == "crm.lookup")
    assert pre["args"]["note"] == "reach me at [redacted:phone] or [redacted:email], token [redacted:credentials]"
    assert pre["args"]["order_id"] == "o_77"
    assert pre["labels"] == {"ticket": "from [redacted:email]", "channel": "[redacted:phone]", "team": "billing"}
    assert {"args.note#phone", "labels.ticket#email", "labels.channel#phone"} <= set(pre["redacted_paths"])
    post = next(b for b in written.bodies if b["kind"] == "post_exec")
    assert post["error"].startswith("upstream rejected reach me at [redacted:phone]")
    assert {"error#phone", "output.receipt.card#card"} <= set(post["redacted_paths"])
    comments = [b["comment"] for b in written.bodies if b["kind"] in ("approval_granted", "kill_switch")]
    assert len(comments) == 3 and all(
        c.startswith("customer asked to call reach me at [redacted:phone]") for c in comments
    )


def test_labels_under_a_named_key_are_removed_like_args(tmp_path: Path) -> None:
    redactor = Redactor.create(bytes(32), ["email"], hash_args=True)
    result = redactor.redact({"customerEmail": "zq-label-secret", "team": "billing"}, "labels")
    assert result.value == {"team": "billing"} and result.paths == ["labels.customerEmail"]
