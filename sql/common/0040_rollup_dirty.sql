-- rollup_dirty: the bars_1m ranges each rollup (bars_5m .. bars_1d) has not caught up with yet,
-- one row per rollup and New York day, so the refresh after a late write is durable.
--
-- TickStore.write_bars adds the minutes it inserted or changed here in the same transaction as
-- the bars (a late `u` correction, a gap repair, a replayed past session, any job's bars), widening
-- the day's row: first_ts/last_ts are the starts of the first and last such minute. On TimescaleDB
-- the rollups are continuous aggregates that neither real-time aggregation (it covers only what
-- is after the watermark) nor the refresh policies (they look back 3 to 30 days) bring up to date
-- behind the watermark; TickStore.refresh_rollups() (maintain(), rollup_refresh_schedule, and
-- read_bars for what it reads) refreshes each row's buckets with refresh_continuous_aggregate and
-- then deletes the row. On plain PostgreSQL the rollups are views, always current: the same
-- bookkeeping runs and a refresh only deletes the row.
--
-- version grows with every write to the row; a refresh deletes or trims the row only at the
-- version it read, so a write that lands while it runs is refreshed next time, never lost.
CREATE TABLE rollup_dirty (
    rollup    text        NOT NULL CHECK (rollup IN ('bars_5m', 'bars_15m', 'bars_1h', 'bars_1d')),
    day       date        NOT NULL,  -- the New York date of the minutes
    first_ts  timestamptz NOT NULL,
    last_ts   timestamptz NOT NULL,
    version   bigint      NOT NULL DEFAULT 1,
    noted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollup, day),
    CHECK (first_ts <= last_ts)
);
