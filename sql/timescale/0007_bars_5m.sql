-- bars_5m: bars_1m rolled up to 5 minutes, as a continuous aggregate.
--
-- Same rows as the plain-PostgreSQL view (sql/postgres/0006_bars_rollup.sql): one per
-- (symbol, bucket) over all sources; open = first(open, ts), close = last(close, ts); vwap the
-- volume-weighted mean of the minutes' vwaps (null when their volume is 0).
-- Buckets are clock-aligned in New York: its UTC offset is a whole number of hours, so they are
-- the UTC buckets of time_bucket without a time zone, which also keeps the repeated 01:00 hour
-- at the end of DST as two buckets (a zone-aware bucket would merge them), as pandas does.
-- materialized_only = false (real-time aggregation; off by default since TimescaleDB 2.13) so a
-- read sees the minutes the refresh policy has not materialized yet, as the plain view does.
CREATE MATERIALIZED VIEW bars_5m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT symbol,
       time_bucket(INTERVAL '5 minutes', ts) AS ts,
       first(open, ts) AS open,
       max(high) AS high,
       min(low) AS low,
       last(close, ts) AS close,
       sum(volume) AS volume,
       sum(vwap * volume) / NULLIF(sum(CASE WHEN vwap IS NOT NULL THEN volume END), 0) AS vwap,
       sum(trade_count)::bigint AS trade_count
FROM bars_1m
GROUP BY symbol, time_bucket(INTERVAL '5 minutes', ts)
WITH NO DATA;

-- Refresh the recent buckets often; older ones only change on a late correction within the
-- window. The window stays far inside bars_1m's retention, so dropping old minutes never
-- empties rollups that were already materialized.
SELECT add_continuous_aggregate_policy(
    'bars_5m',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '5 minutes',
    schedule_interval => INTERVAL '5 minutes'
);
