"""Where data lands: the live tick store (`timescale`) and the Parquet lake (`lake`). No Dagster here."""
