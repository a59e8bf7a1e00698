-- snapshot_queue: the durable queue between the snapshot poller and its processor (the default
-- backend; MARKET_SNAPSHOT_QUEUE_URL=sqs://... uses Amazon SQS instead). One row per raw vendor
-- response, enqueued before anything else is done with it; the processor claims rows with
-- FOR UPDATE SKIP LOCKED, writes their snapshots and deletes them in one transaction, so each
-- response is stored exactly once, and a processor that dies mid-batch leaves its rows queued.
-- `body` is the response compressed with zstd (`body_size` bytes uncompressed).
CREATE TABLE snapshot_queue (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    source      text        NOT NULL,           -- polygon_rest, alpaca_rest
    market      text        NOT NULL,           -- stocks, crypto
    minute      timestamptz NOT NULL,           -- the minute polled
    part        integer     NOT NULL DEFAULT 0, -- chunk of a response split by symbols (Alpaca)
    parts       integer     NOT NULL DEFAULT 1,
    polled_at   timestamptz NOT NULL,           -- when the response arrived
    body_size   integer     NOT NULL CHECK (body_size >= 0),
    body        bytea       NOT NULL
);
-- The processor claims the oldest first; `status` asks for the oldest.
CREATE INDEX snapshot_queue_enqueued_idx ON snapshot_queue (enqueued_at, id);
