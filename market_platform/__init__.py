"""market_platform: a self-hosted market data platform on Dagster."""

__version__ = "0.1.0"
