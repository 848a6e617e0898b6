-- agentaudit collector, SQLite schema version 5: approvals answered from Slack (docs/slack.md).
-- Keep in step with ../postgres/0005_slack.sql (the column comments are there). Written by gateway/slack/store.py.

CREATE TABLE slack_messages (
    approval_id         TEXT PRIMARY KEY,
    channel             TEXT NOT NULL,
    ts                  TEXT NOT NULL,
    posted_ms           INTEGER NOT NULL,
    rendered            TEXT NOT NULL,
    settled             INTEGER NOT NULL
) STRICT;
CREATE INDEX slack_messages_unsettled ON slack_messages (settled, posted_ms);

CREATE TABLE slack_replays (
    signature           TEXT PRIMARY KEY,
    request_ts          INTEGER NOT NULL,
    expires_ms          INTEGER NOT NULL
) STRICT;
CREATE INDEX slack_replays_expiry ON slack_replays (expires_ms);
