-- bars_1h: bars_1m rolled up to 1 hour (see 0006_bars_rollup.sql for buckets and columns).
-- A plain view: always current, computed on read. For a time window call
-- bars_rollup(INTERVAL '1 hour', from_ts, to_ts) instead, which prunes bars_1m's partitions.
CREATE VIEW bars_1h AS
SELECT * FROM bars_rollup(INTERVAL '1 hour');
