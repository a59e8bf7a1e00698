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
from datetime import datetime, timedelta, timezone
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
@click.option("--sessions", default=3, show_default=True, help="Recent sessions to backfill (from REST).")
@click.option("--history", default=2, show_default=True,
              help="Sessions of two months ago to backfill too (from the Flat Files).")
@click.option("--stocks", default=100, show_default=True, help="Size of the simulated stock universe.")
@click.option("--stream/--no-stream", default=True, show_default=True,
              help="Also stream the last session, compressed, into the tick store.")
@fail_cleanly
def demo(sessions: int, history: int, stocks: int, stream: bool) -> None:
    """Discover the universe and backfill bars through the replay servers, with the vendors' real
    clients, whatever keys are set: REST for recent sessions, Flat Files for older ones. Then stream
    the last session through the Alpaca stream replay and alpaca-py into the tick store."""
    from market_platform import calendar
    from market_platform.errors import InvalidInputError

    if sessions < 1 or history < 0 or stocks < 1:
        raise InvalidInputError("--sessions and --stocks must be positive and --history not negative")
    started = time.monotonic()
    # The demo is the replay's: vendor keys of the shell are not used, and nothing goes to a vendor.
    for name in [n for n in os.environ if n.startswith(("POLYGON_", "ALPACA_"))]:
        del os.environ[name]
    os.environ["MARKET_SIM_STOCKS"] = str(stocks)
    store = _store()
    applied = store.init_schema()
    store.maintain()
    click.echo(f"tick store  {redact(store.url)} ({store.variant()}, {len(applied)} migrations applied)")
    vendors = _vendors()
    click.echo(f"vendors     {vendors.describe()}")

    cal = calendar.default_calendar()
    last = cal.last_completed_session(datetime.now(timezone.utc))
    recent = calendar.sessions("2004-01-02", last)[-sessions:]
    old_end = cal.previous_session(last - timedelta(days=vendors.flatfiles_after_days + 30))
    old = calendar.sessions("2004-01-02", old_end)[-history:] if history else []
    for category in ("us_equities", "etf"):
        _discover(category, limit=None, as_of=None)
    days = [*old, *recent]
    outcome = _launch_backfill(days, timeframes=["1m", "1d"], run_config=_bars_config(), label="demo")

    from market_platform.history.status import coverage
    from market_platform.storage.lake import Lake

    lake = Lake.from_settings()
    click.echo(f"\nlake        {settings.lake_url()}   (backfill {outcome.backfill_id}, {len(outcome.runs)} runs)")
    datasets = ("minute_bars", "bars_5m", "bars_15m", "bars_1h", "bars_1d", "vendor_bars_1d")
    click.echo("  session     source              " + "".join(f"{d:>15}" for d in datasets))
    for day in days:
        source = ", ".join(sorted(set(lake.read_partition("minute_bars", day, columns=["source"])
                                      .column("source").to_pylist())))
        counts = "".join(f"{lake.count(d, day):>15,}" for d in datasets)
        click.echo(f"  {day}  {source:<19} {counts}")
    agree = _daily_agreement(lake, days)
    click.echo(f"\nvendor_bars_1d (the vendor's daily bars) vs bars_1d (rolled up from minute bars): "
               f"{agree[0]:,} of {agree[1]:,} bars agree on open, high, low, close and volume")
    minute = coverage(lake, "minute_bars")
    click.echo(f"minute bars: {minute.rows:,} rows over {len(minute.sessions)} sessions "
               f"({minute.first_bar:%Y-%m-%d %H:%M} to {minute.last_bar:%Y-%m-%d %H:%M} UTC)")
    if stream:
        from market_platform.streaming.demo import stream_demo_session

        click.echo("")
        stream_demo_session(last, n_stocks=stocks, store_url=store.url, echo=click.echo, every=60)
    click.echo(f"\nbuilt {len(days)} sessions of {stocks} simulated stocks through the replay servers "
               f"{'and streamed one into the tick store ' if stream else ''}in {time.monotonic() - started:.0f}s")
    click.echo(
        "\nnext:\n"
        "  make ui                                       # the Dagster UI: assets, partitions, the backfill and its runs\n"
        "  .venv/bin/market-platform db status           # the tick store: quotes, trades, bars_1m, stream_stats\n"
        "  .venv/bin/market-platform status AAPL         # what the lake holds for a ticker\n"
        "  .venv/bin/market-platform backfill --from 2024-11-25 --to 2024-11-29 --tickers AAPL,MSFT\n"
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


def _daily_agreement(lake, days) -> tuple[int, int]:
    """(bars of bars_1d equal to the vendor's daily bar on OHLCV, bars of bars_1d) over `days`."""
    row = lake.query(
        "SELECT count(*) FILTER (WHERE v.symbol IS NOT NULL AND abs(o.open - v.open) < 1e-9 AND abs(o.high - v.high)"
        " < 1e-9 AND abs(o.low - v.low) < 1e-9 AND abs(o.close - v.close) < 1e-9"
        " AND abs(o.volume - v.volume) < 1e-6) AS agree, count(*) AS total"
        " FROM bars_1d o LEFT JOIN vendor_bars_1d v USING (date, symbol)"
        " WHERE o.date IN (SELECT unnest($days::DATE[]))", {"days": [d.isoformat() for d in days]}).to_pylist()[0]
    return row["agree"], row["total"]


def run_failure_reason(result) -> str:
    """The innermost error message of a failed in-process run's first failed step."""
    from market_platform.backfills import failure_reason

    return failure_reason(result)


def _check_partition(definitions, keys, partition: str) -> None:
    """Refuse a partition the selected assets do not have, with the reason (a date that is not a
    session, an unknown category), before Dagster sees it."""
    from market_platform import calendar
    from market_platform.defs.partitions import categories_def
    from market_platform.errors import InvalidInputError

    kinds = {definitions.resolve_assets_def(key).partitions_def for key in keys}
    if len(kinds) > 1:
        raise InvalidInputError("the selected assets have different partitions: materialize them separately")
    if kinds == {categories_def}:
        if partition not in categories_def.get_partition_keys():
            raise InvalidInputError(f"unknown category {partition!r}: expected one of "
                                    f"{', '.join(categories_def.get_partition_keys())}")
    else:
        calendar.session(partition)


@main.command()
@click.option("--select", required=True, help="Comma-separated asset keys, e.g. minute_bars,bars_5m.")
@click.option("--partition", required=True, help="Partition key: a session date YYYY-MM-DD, or a category.")
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
    keys = [dg.AssetKey(n) for n in names]
    _check_partition(definitions, keys, partition)
    os.environ.update(dagster_env())
    job = definitions.resolve_implicit_job_def_def_for_assets(keys).get_subset(asset_selection=set(keys))
    result = job.execute_in_process(
        partition_key=partition, instance=dg.DagsterInstance.get(), run_config=QUIET, raise_on_error=False
    )
    if not result.success:
        raise MarketPlatformError(f"run {result.run_id} failed: {run_failure_reason(result)}")
    click.echo(f"materialized {', '.join(names)} for {partition} (run {result.run_id})")


# ----------------------------------------------------------------------------- vendors and history


def _vendors():
    """The vendors this process uses, configured from the environment like the Dagster resource
    (with no key: the replay servers of the simulated market, started here)."""
    from market_platform.defs.resources import sim_market_resource
    from market_platform.history.vendors import Vendors

    market = sim_market_resource()
    return Vendors.from_env(market=lambda: market.market)


def _in_process(selection: list[str], *, run_config: dict, partition_key: str | None = None):
    """Materialize assets in this process, recorded in the platform's instance; the run's result."""
    import dagster as dg

    from market_platform.definitions import defs

    os.environ.update(dagster_env())
    keys = [dg.AssetKey(name) for name in selection]
    job = defs().resolve_implicit_job_def_def_for_assets(keys).get_subset(asset_selection=set(keys))
    result = job.execute_in_process(partition_key=partition_key, instance=dg.DagsterInstance.get(),
                                    run_config={**run_config, **QUIET}, raise_on_error=False)
    if not result.success:
        raise MarketPlatformError(f"run {result.run_id} failed: {run_failure_reason(result)}")
    return result


def _discover(category: str, *, limit: int | None, as_of: str | None, replace: bool = False) -> None:
    from market_platform.history.universe import TOP_DATASET

    if category == TOP_DATASET:
        config = {"as_of": as_of, "replace": replace, **({"size": limit} if limit else {})}
        result = _in_process(["top3000_universe"], run_config={"ops": {"top3000_universe": {"config": config}}})
    else:
        config = {"as_of": as_of, "limit": limit, "replace": replace}
        result = _in_process(["ticker_universe"], partition_key=category,
                             run_config={"ops": {"ticker_universe": {"config": config}}})
    meta = result.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    day, rows = meta["snapshot_date"].value, meta["rows"].value
    previous = meta["previous_snapshot"].value
    change = (f"{meta['added'].value} added, {meta['removed'].value} removed since {previous}"
              if previous != "none" else "the first snapshot")
    kept = " (a snapshot of that day existed: kept as it was)" if meta["kept_existing"].value else ""
    click.echo(f"{category:<12} {day}: {rows:>6,} tickers, {change}{kept}")


@main.command()
@click.argument("category")
@click.option("--limit", type=int, default=None, help="At most this many tickers (top3000: the size).")
@click.option("--as-of", default=None, help="Snapshot day YYYY-MM-DD (default: today in New York).")
@click.option("--replace", is_flag=True, help="Overwrite an existing snapshot of a past day.")
@fail_cleanly
def discover(category: str, limit: int | None, as_of: str | None, replace: bool) -> None:
    """Snapshot the tickers of CATEGORY (us_equities, etf, crypto, fx, options, indices, otc, or
    top3000: the 3,000 most traded us_equities, a stand-in for the Russell 3000) listed on a day."""
    from market_platform import calendar
    from market_platform.errors import InvalidInputError
    from market_platform.history.universe import TOP_DATASET, check_limit
    from market_platform.schemas import CATEGORIES

    if category not in (*CATEGORIES, TOP_DATASET):
        raise InvalidInputError(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)} or top3000")
    check_limit(limit)
    if as_of is not None:
        day, today = calendar.to_date(as_of), datetime.now(calendar.NEW_YORK).date()
        if day > today:
            raise InvalidInputError(f"--as-of {day.isoformat()} is in the future: expected a day up to {today.isoformat()}")
    _discover(category, limit=limit, as_of=as_of, replace=replace)


def _bars_config(**options) -> dict:
    """Run config giving every bars asset of a backfill the same BarsConfig options."""
    from market_platform.defs.bars.assets import CONFIGURED_ASSETS, BarsConfig

    BarsConfig(**options)  # validates the options here, before any run
    return {"ops": {name: {"config": dict(options)} for name in CONFIGURED_ASSETS}}


def _launch_backfill(days, *, timeframes: list[str], run_config: dict, label: str):
    """Run a Dagster backfill of the bars of `days` (see market_platform.backfills), with a progress bar."""
    import dagster as dg

    from market_platform import backfills
    from market_platform.defs.bars.assets import TIMEFRAME_ASSETS
    from market_platform.definitions import defs

    os.environ.update(dagster_env())
    instance = dg.DagsterInstance.get()
    definitions = defs()
    keys = [a.key for tf in timeframes for a in TIMEFRAME_ASSETS[tf]]
    title = f"{label} {days[0].isoformat()}..{days[-1].isoformat()}" if len(days) > 1 else f"{label} {days[0]}"
    tags = {"market_platform/timeframes": ",".join(timeframes)}
    for abandoned in backfills.reap_abandoned(instance):
        click.echo(f"backfill {abandoned} lost its process: marked failed (this one resumes its work)", err=True)
    with click.progressbar(length=len(set(days)), label=f"backfill {len(set(days))} sessions",
                           file=sys.stderr, show_pos=True) as bar:
        if backfills.daemon_running(instance):
            backfill_id = backfills.submit(instance, definitions, keys, days, run_config=run_config, title=title,
                                           tags=tags)
            click.echo(f"\nsubmitted backfill {backfill_id} to the running dagster-daemon", err=True)
            outcome = backfills.follow(instance, definitions, backfill_id, len(set(days)), bar.update)
        else:
            outcome = backfills.run_here(instance, definitions, keys, days, run_config=run_config, title=title,
                                         on_progress=bar.update, tags=tags, logging_config=QUIET["loggers"])
    if not outcome.success:
        failed = f"{len(outcome.failed)} of {outcome.sessions} sessions failed" if outcome.failed else "it failed"
        raise MarketPlatformError(f"backfill {outcome.backfill_id}: {failed}: {outcome.reason} "
                                  "(run the same command again to resume)")
    return outcome


@main.command()
@click.option("--from", "start", required=True, help="First session, YYYY-MM-DD.")
@click.option("--to", "end", required=True, help="Last session, YYYY-MM-DD.")
@click.option("--tickers", default=None, help="Comma-separated tickers (default: the universe snapshot in force).")
@click.option("--timeframes", default="1m", show_default=True,
              help="1m: minute bars and their rollups; 5m, 15m, 1h, 1d: also the vendor's own bars.")
@click.option("--universe", "universe_name", default="stocks", show_default=True,
              help="Universe to follow without --tickers: stocks (us_equities and etf) or top3000.")
@click.option("--source", default="auto", show_default=True,
              help="auto (Flat Files for sessions older than 30 days, else REST), rest, polygon_flatfiles, "
                   "polygon_rest or alpaca_rest.")
@click.option("--stage-every", type=int, default=100, show_default=True,
              help="Stage fetched tickers in pieces of this many: what an interrupted run keeps.")
@fail_cleanly
def backfill(start: str, end: str, tickers: str | None, timeframes: str, universe_name: str, source: str,
             stage_every: int) -> None:
    """Backfill bars of the sessions from --from to --to into the lake: a Dagster backfill, resumable
    (run it again after any interruption and only what is missing is fetched)."""
    from market_platform import calendar
    from market_platform.errors import InvalidInputError
    from market_platform.history.bars import TIMEFRAMES
    from market_platform.history.universe import UNIVERSES, session_symbols
    from market_platform.history.vendors import SOURCE_CHOICES
    from market_platform.sources.vendor import symbol_list
    from market_platform.storage.lake import Lake

    first, last = calendar.to_date(start), calendar.to_date(end)
    if first > last:
        raise InvalidInputError(f"--from {first.isoformat()} is after --to {last.isoformat()}")
    today = datetime.now(calendar.NEW_YORK).date()
    if last > today:
        raise InvalidInputError(f"--to {last.isoformat()} is in the future: expected a session up to {today.isoformat()}")
    if first == last:
        calendar.session(first)  # names the holiday or weekend
    days = calendar.sessions(first, last)
    if not days:
        raise InvalidInputError(f"no trading session from {first.isoformat()} to {last.isoformat()}: "
                                "expected a range holding at least one session")
    frames = list(dict.fromkeys(t.strip() for t in timeframes.split(",") if t.strip()))
    unknown = [t for t in frames if t not in TIMEFRAMES]
    if unknown or not frames:
        raise InvalidInputError(f"--timeframes {timeframes!r}: expected some of {', '.join(TIMEFRAMES)}")
    if universe_name not in UNIVERSES:
        raise InvalidInputError(f"--universe {universe_name!r}: expected one of {', '.join(UNIVERSES)}")
    if source not in SOURCE_CHOICES:
        raise InvalidInputError(f"--source {source!r}: expected one of {', '.join(SOURCE_CHOICES)}")
    if stage_every < 1:
        raise InvalidInputError(f"--stage-every {stage_every}: expected a positive number of tickers")
    options: dict = {"source": source, "universe": universe_name, "stage_every": stage_every}
    if tickers is not None:
        names = symbol_list([t.strip() for t in tickers.split(",")])
        _vendors().check_symbols(names, days[0], days[-1])
        options.update(tickers=names, check_tickers=False)
    else:
        session_symbols(Lake.from_settings(), days[0], universe_name)  # a universe must have been discovered
    started = time.monotonic()
    outcome = _launch_backfill(days, timeframes=frames, run_config=_bars_config(**options), label="backfill")
    click.echo(f"backfill {outcome.backfill_id}: {len(days)} sessions ({days[0]} to {days[-1]}), "
               f"timeframes {','.join(frames)}, {len(outcome.runs)} runs ({outcome.mode}) "
               f"in {time.monotonic() - started:.0f}s")
    click.echo("what the lake holds now: market-platform status" + (f" {names[0]}" if tickers else ""))


@main.command()
@click.argument("ticker", required=False)
@click.option("--dataset", default=None, help="List one lake dataset's partitions and rows instead.")
@fail_cleanly
def status(ticker: str | None, dataset: str | None) -> None:
    """What the lake holds: universe snapshots and, per bar dataset, sessions, first and last bar,
    gaps and sources; or the same for one TICKER; or one dataset's partitions (--dataset)."""
    from market_platform.errors import InvalidInputError
    from market_platform.history import status as lake_status
    from market_platform.storage.lake import Lake

    store = Lake.from_settings()
    if dataset is not None:
        if ticker is not None:
            raise InvalidInputError("give a TICKER or --dataset, not both")
        _dataset_partitions(store, dataset)
        return
    if ticker is not None:
        found = [c for c in (lake_status.coverage(store, d, ticker) for d in lake_status.BAR_DATASETS) if c.rows]
        listed = lake_status.ticker_snapshots(store, ticker)
        if not found and not listed:
            raise InvalidInputError(f"the lake at {store.url} has no bars and no universe snapshot listing "
                                    f"{ticker!r}: backfill it with `market-platform backfill --tickers {ticker} ...`")
        click.echo(f"{ticker} in {store.url}")
        if listed:
            click.echo(f"universe: listed in {len(listed)} snapshots from {listed[0][1]} to {listed[-1][1]} "
                       f"({', '.join(sorted({c for c, _ in listed}))})")
        _print_coverages(found)
        return
    click.echo(f"lake {store.url}")
    snapshots = lake_status.snapshots(store)
    if snapshots:
        click.echo("universe snapshots")
        for snap in snapshots:
            click.echo(f"  {snap.category:<12} {len(snap.dates):>5} days, {snap.dates[0]} to {snap.dates[-1]}; "
                       f"latest {snap.latest_rows:,} tickers")
    click.echo("bars")
    _print_coverages([c for c in (lake_status.coverage(store, d) for d in lake_status.BAR_DATASETS) if c.rows])
    others = [d for d in store.datasets() if d not in lake_status.BAR_DATASETS and d not in ("universe", "top3000")]
    for name in others:
        click.echo(f"{name}: {len(store.partitions(name))} partitions, {store.count(name):,} rows")


def _print_coverages(coverages) -> None:
    """One line per bar dataset: sessions, first and last bar, bars, gaps, sources; then the gaps."""
    if not coverages:
        click.echo("no bars yet: `market-platform backfill --from ... --to ...`")
        return
    click.echo(f"  {'dataset':<16}{'sessions':>9}  {'first bar (UTC)':<17} {'last bar (UTC)':<17}{'bars':>13}"
               f"{'gaps':>6}  sources")
    for cov in coverages:
        sources = ", ".join(f"{s} {n:,}" for s, n in cov.sources.items())
        click.echo(f"  {cov.dataset:<16}{len(cov.sessions):>9}  {cov.first_bar:%Y-%m-%d %H:%M}  "
                   f"{cov.last_bar:%Y-%m-%d %H:%M} {cov.rows:>13,}{len(cov.gaps):>6}  {sources}")
    gaps = coverages[0].gaps
    if gaps:
        shown = ", ".join(d.isoformat() for d in gaps[:8]) + (f" and {len(gaps) - 8} more" if len(gaps) > 8 else "")
        click.echo(f"sessions without {coverages[0].dataset} between the first and the last: {shown}")


def _dataset_partitions(store, dataset: str) -> None:
    store.count(dataset)  # validates the name
    for spec in store.partitions(dataset):
        label = "/".join(f"{k}={v}" for k, v in spec.items())
        click.echo(f"{label}  {store.count(dataset, spec):>12,} rows")


@main.command(hidden=True)
@click.argument("dataset", required=False)
@fail_cleanly
def lake(dataset: str | None) -> None:
    """Superseded by `status` (kept for scripts): `status --dataset DATASET`, or `status`."""
    from market_platform.storage.lake import Lake

    if dataset is None:
        status.callback(None, None)
    else:
        _dataset_partitions(Lake.from_settings(), dataset)


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
