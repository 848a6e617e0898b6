"""SQLite schema of the journal and the mapping from a signed body to its indexed columns.

The columns after ``leaf_hash`` are a convenience index parsed from the signed body when the entry is written;
they are never trusted: ``verify`` recomputes them from the stored entry bytes and reports any disagreement.
Pure (no I/O), so the writer, the reader and the offline verifier share one definition.
"""

from __future__ import annotations

import functools
from typing import Any

from gateway.config.limits import MAX_ROWS_PER_INSERT

SCHEMA_VERSION = "1"

# Body field → column. ``link_event_id`` holds the pre-event a post-event or violation refers to.
INDEXED_FIELDS: tuple[tuple[str, str], ...] = (
    ("kind", "kind"),
    ("event_id", "event_id"),
    ("run_id", "run_id"),
    ("step_id", "step_id"),
    ("tenant_id", "tenant_id"),
    ("agent_id", "agent_id"),
    ("action", "action"),
    ("decision", "decision"),
    ("reason", "reason"),
    ("action_key", "action_key"),
    ("pre_event_id", "link_event_id"),
)
COLUMNS: tuple[str, ...] = ("seq", "entry", "signature", "leaf_hash", "unix_nanos", *(c for _, c in INDEXED_FIELDS))

DDL = """
CREATE TABLE IF NOT EXISTS journal_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS journal (
    seq           INTEGER PRIMARY KEY,   -- equals the seq inside entry; contiguous from 0
    entry         BLOB NOT NULL,         -- exact signed envelope bytes (docs/journal.md)
    signature     BLOB NOT NULL,         -- Ed25519 over the domain-separated entry (v2: empty unless it travels alone)
    leaf_hash     BLOB NOT NULL,         -- SHA-256(0x00 | entry | signature)
    unix_nanos    INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    run_id        TEXT,
    step_id       INTEGER,
    tenant_id     TEXT,
    agent_id      TEXT,
    action        TEXT,
    decision      TEXT,
    reason        TEXT,
    action_key    TEXT,
    link_event_id TEXT
) STRICT;

CREATE UNIQUE INDEX IF NOT EXISTS journal_event_id ON journal (event_id);
CREATE INDEX IF NOT EXISTS journal_run ON journal (run_id, step_id) WHERE run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS journal_link ON journal (link_event_id) WHERE link_event_id IS NOT NULL;
-- Entries other than steps (checkpoints, receipts, prunes, approvals, operator events: a few in a thousand), for
-- the sidecar's own lookups by kind; a query uses it by repeating RARE_KINDS_WHERE verbatim. (value, seq) keys
-- append at the end of their run, so it stays cheap to maintain as the journal grows.
CREATE INDEX IF NOT EXISTS journal_rare_kinds ON journal (kind, seq) WHERE kind NOT IN ('pre_exec', 'post_exec');
-- Rare operator events (a trace's context), without indexing the millions of pre/post events by kind.
CREATE INDEX IF NOT EXISTS journal_operator_events ON journal (seq) WHERE kind IN ('kill_switch', 'policy_changed');
-- The approval requests the sidecar's start folds into its state (journal/state.py), without indexing every
-- entry's decision (keyed on the column so that the start's "kind IN (...) OR decision = ..." can use it).
CREATE INDEX IF NOT EXISTS journal_approval_requests ON journal (decision) WHERE decision = 'approval_required';

-- The filters a search uses (tenant, agent, action, decision, reason, kind, time; docs/investigate.md) are indexed
-- here, not on the journal: the writer copies the entries' columns in batches, inside a later commit
-- (journal/search_table.py, docs/adr/0030-search-table-filled-in-batches.md). Derived and unsigned like the
-- columns it copies; it holds every entry from the oldest kept up to its largest seq, and a search reads the newer
-- entries from the journal itself.
CREATE TABLE IF NOT EXISTS journal_search (
    seq        INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    unix_nanos INTEGER NOT NULL,
    tenant_id  TEXT,
    agent_id   TEXT,
    action     TEXT,
    decision   TEXT,
    reason     TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS journal_search_tenant ON journal_search (tenant_id, seq) WHERE tenant_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS journal_search_agent ON journal_search (agent_id, seq) WHERE agent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS journal_search_action ON journal_search (action, seq) WHERE action IS NOT NULL;
CREATE INDEX IF NOT EXISTS journal_search_decision ON journal_search (decision, seq) WHERE decision IS NOT NULL;
CREATE INDEX IF NOT EXISTS journal_search_reason ON journal_search (reason, seq) WHERE reason IS NOT NULL;
CREATE INDEX IF NOT EXISTS journal_search_kind ON journal_search (kind, seq);
CREATE INDEX IF NOT EXISTS journal_search_time ON journal_search (unix_nanos);

-- Retention: entries below pruned_before were removed, as a signed prune marker entry records (with the Merkle
-- frontier and last leaf hash there, so the rest still verifies). Written only with that marker, in one transaction.
CREATE TABLE IF NOT EXISTS prune_state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_before  INTEGER NOT NULL,
    tree_state     BLOB NOT NULL,
    last_leaf_hash BLOB NOT NULL
) STRICT;

-- Format v2 (ADR 0024): the seal of each group commit, written in the commit's transaction.
-- ``note`` is what is trusted (a signed checkpoint, gateway/journal/seal.py); ``tree_state`` only lets the writer
-- restart without rehashing the journal (verify recomputes the tree). Empty in a v1 journal.
CREATE TABLE IF NOT EXISTS journal_seals (
    size       INTEGER PRIMARY KEY,   -- entries the seal covers: seq 0 .. size - 1 (the commit's end)
    note       TEXT NOT NULL,         -- the signed seal note
    tree_state BLOB NOT NULL          -- merkle.encode_state of the tree at size (untrusted)
) STRICT;
CREATE TRIGGER IF NOT EXISTS journal_seals_no_update BEFORE UPDATE ON journal_seals
BEGIN SELECT RAISE(ABORT, 'journal_seals is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS journal_seals_no_delete BEFORE DELETE ON journal_seals
BEGIN SELECT RAISE(ABORT, 'journal_seals is append-only: DELETE refused'); END;

-- Append-only: the only way in is INSERT, and the only DELETE is of the prefix a prune marker authorises.
CREATE TRIGGER IF NOT EXISTS journal_no_update BEFORE UPDATE ON journal
BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE refused'); END;
DROP TRIGGER IF EXISTS journal_no_delete;
CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
WHEN OLD.seq >= coalesce((SELECT pruned_before FROM prune_state WHERE id = 1), 0)
BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS journal_meta_no_update BEFORE UPDATE ON journal_meta
BEGIN SELECT RAISE(ABORT, 'journal_meta is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS journal_meta_no_delete BEFORE DELETE ON journal_meta
BEGIN SELECT RAISE(ABORT, 'journal_meta is append-only: DELETE refused'); END;
"""

# Operational state beside the journal: approvals and operator kill switches change over time, so they cannot be
# journal entries. They are not signed and never verified; instead every change to them is journaled as a signed
# event in the same SQLite transaction (see JournalWriter.append's ``state`` argument), so the two cannot diverge.
STATE_DDL = """
CREATE TABLE IF NOT EXISTS approvals (
    approval_id TEXT PRIMARY KEY,
    state       TEXT NOT NULL,            -- pending | granted | denied | expired
    used        INTEGER NOT NULL DEFAULT 0,
    tenant_id   TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    step_id     INTEGER NOT NULL,
    agent_id    TEXT NOT NULL,
    actor_type  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    action      TEXT NOT NULL,
    action_key  TEXT NOT NULL,
    policy_rule TEXT NOT NULL,
    approvers   TEXT NOT NULL,            -- JSON list
    created_ns  INTEGER NOT NULL,
    expires_ns  INTEGER NOT NULL,
    resolved_by TEXT NOT NULL DEFAULT '',
    resolved_ns INTEGER,
    comment     TEXT NOT NULL DEFAULT '',
    event_id    TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS approvals_open ON approvals (state, used);

-- Four-eyes: every operator answer to an approval (approval_voted, and the approval_granted or approval_denied that
-- resolved it), one per person: ``approver`` is the normalised identity. Created here for existing journals too.
CREATE TABLE IF NOT EXISTS approval_votes (
    approval_id TEXT NOT NULL,
    approver    TEXT NOT NULL,            -- normalise_identity(identity): one vote per person, under any spelling
    identity    TEXT NOT NULL,            -- as authenticated
    granted     INTEGER NOT NULL,         -- 1 approve, 0 deny
    channel     TEXT NOT NULL,
    via         TEXT NOT NULL DEFAULT '',
    comment     TEXT NOT NULL DEFAULT '',
    voted_ns    INTEGER NOT NULL,
    event_id    TEXT NOT NULL,            -- the signed event that records the vote
    PRIMARY KEY (approval_id, approver)
) STRICT;

CREATE TABLE IF NOT EXISTS forwarder_state (
    origin        TEXT PRIMARY KEY,
    acked_size    INTEGER NOT NULL,       -- entries the collector has acknowledged (the forwarding cursor)
    cosigned_note TEXT NOT NULL           -- the collector's latest cosigned checkpoint
) STRICT;

CREATE TABLE IF NOT EXISTS kill_switches (
    scope      TEXT NOT NULL,             -- global | tenant | agent | run
    target     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    engaged_by TEXT NOT NULL,
    engaged_ns INTEGER NOT NULL,
    PRIMARY KEY (scope, target)
) STRICT;
"""

_ROW_PLACEHOLDERS = "(" + ", ".join("?" * len(COLUMNS)) + ")"


@functools.lru_cache(maxsize=MAX_ROWS_PER_INSERT)
def insert_sql(rows: int) -> str:
    """A multi-row INSERT for ``rows`` entries (one statement, so one transaction in autocommit mode)."""
    if not 1 <= rows <= MAX_ROWS_PER_INSERT:
        raise ValueError(f"an INSERT holds 1..{MAX_ROWS_PER_INSERT} rows, not {rows}")
    return f"INSERT INTO journal ({', '.join(COLUMNS)}) VALUES " + ", ".join([_ROW_PLACEHOLDERS] * rows)


_INTEGER_COLUMNS = frozenset({"step_id"})
_SQLITE_MAX_INT = 2**63 - 1


# The exact WHERE term of the journal_rare_kinds partial index (every kind but the steps'): a lookup of such a kind
# on the journal repeats it verbatim, so that SQLite reads that index and not the whole journal.
RARE_KINDS_WHERE = "kind NOT IN ('pre_exec', 'post_exec')"

OPERATOR_CONTEXT_KINDS = ("kill_switch", "policy_changed")
# The exact WHERE term of the journal_operator_events partial index: SQLite uses that index only for queries that
# repeat it verbatim.
OPERATOR_CONTEXT_WHERE = "kind IN ('kill_switch', 'policy_changed')"


def indexed_values(body: dict[str, Any]) -> tuple[Any, ...]:
    """The indexed column values for a body, in ``INDEXED_FIELDS`` order.

    A value is indexed only if its type fits the column (a non-empty string for TEXT, an integer within SQLite's
    range for INTEGER); anything else is NULL. That keeps the mapping deterministic for writer and verifier alike
    and means SQLite never coerces a value, so an odd body can neither fail a whole batch nor verify differently.
    """
    values: list[int | str | None] = []
    for field, integer in _FIELD_IS_INTEGER:
        value = body.get(field)
        if integer:
            fits = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _SQLITE_MAX_INT
            values.append(int(value) if fits and isinstance(value, int) else None)
        elif type(value) is str:  # the usual case, told without isinstance (the writer and every checker run this)
            values.append(value or None)
        else:  # a str subclass (an enum's value) is indexed as its plain string
            values.append(str(value) if isinstance(value, str) and value != "" else None)
    return tuple(values)


_FIELD_IS_INTEGER = tuple((field, column in _INTEGER_COLUMNS) for field, column in INDEXED_FIELDS)
