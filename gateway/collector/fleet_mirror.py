"""The fleet's mirror of the sidecars' approvals: verified entries turned into changes, and each change applied
to the fleet tables inside :meth:`~gateway.collector.fleet.FleetControl.record_entries`' transaction.

The sidecar's signed entries win (ADR 0017): ``state_seq`` records the seq of the entry that set an approval's
state and only a later entry of the same origin moves it; an entry arriving twice, or before its pre-event,
converges to the same row; an approval id belongs to the origin that named it first.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from gateway.collector.fleet_db import Row, Tx
from gateway.collector.fleet_model import Change, FleetApproval, Moved, Opened, changes_of, voter_key
from gateway.collector.fleet_sql import FILL_DETAILS, INSERT_APPROVAL, INSERT_VOTE, approval_row
from gateway.journal.check import check_entry
from gateway.signing import Verifier

log = logging.getLogger(__name__)


def verified_changes(
    origin: str, keys: dict[bytes, list[Verifier]], entries: list[tuple[int, bytes, bytes]]
) -> tuple[list[Change], int]:
    """What the entries that pass :func:`~gateway.journal.check.check_entry` say, and how many did not pass."""
    changes: list[Change] = []
    refused = 0
    for seq, raw, signature in entries:
        check = check_entry(seq, raw, signature, origin=origin, keys=keys, prev_leaf_hash=None)
        if not check.ok or check.entry is None or check.body is None:
            refused += 1
            faults = ", ".join(p.fault for p in check.problems)
            log.warning("fleet: refused entry %r/%d (%s): it changes no approval", origin[:80], seq, faults)
            continue
        changes += changes_of(origin, seq, check.entry.unix_nanos, check.body)
    return changes, refused


async def apply_change(tx: Tx, origin: str, change: Change) -> tuple[int, list[str]]:
    """Applies one change; returns (1 if it changed something, the ids of approvals it opened)."""
    approval_id = change.approval.approval_id if isinstance(change, Opened) else change.approval_id
    rows = await tx.fetch("SELECT origin, state_seq, event_seq FROM fleet_approvals WHERE approval_id = ?", approval_id)
    row = rows[0] if rows else None
    if row is not None and row["origin"] != origin:
        # Approval ids are random; one origin naming another's is a bug or an attack, never a change.
        log.warning("fleet: origin %r named approval %s of origin %r: ignored", origin[:80], approval_id, row["origin"])
        return 0, []
    if isinstance(change, Opened):
        if row is None:
            await tx.execute(INSERT_APPROVAL, *approval_row(change.approval, change.seq))
            return 1, [change.approval.approval_id]
        if int(row["event_seq"]) >= 0:
            return 0, []
        a = change.approval
        await tx.execute(FILL_DETAILS, *approval_row(a, 0)[5:19], a.policy_version, change.seq, a.approval_id)
        return 1, []
    if isinstance(change, Moved):
        return await _move(tx, origin, change, row), []
    if row is None:
        return 0, []
    vote = change.vote
    key = voter_key(vote.approver)
    params = (change.approval_id, key, vote.approver, vote.grant, vote.channel, vote.comment, vote.at_ms, 0)
    return await tx.execute(INSERT_VOTE, *params), []


async def _move(tx: Tx, origin: str, change: Moved, row: Row | None) -> int:
    if row is None:
        # Its pre-event has not arrived (yet, or was pruned): keep what this entry says; the pre-event fills in.
        basics = change.basics
        placeholder = FleetApproval(
            origin, change.approval_id, change.state, basics["tenant_id"], basics["agent_id"], basics["run_id"],
            basics["step_id"], "", basics["action"], basics["policy_rule"], "", {}, (), (), 1, (), change.at_ms,
            None, "", None, "", "", -1,
        )  # fmt: skip
        if change.resolution is not None:
            by, comment = change.resolution
            placeholder = replace(placeholder, resolved_by=by, resolved_ms=change.at_ms, comment=comment)
        return await tx.execute(INSERT_APPROVAL, *approval_row(placeholder, change.seq))
    if int(row["state_seq"]) >= change.seq:
        return 0  # an older entry, or this one again
    if change.resolution is None:
        sql = "UPDATE fleet_approvals SET state = ?, state_seq = ? WHERE approval_id = ?"
        return await tx.execute(sql, change.state, change.seq, change.approval_id)
    by, comment = change.resolution
    sql = (
        "UPDATE fleet_approvals SET state = ?, state_seq = ?, resolved_by = ?, resolved_ms = ?, comment = ? "
        "WHERE approval_id = ?"
    )
    return await tx.execute(sql, change.state, change.seq, by, change.at_ms, comment, change.approval_id)
