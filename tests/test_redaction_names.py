"""``audit.redact_fields`` matches keys by their normalised words: real field names are redacted everywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.policy import EXAMPLE_POLICY
from gateway.policy.document import parse_policy
from gateway.policy.testing import load_cases, run_cases
from gateway.redaction import FieldMatcher, key_words, normalised_key
from tests.conftest import run_cli
from tests.redaction_helpers import leaks, record_everywhere

DEFAULT_RULES = ["email", "phone", "card_number"]
RULES = [*DEFAULT_RULES, "exact:ssn", "*_token", "secret*"]

# (key, the rule that redacts it or None): the table in docs/policy.md, and more.
KEY_FORMS = [
    pytest.param("email", "email", id="plain"),
    pytest.param("Email", "email", id="capitalised"),
    pytest.param("EMAIL", "email", id="upper"),
    pytest.param("customer_email", "email", id="snake-prefix"),
    pytest.param("emailAddress", "email", id="camel-suffix"),
    pytest.param("EmailAddress", "email", id="pascal"),
    pytest.param("e-mail", "email", id="hyphenated-word"),
    pytest.param("E_Mail", "email", id="split-word-underscore"),
    pytest.param("billing-email", "email", id="kebab"),
    pytest.param("billing.email", "email", id="dotted"),
    pytest.param("billing email", "email", id="space"),
    pytest.param("userEMailAddr", "email", id="acronym-split-word"),
    pytest.param("emails", "email", id="plural"),
    pytest.param("\uff45\uff4d\uff41\uff49\uff4c", "email", id="fullwidth"),
    pytest.param(
        "\uff23\uff55\uff53\uff54\uff4f\uff4d\uff45\uff52\uff3f\uff25\uff4d\uff41\uff49\uff4c",
        "email",
        id="fullwidth-snake",
    ),
    pytest.param("contactEmail2", "email", id="camel-digit"),
    pytest.param("phone", "phone", id="phone"),
    pytest.param("phone_number", "phone", id="phone-snake"),
    pytest.param("phoneNumber", "phone", id="phone-camel"),
    pytest.param("PhoneNo", "phone", id="phone-pascal"),
    pytest.param("phone2", "phone", id="phone-digit"),
    pytest.param("mobile", "phone", id="synonym-mobile"),
    pytest.param("mobileNumber", "phone", id="synonym-mobile-camel"),
    pytest.param("Telephone", "phone", id="synonym-telephone"),
    pytest.param("card_number", "card_number", id="card-snake"),
    pytest.param("cardNumber", "card_number", id="card-camel"),
    pytest.param("card-number", "card_number", id="card-kebab"),
    pytest.param("CARD_NUMBER", "card_number", id="card-upper"),
    pytest.param("cardnumber", "card_number", id="card-joined"),
    pytest.param("CardNumbers", "card_number", id="card-plural"),
    pytest.param("billingCardNumber", "card_number", id="card-prefixed"),
    pytest.param("cc_number", "card_number", id="synonym-cc-number"),
    pytest.param("cardNo", "card_number", id="synonym-card-no"),
    pytest.param("SSN", "exact:ssn", id="exact-case-folded"),
    pytest.param("HTTPAuthToken", "*_token", id="glob-acronym"),
    pytest.param("refresh-token", "*_token", id="glob-kebab"),
    pytest.param("secretKey", "secret*", id="glob-prefix"),
    # Words must match whole: none of these is redacted by name.
    pytest.param("emailer", None, id="longer-word"),
    pytest.param("iphone", None, id="inside-a-word"),
    pytest.param("email_count_total", "email", id="word-among-others"),
    pytest.param("ssn_last4", None, id="exact-is-exact"),
    pytest.param("token", None, id="glob-needs-the-underscore"),
    pytest.param("card", None, id="half-a-rule"),
    pytest.param("number", None, id="other-half"),
    pytest.param("mail_server", None, id="mail-is-not-email"),
    pytest.param("order_id", None, id="unrelated"),
    pytest.param("Straße", None, id="unicode-unrelated"),
]


@pytest.mark.parametrize(("key", "rule"), KEY_FORMS)
def test_rules_match_keys_by_normalised_words(key: str, rule: str | None) -> None:
    assert FieldMatcher(RULES).rule_for(key) == rule


@pytest.mark.parametrize(
    ("key", "words"),
    [
        pytest.param("userEMailAddr", ("user", "e", "mail", "addr"), id="acronym-then-word"),
        pytest.param("HTTPAuthToken", ("http", "auth", "token"), id="leading-acronym"),
        pytest.param("getHTTP", ("get", "http"), id="trailing-acronym"),
        pytest.param("card-number_2", ("card", "number", "2"), id="separators-and-digit"),
        pytest.param("Straße", ("strasse",), id="case-folded"),
        pytest.param("\uff43\uff41\uff52\uff44\uff2e\uff4f", ("card", "no"), id="fullwidth-camel"),
        pytest.param("__", (), id="only-separators"),
    ],
)
def test_keys_split_into_words(key: str, words: tuple[str, ...]) -> None:
    assert key_words(key) == words


def test_glob_rules_see_the_key_joined_with_underscores() -> None:
    assert normalised_key("HTTPAuthToken") == "http_auth_token"
    assert FieldMatcher(["*-token"]).rule_for("apiToken") == "*-token"  # the pattern's - reads as _


def test_no_rules_match_nothing() -> None:
    assert not FieldMatcher([])
    assert FieldMatcher([]).rule_for("email") is None


REDACTED_KEYS = [p.values[0] for p in KEY_FORMS if p.values[1] is not None]
KEPT_KEYS = [p.values[0] for p in KEY_FORMS if p.values[1] is None]


def test_every_matching_key_form_is_absent_from_every_byte_written(tmp_path: Path) -> None:
    secrets = {key: f"zq{i:03d}namedsecret" for i, key in enumerate(REDACTED_KEYS)}
    kept = {key: f"zq{i:03d}keptvalue" for i, key in enumerate(KEPT_KEYS)}
    written = record_everywhere(
        tmp_path / "gw",
        args={**secrets, **kept, "nested": {"items": [dict(secrets)]}},
        labels={key: value for key, value in list(secrets.items())[:8]},
        output={"receipt": dict(secrets)},
        error="failed",
        free_text="routine maintenance",
        audit={"redact_fields": RULES},
    )
    assert leaks(written, list(secrets.values())) == []
    pre = next(b for b in written.bodies if b["kind"] == "pre_exec" and b["action"] == "crm.lookup")
    assert pre["args"] == {**kept, "nested": {"items": [{}]}}, "only the named keys went"
    assert f"args.{REDACTED_KEYS[0]}" in pre["redacted_paths"]
    assert "labels.email" in pre["redacted_paths"] and pre["labels"] == {}
    for value in kept.values():
        assert value.encode() in written.journal and value.encode() in written.collector, (
            "the test looks in the right place"
        )


POLICY_TESTS = """\
audit: {redact_fields: [email, phone, card_number, "*_token"]}
tests:
  - name: real field names and a phone in a note are redacted
    request:
      action: crm.lookup
      agent: support-agent
      args: {customerEmail: a@b.example, note: "call +15557654321", HTTPAuthToken: x, order_id: o_1}
      labels: {mobile: "555", team: billing}
    expect:
      decision: allow
      redacted_paths: [args.customerEmail, "args.note#phone", args.HTTPAuthToken, labels.mobile]
  - name: a case can set its own audit settings
    audit: {redact_fields: [], detectors: {phone: false}}
    request: {action: crm.lookup, agent: support-agent, args: {email: x, note: "call +15557654321 or a@b.example"}}
    expect: {redacted_paths: ["args.note#email"]}
  - name: a wrong expectation fails
    request: {action: crm.lookup, agent: support-agent, args: {email: x}}
    expect: {redacted_paths: []}
"""


def test_policy_test_cases_can_assert_redacted_paths() -> None:
    results = run_cases(
        parse_policy(EXAMPLE_POLICY, "example_policy.yaml"), load_cases(POLICY_TESTS, "t.yaml"), "t.yaml"
    )
    assert [r.passed for r in results] == [True, True, False], [r.actual for r in results]
    assert results[2].actual["redacted_paths"] == ["args.email"]


@pytest.mark.parametrize(
    ("audit", "message"),
    [
        pytest.param("{detectors: {pin: true}}", "audit.detectors maps", id="unknown-detector"),
        pytest.param("{redact_fields: email}", "audit.redact_fields must be a list", id="not-a-list"),
        pytest.param("{colour: red}", "'audit' may set only", id="unknown-key"),
    ],
)
def test_bad_audit_settings_in_a_test_file_are_refused(audit: str, message: str) -> None:
    text = f"audit: {audit}\ntests:\n  - {{name: x, request: {{action: a}}, expect: {{decision: allow}}}}\n"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_cases(text, "t.yaml")


def test_redact_check_prints_the_redacted_payload_and_what_redacted_each_path(tmp_path: Path) -> None:
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"customerEmail": "a@b.example", "note": "call +15557654321", "order_id": "o_1"}))
    result = run_cli("redact-check", str(sample), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "redacted": {"note": "call [redacted:phone]", "order_id": "o_1"},
        "redactions": [
            {"path": "args.customerEmail", "by": "rule:email"},
            {"path": "args.note#phone", "by": "detector:phone"},
        ],
    }
    config_file = tmp_path / "agentaudit.yaml"
    config_file.write_text("audit:\n  redact_fields: []\n  detectors: {phone: false}\n")
    text = run_cli("redact-check", str(sample), "--config", str(config_file), "--as", "output").stdout
    assert "output.customerEmail#email  detector:email" in text and "+15557654321" in text


def test_redact_check_refuses_what_is_not_a_json_object(tmp_path: Path) -> None:
    sample = tmp_path / "sample.json"
    sample.write_text("[1, 2]")
    result = run_cli("redact-check", str(sample))
    assert result.returncode == 2 and "expected a JSON object" in result.stderr
