-- bars_rollup(width, from_ts, to_ts): bars_1m rolled up to `width`, the buckets that start in
-- [from_ts, to_ts). The views bars_5m .. bars_1d call it over all time; callers who want a window
-- call it with bounds, because a filter on a view's bucket column cannot reach bars_1m.ts and
-- so could not prune partitions. (It is a single-SELECT SQL function, so the planner inlines it.)
--
-- Buckets: 5m/15m/1h are clock-aligned in New York. New York's UTC offset is a whole number of
-- hours, so those buckets are the UTC ones (date_bin from a UTC midnight), which also keeps the
-- repeated 01:00 hour at the end of DST as two distinct buckets, as pandas does. 1d is the New
-- York calendar date (the session), starting at New York midnight.
-- Rows: one per (symbol, bucket) over all sources of bars_1m. open is the first minute's open,
-- close the last minute's close (ties between sources broken by source name, for determinism);
-- vwap is the volume-weighted mean of the minutes' vwaps, null when their volume is 0.
CREATE FUNCTION bars_rollup(
    width interval,
    from_ts timestamptz DEFAULT '-infinity',
    to_ts timestamptz DEFAULT 'infinity'
)
RETURNS TABLE (
    symbol      text,
    ts          timestamptz,
    open        double precision,
    high        double precision,
    low         double precision,
    close       double precision,
    volume      double precision,
    vwap        double precision,
    trade_count bigint
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT r.symbol, r.bucket, r.open, r.high, r.low, r.close, r.volume, r.vwap, r.trade_count
    FROM (
        SELECT b.symbol,
               CASE WHEN width = INTERVAL '1 day'
                    THEN date_trunc('day', b.ts, 'America/New_York')
                    ELSE date_bin(width, b.ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')
               END AS bucket,
               (array_agg(b.open ORDER BY b.ts, b.source))[1] AS open,
               max(b.high) AS high,
               min(b.low) AS low,
               (array_agg(b.close ORDER BY b.ts DESC, b.source DESC))[1] AS close,
               sum(b.volume) AS volume,
               sum(b.vwap * b.volume)
                   / NULLIF(sum(b.volume) FILTER (WHERE b.vwap IS NOT NULL), 0) AS vwap,
               sum(b.trade_count)::bigint AS trade_count
        FROM bars_1m b
        -- A bucket that starts before to_ts ends at most `width` later, plus an hour on the
        -- 25-hour New York day at the end of DST.
        WHERE b.ts >= from_ts AND b.ts < to_ts + width + INTERVAL '1 hour'
        GROUP BY 1, 2
    ) r
    WHERE r.bucket >= from_ts AND r.bucket < to_ts
$$;
