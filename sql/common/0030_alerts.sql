-- alerts: every alert fired by a rule of the alert rules file, recorded once. The key (rule,
-- symbol, event_ts) makes evaluation idempotent: the alerts sensor inserts with ON CONFLICT DO
-- NOTHING and delivers only the rows it inserted, so a rerun or a second sensor tick over the
-- same metrics records and sends nothing new. event_ts is the instant the metric row describes
-- (a 5-minute window's start, a session's date at midnight New York), so cooldowns follow market
-- time and replays behave as the live run did. `delivered` maps each channel to when it took the
-- alert; channels still missing are retried (delivery_attempts, last_error).
CREATE TABLE alerts (
    id                bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule              text             NOT NULL,
    symbol            text             NOT NULL,
    event_ts          timestamptz      NOT NULL,
    dataset           text             NOT NULL,
    metric            text             NOT NULL,
    value             double precision NOT NULL,
    op                text             NOT NULL,
    threshold         double precision NOT NULL,
    rule_spec         jsonb            NOT NULL,
    row_values        jsonb            NOT NULL,
    message           text             NOT NULL,
    created_at        timestamptz      NOT NULL DEFAULT now(),
    delivered         jsonb            NOT NULL DEFAULT '{}'::jsonb,
    delivery_attempts integer          NOT NULL DEFAULT 0,
    last_error        text,
    UNIQUE (rule, symbol, event_ts)
);
CREATE INDEX alerts_created_idx ON alerts (created_at);
