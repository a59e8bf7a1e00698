"""`market-platform`: the command line of the platform.

Every command that fails on bad input or an unreachable service prints one line starting with
`error:` on stderr and exits with status 2; no traceback, no secret.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import click

from market_platform import settings
from market_platform.errors import MarketPlatformError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

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


@main.group()
def db() -> None:
    """The tick store database (MARKET_DB_URL, or an embedded PostgreSQL under the home)."""


@db.command("init")
@fail_cleanly
def db_init() -> None:
    """Create or upgrade the tick store schema, and create the partitions ahead."""
    store = _store()
    applied = store.init_schema()
    maintained = store.maintain()
    click.echo(f"tick store: {redact(store.url)} ({store.variant()})")
    click.echo(f"migrations applied: {len(applied)}" + (f" ({', '.join(applied)})" if applied else ""))
    click.echo(f"maintenance: {json.dumps(maintained, default=str)}")


@db.command("status")
@fail_cleanly
def db_status() -> None:
    """Print the schema version and the rows and size of each table."""
    click.echo(json.dumps(_store().status(), indent=2, default=str))


@db.command("stop")
@fail_cleanly
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (no effect when MARKET_DB_URL is set)."""
    from market_platform.storage.timescale import stop_embedded

    click.echo("stopped" if stop_embedded() else "no embedded server was running")


@main.command()
@click.option("--sessions", default=3, show_default=True, help="How many recent sessions to build.")
@click.option("--stocks", default=500, show_default=True, help="Size of the simulated stock universe.")
@fail_cleanly
def demo(sessions: int, stocks: int) -> None:
    """Build a lake of bars for the last few sessions of the simulated market, through Dagster."""
    from market_platform import calendar

    started = time.monotonic()
    store = _store()
    applied = store.init_schema()
    store.maintain()
    click.echo(f"tick store  {redact(store.url)} ({store.variant()}, {len(applied)} migrations applied)")

    os.environ.update(dagster_env())
    os.environ["MARKET_SIM_STOCKS"] = str(stocks)
    import dagster as dg

    from market_platform.definitions import defs

    instance = dg.DagsterInstance.get()
    job = defs().resolve_job_def("bars_job")
    last = calendar.default_calendar().last_completed_session(datetime.now(timezone.utc))
    days = calendar.sessions("2004-01-02", last)[-sessions:]
    for day in days:
        t0 = time.monotonic()
        result = job.execute_in_process(
            partition_key=day.isoformat(), instance=instance, run_config=QUIET, raise_on_error=False
        )
        if not result.success:
            raise MarketPlatformError(f"bars_job failed for {day}: {run_failure_reason(result)}")
        click.echo(f"session {day}  bars_job run {result.run_id[:8]} in {time.monotonic() - t0:.1f}s")

    from market_platform.storage.lake import Lake

    lake = Lake.from_settings()
    click.echo("\nlake        " + settings.lake_url())
    for dataset in ("minute_bars", "bars_5m", "bars_15m", "bars_1h", "bars_1d"):
        counts = [lake.count(dataset, d.isoformat()) for d in days]
        click.echo(f"  {dataset:<12} " + "  ".join(f"{d}: {n:>9,}" for d, n in zip(days, counts)))
    click.echo(f"\nbuilt {len(days)} sessions of {stocks} simulated stocks in {time.monotonic() - started:.0f}s")
    click.echo(
        "\nnext:\n"
        "  make ui                               # the Dagster UI at http://127.0.0.1:3000 (runs, assets, partitions)\n"
        "  .venv/bin/market-platform db status   # the tick store\n"
        f"  .venv/bin/python -c \"import duckdb; print(duckdb.sql(\\\"select symbol, count(*) from "
        f"read_parquet('{settings.lake_url()}/minute_bars/*/*.parquet') group by 1 order by 2 desc limit 5\\\"))\""
    )


@main.command()
@click.option("--day", help="Session (stocks) or UTC day (crypto), YYYY-MM-DD; default today (the last session for a replay).")
@click.option("--start", help="Stocks: HH:MM New York to start at (default the pre-market open).")
@click.option("--end", help="Stocks: HH:MM New York to end at (default the after-hours close).")
@click.option("--speed", default="max", show_default=True, help="Replay only: times real time, or 'max'.")
@click.option("--crypto", is_flag=True, help="Stream crypto pairs (a UTC day) instead of stocks.")
@click.option("--symbols", help="Comma-separated symbols (default: the simulated universe).")
@click.option("--stocks", default=100, show_default=True, help="Replay only: stocks and ETFs in the simulated market.")
@click.option("--activity", default=0.1, show_default=True, help="Replay only: the simulated market's activity.")
@click.option("--change-filter", is_flag=True, help="Store a quote only when its bid or ask price changed.")
@fail_cleanly
def stream(day, start, end, speed, crypto, symbols, stocks, activity, change_filter) -> None:
    """Stream quotes, trades and minute bars into the tick store: from Alpaca when ALPACA_API_KEY and
    ALPACA_SECRET_KEY are set (ALPACA_FEED: iex or sip), else from a replay of the simulated market."""
    import logging

    from market_platform import calendar
    from market_platform.errors import InvalidInputError
    from market_platform.sources.sim import SimMarket
    from market_platform.streaming.runs import is_loopback, stream_window

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("alpaca", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    key, secret = os.environ.get("ALPACA_API_KEY"), os.environ.get("ALPACA_SECRET_KEY")
    stream_url = os.environ.get("ALPACA_STREAM_URL")
    live = bool(key and secret) and not is_loopback(stream_url)
    kind = "crypto" if crypto else "stocks"
    now = datetime.now(timezone.utc)
    if day is None:
        if live or kind == "crypto":
            day = (now.date() if kind == "crypto" else now.astimezone(calendar.NEW_YORK).date()).isoformat()
        else:
            day = calendar.default_calendar().last_completed_session(now).isoformat()
    try:
        rate = None if speed == "max" else float(speed)
    except ValueError:
        raise InvalidInputError(f"--speed {speed!r}: expected a number (times real time) or max") from None
    store = _store()
    store.init_schema()
    report = stream_window(
        kind, day, market=SimMarket(n_stocks=stocks, activity=activity),
        symbols=[s.strip() for s in symbols.split(",")] if symbols else None, start=start, end=end, speed=rate,
        api_key=key, secret_key=secret, feed=os.environ.get("ALPACA_FEED") or "iex", stream_url=stream_url,
        data_url=os.environ.get("ALPACA_DATA_URL") or None,
        store_url=store.url, from_now=live and day == now.astimezone(calendar.NEW_YORK).date().isoformat(),
        change_filter=change_filter,
    )
    click.echo(json.dumps(report.summary(), indent=2))


def run_failure_reason(result) -> str:
    """The innermost error message of a failed in-process run's first failed step."""
    failures = [event for event in result.all_events if event.is_step_failure]
    if not failures:
        return "the run failed before any step ran"
    error = failures[0].step_failure_data.error
    while error.cause is not None:
        error = error.cause
    return error.message.strip().splitlines()[-1]


def _session_keys(keys: list[str]) -> None:
    """Refuse a date that is not a session with the calendar's reason, before Dagster sees it."""
    from market_platform import calendar

    for key in keys:
        calendar.session(key)


@main.command()
@click.option("--select", required=True, help="Comma-separated asset keys, e.g. minute_bars,bars_5m.")
@click.option("--partition", required=True, help="Partition key: a session date YYYY-MM-DD.")
@fail_cleanly
def materialize(select: str, partition: str) -> None:
    """Materialize assets for one partition, recorded in the platform's Dagster instance."""
    import dagster as dg

    from market_platform.definitions import defs
    from market_platform.errors import InvalidInputError

    definitions = defs()
    known = {key.to_user_string() for key in definitions.resolve_all_asset_keys()}
    names = [name.strip() for name in select.split(",") if name.strip()]
    unknown = sorted(set(names) - known)
    if unknown:
        raise InvalidInputError(f"unknown assets {unknown}: expected names among {sorted(known)}")
    _session_keys([partition])
    os.environ.update(dagster_env())
    job = definitions.resolve_implicit_job_def_def_for_assets([dg.AssetKey(n) for n in names])
    job = job.get_subset(asset_selection={dg.AssetKey(n) for n in names})
    result = job.execute_in_process(
        partition_key=partition, instance=dg.DagsterInstance.get(), run_config=QUIET, raise_on_error=False
    )
    if not result.success:
        raise MarketPlatformError(f"run {result.run_id} failed: {run_failure_reason(result)}")
    click.echo(f"materialized {', '.join(names)} for {partition} (run {result.run_id})")


@main.command()
@click.argument("dataset", required=False)
@fail_cleanly
def lake(dataset: str | None) -> None:
    """What the lake holds: every dataset's partitions and rows, or one dataset's partitions."""
    from market_platform.storage.lake import Lake

    store = Lake.from_settings()
    if dataset is None:
        click.echo(f"lake {store.url}")
        for name in store.datasets():
            parts = store.partitions(name)
            click.echo(f"  {name:<14} {len(parts):>6} partitions {store.count(name):>14,} rows")
        return
    store.count(dataset)  # validates the name
    for spec in store.partitions(dataset):
        label = "/".join(f"{k}={v}" for k, v in spec.items())
        click.echo(f"{label}  {store.count(dataset, spec):>12,} rows")


@main.command("replay-server")
@click.option("--polygon-port", default=0, show_default=True, help="Polygon REST port (0: any free port).")
@click.option("--alpaca-port", default=0, show_default=True, help="Alpaca REST port (0: any free port).")
@click.option("--s3-port", default=0, show_default=True, help="Flat Files (S3) port (0: any free port).")
@click.option("--from", "start", default=None, help="First day of flat files (default: two sessions before --to).")
@click.option("--to", "end", default=None, help="Last day of flat files (default: the last completed session).")
@click.option("--stocks", default=500, show_default=True, help="Size of the simulated stock universe.")
@click.option("--crypto", default=20, show_default=True, help="Number of simulated crypto pairs.")
@click.option("--rate-limit", type=int, default=None, help="REST calls per minute per key (default: no limit).")
@fail_cleanly
def replay_server(polygon_port: int, alpaca_port: int, s3_port: int, start: str | None, end: str | None,
                  stocks: int, crypto: int, rate_limit: int | None) -> None:
    """Serve the simulated market as Polygon REST, Polygon Flat Files (S3) and Alpaca REST on
    127.0.0.1 until Ctrl-C, and print the URLs and the environment that points the platform at them."""
    from market_platform import calendar
    from market_platform.errors import ConfigError, InvalidInputError
    from market_platform.replay import ReplayServers, serve
    from market_platform.sources.sim import SimMarket

    cal = calendar.default_calendar()
    last = calendar.to_date(end) if end else cal.last_completed_session(datetime.now(timezone.utc))
    first = calendar.to_date(start) if start else cal.sessions(calendar.CALENDAR_START, last)[-3]
    if first > last:
        raise InvalidInputError(f"--from {first.isoformat()} is after --to {last.isoformat()}")
    if rate_limit is not None and rate_limit < 1:
        raise InvalidInputError(f"--rate-limit {rate_limit}: expected a positive number of calls per minute")
    servers = ReplayServers(
        sim=SimMarket(n_stocks=stocks, n_crypto=crypto), polygon_port=polygon_port, alpaca_port=alpaca_port,
        s3_port=s3_port, flatfile_days=(first, last), rate_limit=rate_limit,
    )
    click.echo(f"simulated market: {stocks} stocks, {crypto} crypto pairs; writing flat files "
               f"{first.isoformat()} to {last.isoformat()}...")
    try:
        serve(servers, echo=click.echo)
    except OSError as exc:
        raise ConfigError(f"cannot listen on the requested ports: {exc}") from None


@main.command()
@click.option("--port", default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@fail_cleanly
def ui(port: int, host: str) -> None:
    """Start the Dagster UI (dagster dev) on the platform's database and lake."""
    store = _store()
    store.init_schema()
    env = {**os.environ, **dagster_env()}
    dagster = Path(sys.executable).with_name("dagster")
    click.echo(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={env['DAGSTER_HOME']})")
    os.execve(
        str(dagster),
        [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", host, "-p", str(port)],
        env,
    )


def _live_store():
    """The tick store when MARKET_DB_URL is set, else None (the live tables are then not offered)."""
    if not os.environ.get(settings.DB_URL_VAR):
        return None
    from market_platform.storage.timescale import TickStore

    return TickStore.from_settings()


@main.command()
@click.argument("symbol")
@click.option("--from", "start", required=True, help="First session, YYYY-MM-DD.")
@click.option("--to", "end", help="Last session, YYYY-MM-DD (default: --from).")
@click.option("--timeframe", default="5m", show_default=True, type=click.Choice(["1m", "5m", "15m", "1h", "1d"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="FILE.png or FILE.html")
@fail_cleanly
def chart(symbol: str, start: str, end: str | None, timeframe: str, out: str) -> None:
    """Candlestick chart with volume of SYMBOL over sessions, from the lake (and the tick store's
    bars for sessions the lake lacks, when MARKET_DB_URL is set)."""
    from market_platform import calendar
    from market_platform.analytics import charts
    from market_platform.storage.lake import Lake

    end = end or start
    live = None
    store = _live_store()
    if store is not None:
        first, last = calendar.to_date(start), calendar.to_date(end)
        sessions = calendar.sessions(first, last)
        if sessions:
            live = store.read_bars("1m", calendar.session(sessions[0]).start, calendar.session(sessions[-1]).end,
                                   symbols=[symbol])
    info = charts.candles_chart(Lake.from_settings(), symbol, start, end, out, timeframe=timeframe, live=live)
    click.echo(f"{out}: {info.description}")


@main.command()
@click.argument("sql_text", metavar="SQL")
@click.option("--since", help="Earliest ts of live tables without a ts filter in the SQL: an ISO instant "
                              "or a duration back from now (90m, 2h, 3d). Default: the latest session's start.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "csv", "json"]))
@click.option("--max-rows", default=100, show_default=True, help="Rows shown in table format.")
@fail_cleanly
def query(sql_text: str, since: str | None, fmt: str, max_rows: int) -> None:
    """Run SQL over the lake's datasets (views named as the datasets) and, when MARKET_DB_URL is set,
    the tick store's tables as live.bars_1m, live.quotes, live.trades, ... (same column names)."""
    from market_platform.analytics import query as q
    from market_platform.analytics.alerts import parse_duration
    from market_platform.errors import InvalidInputError
    from market_platform.storage.lake import Lake

    since_at = None
    if since:
        try:
            since_at = datetime.fromisoformat(since)
            if since_at.tzinfo is None:
                since_at = since_at.replace(tzinfo=timezone.utc)
        except ValueError:
            try:
                since_at = datetime.now(timezone.utc) - parse_duration(since, what="--since")
            except InvalidInputError:
                raise InvalidInputError(f"--since {since!r}: expected an ISO instant or a duration like 2h") from None
    table = q.query(sql_text, lake=Lake.from_settings(), store=_live_store(), since=since_at)
    if fmt == "csv":
        import pyarrow.csv as pacsv

        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer)
        click.echo(buffer.getvalue().decode("utf-8"), nl=False)
    elif fmt == "json":
        for row in table.to_pylist():
            click.echo(json.dumps(row, default=str))
    else:
        frame = table.slice(0, max_rows).to_pandas()
        click.echo(frame.to_string(index=False, max_colwidth=60) if table.num_rows else "(no rows)")
        if table.num_rows > max_rows:
            click.echo(f"... {table.num_rows - max_rows} more rows ({table.num_rows} in all; --format csv for all)")


if __name__ == "__main__":
    main()
