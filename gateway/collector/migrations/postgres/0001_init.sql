-- agentaudit collector, PostgreSQL schema version 1 (production).
-- Runs with search_path set to the collector's schema. Keep in step with ../sqlite/0001_init.sql: both
-- stores behave the same and share one test suite.

-- One row per origin (sidecar journal): its registered keys and the witness state, locked (FOR UPDATE) for
-- the whole ingest and updated in the same transaction as the entries it covers.
CREATE TABLE origins (
    origin          text PRIMARY KEY,
    keys            text NOT NULL,          -- C2SP verifier keys registered for the origin, one per line
    size            bigint NOT NULL,        -- entries held: seq 0 to size - 1
    last_leaf_hash  bytea NOT NULL,         -- leaf hash of seq size - 1 (zeros when size is 0)
    tree_state      bytea NOT NULL,         -- RFC 6962 tree over the held leaves (merkle.encode_state)
    cosigned_note   text NOT NULL,          -- last checkpoint cosigned, with the cosignature ('' before the first)
    cosigned_root   bytea NOT NULL          -- that checkpoint's root hash
);

-- Every origin's journal entries, byte for byte as signed. The columns after unix_nanos are a search index
-- parsed from the signed body; verification never trusts them.
CREATE TABLE events (
    origin          text NOT NULL,
    seq             bigint NOT NULL,
    entry           bytea NOT NULL,         -- exact envelope bytes (docs/journal.md)
    signature       bytea NOT NULL,         -- Ed25519 over the domain-separated entry
    leaf_hash       bytea NOT NULL,         -- SHA-256(0x00 | entry | signature)
    unix_nanos      bigint NOT NULL,
    kind            text,
    event_id        text,
    run_id          text,
    step_id         bigint,
    tenant_id       text,
    agent_id        text,
    action          text,
    decision        text,
    reason          text,
    action_key      text,
    link_event_id   text,
    PRIMARY KEY (origin, seq)
);

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
    origin          text NOT NULL,
    note_hash       bytea NOT NULL,         -- SHA-256 of the note: the same note sent again is kept once
    received_at     bigint NOT NULL,        -- unix seconds
    code            text NOT NULL,          -- rollback | fork
    note            text NOT NULL,          -- the offending checkpoint note, as received
    cosigned_note   text NOT NULL,          -- the cosigned note it contradicts
    PRIMARY KEY (origin, note_hash)
);

-- Append-only: entries and evidence are never changed or removed (TRUNCATE included).
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER evidence_append_only BEFORE UPDATE OR DELETE ON evidence
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER evidence_no_truncate BEFORE TRUNCATE ON evidence
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
