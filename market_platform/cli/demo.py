"""`market-platform demo`: what `make demo` runs."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import click

from market_platform import settings
from market_platform.cli.base import (
    _in_process,
    _store,
    _vendors,
    fail_cleanly,
    main,
    redact,
)
from market_platform.cli.history import _bars_config, _discover, _launch_backfill, check_history


#: The metrics group, materialized by the demo for its sessions.
METRICS_ASSETS = ("daily_metrics", "intraday_metrics", "return_features", "return_forecast")


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
    # One simulated market whatever the entry point: later commands and the UI's runs of this
    # home serve the demo's (unless MARKET_SIM_STOCKS says otherwise).
    settings.keep_sim_market(*settings.sim_market_size())
    store = _store()
    applied = store.init_schema()
    store.maintain()
    click.echo(f"tick store  {redact(store.url)} ({store.variant()}, {len(applied)} migrations applied)")
    vendors = _vendors()
    click.echo(f"vendors     {vendors.describe()}")

    cal = calendar.default_calendar()
    last = cal.last_completed_session(datetime.now(timezone.utc))
    before = calendar.sessions(calendar.CALENDAR_START, last)
    recent, more = before[-sessions:], before[-sessions - 5:-sessions]
    old_end = cal.previous_session(last - timedelta(days=vendors.flatfiles_after_days + 30))
    old = calendar.sessions(calendar.CALENDAR_START, old_end)[-history:] if history else []
    for category in ("us_equities", "etf"):
        _discover(category, limit=None, as_of=None)
    days = [*old, *recent]
    check_history(days)
    outcome = _launch_backfill(days, timeframes=["1m", "1d"], run_config=_bars_config(), label="demo bars")
    # What the assets' eager automation would do under a daemon: the metrics of the backfilled sessions.
    metrics = _launch_backfill(days, timeframes=[], run_config={}, label="demo metrics", assets=list(METRICS_ASSETS))

    from market_platform.history.status import coverage
    from market_platform.storage.lake import Lake

    lake = Lake.from_settings()
    click.echo(f"\nlake        {settings.lake_url()}   (backfills {outcome.backfill_id} of bars, {len(outcome.runs)} runs, "
               f"and {metrics.backfill_id} of metrics, {len(metrics.runs)} runs)")
    datasets = ("minute_bars", "bars_5m", "bars_15m", "bars_1h", "bars_1d", "vendor_bars_1d")
    click.echo("  session     source              " + "".join(f"{d:>15}" for d in datasets))
    for day in days:
        source = ", ".join(sorted(set(lake.read_partition("minute_bars", day, columns=["source"])
                                      .column("source").to_pylist())))
        counts = "".join(f"{lake.count(d, day):>15,}" for d in datasets)
        click.echo(f"  {day}  {source:<19} {counts}")
    click.echo("  session     " + "".join(f"{d:>18}" for d in METRICS_ASSETS))
    for day in days:
        click.echo(f"  {day}  " + "".join(f"{lake.count(d, day):>18,}" for d in METRICS_ASSETS))
    agree = _daily_agreement(lake, days)
    click.echo(f"\nvendor_bars_1d (the vendor's daily bars) vs bars_1d (rolled up from minute bars): "
               f"{agree[0]:,} of {agree[1]:,} bars agree on open, high, low, close and volume")
    minute = coverage(lake, "minute_bars")
    click.echo(f"minute bars: {minute.rows:,} rows over {len(minute.sessions)} sessions "
               f"({minute.first_bar:%Y-%m-%d %H:%M} to {minute.last_bar:%Y-%m-%d %H:%M} UTC), raw as traded")
    _corporate_actions(lake, days[0], last)
    if stream:
        from market_platform.streaming.demo import stream_demo_session

        click.echo("")
        stream_demo_session(last, store_url=store.url, echo=click.echo)  # the market MARKET_SIM_* configure
    click.echo(f"\nbuilt {len(days)} sessions of {stocks} simulated stocks through the replay servers "
               f"{'and streamed one into the tick store ' if stream else ''}in {time.monotonic() - started:.0f}s; "
               f"later commands of this home serve the same market ({settings.home() / settings.SIM_MARKET_FILE}, "
               f"unless {settings.SIM_STOCKS_VAR} is set)")
    click.echo(
        "\nnext:\n"
        "  make ui                                       # the Dagster UI: assets, partitions, the backfill and its runs\n"
        "  .venv/bin/market-platform db status           # the tick store: quotes, trades, bars_1m, stream_stats\n"
        "  .venv/bin/market-platform status AAPL         # what the lake holds for a ticker\n"
        f"  .venv/bin/market-platform backfill --from {more[0]} --to {more[-1]} --tickers AAPL,MSFT   "
        "# five sessions more\n"
        "  .venv/bin/market-platform db stop             # stop the embedded PostgreSQL the demo left running "
        "(a later command starts it again, and says so)\n"
        f"  .venv/bin/python -c \"import duckdb; print(duckdb.sql(\\\"select symbol, count(*) from "
        f"read_parquet('{settings.lake_url()}/minute_bars/*/*.parquet') group by 1 order by 2 desc limit 5\\\"))\""
    )


def _corporate_actions(lake, first, last) -> None:
    """Materialize `corporate_actions` (all history, from both vendors' replays) and show AAPL's in the demo's window."""
    _in_process(["corporate_actions"], run_config={})
    counts = lake.query("SELECT source, action_type, count(*) AS n FROM corporate_actions GROUP BY ALL ORDER BY ALL")
    by_source: dict[str, list[str]] = {}
    for row in counts.to_pylist():
        by_source.setdefault(row["source"], []).append(f"{row['n']:,} {row['action_type']}s")
    click.echo("\ncorporate actions (lake corporate_actions, tick store corporate_actions): "
               + "; ".join(f"{source}: {', '.join(parts)}" for source, parts in by_source.items()))
    aapl = lake.query("SELECT ex_date, action_type, split_from, split_to, cash_amount FROM corporate_actions "
                      "WHERE source = 'polygon' AND symbol = 'AAPL' AND ex_date BETWEEN $first AND $last "
                      "ORDER BY ex_date", {"first": first, "last": last}).to_pylist()
    for row in aapl:
        what = (f"{row['split_to']:g}-for-{row['split_from']:g} split" if row["action_type"] == "split"
                else f"cash dividend ${row['cash_amount']:.2f}")
        click.echo(f"  AAPL {row['ex_date']}  {what}  (bars stay raw: prices jump on this day)")


def _daily_agreement(lake, days) -> tuple[int, int]:
    """(bars of bars_1d equal to the vendor's daily bar on OHLCV, bars of bars_1d) over `days`."""
    row = lake.query(
        "SELECT count(*) FILTER (WHERE v.symbol IS NOT NULL AND abs(o.open - v.open) < 1e-9 AND abs(o.high - v.high)"
        " < 1e-9 AND abs(o.low - v.low) < 1e-9 AND abs(o.close - v.close) < 1e-9"
        " AND abs(o.volume - v.volume) < 1e-6) AS agree, count(*) AS total"
        " FROM bars_1d o LEFT JOIN vendor_bars_1d v USING (date, symbol)"
        " WHERE o.date IN (SELECT unnest($days::DATE[]))", {"days": [d.isoformat() for d in days]}).to_pylist()[0]
    return row["agree"], row["total"]
