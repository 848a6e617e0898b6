"""The Block Kit messages: what an approver sees, the buttons, the outcome, Slack's limits, and escaping, both as
pure functions and as slack_sdk actually sent them to the stand-in."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.collector.fleet_model import FleetApproval, FleetVote
from gateway.journal.entry import EventKind
from gateway.slack.messages import approval_message, arg_fields, deny_modal, version
from tests.fleet_helpers import ORIGIN, database, run
from tests.slack_helpers import rig

NOW = 1_760_000_000_000
HOSTILE = {
    "note": "<!channel> refund now",
    "link": "<https://evil.example|click here>",
    "nested": {"who": "<@U0ADMIN>", "amp": "a & b"},
    "card": "[REDACTED]",
}


def approval(**kw: Any) -> FleetApproval:
    base = FleetApproval(
        origin=ORIGIN, approval_id="apr_1", state="pending", tenant_id="t_42", agent_id="billing-bot",
        run_id="run-1", step_id=3, actor_id="agent-runner", action="payments.refund", policy_rule="big-refunds",
        reason="approval_required", args={"amount": 250, "email": "[REDACTED]"}, redacted_paths=("args.email",),
        approvers=(), approvals_required=1, votes=(), created_ms=NOW - 60_000, expires_ms=NOW + 540_000,
        resolved_by="", resolved_ms=None, comment="", policy_version="sha256:abc", event_seq=0,
    )  # fmt: skip
    return replace(base, **kw)


def mrkdwn_texts(blocks: list[dict[str, Any]]) -> list[str]:
    out = []
    for block in blocks:
        for part in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(part, dict) and part.get("type") == "mrkdwn":
                out.append(part["text"])
    return out


def elements(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


def test_a_pending_approval_shows_the_summary_the_redacted_args_and_the_buttons() -> None:
    message = approval_message(approval(approval_id="apr/1"), console_url="https://console.test", now_ms=NOW)
    text = "\n".join(mrkdwn_texts(message["blocks"]))
    for shown in ("payments.refund", "t_42", "billing-bot", "run-1 · step 3", "agent-runner", "big-refunds",
                  "approval_required", "in 9 min", "0 of 1", ORIGIN, "*amount*\n250", "*email*\n[REDACTED]",
                  "Redacted: args.email"):  # fmt: skip
        assert shown in text, shown
    approve, deny, link = elements(message)
    assert (approve["action_id"], approve["value"], approve["style"]) == ("agentaudit_approve", "apr/1", "primary")
    assert "confirm" in approve
    assert (deny["action_id"], deny["value"], deny["style"]) == ("agentaudit_deny", "apr/1", "danger")
    assert link["url"] == "https://console.test/approvals/apr%2F1"
    assert message["text"] == "Approval requested: payments.refund for tenant t_42"


def test_without_a_console_url_there_is_no_link_button() -> None:
    message = approval_message(approval(), console_url="", now_ms=NOW)
    assert [e["action_id"] for e in elements(message)] == ["agentaudit_approve", "agentaudit_deny"]


def test_every_value_is_escaped_so_args_cannot_mention_or_link() -> None:
    hostile = approval(
        args=HOSTILE, action="<!here>", tenant_id="t&<b>", run_id="<#C0GENERAL>", actor_id="<!subteam^S1>",
        comment="<!everyone>", redacted_paths=("args.<!channel>",),
    )  # fmt: skip
    for state in ("pending", "denied"):
        message = approval_message(replace(hostile, state=state, resolved_by="<!channel>"), console_url="", now_ms=NOW)
        for text in [*mrkdwn_texts(message["blocks"]), message["text"]]:
            assert "<" not in text and ">" not in text, text
        raw = json.dumps(message)
        assert "&lt;!channel&gt; refund now" in raw
        assert "&lt;https://evil.example|click here&gt;" in raw
        assert "a &amp; b" in raw
    modal = deny_modal(hostile, "{}")
    assert "<" not in json.dumps(modal["blocks"][0])


def test_the_outcome_says_who_decided_through_which_channel_when_and_why() -> None:
    denied = approval(
        state="denied", resolved_by="bob", resolved_ms=NOW, comment="wrong customer",
        votes=(FleetVote("bob", False, "slack", "wrong customer", NOW),),
    )  # fmt: skip
    message = approval_message(denied, console_url="https://c.test", now_ms=NOW)
    assert [e["action_id"] for e in elements(message)] == ["agentaudit_open"]  # the buttons are gone
    outcome = mrkdwn_texts(message["blocks"])[-1]
    assert outcome.startswith(":no_entry: *Denied* by bob via slack at 2025-10-09 08:53:20 UTC after 60 s")
    assert outcome.endswith(": “wrong customer”")
    assert message["text"].startswith("Approval denied:")


def test_a_pending_approval_past_its_expiry_is_shown_expired_without_buttons() -> None:
    late = approval(expires_ms=NOW - 1)
    message = approval_message(late, console_url="", now_ms=NOW)
    assert elements(message) == []
    assert "*Expired* unanswered" in mrkdwn_texts(message["blocks"])[-1]
    assert version(late, NOW) == "expired:0" and version(late, NOW - 10) == "pending:0"


def test_many_and_huge_args_stay_within_slacks_limits() -> None:
    args = {f"k{i:02d}": "<" * 5000 for i in range(50)}
    message = approval_message(approval(args=args, action="&" * 5000), console_url="", now_ms=NOW)
    assert len(message["blocks"]) <= 50
    for block in message["blocks"]:
        assert len(block.get("fields", [])) <= 10
        for field in block.get("fields", []):
            assert len(field["text"]) <= 2000
        if isinstance(block.get("text"), dict):
            assert len(block["text"]["text"]) <= 3000
    for text in mrkdwn_texts(message["blocks"]):
        assert not text.rstrip("…").endswith(("&", "&l", "&lt", "&a", "&am", "&amp"))  # no entity cut in two
    assert "30 more argument(s): see the console" in json.dumps(message)
    fields, left = arg_fields(args)
    assert (len(fields), left) == (20, 30)


def test_the_posted_message_is_escaped_as_slack_sdk_sent_it(tmp_path: Path) -> None:
    db = database("sqlite", tmp_path, "")

    async def scenario() -> None:
        async with rig(db, tmp_path) as r:
            r.journal.append(
                EventKind.PRE_EXEC,
                {
                    "run_id": "run-evil", "step_id": 1, "tenant_id": "t_42", "agent_id": "<!here>",
                    "actor": {"type": "user", "id": "mallory"}, "action": "payments.refund", "args": HOSTILE,
                    "redacted_paths": ["args.card"], "decision": "approval_required", "reason": "approval_required",
                    "policy_rule": "big-refunds", "policy_version": "sha256:abc", "approvers": [],
                    "approvals_required": 1, "approval_expires_in_s": 600, "approval_id": "apr_evil",
                    "resumed_approval_id": "",
                },
                nanos=time.time_ns(),
            )  # fmt: skip
            await r.fleet.record_entries(ORIGIN, r.journal.rows)
            posted = await r.posted("apr_evil")
            raw = json.dumps(posted.body, ensure_ascii=False)
            for hostile in ("<!channel>", "<https://evil.example|click here>", "<@U0ADMIN>", "<!here>"):
                assert hostile not in raw, hostile
            assert "&lt;!channel&gt; refund now" in raw and "&lt;https://evil.example|click here&gt;" in raw
            assert "&lt;!here&gt;" in raw
            assert posted.body["text"] == "Approval requested: payments.refund for tenant t_42"

    run(scenario(), 120)


def test_cutting_escaped_text_never_splits_an_entity() -> None:
    from gateway.slack.messages import _cut  # noqa: PLC0415

    assert _cut("&lt;" * 10, 7) == "&lt;…"
    assert _cut("&amp;&amp;", 9) == "&amp;…"
    assert _cut("abcdefgh", 5) == "abcd…"
    assert _cut("short", 5) == "short"
