-- agentaudit collector, PostgreSQL schema version 2: retention (docs/collector.md, "Retention").
-- Keep in step with ../sqlite/0002_retention.sql.

-- events stays append-only (UPDATE and TRUNCATE are still always refused), except for a DELETE of rows older
-- than the transaction-local setting agentaudit.prune_before, which only the store's prune sets
-- (set_config(..., true): it ends with the transaction). Unset or empty: every DELETE is refused.
CREATE FUNCTION events_delete_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before_ns bigint := NULLIF(current_setting('agentaudit.prune_before', true), '')::bigint;
BEGIN
    IF before_ns IS NOT NULL AND OLD.unix_nanos < before_ns THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events is append-only: DELETE refused';
END
$$;

DROP TRIGGER events_append_only ON events;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_delete_guard();
