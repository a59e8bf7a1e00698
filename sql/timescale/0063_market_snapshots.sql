-- market_snapshots: one row per (symbol, minute polled, source) from the vendors' whole-market
-- snapshots (schemas.SNAPSHOTS, the `snapshots` asset): the last trade and quote, the day so far,
-- the last completed minute bar, the previous close and the change, the vendor's `updated` time
-- and when the row was inserted. Not named `snapshots`: Dagster's run storage, which shares this
-- database, has a table of that name. The key makes the processor's writes idempotent: a
-- redelivered queue message (SQS is at-least-once) stores nothing twice. `minute` is the poll's
-- minute; `min_ts` the start of the minute bar it carries.
CREATE TABLE market_snapshots (
    symbol        text             NOT NULL,
    minute        timestamptz      NOT NULL,
    source        text             NOT NULL,
    last_price    double precision,
    last_size     double precision,
    last_trade_ts timestamptz,
    bid_price     double precision,
    bid_size      double precision,
    ask_price     double precision,
    ask_size      double precision,
    quote_ts      timestamptz,
    day_open      double precision,
    day_high      double precision,
    day_low       double precision,
    day_close     double precision,
    day_volume    double precision,
    day_vwap      double precision,
    min_ts        timestamptz,
    min_open      double precision,
    min_high      double precision,
    min_low       double precision,
    min_close     double precision,
    min_volume    double precision,
    min_vwap      double precision,
    prev_close    double precision,
    change        double precision,
    change_pct    double precision,
    updated       timestamptz,
    inserted_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, minute, source)
);

-- 1-day chunks; the key includes the time column, as TimescaleDB requires of unique indexes. The
-- default index on (minute DESC) serves windows of minutes (feed health, status).
SELECT create_hypertable('market_snapshots', by_range('minute', INTERVAL '1 day'));

-- ~3,000 rows a minute, ~3M a session: into the columnstore after a day, segmented by symbol
-- (TimescaleDB 2.18's names, as 0046-0048 state the live tables').
ALTER TABLE market_snapshots SET (
    timescaledb.enable_columnstore = true,
    timescaledb.segmentby = 'symbol',
    timescaledb.orderby = 'minute DESC, source'
);
CALL add_columnstore_policy('market_snapshots', after => INTERVAL '1 day');
-- Kept 30 days, like quotes (the plain-PostgreSQL variant drops day partitions the same way).
SELECT add_retention_policy('market_snapshots', drop_after => INTERVAL '30 days');
