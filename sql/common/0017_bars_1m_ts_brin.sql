-- A BRIN index on bars_1m.ts: rows arrive in time order, so a few hundred bytes per partition (or
-- chunk) let "the newest rows of the last minutes" (the freshness check, live queries) read only
-- the recent blocks instead of a whole day. Cheap to maintain at ingest. On a partitioned table
-- or a hypertable the index is created on every partition or chunk, present and future.
CREATE INDEX bars_1m_ts_brin ON bars_1m USING brin (ts);
