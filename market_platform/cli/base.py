"""The `market-platform` group and what its commands share.

Every command that fails on bad input or an unreachable service prints one line starting with
`error:` on stderr and exits with status 2; no traceback, no secret.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import click

from market_platform import settings
from market_platform.errors import MarketPlatformError

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

#: In-process runs started from the CLI log warnings and errors only; the UI has the full log.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def fail_cleanly(fn: Callable) -> Callable:
    """Turn the platform's own errors into one `error:` line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MarketPlatformError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _store():
    from market_platform.storage.timescale import TickStore

    return TickStore.from_settings()


def redact(url: str) -> str:
    from market_platform.storage.timescale import redact as _redact

    return _redact(url)


def dagster_env() -> dict[str, str]:
    """Environment for Dagster processes: DAGSTER_HOME under the platform's home, holding the
    project's dagster.yaml (runs and events in the tick store's PostgreSQL server)."""
    home = settings.dagster_home()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return {"DAGSTER_HOME": str(home), settings.HOME_VAR: str(settings.home())}


@click.group()
def main() -> None:
    """market_platform: live tick store, Parquet lake and derived market data on Dagster."""


def run_failure_reason(result) -> str:
    """The innermost error message of a failed in-process run's first failed step."""
    from market_platform.backfills import failure_reason

    return failure_reason(result)


def _vendors():
    """The vendors this process uses, configured from the environment like the Dagster resource
    (with no key: the replay servers of the simulated market, started here)."""
    from market_platform.defs.resources import sim_market_resource
    from market_platform.history.vendors import Vendors

    market = sim_market_resource()
    return Vendors.from_env(market=lambda: market.market)


def _in_process(selection: list[str], *, run_config: dict, partition_key: str | None = None, definitions=None):
    """Materialize assets as one run recorded in the platform's instance, in this process or, with
    a Celery broker set, on the workers; the run's result."""
    import dagster as dg

    from market_platform.definitions import defs
    from market_platform.defs.executor import execute_assets, preflight

    preflight()  # with a Celery broker: refuse before the instance is created
    os.environ.update(dagster_env())
    result = execute_assets(definitions or defs(), [dg.AssetKey(name) for name in selection],
                            instance=dg.DagsterInstance.get(), run_config={**run_config, **QUIET},
                            partition_key=partition_key)
    if not result.success:
        raise MarketPlatformError(f"run {result.run_id} failed: {run_failure_reason(result)}")
    return result


def _live_store():
    """The tick store when MARKET_DB_URL is set, else None (the live tables are then not offered)."""
    if not os.environ.get(settings.DB_URL_VAR):
        return None
    from market_platform.storage.timescale import TickStore

    return TickStore.from_settings()
