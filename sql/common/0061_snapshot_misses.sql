-- snapshot_misses: every minute the snapshot poller could not poll (the vendor down, a storm of
-- 429s outlasting the minute's retries, the poller running behind), so no minute is silently
-- skipped. One row per (source, market, minute); `parts` lists the chunks that failed when a
-- response split by symbols failed only in part.
CREATE TABLE snapshot_misses (
    source      text        NOT NULL,
    market      text        NOT NULL,
    minute      timestamptz NOT NULL,
    reason      text        NOT NULL,
    requests    integer     NOT NULL DEFAULT 0,  -- HTTP requests spent on the minute, retries included
    throttled   integer     NOT NULL DEFAULT 0,  -- of which answered 429
    parts       integer[]   NOT NULL DEFAULT '{}',
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, market, minute)
);
CREATE INDEX snapshot_misses_minute_idx ON snapshot_misses (minute);
