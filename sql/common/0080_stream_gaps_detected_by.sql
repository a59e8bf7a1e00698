-- stream_gaps.detected_by: which detectors saw the gap. One silence is one row whoever finds it
-- first: `stream` (a disconnect or a stale connection), `minute_check` (the stream's minute
-- completeness check), `feed_health` (the snapshots' stall detector); a detector that finds
-- minutes another one already recorded adds its name to that row instead of writing a second.
ALTER TABLE stream_gaps ADD COLUMN detected_by text[] NOT NULL DEFAULT '{}';
UPDATE stream_gaps SET detected_by = CASE
    WHEN kind = 'silent_stall' THEN ARRAY['feed_health']
    WHEN reason LIKE 'incomplete minutes%' THEN ARRAY['minute_check']
    ELSE ARRAY['stream'] END;
