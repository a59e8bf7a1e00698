"""Where the platform keeps its state, resolved from the environment when asked, never at import.

| variable               | meaning                                      | default                          |
| ---------------------- | -------------------------------------------- | -------------------------------- |
| MARKET_PLATFORM_HOME   | local state: lake, Dagster home, local db    | ./.market_platform               |
| MARKET_DB_URL          | PostgreSQL/TimescaleDB URL of the tick store | an embedded server under the home |
| MARKET_LAKE_URL        | Parquet lake root: a path or s3://bucket/pfx | $MARKET_PLATFORM_HOME/lake       |
| MARKET_HISTORY_START   | first session of the trading-day partitions  | January 1 of the previous year   |

Scale-out (read by `defs.executor`, the `worker` command and the vendors' rate limiters):

| variable               | meaning                                      | default                          |
| ---------------------- | -------------------------------------------- | -------------------------------- |
| MARKET_CELERY_BROKER_URL | Redis of the Celery workers (broker, results, shared rate limits) | unset: steps run in the launching process |
| MARKET_CELERY_QUEUE    | the queue the platform's steps go to         | dagster                          |
| MARKET_CELERY_SINGLE_HOST | 1: launcher and workers share this machine's disk (embedded database, local lake allowed) | unset |

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
from collections.abc import Mapping
from datetime import date, datetime, timezone
from pathlib import Path

#: The checkout holding the package (dagster.yaml, workspace.yaml).
PROJECT_ROOT = Path(__file__).resolve().parent.parent

HOME_VAR = "MARKET_PLATFORM_HOME"
DB_URL_VAR = "MARKET_DB_URL"
LAKE_URL_VAR = "MARKET_LAKE_URL"
CELERY_BROKER_URL_VAR = "MARKET_CELERY_BROKER_URL"
CELERY_QUEUE_VAR = "MARKET_CELERY_QUEUE"
CELERY_SINGLE_HOST_VAR = "MARKET_CELERY_SINGLE_HOST"

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
HISTORY_START_VAR = "MARKET_HISTORY_START"
SIM_STOCKS_VAR = "MARKET_SIM_STOCKS"
SIM_ACTIVITY_VAR = "MARKET_SIM_ACTIVITY"


def home() -> Path:
    """The platform's local state directory (created if missing), as an absolute path."""
    path = Path(os.environ.get(HOME_VAR) or ".market_platform").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def lake_url() -> str:
    return os.environ.get(LAKE_URL_VAR) or str(home() / "lake")


def history_start(today: date | None = None) -> date:
    """The first day of the trading-day partitions (what the UI counts as history to fill, and the
    oldest session a backfill accepts): MARKET_HISTORY_START, YYYY-MM-DD from 2004-01-02 (the
    calendar's start) to today, else January 1 of the year before `today` (default: today in
    UTC). The default holds a year of sessions or more, the demo's among them, and moves once a
    year; a deployment keeping older history sets the variable."""
    from market_platform.calendar import CALENDAR_START
    from market_platform.errors import ConfigError

    today = today or datetime.now(timezone.utc).date()
    default = date(today.year - 1, 1, 1)
    raw = (os.environ.get(HISTORY_START_VAR) or "").strip()
    if not raw:
        return default
    try:
        start = date.fromisoformat(raw)
    except ValueError:
        start = None
    if start is None or not CALENDAR_START <= start <= today:
        raise ConfigError(f"{HISTORY_START_VAR}={raw!r}: expected a day YYYY-MM-DD from {CALENDAR_START.isoformat()} "
                          f"to {today.isoformat()} (the first session of the history), or unset it for "
                          f"{default.isoformat()}")
    return start


def celery_broker_url() -> str | None:
    """The Redis URL of the Celery workers, or None: steps then run in the launching process."""
    return os.environ.get(CELERY_BROKER_URL_VAR) or None


def single_host(environ: Mapping[str, str] | None = None) -> bool:
    """Whether MARKET_CELERY_SINGLE_HOST declares that the launcher and every worker share this machine."""
    env = os.environ if environ is None else environ
    return (env.get(CELERY_SINGLE_HOST_VAR) or "").strip().lower() in ("1", "true", "yes")


def check_shared_state(environ: Mapping[str, str] | None = None) -> None:
    """With a Celery broker set, ConfigError unless the database and the lake are reachable from
    any machine (a MARKET_DB_URL and an s3:// lake), or single-host mode is declared."""
    from market_platform.errors import ConfigError

    env = os.environ if environ is None else environ
    if not env.get(CELERY_BROKER_URL_VAR) or single_host(env):
        return
    missing = []
    if not env.get(DB_URL_VAR):
        missing.append(f"{DB_URL_VAR} (a PostgreSQL every worker reaches, not the embedded one)")
    if not (env.get(LAKE_URL_VAR) or "").startswith("s3://"):
        missing.append(f"{LAKE_URL_VAR}=s3://bucket/prefix (not a path on this machine)")
    if missing:
        raise ConfigError(
            f"{CELERY_BROKER_URL_VAR} is set, so steps run on workers that share no disk with this machine: "
            f"set {' and '.join(missing)}, or {CELERY_SINGLE_HOST_VAR}=1 if every worker runs here")


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


#: The simulated market `market-platform demo` built, kept for every later command of its home.
SIM_MARKET_FILE = "sim_market.json"


def sim_market_size() -> tuple[int, float]:
    """(stocks and ETFs, activity) of the simulated market every entry point serves (backfills,
    the stream's replay, snapshots, the demo, the UI's runs): MARKET_SIM_STOCKS and
    MARKET_SIM_ACTIVITY, else the market the demo built in this home ($MARKET_PLATFORM_HOME/
    sim_market.json), else 3000 stocks at activity 1.0 (about 80 million quotes a full session)."""
    import json

    from market_platform.errors import ConfigError

    kept: dict = {}
    if not os.environ.get(SIM_STOCKS_VAR) or not os.environ.get(SIM_ACTIVITY_VAR):
        try:
            kept = json.loads((home() / SIM_MARKET_FILE).read_text())
        except (OSError, ValueError):
            kept = {}
    try:
        stocks = int(os.environ.get(SIM_STOCKS_VAR) or kept.get("stocks") or 3000)
        activity = float(os.environ.get(SIM_ACTIVITY_VAR) or kept.get("activity") or 1.0)
    except (TypeError, ValueError):
        stocks, activity = 0, 0.0
    if stocks < 1 or not 0 < activity < float("inf"):
        raise ConfigError(f"{SIM_STOCKS_VAR}={os.environ.get(SIM_STOCKS_VAR)!r}, {SIM_ACTIVITY_VAR}="
                          f"{os.environ.get(SIM_ACTIVITY_VAR)!r} ({home() / SIM_MARKET_FILE}: {kept or 'none'}): "
                          "expected a whole number of stocks >= 1 and a positive activity (1.0 is a full market)")
    return stocks, activity


def keep_sim_market(stocks: int, activity: float) -> None:
    """Record the demo's simulated market in the home, for every later command (atomically)."""
    import json

    path = home() / SIM_MARKET_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stocks": stocks, "activity": activity}) + "\n")
    tmp.replace(path)
