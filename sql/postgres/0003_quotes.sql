-- quotes: one row per top-of-book quote as the vendor sent it (schemas.QUOTES).
-- Natural key (symbol, ts, seq): seq is the vendor's sequence number or schemas.quote_seq (a
-- content hash), so a redelivered quote is ignored by the writer's ON CONFLICT DO NOTHING.
-- ts keeps microseconds, PostgreSQL's precision: the writers truncate Arrow's nanoseconds.
-- Range partitions by New York day (see 0002_day_partitions.sql); no index beyond the key,
-- since ~80M rows a day must go in at burst rates and a time range prunes to whole partitions.
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
) PARTITION BY RANGE (ts);
