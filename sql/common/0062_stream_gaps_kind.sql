-- stream_gaps.kind: what made the gap. `disconnect` (the default, every gap recorded before this
-- column) is the websocket closing or going quiet; `silent_stall` is a symbol that kept trading
-- by the minute snapshots while the connected stream sent nothing for it (feed health). Both
-- are repaired from REST the same way.
ALTER TABLE stream_gaps ADD COLUMN kind text NOT NULL DEFAULT 'disconnect';
CREATE INDEX stream_gaps_kind_idx ON stream_gaps (kind, stream, gap_start);
