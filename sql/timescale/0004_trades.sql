-- trades: one row per trade print (schemas.TRADES). Natural key (symbol, ts, exchange, trade_id):
-- vendor trade ids are unique per exchange, not globally. exchange is '' when the vendor sends
-- none (crypto).
CREATE TABLE trades (
    symbol     text             NOT NULL,
    ts         timestamptz      NOT NULL,
    price      double precision NOT NULL,
    size       double precision NOT NULL,
    exchange   text             NOT NULL,
    trade_id   bigint           NOT NULL,
    conditions text,
    tape       text,
    source     text             NOT NULL,
    PRIMARY KEY (symbol, ts, exchange, trade_id)
);

-- 1-day chunks; unique indexes of a hypertable must include its time column, as the key does.
SELECT create_hypertable('trades', by_range('ts', INTERVAL '1 day'),
    -- No index beyond the key, for ingest speed (see quotes).
    create_default_indexes => false);

-- Chunks older than a day are compressed, segmented by symbol (a symbol's rows of a chunk
-- compress together and a one-symbol query decompresses only its segment), newest first.
-- The rest of the key follows ts in the order, so inserts into compressed chunks check
-- uniqueness cheaply (TimescaleDB warns when a key column is neither segment nor order).
ALTER TABLE trades SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'symbol',
    timescaledb.compress_orderby = 'ts DESC, exchange, trade_id'
);
SELECT add_compression_policy('trades', compress_after => INTERVAL '1 day');

-- Retention from retention_settings (written by init_schema from its Retention; it also
-- replaces this policy when the setting changes later).
SELECT add_retention_policy(
    'trades',
    drop_after => (SELECT make_interval(days => days) FROM retention_settings
                   WHERE table_name = 'trades')
);
