-- stream_stats: one row per stream per minute, written by the streamer: what arrived, what was
-- stored (in the minute and since the stream started), what failed, and how far behind it runs.
CREATE TABLE stream_stats (
    stream          text             NOT NULL,
    minute          timestamptz      NOT NULL,
    received        bigint           NOT NULL DEFAULT 0,  -- messages decoded in the minute
    quotes_inserted bigint           NOT NULL DEFAULT 0,
    trades_inserted bigint           NOT NULL DEFAULT 0,
    bars_inserted   bigint           NOT NULL DEFAULT 0,
    quotes_total    bigint           NOT NULL DEFAULT 0,  -- since the stream started
    trades_total    bigint           NOT NULL DEFAULT 0,
    bars_total      bigint           NOT NULL DEFAULT 0,
    duplicates      bigint           NOT NULL DEFAULT 0,  -- rows ignored by key in the minute
    dead_letters    bigint           NOT NULL DEFAULT 0,
    errors          bigint           NOT NULL DEFAULT 0,
    reconnects      integer          NOT NULL DEFAULT 0,
    queue_depth     integer          NOT NULL DEFAULT 0,  -- at the end of the minute
    lag_p50_ms      double precision,                     -- receive time minus event time
    lag_p99_ms      double precision,
    recorded_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, minute)
);

-- A hypertable too (week chunks: ~400 rows a stream a day), so minute-range reads skip chunks;
-- the key includes the time column, as TimescaleDB requires.
SELECT create_hypertable('stream_stats', by_range('minute', INTERVAL '7 days'));
