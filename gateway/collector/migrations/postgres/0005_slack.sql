-- agentaudit collector, PostgreSQL schema version 5: approvals answered from Slack (docs/slack.md).
-- Keep in step with ../sqlite/0005_slack.sql. Written by gateway/slack/store.py.

-- Where each approval's Slack message is, so any replica can update it when the approval moves.
CREATE TABLE slack_messages (
    approval_id         text PRIMARY KEY,   -- fleet_approvals.approval_id (no foreign key: posting may win the race)
    channel             text NOT NULL,      -- the channel id chat.postMessage answered with
    ts                  text NOT NULL,      -- the message's timestamp: its id within the channel
    posted_ms           bigint NOT NULL,
    rendered            text NOT NULL,      -- what the message shows now (messages.version): updated on change
    settled             boolean NOT NULL    -- nothing more will change (denied, expired, abandoned, used)
);
CREATE INDEX slack_messages_unsettled ON slack_messages (settled, posted_ms);

-- Interaction requests already accepted, so a captured request replayed within the signature window is refused
-- by every replica. Rows are deleted once the window is past (a replay then fails the timestamp check anyway).
CREATE TABLE slack_replays (
    signature           text PRIMARY KEY,   -- X-Slack-Signature (v0=<hex HMAC>; covers the timestamp and body)
    request_ts          bigint NOT NULL,    -- X-Slack-Request-Timestamp, unix seconds
    expires_ms          bigint NOT NULL
);
CREATE INDEX slack_replays_expiry ON slack_replays (expires_ms);
