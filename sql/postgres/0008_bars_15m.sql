-- bars_15m: bars_1m rolled up to 15 minutes (see 0006_bars_rollup.sql for buckets and columns).
-- A plain view: always current, computed on read. For a time window call
-- bars_rollup(INTERVAL '15 minutes', from_ts, to_ts) instead, which prunes bars_1m's partitions.
CREATE VIEW bars_15m AS
SELECT * FROM bars_rollup(INTERVAL '15 minutes');
