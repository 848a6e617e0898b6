-- agentaudit collector, SQLite schema version 6: console sessions shared by every replica (docs/console.md).
-- Keep in step with ../postgres/0006_console_sessions.sql (the column comments are there). Written by
-- gateway/console/auth.py.

CREATE TABLE console_sessions (
    sid_sha256          TEXT PRIMARY KEY,
    operator            TEXT NOT NULL,
    roles               TEXT NOT NULL,
    csrf                TEXT NOT NULL,
    via                 TEXT NOT NULL,
    opened_ms           INTEGER NOT NULL,
    expires_ms          INTEGER NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_ms);

CREATE TABLE console_links (
    link_sha256         TEXT PRIMARY KEY,
    operator            TEXT NOT NULL,
    roles               TEXT NOT NULL,
    expires_ms          INTEGER NOT NULL
);
