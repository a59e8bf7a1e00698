-- A BRIN index on trades.ts: rows arrive in time order, so a few hundred bytes per partition (or
-- chunk) let "the newest rows of the last minutes" (the freshness check, live queries) read only
-- the recent blocks instead of a whole day. Cheap to maintain at ingest. On a partitioned table
-- or a hypertable the index is created on every partition or chunk, present and future.
CREATE INDEX trades_ts_brin ON trades USING brin (ts);
