-- market_snapshots: one row per (symbol, minute polled, source) from the vendors' whole-market
-- snapshots (schemas.SNAPSHOTS, the `snapshots` asset): the last trade and quote, the day so far,
-- the last completed minute bar, the previous close and the change, the vendor's `updated` time
-- and when the row was inserted. Not named `snapshots`: Dagster's run storage, which shares this
-- database, has a table of that name. The key makes the processor's writes idempotent: a
-- redelivered queue message (SQS is at-least-once) stores nothing twice. `minute` is the poll's
-- minute; `min_ts` the start of the minute bar it carries. Range partitions by New York day, like
-- quotes (0002_day_partitions.sql); the processor creates them as it writes.
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
) PARTITION BY RANGE (minute);
-- Rows arrive in minute order: a BRIN index lets a window of minutes (feed health, status) read
-- only its blocks, at almost no cost to the ~3,000-row inserts of every minute.
CREATE INDEX market_snapshots_minute_brin ON market_snapshots USING brin (minute);
