-- trades in the columnstore, in the names TimescaleDB documents since 2.18 (hypercore).
--
-- 0004_trades.sql enabled compression with the names before 2.18 (timescaledb.compress,
-- compress_segmentby, compress_orderby, add_compression_policy), which 2.18 deprecated; it
-- stays as applied (an applied migration is never edited) and this one states the same settings
-- in the current names: segmented by symbol (a symbol's rows of a chunk compress together and a
-- one-symbol query decompresses only its segment), ordered by ts descending and then the rest of
-- the key (so a write into a columnstore chunk checks uniqueness cheaply), and chunks older than a
-- day moved to the columnstore by a policy. Settings apply to the chunks not converted yet; the
-- policy created by add_compression_policy is the same job, replaced here by its current name.
ALTER TABLE trades SET (
    timescaledb.enable_columnstore = true,
    timescaledb.segmentby = 'symbol',
    timescaledb.orderby = 'ts DESC, exchange, trade_id'
);

CALL remove_columnstore_policy('trades', if_exists => true);
CALL add_columnstore_policy('trades', after => INTERVAL '1 day');
