"""The journal database's state tables, and the only code that reads or writes them.

Five tables live beside the journal (``schema.STATE_DDL`` and ``prune_state`` in ``schema.DDL``): ``approvals``,
``approval_votes`` (four-eyes answers), ``kill_switches``, ``forwarder_state`` (the forwarding cursor) and
``prune_state`` (where retention pruned). They
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
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import astuple, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from gateway.errors import MalformedEntryError
from gateway.identity import normalise_identity
from gateway.journal.entry import decode_entry
from gateway.journal.schema import RARE_KINDS_WHERE
from gateway.journal.seal import SealedLookup
from gateway.journal.search_table import PRUNE_SQL

if TYPE_CHECKING:  # only a type here: the offline verifier imports this module and never the writer
    from gateway.journal.writer import StateChange

PENDING, GRANTED, DENIED, EXPIRED = "pending", "granted", "denied", "expired"
ABANDONED = "abandoned"
"""A granted approval nobody used within its use-by time (distinct from expired: never answered in time)."""

NEVER_NS = 2**63 - 1
"""``expires_ns`` of an approval that parks until answered (``expires_in: never``): the largest SQLite integer."""
DEFAULT_EXPIRES_S = 3600
"""An approval rule's ``expires_in`` when it names none (and a parked approval's grant's ``use_within``)."""
EXPIRES_NEVER = "never"
"""The pre-event's ``approval_expires_in_s`` for a rule with ``expires_in: never``."""


# --- approvals -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalVote:
    """One operator's answer to an approval (an ``approval_voted``, ``approval_granted`` or ``approval_denied``).

    ``identity`` is as authenticated; one vote per person is keyed by its normalised form (``approver``).
    """

    identity: str
    grant: bool
    channel: str
    comment: str
    voted_ns: int
    event_id: str
    via: str = ""

    @property
    def approver(self) -> str:
        """The normalised identity: the same person under any spelling."""
        return normalise_identity(self.identity)


@dataclass
class Approval:
    """One approval (mutable: its state moves pending → granted/denied/expired, granted → abandoned; used once).

    ``expires_ns`` is when the approval lapses in its current state: a pending one expires (nobody answered in
    time), a granted one is abandoned (nobody used it in time). Granting moves it to the grant's use-by time.
    """

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
    action_key: str  # the approval binding (ab_…) a resume must match; the column keeps its first name
    policy_rule: str
    approvers: tuple[str, ...]
    created_ns: int
    expires_ns: int
    resolved_by: str
    resolved_ns: int | None
    comment: str
    event_id: str
    # Not columns: how long a grant stays usable (None: as long as the ask could wait), how many distinct
    # approvers must grant it and the policy version it was asked under, all taken from the signed pre-event. Only
    # the signed derivation (``trusted_state``) and a new approval know them; a row read back has the defaults.
    use_within_s: int | None = None
    approvals_required: int = 1
    policy_version: str = ""
    # The answers so far, oldest first (the ``approval_votes`` rows, or the signed events that record them).
    votes: tuple[ApprovalVote, ...] = ()

    def grants(self) -> int:
        """How many distinct approvers have granted it so far."""
        return sum(1 for v in self.votes if v.grant)


def use_by_ns(approval: Approval, granted_ns: int) -> int:
    """When a grant of ``approval`` made at ``granted_ns`` is abandoned if nobody uses it.

    The rule's ``use_within`` when it set one, else its ``expires_in`` (both counted from the grant); an approval
    that parked (``expires_in: never``) gets the default hour, so a grant never stays usable for ever.
    """
    if approval.use_within_s is not None:
        seconds = approval.use_within_s
    elif approval.expires_ns >= NEVER_NS:
        seconds = DEFAULT_EXPIRES_S
    else:
        return granted_ns + max(0, approval.expires_ns - approval.created_ns)
    return granted_ns + seconds * 1_000_000_000


# In the dataclass's field order, so a row maps to an Approval positionally and back (``use_within_s`` aside).
_APPROVAL_COLUMNS = (
    "approval_id, state, used, tenant_id, run_id, step_id, agent_id, actor_type, actor_id, action, action_key, "
    "policy_rule, approvers, created_ns, expires_ns, resolved_by, resolved_ns, comment, event_id"
)
_SELECT_APPROVALS = f"SELECT {_APPROVAL_COLUMNS} FROM approvals"
_COLUMN_COUNT = len(_APPROVAL_COLUMNS.split(","))
_INSERT_APPROVAL = f"INSERT INTO approvals ({_APPROVAL_COLUMNS}) VALUES ({', '.join('?' * _COLUMN_COUNT)})"
_USED, _APPROVERS = 2, 12  # the columns stored as another type: used (INTEGER 0/1), approvers (a JSON list)


def _approval(row: tuple[Any, ...]) -> Approval:
    values = list(row)
    values[_USED] = bool(values[_USED])
    values[_APPROVERS] = tuple(json.loads(values[_APPROVERS]))
    return Approval(*values)


def _with_votes(conn: sqlite3.Connection, approvals: list[Approval]) -> list[Approval]:
    """The approvals with their ``approval_votes`` rows attached."""
    if not approvals:
        return approvals
    by_id: dict[str, list[ApprovalVote]] = {}
    ids = [a.approval_id for a in approvals]
    for start in range(0, len(ids), 500):  # well inside SQLite's bound on host parameters
        chunk = ids[start : start + 500]
        for approval_id, vote in _vote_rows(conn, f"approval_id IN ({', '.join('?' * len(chunk))})", chunk):
            by_id.setdefault(approval_id, []).append(vote)
    return [replace(a, votes=tuple(by_id.get(a.approval_id, ()))) for a in approvals]


def open_approvals(conn: sqlite3.Connection) -> list[Approval]:
    """Approvals still open: pending, or granted and not yet used (what the sidecar keeps in memory)."""
    sql = f"{_SELECT_APPROVALS} WHERE state = ? OR (state = ? AND used = 0)"
    return _with_votes(conn, [_approval(row) for row in conn.execute(sql, (PENDING, GRANTED))])


def approval(conn: sqlite3.Connection, approval_id: str) -> Approval | None:
    """The approval with this id, in any state, if any."""
    row = conn.execute(f"{_SELECT_APPROVALS} WHERE approval_id = ?", (approval_id,)).fetchone()
    return None if row is None else _with_votes(conn, [_approval(row)])[0]


def list_approvals(conn: sqlite3.Connection, state: str, tenant_id: str, limit: int) -> list[Approval]:
    """Up to ``limit`` approvals in ``state``, newest first, of one tenant when ``tenant_id`` is set."""
    if tenant_id:
        sql = f"{_SELECT_APPROVALS} WHERE state = ? AND tenant_id = ? ORDER BY created_ns DESC LIMIT ?"
        rows = conn.execute(sql, (state, tenant_id, limit))
    else:
        rows = conn.execute(f"{_SELECT_APPROVALS} WHERE state = ? ORDER BY created_ns DESC LIMIT ?", (state, limit))
    return _with_votes(conn, [_approval(row) for row in rows])


_VOTE_COLUMNS = "approval_id, identity, granted, channel, comment, voted_ns, event_id, via"


def _vote_rows(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> list[tuple[str, ApprovalVote]]:
    """(approval id, vote) rows, oldest first. A journal file no sidecar of this version has opened yet has no
    ``approval_votes`` table (the writer creates it on open): it has no votes."""
    sql = f"SELECT {_VOTE_COLUMNS} FROM approval_votes WHERE {where} ORDER BY voted_ns, approver"
    try:
        rows = conn.execute(sql, tuple(params)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    return [
        (str(aid), ApprovalVote(str(who), bool(granted), str(channel), str(comment), int(at), str(eid), str(via)))
        for aid, who, granted, channel, comment, at, eid, via in rows
    ]


def all_votes(conn: sqlite3.Connection) -> list[tuple[str, ApprovalVote]]:
    """Every vote row as (approval id, vote) (what reconciliation checks)."""
    return _vote_rows(conn, "1 = 1", ())


def insert_vote(approval_id: str, vote: ApprovalVote) -> StateChange:
    """Persists one operator's answer (committed with the ``approval_voted``, ``approval_granted`` or
    ``approval_denied`` event that records it).

    One vote per person is enforced on the signed votes before this is written; REPLACE lets a signed vote take
    the place of a row someone inserted by hand (which reconciliation reports), rather than fail on it.
    """
    return (
        "INSERT OR REPLACE INTO approval_votes (approval_id, approver, identity, granted, channel, via, comment, "
        "voted_ns, event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            approval_id,
            vote.approver,
            vote.identity,
            int(vote.grant),
            vote.channel,
            vote.via,
            vote.comment,
            vote.voted_ns,
            vote.event_id,
        ),
    )


def insert_approval(approval: Approval) -> StateChange:
    """Persists a new approval (committed with the pre-event that asked for it)."""
    values = list(astuple(approval))[:_COLUMN_COUNT]
    values[_USED] = int(approval.used)
    values[_APPROVERS] = json.dumps(list(approval.approvers))
    return _INSERT_APPROVAL, tuple(values)


def mark_approval_used(approval_id: str) -> StateChange:
    """Marks a granted approval used (committed with the resuming pre-event)."""
    return "UPDATE approvals SET used = 1 WHERE approval_id = ?", (approval_id,)


def resolve_approval(approval_id: str, state: str, resolved_by: str, resolved_ns: int, comment: str) -> StateChange:
    """Records a pending approval's denial or expiry (committed with that event)."""
    return (
        "UPDATE approvals SET state = ?, resolved_by = ?, resolved_ns = ?, comment = ? WHERE approval_id = ?",
        (state, resolved_by, resolved_ns, comment, approval_id),
    )


def grant_approval(approval_id: str, granted_by: str, granted_ns: int, comment: str, use_by: int) -> StateChange:
    """Records a pending approval's grant and its use-by time (committed with the ``approval_granted`` event)."""
    return (
        "UPDATE approvals SET state = ?, resolved_by = ?, resolved_ns = ?, comment = ?, expires_ns = ? "
        "WHERE approval_id = ?",
        (GRANTED, granted_by, granted_ns, comment, use_by, approval_id),
    )


def abandon_approval(approval_id: str) -> StateChange:
    """Records that a grant lapsed unused; who granted it stays (committed with ``approval_abandoned``)."""
    return "UPDATE approvals SET state = ? WHERE approval_id = ?", (ABANDONED, approval_id)


# --- kill switches ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngagedSwitch:
    """One engaged operator kill switch.

    ``via`` names the collector (its control key) whose fleet switch this is, "" for one engaged on this sidecar.
    The table has no column for it: it comes from the signed ``kill_switch`` event (so rows compare without it).
    """

    scope: str
    target: str
    reason: str
    engaged_by: str
    engaged_ns: int
    via: str = field(default="", compare=False)


def engaged_switches(conn: sqlite3.Connection) -> list[EngagedSwitch]:
    """Every engaged switch, oldest first."""
    sql = "SELECT scope, target, reason, engaged_by, engaged_ns FROM kill_switches ORDER BY engaged_ns"
    return [EngagedSwitch(*row) for row in conn.execute(sql)]


def engage_switch(switch: EngagedSwitch) -> StateChange:
    """Engages a switch, replacing one at the same scope and target (committed with its ``kill_switch`` event)."""
    return (
        "INSERT OR REPLACE INTO kill_switches (scope, target, reason, engaged_by, engaged_ns) VALUES (?, ?, ?, ?, ?)",
        (switch.scope, switch.target, switch.reason, switch.engaged_by, switch.engaged_ns),
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


def prune(state: PruneState) -> tuple[StateChange, StateChange, StateChange]:
    """Records the prune and deletes the prefix it covers (committed with the signed ``prune`` marker).

    The row comes first: the journal's DELETE trigger refuses any seq at or above ``prune_state.pruned_before``.
    The search table's rows for the pruned entries go with them (search_table.py: it holds only kept entries).
    """
    return (
        (
            "INSERT OR REPLACE INTO prune_state (id, pruned_before, tree_state, last_leaf_hash) VALUES (1, ?, ?, ?)",
            (state.pruned_before, state.tree_state, state.last_leaf_hash),
        ),
        ("DELETE FROM journal WHERE seq < ?", (state.pruned_before,)),
        (PRUNE_SQL, (state.pruned_before,)),
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


# --- what the signed events say (state follows signatures, docs/adr/0012) -----------------------------------------

APPROVAL_KINDS = {"approval_granted": GRANTED, "approval_denied": DENIED, "approval_expired": EXPIRED}
"""The events that resolve a pending approval, and the state each leaves it in."""
APPROVAL_ABANDONED_KIND = "approval_abandoned"
"""The event that closes a granted approval nobody used within its use-by time."""
APPROVAL_VOTED_KIND = "approval_voted"
"""Four-eyes: an approver's grant that is not yet the ``approvals_required``-th (the approval stays pending)."""
_FOLDED_KINDS = (
    *APPROVAL_KINDS,
    APPROVAL_ABANDONED_KIND,
    APPROVAL_VOTED_KIND,
    "kill_switch",
    "cosignature",
    "state_mismatch",
)
# The pre-event is stamped a moment after the approval row (both inside one Decide): times this close agree.
_CLOCK_SLACK_NS = 5_000_000_000


@dataclass(frozen=True)
class StateMismatch:
    """A state row that contradicts the signed events: ignored for enforcement and reported."""

    table: str
    key: str
    detail: str


class SignedStateFold:
    """Approvals, kill switches and the witnessed size as the signed journal events define them (pure).

    Feed it signed bodies in seq order (``add``); it never reads a table. ``verify`` feeds it every entry it has
    checked; the sidecar feeds it the entries :func:`signed_state` locates and re-verifies.
    """

    def __init__(self) -> None:
        self.approvals: dict[str, Approval] = {}
        self.switches: dict[tuple[str, str], EngagedSwitch] = {}
        self.cosigned_size = 0
        self.reported: set[tuple[str, str]] = set()  # (table, key) already journaled as state_mismatch
        # Per collector (``via``): the highest control seq of an applied message, and of a kill-switch change.
        self.control_seqs: dict[str, int] = {}
        self.switch_seqs: dict[str, int] = {}

    def add(self, kind: str, unix_nanos: int, body: dict[str, Any]) -> None:
        """Applies one signed event."""
        self._control_seq(kind, body)
        if kind == "pre_exec":
            self._pre_event(unix_nanos, body)
        elif kind == APPROVAL_VOTED_KIND:
            approval = self.approvals.get(str(body.get("approval_id", "")))
            if approval is not None and approval.state == PENDING:
                self._vote(approval, unix_nanos, body)
        elif kind in APPROVAL_KINDS:
            approval = self.approvals.get(str(body.get("approval_id", "")))
            if approval is not None and approval.state == PENDING:
                if kind != "approval_expired":
                    self._vote(approval, unix_nanos, body)
                approval.state = APPROVAL_KINDS[kind]
                actor = body.get("actor") or {}
                approval.resolved_by = "" if kind == "approval_expired" else str(actor.get("id", ""))
                approval.resolved_ns = unix_nanos
                approval.comment = str(body.get("comment", ""))
                if approval.state == GRANTED:
                    approval.expires_ns = use_by_ns(approval, unix_nanos)
        elif kind == APPROVAL_ABANDONED_KIND:
            approval = self.approvals.get(str(body.get("approval_id", "")))
            if approval is not None and approval.state == GRANTED and not approval.used:
                approval.state = ABANDONED
        elif kind == "kill_switch":
            key = (str(body.get("scope", "")), str(body.get("target", "")))
            if body.get("operation") == "engage":
                actor = body.get("actor") or {}
                self.switches[key] = EngagedSwitch(
                    *key, str(body.get("comment", "")), str(actor.get("id", "")), unix_nanos, str(body.get("via", ""))
                )
            else:
                self.switches.pop(key, None)
        elif kind == "cosignature" and isinstance(body.get("tree_size"), int):
            self.cosigned_size = max(self.cosigned_size, int(body["tree_size"]))
        elif kind == "state_mismatch":
            self.reported.add((str(body.get("table", "")), str(body.get("key", ""))))

    def _control_seq(self, kind: str, body: dict[str, Any]) -> None:
        """A change the sidecar applied from a collector's control message carries ``via`` and ``control_seq``.

        A kill-switch change made to follow a ``kill_switch_set`` (``control_kind``) carries the set's seq: it
        moves the switches' seq only, since votes older than the set may still be due (docs/fleet.md).
        """
        via, seq = body.get("via"), body.get("control_seq")
        if not via or not isinstance(via, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return
        if kind == "kill_switch":
            self.switch_seqs[via] = max(self.switch_seqs.get(via, 0), seq)
        if body.get("control_kind") != "kill_switch_set":
            self.control_seqs[via] = max(self.control_seqs.get(via, 0), seq)

    @staticmethod
    def _vote(approval: Approval, unix_nanos: int, body: dict[str, Any]) -> None:
        """Adds an operator's answer; a second answer of one person (under any spelling) is not counted."""
        actor = body.get("actor") or {}
        identity = str(actor.get("id", ""))
        if actor.get("type") != "operator" or not identity:
            return
        vote = ApprovalVote(
            identity=identity,
            grant=body.get("kind") != "approval_denied" and body.get("grant") is not False,
            channel=str(body.get("channel") or "cli"),
            comment=str(body.get("comment", "")),
            voted_ns=unix_nanos,
            event_id=str(body.get("event_id", "")),
            via=str(body.get("via") or ""),
        )
        if all(v.approver != vote.approver for v in approval.votes):
            approval.votes = (*approval.votes, vote)

    def _pre_event(self, unix_nanos: int, body: dict[str, Any]) -> None:
        approval_id = str(body.get("approval_id") or "")
        resumed = str(body.get("resumed_approval_id") or "")
        if resumed and body.get("decision") == "allow" and resumed in self.approvals:
            self.approvals[resumed].used = True
        if not approval_id or approval_id == resumed or body.get("decision") != "approval_required":
            return
        actor = body.get("actor") or {}
        expires_in = body.get("approval_expires_in_s")
        parks = expires_in == EXPIRES_NEVER
        expires_s = DEFAULT_EXPIRES_S if parks else int(expires_in or DEFAULT_EXPIRES_S)
        # Journals before use_within existed leave it out: a grant is then usable as long as the ask could wait.
        use_within_s = int(body.get("approval_use_within_s") or expires_s)
        self.approvals[approval_id] = Approval(
            approval_id=approval_id,
            state=PENDING,
            used=False,
            tenant_id=str(body.get("tenant_id", "")),
            run_id=str(body.get("run_id", "")),
            step_id=int(body.get("step_id") or 0),
            agent_id=str(body.get("agent_id", "")),
            actor_type=str(actor.get("type", "")),
            actor_id=str(actor.get("id", "")),
            action=str(body.get("action", "")),
            # The approval binding (journals before it existed bound approvals by the action key).
            action_key=str(body.get("approval_binding") or body.get("action_key", "")),
            policy_rule=str(body.get("policy_rule", "")),
            approvers=tuple(str(a) for a in body.get("approvers") or ()),
            created_ns=unix_nanos,
            expires_ns=NEVER_NS if parks else unix_nanos + expires_s * 1_000_000_000,
            resolved_by="",
            resolved_ns=None,
            comment="",
            event_id=str(body.get("event_id", "")),
            use_within_s=use_within_s,
            approvals_required=_approvals_required(body.get("approvals_required")),
            policy_version=str(body.get("policy_version") or ""),
        )

    def open_approvals(self) -> list[Approval]:
        """Approvals the signed events leave open: pending, or granted and not yet used."""
        return [a for a in self.approvals.values() if a.state == PENDING or (a.state == GRANTED and not a.used)]


def _approvals_required(value: object) -> int:
    """The pre-event's ``approvals_required``; journals before four-eyes leave it out (one approver)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


# The row never holds these (the signed pre-event does; votes are their own table, reconciled on their own).
_NOT_COLUMNS = ("use_within_s", "approvals_required", "policy_version", "votes")


def _same_approval(row: Approval, signed: Approval) -> bool:
    timeless = ("created_ns", "expires_ns", "resolved_ns", *_NOT_COLUMNS)
    if any(getattr(row, f.name) != getattr(signed, f.name) for f in fields(Approval) if f.name not in timeless):
        return False
    return abs(row.created_ns - signed.created_ns) <= _CLOCK_SLACK_NS and row.expires_ns <= signed.expires_ns


def reconcile_approvals(
    rows: list[Approval], fold: SignedStateFold, pruned_until_ns: int | None = None
) -> tuple[list[Approval], list[StateMismatch]]:
    """The open approvals to enforce (the signed ones; a row is kept only where it agrees) and every disagreement.

    ``rows`` are every approval row (any state): a row the signed events do not know, or one whose state, use or
    bindings differ, is a mismatch, as is a signed open approval whose row is missing.
    """
    mismatches: list[StateMismatch] = []
    by_id = {row.approval_id: row for row in rows}
    for row in rows:
        signed = fold.approvals.get(row.approval_id)
        open_row = row.state == PENDING or (row.state == GRANTED and not row.used)
        if signed is None and not open_row and pruned_until_ns is not None and row.created_ns < pruned_until_ns:
            continue  # a closed approval whose events retention pruned: nothing to enforce, nothing to check
        if signed is None:
            mismatches.append(StateMismatch("approvals", row.approval_id, "no signed approval_required pre-event"))
        elif not _same_approval(row, signed):
            detail = f"row says {row.state}{' used' if row.used else ''}, signed events say {signed.state}"
            mismatches.append(StateMismatch("approvals", row.approval_id, detail + (" used" if signed.used else "")))
    enforced = []
    for signed in fold.open_approvals():
        stored = by_id.get(signed.approval_id)
        if stored is None:
            mismatches.append(StateMismatch("approvals", signed.approval_id, "row missing for a signed open approval"))
        agreed = stored is not None and _same_approval(stored, signed)
        # The row may keep its (no later) times; what the pre-event asked for and the votes are the signed ones.
        signed_only = {name: getattr(signed, name) for name in _NOT_COLUMNS}
        enforced.append(replace(stored, **signed_only) if stored and agreed else signed)
    return enforced, mismatches


def reconcile_votes(
    rows: list[tuple[str, ApprovalVote]], fold: SignedStateFold, pruned_until_ns: int | None = None
) -> list[StateMismatch]:
    """Every ``approval_votes`` row that contradicts the signed events (which alone count, ``fold`` holds them).

    A row with no signed vote behind it (or one that differs) is a mismatch, as is a signed vote of a still pending
    approval whose row is missing (votes of resolved approvals are history the events keep; journals before
    four-eyes have no rows for them).
    """
    mismatches = []
    seen = set()
    for approval_id, row in rows:
        key = f"{approval_id}:{row.approver}"
        seen.add(key)
        signed_approval = fold.approvals.get(approval_id)
        if signed_approval is None:
            if pruned_until_ns is None or row.voted_ns >= pruned_until_ns:
                mismatches.append(StateMismatch("approval_votes", key, "no signed approval_required pre-event"))
            continue
        signed = next((v for v in signed_approval.votes if v.approver == row.approver), None)
        if signed is None:
            mismatches.append(StateMismatch("approval_votes", key, f"no signed vote of {row.identity}"))
        elif signed != row:
            detail = f"row says {'grant' if row.grant else 'deny'} at {row.voted_ns} ({row.event_id})"
            detail += f", signed event says {'grant' if signed.grant else 'deny'} at {signed.voted_ns}"
            mismatches.append(StateMismatch("approval_votes", key, detail + f" ({signed.event_id})"))
    for approval in fold.approvals.values():
        if approval.state != PENDING:
            continue
        for vote in approval.votes:
            key = f"{approval.approval_id}:{vote.approver}"
            if key not in seen:
                mismatches.append(StateMismatch("approval_votes", key, "row missing for a signed vote"))
    return mismatches


def reconcile_switches(
    rows: list[EngagedSwitch], fold: SignedStateFold, pruned_until_ns: int | None = None
) -> tuple[list[EngagedSwitch], list[StateMismatch]]:
    """The kill switches to enforce (those the signed events leave engaged) and every row that disagrees.

    A row older than a retention prune whose engage event is gone cannot be checked; it stays enforced (an extra
    switch only stops more), unreported.
    """
    mismatches = []
    enforced = dict(fold.switches)
    by_key = {(row.scope, row.target): row for row in rows}
    for key, row in by_key.items():
        if key not in fold.switches and pruned_until_ns is not None and row.engaged_ns < pruned_until_ns:
            enforced[key] = row
        elif fold.switches.get(key) != row:
            mismatches.append(StateMismatch("kill_switches", f"{key[0]}:{key[1]}", "no signed engage matches the row"))
    for key in fold.switches.keys() - by_key.keys():
        mismatches.append(StateMismatch("kill_switches", f"{key[0]}:{key[1]}", "row missing for a signed engage"))
    return sorted(enforced.values(), key=lambda s: s.engaged_ns), mismatches


def reconcile_cursor(acked_size: int, fold: SignedStateFold, origin: str) -> tuple[int, list[StateMismatch]]:
    """The forwarding cursor to use: never beyond the newest cosignature receipt's tree size."""
    if acked_size <= fold.cosigned_size:
        return acked_size, []
    detail = f"cursor {acked_size} is beyond the newest cosignature receipt ({fold.cosigned_size})"
    return fold.cosigned_size, [StateMismatch("forwarder_state", origin, detail)]


def all_approvals(conn: sqlite3.Connection) -> list[Approval]:
    """Every approval row, in any state (what reconciliation checks)."""
    return [_approval(row) for row in conn.execute(_SELECT_APPROVALS)]


@dataclass(frozen=True)
class TrustedState:
    """What the sidecar enforces after a start: the signed derivation, and the rows that disagreed with it."""

    approvals: list[Approval]
    switches: list[EngagedSwitch]
    acked_size: int
    mismatches: list[StateMismatch]
    reported: frozenset[tuple[str, str]]  # mismatches journaled by an earlier start (not journaled again)
    control_seqs: dict[str, int] = field(default_factory=dict)  # per collector: highest control seq applied
    switch_seqs: dict[str, int] = field(default_factory=dict)  # per collector: highest seq of a switch change


def trusted_state(
    conn: sqlite3.Connection,
    origin: str,
    signature_ok: Callable[[bytes, bytes], bool],
    key_ids: Collection[bytes] | None = None,
) -> TrustedState:
    """Derives state from the signed events and checks the tables against it (the sidecar's start).

    1. Locate the events that define state through the partial indexes of rare kinds and of approval requests:
       approval_required pre-events, approval votes, resolutions and abandonments, kill_switch, cosignature and
       earlier state_mismatch events;
       then the allowed pre-events of the runs that hold a granted approval (which may have used it), through the
       run index.
    2. Re-verify each located entry's signature over its stored bytes with ``signature_ok`` and read its kind,
       time and body from those bytes, never from the columns; an entry that fails is skipped (and is what
       ``agentaudit verify`` reports). An unsigned v2 entry is vouched for by its commit's seal, whose signature
       line must name one of ``key_ids`` when given.
    3. Fold them in seq order and reconcile every table against the result.
    """
    fold = SignedStateFold()
    kinds = ", ".join("?" * len(_FOLDED_KINDS))
    rows = _located(
        conn, f"(kind IN ({kinds}) AND {RARE_KINDS_WHERE}) OR decision = 'approval_required'", _FOLDED_KINDS
    )
    lookup = SealedLookup(conn, origin, signature_ok, key_ids)
    _fold(fold, rows, lookup)
    granted_runs = sorted({a.run_id for a in fold.approvals.values() if a.state == GRANTED})
    if granted_runs:
        fold = SignedStateFold()  # refold with the resumes in order (a use follows its grant)
        marks = ", ".join("?" * len(granted_runs))
        resumes = _located(conn, f"kind = 'pre_exec' AND decision = 'allow' AND run_id IN ({marks})", granted_runs)
        _fold(fold, sorted({*rows, *resumes}), lookup)
    pruned_until_ns = _pruned_until_ns(conn)
    approvals, mismatches = reconcile_approvals(all_approvals(conn), fold, pruned_until_ns)
    mismatches += reconcile_votes(all_votes(conn), fold, pruned_until_ns)
    switches, switch_mismatches = reconcile_switches(engaged_switches(conn), fold, pruned_until_ns)
    acked, cursor_mismatches = reconcile_cursor(forwarder_acked_size(conn, origin), fold, origin)
    return TrustedState(
        approvals,
        switches,
        acked,
        [*mismatches, *switch_mismatches, *cursor_mismatches],
        frozenset(fold.reported),
        dict(fold.control_seqs),
        dict(fold.switch_seqs),
    )


def _pruned_until_ns(conn: sqlite3.Connection) -> int | None:
    """When the oldest entry retention kept was written, if retention ever pruned (else None)."""
    pruned = prune_state(conn)
    if pruned is None:
        return None
    row = conn.execute("SELECT unix_nanos FROM journal WHERE seq = ?", (pruned.pruned_before,)).fetchone()
    return None if row is None else int(row[0])


def _located(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> list[tuple[int, bytes, bytes]]:
    sql = f"SELECT seq, entry, signature FROM journal WHERE {where} ORDER BY seq"
    return [(int(seq), bytes(entry), bytes(signature)) for seq, entry, signature in conn.execute(sql, tuple(params))]


def _fold(fold: SignedStateFold, rows: Iterable[tuple[int, bytes, bytes]], lookup: SealedLookup) -> None:
    for seq, raw, signature in rows:
        try:
            entry = decode_entry(raw)
            body = json.loads(entry.body)
        except (MalformedEntryError, ValueError):
            continue
        if entry.seq != seq or not isinstance(body, dict):
            continue
        if not lookup.authentic(seq, raw, signature):  # its signature, or (format v2) its commit's seal
            continue
        fold.add(str(body.get("kind", "")), entry.unix_nanos, body)
