"""The journal database's state tables, and the only code that reads or writes them.

Four tables live beside the journal (``schema.STATE_DDL`` and ``prune_state`` in ``schema.DDL``): ``approvals``,
``kill_switches``, ``forwarder_state`` (the forwarding cursor) and ``prune_state`` (where retention pruned). They
change over time, so they cannot be journal entries; instead every change to them commits in the same SQLite
transaction as the signed event that records it (docs/adr/0006).

Hence the two halves of this module:

- Reads are plain functions of a connection returning typed values. ``JournalReader`` runs them on its reader
  thread for the sidecar; the CLI runs them on its own read-only connection.
- Writes are never executed here. Each constructor returns the :data:`StateChange` that the caller hands to
  ``JournalWriter.append(..., state=...)`` together with the event, so the writer commits both or neither.

Pure apart from the connection it is given; imports nothing above ``journal/``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import astuple, dataclass, fields
from typing import Any

from gateway.journal.writer import StateChange

PENDING, GRANTED, DENIED, EXPIRED = "pending", "granted", "denied", "expired"


# --- approvals -------------------------------------------------------------------------------------------------


@dataclass
class Approval:
    """One approval (mutable: its state moves pending → granted/denied/expired, and it is used once)."""

    approval_id: str
    state: str
    used: bool
    tenant_id: str
    run_id: str
    step_id: int
    agent_id: str
    actor_type: str
    actor_id: str
    action: str
    action_key: str
    policy_rule: str
    approvers: tuple[str, ...]
    created_ns: int
    expires_ns: int
    resolved_by: str
    resolved_ns: int | None
    comment: str
    event_id: str


# In the dataclass's field order, so a row maps to an Approval positionally and back.
_APPROVAL_COLUMNS = (
    "approval_id, state, used, tenant_id, run_id, step_id, agent_id, actor_type, actor_id, action, action_key, "
    "policy_rule, approvers, created_ns, expires_ns, resolved_by, resolved_ns, comment, event_id"
)
_SELECT_APPROVALS = f"SELECT {_APPROVAL_COLUMNS} FROM approvals"
_INSERT_APPROVAL = f"INSERT INTO approvals ({_APPROVAL_COLUMNS}) VALUES ({', '.join('?' * len(fields(Approval)))})"
_USED, _APPROVERS = 2, 12  # the columns stored as another type: used (INTEGER 0/1), approvers (a JSON list)


def _approval(row: tuple[Any, ...]) -> Approval:
    values = list(row)
    values[_USED] = bool(values[_USED])
    values[_APPROVERS] = tuple(json.loads(values[_APPROVERS]))
    return Approval(*values)


def open_approvals(conn: sqlite3.Connection) -> list[Approval]:
    """Approvals still open: pending, or granted and not yet used (what the sidecar keeps in memory)."""
    sql = f"{_SELECT_APPROVALS} WHERE state = ? OR (state = ? AND used = 0)"
    return [_approval(row) for row in conn.execute(sql, (PENDING, GRANTED))]


def approval(conn: sqlite3.Connection, approval_id: str) -> Approval | None:
    """The approval with this id, in any state, if any."""
    row = conn.execute(f"{_SELECT_APPROVALS} WHERE approval_id = ?", (approval_id,)).fetchone()
    return None if row is None else _approval(row)


def list_approvals(conn: sqlite3.Connection, state: str, tenant_id: str, limit: int) -> list[Approval]:
    """Up to ``limit`` approvals in ``state``, newest first, of one tenant when ``tenant_id`` is set."""
    if tenant_id:
        sql = f"{_SELECT_APPROVALS} WHERE state = ? AND tenant_id = ? ORDER BY created_ns DESC LIMIT ?"
        rows = conn.execute(sql, (state, tenant_id, limit))
    else:
        rows = conn.execute(f"{_SELECT_APPROVALS} WHERE state = ? ORDER BY created_ns DESC LIMIT ?", (state, limit))
    return [_approval(row) for row in rows]


def insert_approval(approval: Approval) -> StateChange:
    """Persists a new approval (committed with the pre-event that asked for it)."""
    values = list(astuple(approval))
    values[_USED] = int(approval.used)
    values[_APPROVERS] = json.dumps(list(approval.approvers))
    return _INSERT_APPROVAL, tuple(values)


def mark_approval_used(approval_id: str) -> StateChange:
    """Marks a granted approval used (committed with the resuming pre-event)."""
    return "UPDATE approvals SET used = 1 WHERE approval_id = ?", (approval_id,)


def resolve_approval(approval_id: str, state: str, resolved_by: str, resolved_ns: int, comment: str) -> StateChange:
    """Records a pending approval's resolution: granted, denied or expired (committed with that event)."""
    return (
        "UPDATE approvals SET state = ?, resolved_by = ?, resolved_ns = ?, comment = ? WHERE approval_id = ?",
        (state, resolved_by, resolved_ns, comment, approval_id),
    )


# --- kill switches ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngagedSwitch:
    """One engaged operator kill switch."""

    scope: str
    target: str
    reason: str
    engaged_by: str
    engaged_ns: int


def engaged_switches(conn: sqlite3.Connection) -> list[EngagedSwitch]:
    """Every engaged switch, oldest first."""
    sql = "SELECT scope, target, reason, engaged_by, engaged_ns FROM kill_switches ORDER BY engaged_ns"
    return [EngagedSwitch(*row) for row in conn.execute(sql)]


def engage_switch(switch: EngagedSwitch) -> StateChange:
    """Engages a switch, replacing one at the same scope and target (committed with its ``kill_switch`` event)."""
    return (
        "INSERT OR REPLACE INTO kill_switches (scope, target, reason, engaged_by, engaged_ns) VALUES (?, ?, ?, ?, ?)",
        astuple(switch),
    )


def release_switch(scope: str, target: str) -> StateChange:
    """Releases the switch at a scope and target (committed with its ``kill_switch`` event)."""
    return "DELETE FROM kill_switches WHERE scope = ? AND target = ?", (scope, target)


# --- forwarding cursor -----------------------------------------------------------------------------------------


def forwarder_acked_size(conn: sqlite3.Connection, origin: str) -> int:
    """How many entries of ``origin`` the collector has acknowledged (0 before the first acknowledgement)."""
    row = conn.execute("SELECT acked_size FROM forwarder_state WHERE origin = ?", (origin,)).fetchone()
    return 0 if row is None else int(row[0])


def advance_forwarder(origin: str, acked_size: int, cosigned_note: str) -> StateChange:
    """Moves the forwarding cursor to ``acked_size`` (committed with the ``cosignature`` receipt of that batch)."""
    return (
        "INSERT OR REPLACE INTO forwarder_state (origin, acked_size, cosigned_note) VALUES (?, ?, ?)",
        (origin, acked_size, cosigned_note),
    )


# --- retention -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneState:
    """Where retention last pruned: entries below ``pruned_before`` are gone; the rest continues from here."""

    pruned_before: int
    tree_state: bytes  # the RFC 6962 frontier of the tree over the pruned prefix (merkle.encode_state)
    last_leaf_hash: bytes  # the leaf hash of the last pruned entry, which the next entry chains to


def prune_state(conn: sqlite3.Connection) -> PruneState | None:
    """The last prune, or None if nothing was ever pruned."""
    row = conn.execute("SELECT pruned_before, tree_state, last_leaf_hash FROM prune_state WHERE id = 1").fetchone()
    return None if row is None else PruneState(int(row[0]), bytes(row[1]), bytes(row[2]))


def prune(state: PruneState) -> tuple[StateChange, StateChange]:
    """Records the prune and deletes the prefix it covers (committed with the signed ``prune`` marker).

    The row comes first: the journal's DELETE trigger refuses any seq at or above ``prune_state.pruned_before``.
    """
    return (
        (
            "INSERT OR REPLACE INTO prune_state (id, pruned_before, tree_state, last_leaf_hash) VALUES (1, ?, ?, ?)",
            (state.pruned_before, state.tree_state, state.last_leaf_hash),
        ),
        ("DELETE FROM journal WHERE seq < ?", (state.pruned_before,)),
    )


# --- derived sizes ---------------------------------------------------------------------------------------------


def journal_size(conn: sqlite3.Connection) -> int:
    """How many entries the journal has ever had: the newest seq + 1, pruned entries included.

    Not ``count(*)``: after retention prunes a prefix the rows left are fewer than the entries written, while the
    forwarding cursor (and every checkpoint) counts from seq 0.
    """
    (top,) = conn.execute("SELECT max(seq) FROM journal").fetchone()
    if top is not None:
        return int(top) + 1
    pruned = prune_state(conn)
    return 0 if pruned is None else pruned.pruned_before


@dataclass(frozen=True)
class ForwarderBacklog:
    """What a journal has forwarded, read from its file (``agentaudit forwarder status``)."""

    journal_size: int
    acked_size: int
    oldest_unsent_ns: int | None  # when the first unacknowledged entry was written; None without a backlog

    @property
    def backlog(self) -> int:
        """Entries not yet acknowledged by the collector."""
        return max(0, self.journal_size - self.acked_size)


def forwarder_backlog(conn: sqlite3.Connection) -> ForwarderBacklog:
    """The forwarding backlog of this journal (its one origin's cursor)."""
    row = conn.execute("SELECT acked_size FROM forwarder_state ORDER BY origin LIMIT 1").fetchone()
    acked = 0 if row is None else int(row[0])
    oldest = conn.execute("SELECT unix_nanos FROM journal WHERE seq = ?", (acked,)).fetchone()
    return ForwarderBacklog(journal_size(conn), acked, None if oldest is None else int(oldest[0]))
