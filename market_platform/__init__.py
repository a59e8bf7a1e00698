"""market_platform: a self-hosted market data platform on Dagster.

    import market_platform
    bars = market_platform.bars_as_of("AAPL", "2024-01-02", "2024-06-28", as_of="2024-06-28", adjust="all")
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import market_platform` stays cheap (no DuckDB, no Arrow) for the CLI and Dagster.
    if name == "bars_as_of":
        from market_platform.analytics.adjust import bars_as_of

        return bars_as_of
    raise AttributeError(f"module 'market_platform' has no attribute {name!r}")


__all__ = ["bars_as_of"]
