"""`market-platform snapshots`: poll minute snapshots of the whole market through the queue into
the tick store; `snapshots status`: the queue, what was processed last, missed minutes, feed health."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import click

from market_platform.cli.base import _store, _vendors, fail_cleanly, main

UTC = timezone.utc


def _default_day(market: str, live: bool) -> str:
    from market_platform import calendar

    now = datetime.now(UTC)
    if market == "crypto":
        return (now.date() if live else now.date() - timedelta(days=1)).isoformat()
    if live:
        return now.astimezone(calendar.NEW_YORK).date().isoformat()
    return calendar.default_calendar().last_completed_session(now).isoformat()


def _queue(store):
    from market_platform.snapshots.queue import QUEUE_URL_VAR, queue_from_url

    return queue_from_url(os.environ.get(QUEUE_URL_VAR), store)


@main.group(invoke_without_command=True)
@click.option("--day", help="Session (stocks) or UTC day (crypto), YYYY-MM-DD; default today (the last session "
                            "for a replay).")
@click.option("--start", help="HH:MM to start at: New York for stocks (default the pre-market open), UTC for crypto.")
@click.option("--end", help="HH:MM to end at: New York for stocks (default the after-hours close), UTC for crypto.")
@click.option("--speed", default="max", show_default=True, help="Replay only: times real time, or 'max'.")
@click.option("--crypto", is_flag=True, help="Poll the crypto snapshot (a UTC day) instead of stocks.")
@click.option("--provider", type=click.Choice(["auto", "polygon", "alpaca"]), default="auto", show_default=True,
              help="auto: Polygon when POLYGON_API_KEY is set, else Alpaca.")
@click.pass_context
@fail_cleanly
def snapshots(ctx, day, start, end, speed, crypto, provider) -> None:
    """Poll the whole-market snapshot once a minute over a window into the queue (the tick store's
    table, or MARKET_SNAPSHOT_QUEUE_URL), process it into `market_snapshots`, and check the live stream
    against it: from Polygon or Alpaca when their keys are set, else from a replay of the simulated
    market (the one the backfills and `stream` use: MARKET_SIM_STOCKS, MARKET_SIM_ACTIVITY)."""
    if ctx.invoked_subcommand is not None:
        return
    from market_platform.errors import InvalidInputError
    from market_platform.history.vendors import has_vendor_keys
    from market_platform.snapshots import feed_health
    from market_platform.snapshots.poller import poll_snapshots, window
    from market_platform.snapshots.processor import drain
    from market_platform.defs.resources import sim_market_resource
    from market_platform.streaming.repair import sim_history

    market = "crypto" if crypto else "stocks"
    live = has_vendor_keys()
    try:
        rate = None if speed == "max" else float(speed)
    except ValueError:
        raise InvalidInputError(f"--speed {speed!r}: expected a number (times real time) or max") from None
    day = day or _default_day(market, live)
    store = _store()
    store.init_schema()
    queue = _queue(store)
    sim = sim_market_resource().market
    polled = poll_snapshots(store, queue, sim_market=sim, market=market,
                            day=day, start=start, end=end, speed=rate, provider=provider)
    processed = drain(queue, store)
    lo, hi = window(market, day, start=start, end=end)
    if live:
        vendors = _vendors()
        history = feed_health.rest_history(alpaca=vendors.alpaca, polygon=vendors.polygon)
    else:
        history = sim_history(sim, crypto=crypto)
    health = feed_health.check_feed(store, lo, min(hi, datetime.now(UTC)) if live else hi, kind=market,
                                    history=history)
    click.echo(json.dumps({
        "queue": queue.describe(), "polled": polled.summary(), "processed": processed.summary(),
        "missed": [[m.isoformat(), reason] for m, reason in polled.missed],
        "feed_health": health.summary(),
    }, indent=2))


@snapshots.command()
@click.option("--day", help="Session to report on (default: today's, else the last).")
@fail_cleanly
def status(day) -> None:
    """The queue (backend, depth, oldest message), the last processed snapshot, the day's rows and
    missed minutes, and the day's feed health (symbols silent, minutes, repaired)."""
    from market_platform import calendar
    from market_platform.snapshots import feed_health

    store = _store()
    store.init_schema()
    queue = _queue(store)
    stats = queue.stats()
    now = datetime.now(UTC)
    cal = calendar.default_calendar()
    session = calendar.session(day) if day else (cal.session_at(now) or cal.session(cal.last_completed_session(now)))
    last = store.read_arrow(
        "SELECT source, minute, inserted_at FROM market_snapshots ORDER BY inserted_at DESC, minute DESC LIMIT 1").to_pylist()
    counts = store.read_arrow(
        "SELECT source, count(*) AS rows, count(DISTINCT minute) AS minutes FROM market_snapshots "
        "WHERE minute >= %(start)s AND minute <= %(end)s GROUP BY source ORDER BY source",
        {"start": session.start, "end": session.end}).to_pylist()
    misses = store.read_arrow(
        "SELECT source, market, count(*) AS minutes, min(reason) AS example FROM snapshot_misses "
        "WHERE minute >= %(start)s AND minute <= %(end)s GROUP BY source, market ORDER BY source, market",
        {"start": session.start, "end": session.end}).to_pylist()
    oldest = stats.oldest.isoformat() if stats.oldest else None
    click.echo(json.dumps({
        "queue": {"backend": queue.describe(), "depth": stats.depth, "in_flight": stats.in_flight,
                  "oldest_message": oldest,
                  "oldest_waited_seconds": round((now - stats.oldest).total_seconds(), 1) if stats.oldest else None},
        "last_processed": {"source": last[0]["source"], "minute": last[0]["minute"].isoformat(),
                           "inserted_at": last[0]["inserted_at"].isoformat()} if last else None,
        "session": session.day.isoformat(),
        "snapshots": counts,
        "missed_minutes": misses,
        "feed_health": feed_health.session_report(store, session.start, session.end),
    }, indent=2, default=str))
