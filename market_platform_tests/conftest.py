"""Shared fixtures. Each layer's fixtures live in market_platform_tests/fixtures/ as a pytest plugin."""

import os

from market_platform_tests.fixtures import HISTORY_START

# Before any module builds the trading-day partitions (they read it when the definitions load).
os.environ["MARKET_HISTORY_START"] = HISTORY_START

pytest_plugins: list[str] = [
    "market_platform_tests.fixtures.db",
    "market_platform_tests.fixtures.lake",
    "market_platform_tests.fixtures.sim",
    "market_platform_tests.fixtures.replay",
    "market_platform_tests.fixtures.metrics",
    "market_platform_tests.fixtures.stream",
    "market_platform_tests.fixtures.history",
    "market_platform_tests.fixtures.broker",
    "market_platform_tests.fixtures.snapshots",
    "market_platform_tests.fixtures.corporate",
]
