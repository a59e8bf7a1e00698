"""Storage: the live tick store (`timescale`, PostgreSQL/TimescaleDB) and the Parquet lake (`lake`).

No Dagster imports here: `defs/` wraps these in resources.
"""
