"""Derived data computed from stored bars: metrics, features, forecasts, checks, alerts, charts, queries.

No Dagster here: `market_platform.defs.metrics` and `defs.bars.checks` wrap these functions.
"""
