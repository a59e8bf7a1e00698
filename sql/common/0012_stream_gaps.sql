-- stream_gaps: every disconnect or silence of a stream, one row each, so nothing is lost
-- silently. gap_end is null while the gap is open; repaired_at/repaired_bars record the REST
-- backfill that filled it (null until then).
CREATE TABLE stream_gaps (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream        text        NOT NULL,
    gap_start     timestamptz NOT NULL,
    gap_end       timestamptz,
    symbols       text[]      NOT NULL DEFAULT '{}',
    reason        text        NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    repaired_at   timestamptz,
    repaired_bars bigint      CHECK (repaired_bars >= 0),
    CHECK (gap_end IS NULL OR gap_end >= gap_start)
);
CREATE INDEX stream_gaps_stream_start_idx ON stream_gaps (stream, gap_start);
-- The repair job scans only what is still to do.
CREATE INDEX stream_gaps_unrepaired_idx ON stream_gaps (gap_start) WHERE repaired_at IS NULL;
