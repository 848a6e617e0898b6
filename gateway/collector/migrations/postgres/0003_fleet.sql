-- agentaudit collector, PostgreSQL schema version 3: the fleet control plane (docs/fleet.md, ADR 0016).
-- Keep in step with ../sqlite/0003_fleet.sql.

-- The fleet's approvals, mirrored from the sidecars' signed journal entries (verified against the origin's keys
-- before they are believed). The sidecar's entries win: state_seq is the seq of the entry that set the state,
-- and only a later entry of the same origin moves it; a collector vote moves a pending one only.
CREATE TABLE fleet_approvals (
    approval_id         text PRIMARY KEY,
    origin              text NOT NULL,      -- the sidecar journal the approval lives in
    state               text NOT NULL,      -- pending | granted | denied | expired | abandoned | used
    state_seq           bigint NOT NULL,    -- seq of the origin's entry that set state (-1: none yet)
    event_seq           bigint NOT NULL,    -- seq of the approval_required pre-event (-1: not seen yet)
    tenant_id           text NOT NULL,
    agent_id            text NOT NULL,
    run_id              text NOT NULL,
    step_id             bigint NOT NULL,
    actor_id            text NOT NULL,      -- who initiated the run (never its approver)
    action              text NOT NULL,
    policy_rule         text NOT NULL,
    reason              text NOT NULL,
    args                text NOT NULL,      -- the redacted args, RFC 8785 JSON exactly as journaled
    redacted_paths      text NOT NULL,      -- JSON list
    approvers           text NOT NULL,      -- JSON list: identities or role:NAME (empty: any approver)
    approvals_required  integer NOT NULL,
    created_ms          bigint NOT NULL,
    expires_ms          bigint,             -- NULL: parks until answered
    resolved_by         text NOT NULL,
    resolved_ms         bigint,
    comment             text NOT NULL,
    policy_version      text NOT NULL
);
CREATE INDEX fleet_approvals_state ON fleet_approvals (state, created_ms);

-- Every approver's answer, from the fleet API (act > 0) or the sidecar's journal (act = 0): one per
-- (approval, normalised approver), so one person is never counted twice under two spellings.
CREATE TABLE fleet_votes (
    approval_id         text NOT NULL REFERENCES fleet_approvals (approval_id),
    approver_key        text NOT NULL,      -- gateway.identity.normalise_identity(approver)
    approver            text NOT NULL,
    is_grant            boolean NOT NULL,
    channel             text NOT NULL,
    comment             text NOT NULL,
    at_ms               bigint NOT NULL,
    act                 bigint NOT NULL,    -- control_log id of the act (0: learned from the sidecar's journal)
    PRIMARY KEY (approval_id, approver_key)
);

-- The fleet kill switches engaged through the collector (the complete set every sidecar receives first).
CREATE TABLE fleet_kill_switches (
    scope               text NOT NULL,
    target              text NOT NULL,      -- '' for global
    reason              text NOT NULL,
    operator            text NOT NULL,
    channel             text NOT NULL,
    engaged_ms          bigint NOT NULL,
    act                 bigint NOT NULL,
    PRIMARY KEY (scope, target)
);

-- The collector's central journal of operator acts; its id is the fleet's control sequence, shared by the
-- replicas. Each row is signed by the control key over its canonical JSON (gateway.collector.fleet.act_body),
-- so an edit is detected; appends are serialised (an advisory lock) so ids commit in order.
CREATE TABLE control_log (
    id                  bigserial PRIMARY KEY,
    kind                text NOT NULL,      -- approval_vote | kill_switch
    origin              text NOT NULL,      -- the sidecar it is for; '' for all
    fields              text NOT NULL,      -- RFC 8785 JSON of the kind's fields
    operator            text NOT NULL,
    channel             text NOT NULL,
    at_ms               bigint NOT NULL,
    signature           bytea NOT NULL
);
CREATE INDEX control_log_origin ON control_log (origin, id);
CREATE TRIGGER control_log_append_only BEFORE UPDATE OR DELETE ON control_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER control_log_no_truncate BEFORE TRUNCATE ON control_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Which sidecars hold a control stream, on which replica, and the last control seq each acknowledged.
CREATE TABLE fleet_origins (
    origin              text PRIMARY KEY,
    connected           boolean NOT NULL,
    replica             text NOT NULL,
    last_contact_ms     bigint,
    applied_seq         bigint NOT NULL
);
