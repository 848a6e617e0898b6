-- agentaudit collector, SQLite schema version 1 (embedded default of `agentaudit dev`).
-- Keep in step with ../postgres/0001_init.sql: both stores behave the same and share one test suite.

-- One row per origin (sidecar journal): its registered keys and the witness state, updated in the same
-- transaction as the entries it covers.
CREATE TABLE origins (
    origin          TEXT PRIMARY KEY,
    keys            TEXT NOT NULL,          -- C2SP verifier keys registered for the origin, one per line
    size            INTEGER NOT NULL,       -- entries held: seq 0 to size - 1
    last_leaf_hash  BLOB NOT NULL,          -- leaf hash of seq size - 1 (zeros when size is 0)
    tree_state      BLOB NOT NULL,          -- RFC 6962 tree over the held leaves (merkle.encode_state)
    cosigned_note   TEXT NOT NULL,          -- last checkpoint cosigned, with the cosignature ('' before the first)
    cosigned_root   BLOB NOT NULL           -- that checkpoint's root hash
) STRICT;

-- Every origin's journal entries, byte for byte as signed. The columns after unix_nanos are a search index
-- parsed from the signed body; verification never trusts them.
CREATE TABLE events (
    origin          TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    entry           BLOB NOT NULL,          -- exact envelope bytes (docs/journal.md)
    signature       BLOB NOT NULL,          -- Ed25519 over the domain-separated entry
    leaf_hash       BLOB NOT NULL,          -- SHA-256(0x00 | entry | signature)
    unix_nanos      INTEGER NOT NULL,
    kind            TEXT,
    event_id        TEXT,
    run_id          TEXT,
    step_id         INTEGER,
    tenant_id       TEXT,
    agent_id        TEXT,
    action          TEXT,
    decision        TEXT,
    reason          TEXT,
    action_key      TEXT,
    link_event_id   TEXT,
    PRIMARY KEY (origin, seq)
) STRICT;

CREATE INDEX events_run ON events (run_id, unix_nanos) WHERE run_id IS NOT NULL;
CREATE INDEX events_tenant ON events (tenant_id, unix_nanos);
CREATE INDEX events_reason ON events (reason, unix_nanos);
CREATE INDEX events_decision ON events (decision, unix_nanos);
CREATE INDEX events_action ON events (action, unix_nanos);
CREATE INDEX events_time ON events (unix_nanos);
CREATE INDEX events_event_id ON events (event_id);
CREATE INDEX events_link ON events (link_event_id) WHERE link_event_id IS NOT NULL;

-- Checkpoints refused as evidence of rollback or fork, next to the cosigned note they contradict.
CREATE TABLE evidence (
    origin          TEXT NOT NULL,
    note_hash       BLOB NOT NULL,          -- SHA-256 of the note: the same note sent again is kept once
    received_at     INTEGER NOT NULL,       -- unix seconds
    code            TEXT NOT NULL,          -- rollback | fork
    note            TEXT NOT NULL,          -- the offending checkpoint note, as received
    cosigned_note   TEXT NOT NULL,          -- the cosigned note it contradicts
    PRIMARY KEY (origin, note_hash)
) STRICT;

-- Append-only: entries and evidence are never changed or removed.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE refused'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events is append-only: DELETE refused'); END;
CREATE TRIGGER evidence_no_update BEFORE UPDATE ON evidence
BEGIN SELECT RAISE(ABORT, 'evidence is append-only: UPDATE refused'); END;
CREATE TRIGGER evidence_no_delete BEFORE DELETE ON evidence
BEGIN SELECT RAISE(ABORT, 'evidence is append-only: DELETE refused'); END;
