-- agentaudit collector, SQLite schema version 2: retention (docs/collector.md, "Retention").
-- Keep in step with ../postgres/0002_retention.sql.

-- One row: events with unix_nanos below before_ns may be deleted. The store's prune sets it inside the same
-- transaction as its DELETE and resets it before committing, so outside a prune no DELETE is authorised.
CREATE TABLE retention_window (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    before_ns       INTEGER NOT NULL        -- smallest int64 when closed: no row is older
) STRICT;
INSERT INTO retention_window (id, before_ns) VALUES (1, -9223372036854775808);

-- events stays append-only (UPDATE is still always refused), except for the DELETE the window authorises.
-- A missing row or NULL reads as closed.
DROP TRIGGER events_no_delete;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.unix_nanos >= IFNULL((SELECT before_ns FROM retention_window WHERE id = 1), -9223372036854775808)
BEGIN SELECT RAISE(ABORT, 'events is append-only: DELETE refused'); END;
