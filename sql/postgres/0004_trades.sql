-- trades: one row per trade print (schemas.TRADES). Natural key (symbol, ts, exchange, trade_id):
-- vendor trade ids are unique per exchange, not globally. exchange is '' when the vendor sends
-- none (crypto). Range partitions by New York day (see 0002_day_partitions.sql).
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
) PARTITION BY RANGE (ts);
