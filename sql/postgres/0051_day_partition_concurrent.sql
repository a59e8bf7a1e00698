-- ensure_day_partition, safe when two sessions create the same day at once (the stream's writer
-- and its gap repair, a backfill): after the advisory lock, to_regclass() may still answer from a
-- catalog cache that has not seen the other session's committed CREATE, and the CREATE then fails
-- with duplicate_table. That failure means the partition exists, which is what was asked.
CREATE OR REPLACE FUNCTION ensure_day_partition(parent text, day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    child text := parent || '_p' || to_char(day, 'YYYYMMDD');
    lower_bound timestamptz := day::timestamp AT TIME ZONE 'America/New_York';
    upper_bound timestamptz := (day + 1)::timestamp AT TIME ZONE 'America/New_York';
BEGIN
    IF to_regclass(quote_ident(child)) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('market_platform.day_partition'), hashtext(parent));
    IF to_regclass(quote_ident(child)) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       child, parent, lower_bound, upper_bound);
    EXCEPTION WHEN duplicate_table THEN
        RETURN false;
    END;
    RETURN true;
END
$$;
