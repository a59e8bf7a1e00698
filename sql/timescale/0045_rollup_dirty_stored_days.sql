-- The minutes stored before 0041..0044 created the rollups again, queued for their refresh.
--
-- The new aggregates are empty, and real-time aggregation covers only what is after their
-- watermark, which a policy's first run moves to the present: every New York day from the first
-- minute of bars_1m to the last is queued for every rollup, and refreshed by
-- TickStore.refresh_rollups() (`market-platform db init` runs it after migrating; read_bars
-- refreshes the days it reads first).
INSERT INTO rollup_dirty (rollup, day, first_ts, last_ts)
SELECT r.rollup, d::date,
       d AT TIME ZONE 'America/New_York',
       (d + INTERVAL '1 day') AT TIME ZONE 'America/New_York' - INTERVAL '1 microsecond'
FROM generate_series(
    (SELECT (min(ts) AT TIME ZONE 'America/New_York')::date::timestamp FROM bars_1m),
    (SELECT (max(ts) AT TIME ZONE 'America/New_York')::date::timestamp FROM bars_1m),
    INTERVAL '1 day'
) AS d
CROSS JOIN unnest(ARRAY['bars_5m', 'bars_15m', 'bars_1h', 'bars_1d']) AS r(rollup)
ORDER BY 1, 2
ON CONFLICT (rollup, day) DO UPDATE
SET first_ts = EXCLUDED.first_ts, last_ts = EXCLUDED.last_ts, version = rollup_dirty.version + 1,
    noted_at = now();
