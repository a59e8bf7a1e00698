-- bars_1m: one-minute bars (schemas.BARS); ts is the start of the minute. Natural key
-- (symbol, ts, source): a late correction from the same source replaces the bar (the writer
-- upserts), another source's bar for the same minute sits beside it.
-- Range partitions by New York day (see 0002_day_partitions.sql); the ts index serves the
-- "all symbols in this window" scans of the rollups and the after-close jobs.
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
) PARTITION BY RANGE (ts);
CREATE INDEX bars_1m_ts_idx ON bars_1m (ts);
