-- bars_15m: bars_1m rolled up to 15 minutes, as a continuous aggregate, created again (it replaces
-- 0008_bars_15m.sql) to give the rows of the plain-PostgreSQL view on every row.
--
-- first(open, ts) / last(close, ts) picked an arbitrary row when two sources had a bar for the
-- same minute; the plain view (sql/postgres/0006_bars_rollup.sql) breaks such ties by source name.
-- The aggregates below are its expressions: open is the first minute's open and close the last
-- minute's close ordered by (ts, source); vwap the volume-weighted mean of the minutes' vwaps
-- (null when their volume is 0). Aggregates with ORDER BY or FILTER need the finalized form of
-- continuous aggregates, the default since TimescaleDB 2.7 and the only form it creates on
-- PostgreSQL 15 and later (the partial form refused them, and aggregates without a combine
-- function such as array_agg on PostgreSQL 15), so timescaledb.finalized is left unset.
-- Buckets are clock-aligned in New York: its UTC offset is a whole number of hours, so they are
-- the UTC buckets of time_bucket without a time zone, which also keeps the repeated 01:00 hour
-- at the end of DST as two buckets (a zone-aware bucket would merge them), as pandas does.
-- materialized_only = false (real-time aggregation; off by default since TimescaleDB 2.13) so a
-- read sees the minutes after the watermark, as the plain view does.
--
-- Upgrading in place: a continuous aggregate's query cannot be altered, so it is dropped (with
-- its refresh policy) and created again, empty (WITH NO DATA: creating it with data cannot run in
-- the migration's transaction).
DROP MATERIALIZED VIEW bars_15m;

CREATE MATERIALIZED VIEW bars_15m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT symbol,
       time_bucket(INTERVAL '15 minutes', ts) AS ts,
       (array_agg(open ORDER BY ts, source))[1] AS open,
       max(high) AS high,
       min(low) AS low,
       (array_agg(close ORDER BY ts DESC, source DESC))[1] AS close,
       sum(volume) AS volume,
       sum(vwap * volume) / NULLIF(sum(volume) FILTER (WHERE vwap IS NOT NULL), 0) AS vwap,
       sum(trade_count)::bigint AS trade_count
FROM bars_1m
GROUP BY symbol, time_bucket(INTERVAL '15 minutes', ts)
WITH NO DATA;

-- Refresh the recent buckets often, leaving the open bucket to real-time aggregation. Minutes
-- written later behind the watermark are queued in rollup_dirty by the writer (those stored
-- before this upgrade by 0045_rollup_dirty_stored_days.sql) and refreshed, whatever their age, by
-- TickStore.refresh_rollups(). bars_1m must be kept longer than this window: TimescaleDB deletes
-- the rollups of dropped minutes on the next refresh over them, so init_schema refuses a
-- Retention.bars_days shorter than the longest window plus two days.
SELECT add_continuous_aggregate_policy(
    'bars_15m',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '15 minutes',
    schedule_interval => INTERVAL '15 minutes'
);
