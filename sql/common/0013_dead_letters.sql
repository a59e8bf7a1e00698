-- dead_letters: every message that could not be stored (undecodable, invalid, unknown ticker),
-- with the reason and the raw bytes as received, so it can be inspected and replayed.
CREATE TABLE dead_letters (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    stream      text        NOT NULL,  -- the stream or source that delivered the message
    reason      text        NOT NULL,
    raw         bytea,
    detail      jsonb
);
CREATE INDEX dead_letters_received_at_idx ON dead_letters (received_at);
CREATE INDEX dead_letters_stream_idx ON dead_letters (stream, received_at);
