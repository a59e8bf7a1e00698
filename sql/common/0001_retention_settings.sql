-- How many days of each live table to keep. The values are written by TickStore.init_schema as
-- bound parameters (from its Retention), never spliced into SQL; the TimescaleDB retention
-- policies and the plain-PostgreSQL TickStore.maintain() both read them from here.
CREATE TABLE retention_settings (
    table_name text    PRIMARY KEY CHECK (table_name IN ('quotes', 'trades', 'bars_1m')),
    days       integer NOT NULL CHECK (days > 0)
);
