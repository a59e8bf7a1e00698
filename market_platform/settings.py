"""Where the platform keeps its state, resolved from the environment when asked, never at import.

| variable               | meaning                                      | default                          |
| ---------------------- | -------------------------------------------- | -------------------------------- |
| MARKET_PLATFORM_HOME   | local state: lake, Dagster home, local db    | ./.market_platform               |
| MARKET_DB_URL          | PostgreSQL/TimescaleDB URL of the tick store | an embedded server under the home |
| MARKET_LAKE_URL        | Parquet lake root: a path or s3://bucket/pfx | $MARKET_PLATFORM_HOME/lake       |
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_VAR = "MARKET_PLATFORM_HOME"
DB_URL_VAR = "MARKET_DB_URL"
LAKE_URL_VAR = "MARKET_LAKE_URL"


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
