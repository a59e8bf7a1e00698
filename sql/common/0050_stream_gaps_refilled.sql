-- stream_gaps: what each gap's repair refilled beside its bars: the quotes and trades the
-- vendor's history had that the tick store did not (those the stream had delivered collapse on
-- their keys and are not counted), the REST calls it took, and why it failed if it did
-- (repaired_at stays null then, so a later sweep tries again).
ALTER TABLE stream_gaps
    ADD COLUMN repaired_quotes bigint  CHECK (repaired_quotes >= 0),
    ADD COLUMN repaired_trades bigint  CHECK (repaired_trades >= 0),
    ADD COLUMN repair_calls    integer CHECK (repair_calls >= 0),
    ADD COLUMN repair_error    text;
