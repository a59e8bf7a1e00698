-- The ledger of applied migrations, created before any of them (IF NOT EXISTS: safe on every start).
-- One row per file of sql/common and sql/<variant>, keyed by its number; `checksum` is the SHA-256
-- of the file as applied, so an edited migration is caught instead of silently diverging.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    variant    text        NOT NULL CHECK (variant IN ('postgres', 'timescale')),
    applied_at timestamptz NOT NULL DEFAULT now(),
    checksum   text        NOT NULL
);
