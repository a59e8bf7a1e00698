-- Day partitions of quotes, trades and bars_1m on plain PostgreSQL.
--
-- One partition per New York calendar day, [00:00, 24:00) America/New_York, named
-- <table>_pYYYYMMDD. A stock session (04:00-20:00 New York) then lives in exactly one
-- partition, so the stream writes to one partition all day, a session's quotes are archived
-- and dropped as a unit, and retention counts New York days like the trading_days partitions.
-- Crypto runs around the clock and is simply split at New York midnight. DST days make a
-- partition 23 or 25 hours long, which range partitioning does not mind.
--
-- Identifiers are quoted with format('%I') and bounds with format('%L'); nothing is spliced.

CREATE FUNCTION ensure_day_partition(parent text, day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    child text := parent || '_p' || to_char(day, 'YYYYMMDD');
    lower_bound timestamptz := day::timestamp AT TIME ZONE 'America/New_York';
    upper_bound timestamptz := (day + 1)::timestamp AT TIME ZONE 'America/New_York';
BEGIN
    IF to_regclass(quote_ident(child)) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Two writers may ask for the same new day at once: serialise creators per parent, then
    -- look again, so neither fails on the other's CREATE.
    PERFORM pg_advisory_xact_lock(hashtext('market_platform.day_partition'), hashtext(parent));
    IF to_regclass(quote_ident(child)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                   child, parent, lower_bound, upper_bound);
    RETURN true;
END
$$;

-- The day partitions of `parent` with their New York day, oldest first.
CREATE FUNCTION day_partitions(parent text)
RETURNS TABLE (partition_name text, day date)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           to_date(substring(c.relname FROM '_p([0-9]{8})$'), 'YYYYMMDD')
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = to_regclass(quote_ident(parent))
      AND c.relname ~ '_p[0-9]{8}$'
    ORDER BY 2
$$;

-- Drop the day partitions of `parent` whose day is before `keep_from`; returns their names.
CREATE FUNCTION drop_day_partitions(parent text, keep_from date) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('market_platform.day_partition'), hashtext(parent));
    FOR part IN SELECT * FROM day_partitions(parent) WHERE day < keep_from LOOP
        EXECUTE format('DROP TABLE %I', part.partition_name);
        RETURN NEXT part.partition_name;
    END LOOP;
END
$$;
