-- agentaudit collector, SQLite schema version 3: the fleet control plane (docs/fleet.md, ADR 0016).
-- Keep in step with ../postgres/0003_fleet.sql (the column comments are there).

CREATE TABLE fleet_approvals (
    approval_id         TEXT PRIMARY KEY,
    origin              TEXT NOT NULL,
    state               TEXT NOT NULL,
    state_seq           INTEGER NOT NULL,
    event_seq           INTEGER NOT NULL,
    tenant_id           TEXT NOT NULL,
    agent_id            TEXT NOT NULL,
    run_id              TEXT NOT NULL,
    step_id             INTEGER NOT NULL,
    actor_id            TEXT NOT NULL,
    action              TEXT NOT NULL,
    policy_rule         TEXT NOT NULL,
    reason              TEXT NOT NULL,
    args                TEXT NOT NULL,
    redacted_paths      TEXT NOT NULL,
    approvers           TEXT NOT NULL,
    approvals_required  INTEGER NOT NULL,
    created_ms          INTEGER NOT NULL,
    expires_ms          INTEGER,
    resolved_by         TEXT NOT NULL,
    resolved_ms         INTEGER,
    comment             TEXT NOT NULL,
    policy_version      TEXT NOT NULL
) STRICT;
CREATE INDEX fleet_approvals_state ON fleet_approvals (state, created_ms);

CREATE TABLE fleet_votes (
    approval_id         TEXT NOT NULL REFERENCES fleet_approvals (approval_id),
    approver_key        TEXT NOT NULL,
    approver            TEXT NOT NULL,
    is_grant            INTEGER NOT NULL,
    channel             TEXT NOT NULL,
    comment             TEXT NOT NULL,
    at_ms               INTEGER NOT NULL,
    act                 INTEGER NOT NULL,
    PRIMARY KEY (approval_id, approver_key)
) STRICT;

CREATE TABLE fleet_kill_switches (
    scope               TEXT NOT NULL,
    target              TEXT NOT NULL,
    reason              TEXT NOT NULL,
    operator            TEXT NOT NULL,
    channel             TEXT NOT NULL,
    engaged_ms          INTEGER NOT NULL,
    act                 INTEGER NOT NULL,
    PRIMARY KEY (scope, target)
) STRICT;

-- AUTOINCREMENT: an id is never reused, so the fleet sequence only grows. Appends run under BEGIN IMMEDIATE.
CREATE TABLE control_log (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind                TEXT NOT NULL,
    origin              TEXT NOT NULL,
    fields              TEXT NOT NULL,
    operator            TEXT NOT NULL,
    channel             TEXT NOT NULL,
    at_ms               INTEGER NOT NULL,
    signature           BLOB NOT NULL
) STRICT;
CREATE INDEX control_log_origin ON control_log (origin, id);
CREATE TRIGGER control_log_no_update BEFORE UPDATE ON control_log
BEGIN SELECT RAISE(ABORT, 'control_log is append-only: UPDATE refused'); END;
CREATE TRIGGER control_log_no_delete BEFORE DELETE ON control_log
BEGIN SELECT RAISE(ABORT, 'control_log is append-only: DELETE refused'); END;

CREATE TABLE fleet_origins (
    origin              TEXT PRIMARY KEY,
    connected           INTEGER NOT NULL,
    replica             TEXT NOT NULL,
    last_contact_ms     INTEGER,
    applied_seq         INTEGER NOT NULL
) STRICT;
