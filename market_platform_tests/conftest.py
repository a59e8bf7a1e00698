"""Shared fixtures. Each layer's fixtures live in market_platform_tests/fixtures/ as a pytest plugin."""

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
