-- The TimescaleDB extension. TickStore.init_schema picks this variant only when the extension
-- is installed in the database or available and preloaded (shared_preload_libraries), and needs
-- TimescaleDB >= 2.13 for by_range() and time zones in continuous aggregates.
CREATE EXTENSION IF NOT EXISTS timescaledb;
