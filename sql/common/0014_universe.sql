-- universe: point-in-time snapshots of the tickers of each category (schemas.UNIVERSE).
-- TickStore.write_universe replaces whole (snapshot_date, category) snapshots.
CREATE TABLE universe (
    symbol        text             NOT NULL,
    name          text,
    category      text             NOT NULL,
    type          text,
    exchange      text,
    currency      text,
    market_cap    double precision,
    active        boolean          NOT NULL,
    list_date     date,
    delist_date   date,
    snapshot_date date             NOT NULL,
    source        text             NOT NULL,
    PRIMARY KEY (snapshot_date, category, symbol)
);
CREATE INDEX universe_symbol_idx ON universe (symbol, snapshot_date);
