"""The fleet tables' SQL (written once, ``?`` placeholders, run by :mod:`gateway.collector.fleet_db`'s adapters)
and the conversions between their rows and the fleet's values."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from gateway.canonical import canonical_json
from gateway.collector.fleet_db import Row
from gateway.collector.fleet_model import KIND_KILL_SWITCH, ActDraft, FleetApproval, FleetSwitch, FleetVote
from gateway.identity import Operator
from gateway.journal.entry import ENTRY_DOMAIN

APPROVAL_COLUMNS = (
    "approval_id",
    "origin",
    "state",
    "state_seq",
    "event_seq",
    "tenant_id",
    "agent_id",
    "run_id",
    "step_id",
    "actor_id",
    "action",
    "policy_rule",
    "reason",
    "args",
    "redacted_paths",
    "approvers",
    "approvals_required",
    "created_ms",
    "expires_ms",
    "resolved_by",
    "resolved_ms",
    "comment",
    "policy_version",
)
DETAIL_COLUMNS = (*APPROVAL_COLUMNS[5:19], "policy_version")
SELECT_APPROVAL = f"SELECT {', '.join(APPROVAL_COLUMNS)} FROM fleet_approvals"  # noqa: S608 (constants)
INSERT_APPROVAL = (
    f"INSERT INTO fleet_approvals ({', '.join(APPROVAL_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(APPROVAL_COLUMNS))})"
)
FILL_DETAILS = (
    f"UPDATE fleet_approvals SET {', '.join(f'{c} = ?' for c in DETAIL_COLUMNS)}, event_seq = ? "  # noqa: S608
    "WHERE approval_id = ?"
)
SELECT_VOTES = "SELECT approval_id, approver, is_grant, channel, comment, at_ms FROM fleet_votes"
INSERT_VOTE = (
    "INSERT INTO fleet_votes (approval_id, approver_key, approver, is_grant, channel, comment, at_ms, act) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
INSERT_ACT = (
    "INSERT INTO control_log (id, kind, origin, fields, operator, channel, at_ms, signature) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_ACTS = "SELECT id, kind, origin, fields, operator, channel, at_ms, signature FROM control_log"
UPSERT_ORIGIN = (
    "INSERT INTO fleet_origins (origin, connected, replica, last_contact_ms, applied_seq) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (origin) DO UPDATE SET connected = excluded.connected, replica = excluded.replica, "
    "last_contact_ms = excluded.last_contact_ms, applied_seq = excluded.applied_seq"
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def approval_row(a: FleetApproval, state_seq: int) -> tuple[Any, ...]:
    values = {
        **{name: getattr(a, name) for name in APPROVAL_COLUMNS if hasattr(a, name)},
        "state_seq": state_seq,
        "args": canonical_json(a.args).decode(),
        "redacted_paths": json.dumps(list(a.redacted_paths)),
        "approvers": json.dumps(list(a.approvers)),
    }
    return tuple(values[name] for name in APPROVAL_COLUMNS)


def approval_of(row: Row, votes: Sequence[FleetVote]) -> FleetApproval:
    expires, resolved = row["expires_ms"], row["resolved_ms"]
    return FleetApproval(
        origin=str(row["origin"]),
        approval_id=str(row["approval_id"]),
        state=str(row["state"]),
        tenant_id=str(row["tenant_id"]),
        agent_id=str(row["agent_id"]),
        run_id=str(row["run_id"]),
        step_id=int(row["step_id"]),
        actor_id=str(row["actor_id"]),
        action=str(row["action"]),
        policy_rule=str(row["policy_rule"]),
        reason=str(row["reason"]),
        args=json.loads(row["args"]),
        redacted_paths=tuple(json.loads(row["redacted_paths"])),
        approvers=tuple(json.loads(row["approvers"])),
        approvals_required=int(row["approvals_required"]),
        votes=tuple(votes),
        created_ms=int(row["created_ms"]),
        expires_ms=None if expires is None else int(expires),
        resolved_by=str(row["resolved_by"]),
        resolved_ms=None if resolved is None else int(resolved),
        comment=str(row["comment"]),
        policy_version=str(row["policy_version"]),
        event_seq=int(row["event_seq"]),
    )


def vote_of(row: Row) -> FleetVote:
    return FleetVote(
        str(row["approver"]), bool(row["is_grant"]), str(row["channel"]), str(row["comment"]), int(row["at_ms"])
    )


def switch_of(row: Row) -> FleetSwitch:
    return FleetSwitch(
        str(row["scope"]), str(row["target"]), str(row["reason"]), str(row["operator"]), str(row["channel"]),
        int(row["engaged_ms"]),
    )  # fmt: skip


def switch_act(
    action: str, scope: str, target: str, reason: str, operator: Operator, channel: str, now_ms: int
) -> ActDraft:
    fields = {
        "action": action,
        "scope": scope,
        "target": target,
        "reason": reason,
        "operator": operator.identity,
        "channel": channel,
    }
    return ActDraft(KIND_KILL_SWITCH, "", fields, operator.identity, channel, now_ms)


def kind_byte(raw: bytes) -> int:
    """The envelope's kind byte, without decoding the rest (-1: not an entry)."""
    return raw[len(ENTRY_DOMAIN)] if len(raw) > len(ENTRY_DOMAIN) and raw.startswith(ENTRY_DOMAIN) else -1
