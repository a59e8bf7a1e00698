"""Where the platform keeps its state, resolved from the environment when asked, never at import.

| variable               | meaning                                      | default                          |
| ---------------------- | -------------------------------------------- | -------------------------------- |
| MARKET_PLATFORM_HOME   | local state: lake, Dagster home, local db    | ./.market_platform               |
| MARKET_DB_URL          | PostgreSQL/TimescaleDB URL of the tick store | an embedded server under the home |
| MARKET_LAKE_URL        | Parquet lake root: a path or s3://bucket/pfx | $MARKET_PLATFORM_HOME/lake       |

Vendors (read by the adapters' `from_env` and the `vendors` Dagster resource, never at import; with no
vendor key at all, the platform's replay servers of the simulated market start on loopback instead):

| variable               | meaning                                      | default                          |
| ---------------------- | -------------------------------------------- | -------------------------------- |
| POLYGON_API_KEY        | Polygon/Massive REST key                     | unset                            |
| POLYGON_BASE_URL       | Polygon REST base URL                        | https://api.polygon.io           |
| POLYGON_RATE_LIMIT     | REST calls per minute the plan allows        | 5 (the free plan)                |
| POLYGON_S3_ACCESS_KEY, POLYGON_S3_SECRET_KEY | Flat Files keys (not the REST key) | unset                 |
| POLYGON_S3_ENDPOINT    | Flat Files S3 endpoint                       | https://files.polygon.io         |
| POLYGON_S3_BUCKET      | Flat Files bucket                            | flatfiles                        |
| ALPACA_API_KEY, ALPACA_SECRET_KEY | Alpaca key id and secret          | unset                            |
| ALPACA_FEED            | stock feed: iex (free) or sip                | iex                              |
| ALPACA_DATA_URL        | Alpaca market data base URL                  | https://data.alpaca.markets      |
| ALPACA_TRADING_URL     | Alpaca trading API base URL (assets, calendar) | https://paper-api.alpaca.markets |
| ALPACA_RATE_LIMIT      | REST calls per minute the plan allows        | 200                              |
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_VAR = "MARKET_PLATFORM_HOME"
DB_URL_VAR = "MARKET_DB_URL"
LAKE_URL_VAR = "MARKET_LAKE_URL"

POLYGON_API_KEY_VAR = "POLYGON_API_KEY"
POLYGON_BASE_URL_VAR = "POLYGON_BASE_URL"
POLYGON_RATE_LIMIT_VAR = "POLYGON_RATE_LIMIT"
POLYGON_S3_ACCESS_KEY_VAR = "POLYGON_S3_ACCESS_KEY"
POLYGON_S3_SECRET_KEY_VAR = "POLYGON_S3_SECRET_KEY"
POLYGON_S3_ENDPOINT_VAR = "POLYGON_S3_ENDPOINT"
POLYGON_S3_BUCKET_VAR = "POLYGON_S3_BUCKET"
ALPACA_API_KEY_VAR = "ALPACA_API_KEY"
ALPACA_SECRET_KEY_VAR = "ALPACA_SECRET_KEY"
ALPACA_FEED_VAR = "ALPACA_FEED"
ALPACA_DATA_URL_VAR = "ALPACA_DATA_URL"
ALPACA_STREAM_URL_VAR = "ALPACA_STREAM_URL"
ALPACA_TRADING_URL_VAR = "ALPACA_TRADING_URL"
ALPACA_RATE_LIMIT_VAR = "ALPACA_RATE_LIMIT"


def home() -> Path:
    """The platform's local state directory (created if missing), as an absolute path."""
    path = Path(os.environ.get(HOME_VAR) or ".market_platform").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def lake_url() -> str:
    return os.environ.get(LAKE_URL_VAR) or str(home() / "lake")


def dagster_home() -> Path:
    path = home() / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sql_dir() -> Path:
    """The `sql/` folder: beside the package in a checkout, inside it in a wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "sql", package / "_sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no sql/ folder beside or inside {package}")
