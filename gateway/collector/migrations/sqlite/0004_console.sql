-- agentaudit collector, SQLite schema version 4: an index for the web console (docs/console.md).
-- Keep in step with ../postgres/0004_console.sql.

-- The run timeline reads the kill switches and policy changes before a run's last event (kind = ?, newest
-- first): without it, a store of rare kinds among a million events is scanned whole through events_time.
CREATE INDEX events_kind ON events (kind, unix_nanos);
