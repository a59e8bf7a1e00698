-- quotes: one row per top-of-book quote as the vendor sent it (schemas.QUOTES).
-- Natural key (symbol, ts, seq): seq is the vendor's sequence number or schemas.quote_seq (a
-- content hash), so a redelivered quote is ignored by the writer's ON CONFLICT DO NOTHING.
-- ts keeps microseconds, PostgreSQL's precision: the writers truncate Arrow's nanoseconds.
CREATE TABLE quotes (
    symbol       text             NOT NULL,
    ts           timestamptz      NOT NULL,
    bid_price    double precision NOT NULL,
    bid_size     double precision NOT NULL,
    ask_price    double precision NOT NULL,
    ask_size     double precision NOT NULL,
    bid_exchange text,
    ask_exchange text,
    conditions   text,
    tape         text,
    seq          bigint           NOT NULL,
    source       text             NOT NULL,
    PRIMARY KEY (symbol, ts, seq)
);

-- 1-day chunks; unique indexes of a hypertable must include its time column, as the key does.
SELECT create_hypertable('quotes', by_range('ts', INTERVAL '1 day'),
    -- ~80M rows a day arrive at burst rates: no index beyond the key (symbol, ts, seq), whose
    -- prefix serves per-symbol reads; time ranges are served by chunk exclusion.
    create_default_indexes => false);

-- Chunks older than a day are compressed, segmented by symbol (a symbol's rows of a chunk
-- compress together and a one-symbol query decompresses only its segment), newest first.
-- The rest of the key follows ts in the order, so inserts into compressed chunks check
-- uniqueness cheaply (TimescaleDB warns when a key column is neither segment nor order).
ALTER TABLE quotes SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'symbol',
    timescaledb.compress_orderby = 'ts DESC, seq'
);
SELECT add_compression_policy('quotes', compress_after => INTERVAL '1 day');

-- Retention from retention_settings (written by init_schema from its Retention; it also
-- replaces this policy when the setting changes later).
SELECT add_retention_policy(
    'quotes',
    drop_after => (SELECT make_interval(days => days) FROM retention_settings
                   WHERE table_name = 'quotes')
);
