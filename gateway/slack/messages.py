"""The Block Kit messages of the Slack bridge, as pure functions of a fleet approval (no I/O).

An approval's message shows what an approver must see to decide: the action, tenant, agent, run and step, who
asked (the run's actor), the rule and reason, the expiry, the four-eyes progress, and the arguments **as the
fleet holds them: redacted by the sidecar** (``FleetApproval.args``; the paths it redacted are listed, never
their values, which never left the sidecar). While it is pending it carries Approve and Deny buttons (their
``value`` is the approval id) and a link to the console's page for it; once it moves, the same message is
updated to its outcome: who decided, through which channel, when, with which comment.

Every value that came from an agent or an operator (ids, action, args, comments) is escaped with
:func:`gateway.alerts.slack_escape` before it goes into ``mrkdwn`` text, so ``<!channel>`` or
``<https://evil|click>`` in an argument is shown as text, never as a mention or a link. ``plain_text`` objects
carry only our own words. Values are also cut to Slack's limits (3000 characters a section, 2000 a field, 10
fields a section), so a huge argument cannot make Slack refuse the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from gateway.alerts import slack_escape as escape

ACTION_APPROVE = "agentaudit_approve"
ACTION_DENY = "agentaudit_deny"
ACTION_OPEN = "agentaudit_open"
ACTIONS_BLOCK = "agentaudit_approval"
DENY_CALLBACK = "agentaudit_deny"
JUSTIFICATION_BLOCK = "justification"
JUSTIFICATION_ACTION = "text"
MAX_JUSTIFICATION = 1024  # the fleet's comment limit (fleet_model.MAX_COMMENT_BYTES)

MAX_ARG_FIELDS = 20
MAX_VALUE_CHARS = 290  # escaped, at most 5 times longer: a field stays under 2000
MAX_FIELD_CHARS = 2000
MAX_TEXT_CHARS = 3000
_SETTLED = frozenset({"denied", "expired", "abandoned", "used"})


class VoteView(Protocol):
    """What a message reads of a ``FleetVote`` (duck-typed)."""

    @property
    def approver(self) -> str: ...
    @property
    def grant(self) -> bool: ...
    @property
    def channel(self) -> str: ...
    @property
    def comment(self) -> str: ...
    @property
    def at_ms(self) -> int: ...


class ApprovalView(Protocol):
    """What a message reads of a ``FleetApproval`` (duck-typed, so this module needs no database)."""

    @property
    def origin(self) -> str: ...
    @property
    def approval_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def step_id(self) -> int: ...
    @property
    def actor_id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def policy_rule(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def args(self) -> dict[str, Any]: ...
    @property
    def redacted_paths(self) -> tuple[str, ...]: ...
    @property
    def approvals_required(self) -> int: ...
    @property
    def votes(self) -> tuple[VoteView, ...]: ...
    @property
    def created_ms(self) -> int: ...
    @property
    def expires_ms(self) -> int | None: ...
    @property
    def resolved_by(self) -> str: ...
    @property
    def resolved_ms(self) -> int | None: ...
    @property
    def comment(self) -> str: ...


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters, never ending inside an entity (``&lt;``) of escaped text."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 5))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def _e(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """Cut first, then escaped: an entity (``&lt;``) is never split."""
    return escape(_cut(text, limit))


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(ms: int) -> str:
    seconds = max(0, ms // 1000)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def is_expired(approval: ApprovalView, now_ms: int) -> bool:
    """Pending past its expiry (the sidecar may not have said so yet): shown as expired, without buttons."""
    return _shown(approval.state, approval.expires_ms, now_ms) == "expired" and approval.state == "pending"


def _shown(state: str, expires_ms: int | None, now_ms: int) -> str:
    return "expired" if state == "pending" and expires_ms is not None and expires_ms <= now_ms else state


def shown_state(approval: ApprovalView, now_ms: int) -> str:
    """The state the message shows."""
    return _shown(approval.state, approval.expires_ms, now_ms)


def version_of(state: str, votes: int, expires_ms: int | None, now_ms: int) -> str:
    """What a message shows, in short: a message whose version changed is updated (``slack_messages.rendered``).

    Everything else in a message is fixed when the approval opens; the resolution (by, when, comment) changes
    with the state, and the four-eyes progress with the votes.
    """
    return f"{_shown(state, expires_ms, now_ms)}:{votes}"


def version(approval: ApprovalView, now_ms: int) -> str:
    """:func:`version_of` an approval."""
    return version_of(approval.state, len(approval.votes), approval.expires_ms, now_ms)


def is_settled(approval: ApprovalView, now_ms: int) -> bool:
    """Nothing more will change in its message (granted still becomes used or abandoned)."""
    return shown_state(approval, now_ms) in _SETTLED


def console_link(console_url: str, approval_id: str) -> str:
    """The console's page of an approval (empty without ``console_url``)."""
    return f"{console_url}/approvals/{quote(approval_id, safe='')}" if console_url else ""


def _progress(approval: ApprovalView) -> str:
    granted = [v.approver for v in approval.votes if v.grant]
    text = f"{len(granted)} of {max(1, approval.approvals_required)}"
    return f"{text}: {', '.join(granted)}" if granted else text


def summary_fields(approval: ApprovalView, now_ms: int) -> list[tuple[str, str]]:
    """The summary as (label, raw value) pairs, in display order (values are escaped by the caller)."""
    if approval.expires_ms is None:
        expires = "never (parks until answered)"
    elif approval.expires_ms <= now_ms:
        expires = f"{_when(approval.expires_ms)} (passed)"
    else:
        expires = f"{_when(approval.expires_ms)} (in {_duration(approval.expires_ms - now_ms)})"
    return [
        ("Action", approval.action),
        ("Tenant", approval.tenant_id),
        ("Agent", approval.agent_id),
        ("Run", f"{approval.run_id} · step {approval.step_id}"),
        ("Requested by", approval.actor_id or "-"),
        ("Rule", approval.policy_rule or "-"),
        ("Reason", approval.reason),
        ("Expires", expires),
        ("Approvals", _progress(approval)),
        ("Sidecar", approval.origin),
    ]


def _flatten(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key in sorted(value, key=str):
            yield from _flatten(value[key], f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def arg_fields(args: dict[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """The redacted args as (path, value as JSON) pairs, at most :data:`MAX_ARG_FIELDS`, and how many were left."""
    pairs = [
        (path, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True))
        for path, value in _flatten(args, "")
    ]
    return pairs[:MAX_ARG_FIELDS], max(0, len(pairs) - MAX_ARG_FIELDS)


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut(f"*{_e(label, 100)}*\n{_e(value)}", MAX_FIELD_CHARS)}


def _sections(fields: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"type": "section", "fields": fields[i : i + 10]} for i in range(0, len(fields), 10)]


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(text, MAX_TEXT_CHARS)}]}


def _outcome(approval: ApprovalView, now_ms: int) -> str:
    state = shown_state(approval, now_ms)
    granted = ", ".join(_e(v.approver, 100) for v in approval.votes if v.grant)
    channels = ", ".join(sorted({v.channel for v in approval.votes})) or "the sidecar"
    at = approval.resolved_ms
    took = f" after {_duration(at - approval.created_ms)}" if at is not None else ""
    when = f" at {_when(at)}{took}" if at is not None else ""
    comment = f": “{_e(approval.comment, 1000)}”" if approval.comment else ""
    by = granted or _e(approval.resolved_by, 100)
    if state == "granted":
        return f":white_check_mark: *Granted* by {by} via {channels}{when}{comment}"
    if state == "used":
        return f":white_check_mark: *Granted* by {by} via {channels}; the agent resumed"
    if state == "denied":
        return f":no_entry: *Denied* by {_e(approval.resolved_by, 100)} via {channels}{when}{comment}"
    if state == "expired":
        expired_at = approval.resolved_ms or approval.expires_ms
        return ":hourglass: *Expired* unanswered" + (f" at {_when(expired_at)}" if expired_at else "")
    if state == "abandoned":
        return f":wastebasket: *Abandoned*: granted by {granted or '-'}, but the run did not resume in time"
    return f"*{_e(state, 40)}*"


def approval_message(approval: ApprovalView, *, console_url: str, now_ms: int) -> dict[str, Any]:
    """The message for ``approval`` as it is now: ``text`` (the notification fallback) and ``blocks``.

    Pending: the request with Approve and Deny buttons. Otherwise: the same summary and the outcome, no buttons.
    """
    state = shown_state(approval, now_ms)
    pending = state == "pending"
    subject = f"*{_e(approval.action, 150)}* for tenant *{_e(approval.tenant_id, 150)}*"
    if pending:
        text = f"Approval requested: {_e(approval.action, 200)} for tenant {_e(approval.tenant_id, 200)}"
    else:
        text = f"Approval {state}: {_e(approval.action, 200)} for tenant {_e(approval.tenant_id, 200)}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": "Approval requested" if pending else f"Approval {state}"},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{subject} (approval `{_e(approval.approval_id)}`)"}},
        *_sections([_field(label, value) for label, value in summary_fields(approval, now_ms)]),
    ]
    args, left = arg_fields(approval.args)
    if args:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Arguments* (redacted by the sidecar)"}})
        blocks += _sections([_field(path, value) for path, value in args])
    notes = []
    if left:
        notes.append(f"{left} more argument(s): see the console")
    if approval.redacted_paths:
        notes.append("Redacted: " + ", ".join(_e(p, 200) for p in approval.redacted_paths[:50]))
    if not args and not notes:
        notes.append("No arguments")
    blocks.append(_context(" · ".join(notes)))
    link = console_link(console_url, approval.approval_id)
    elements: list[dict[str, Any]] = []
    if pending:
        elements += [
            {
                "type": "button",
                "action_id": ACTION_APPROVE,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": approval.approval_id,
                "confirm": {
                    "title": {"type": "plain_text", "text": "Approve?"},
                    "text": {"type": "mrkdwn", "text": f"Approve {subject}? Your approval is recorded with your name."},
                    "confirm": {"type": "plain_text", "text": "Approve"},
                    "deny": {"type": "plain_text", "text": "Cancel"},
                },
            },
            {
                "type": "button",
                "action_id": ACTION_DENY,
                "text": {"type": "plain_text", "text": "Deny…"},
                "style": "danger",
                "value": approval.approval_id,
            },
        ]
    if link:
        elements.append(
            {"type": "button", "action_id": ACTION_OPEN, "text": {"type": "plain_text", "text": "Open in console"},
             "url": link}
        )  # fmt: skip
    if elements:
        blocks.append({"type": "actions", "block_id": ACTIONS_BLOCK, "elements": elements})
    if not pending:
        blocks.append(_context(_outcome(approval, now_ms)))
    return {"text": text, "blocks": blocks}


def deny_modal(approval: ApprovalView, private_metadata: str) -> dict[str, Any]:
    """The modal asking for a denial's justification (``views.open``); ``private_metadata`` comes back with it."""
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "private_metadata": private_metadata,
        "title": {"type": "plain_text", "text": "Deny approval"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"Deny *{_e(approval.action, 200)}* for tenant *{_e(approval.tenant_id, 200)}* "
                    f"(run {_e(approval.run_id, 200)})? The agent and the investigators read your justification.",
                },
            },
            {
                "type": "input",
                "block_id": JUSTIFICATION_BLOCK,
                "label": {"type": "plain_text", "text": "Justification"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": JUSTIFICATION_ACTION,
                    "multiline": True,
                    "min_length": 1,
                    "max_length": MAX_JUSTIFICATION,
                },
            },
        ],
    }


def ephemeral(text: str) -> dict[str, Any]:
    """A reply only the person who pressed the button sees (through the interaction's ``response_url``)."""
    return {"response_type": "ephemeral", "replace_original": False, "text": _e(text, MAX_TEXT_CHARS)}
