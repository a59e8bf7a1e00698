-- bars_1m: one-minute bars (schemas.BARS); ts is the start of the minute. Natural key
-- (symbol, ts, source): a late correction from the same source replaces the bar (the writer
-- upserts), another source's bar for the same minute sits beside it. The default index on
-- (ts DESC) that create_hypertable adds serves the all-symbols window scans of the rollups.
CREATE TABLE bars_1m (
    symbol      text             NOT NULL,
    ts          timestamptz      NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      double precision NOT NULL,
    vwap        double precision,
    trade_count bigint,
    source      text             NOT NULL,
    PRIMARY KEY (symbol, ts, source)
);

-- 1-day chunks; unique indexes of a hypertable must include its time column, as the key does.
SELECT create_hypertable('bars_1m', by_range('ts', INTERVAL '1 day'));

-- Chunks older than a day are compressed, segmented by symbol (a symbol's rows of a chunk
-- compress together and a one-symbol query decompresses only its segment), newest first.
-- The rest of the key follows ts in the order, so inserts into compressed chunks check
-- uniqueness cheaply (TimescaleDB warns when a key column is neither segment nor order).
ALTER TABLE bars_1m SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'symbol',
    timescaledb.compress_orderby = 'ts DESC, source'
);
SELECT add_compression_policy('bars_1m', compress_after => INTERVAL '1 day');

-- Retention from retention_settings (written by init_schema from its Retention; it also
-- replaces this policy when the setting changes later).
SELECT add_retention_policy(
    'bars_1m',
    drop_after => (SELECT make_interval(days => days) FROM retention_settings
                   WHERE table_name = 'bars_1m')
);
