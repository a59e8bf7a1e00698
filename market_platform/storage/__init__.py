"""Storage: the tick store (PostgreSQL/TimescaleDB) and the Parquet lake; no Dagster imports."""
