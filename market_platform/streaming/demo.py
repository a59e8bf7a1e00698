"""The streaming part of `market-platform demo`: the close of a simulated session, compressed, into the tick store.

A replay of the simulated market (the one the backfills use: MARKET_SIM_STOCKS, MARKET_SIM_ACTIVITY,
so a streamed bar equals the backfilled bar of the same minute) serves the window as fast as
alpaca-py reads it; the real alpaca-py client, the streamer and binary COPY put it in the tick
store; then the minutes are counted back from the database (what is stored, by the minute of the
events) and printed.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timezone
from typing import Callable

from market_platform import calendar, settings
from market_platform.sources.sim import SimMarket
from market_platform.storage.timescale import TickStore
from market_platform.streaming.runs import stream_window
from market_platform.streaming.streamer import StreamReport

UTC = timezone.utc

_PER_MINUTE = """
SELECT m.minute, coalesce(q.n, 0) AS quotes, coalesce(t.n, 0) AS trades, coalesce(b.n, 0) AS bars
FROM generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 minute', interval '1 minute') AS m(minute)
LEFT JOIN (SELECT date_trunc('minute', ts) AS minute, count(*) AS n FROM quotes
           WHERE ts >= %(start)s AND ts < %(end)s AND source = 'alpaca_stream' GROUP BY 1) AS q USING (minute)
LEFT JOIN (SELECT date_trunc('minute', ts) AS minute, count(*) AS n FROM trades
           WHERE ts >= %(start)s AND ts < %(end)s AND source = 'alpaca_stream' GROUP BY 1) AS t USING (minute)
LEFT JOIN (SELECT ts AS minute, count(*) AS n FROM bars_1m
           WHERE ts >= %(start)s AND ts < %(end)s GROUP BY 1) AS b USING (minute)
ORDER BY m.minute
"""


def minute_counts(store: TickStore, start: datetime, end: datetime) -> list[dict]:
    """Quotes, trades and bars stored per minute of event time in [start, end)."""
    return store.read_arrow(_PER_MINUTE, {"start": start, "end": end}).to_pylist()


def stream_demo_session(
    day: date | str | None = None,
    *,
    market: SimMarket | None = None,
    n_stocks: int | None = None,
    speed: float | None = None,
    start: str | None = "15:55",
    end: str | None = "16:00",
    store_url: str | None = None,
    echo: Callable[[str], None] = print,
    every: int = 1,
) -> tuple[StreamReport, list[dict]]:
    """Stream [start, end) New York of the simulated session `day` (default: the last completed
    one; the window: the last five minutes of regular trading, the busiest of the day) into the
    tick store at `speed` times real time (None: as fast as it goes), print the stored counts per
    minute (a line per `every` minutes, each with its busiest minute) and the totals; return the
    report and the per-minute counts. `market`: the simulated market (default the one the
    environment configures for every entry point; `n_stocks` overrides its size)."""
    day = calendar.to_date(day) if day else calendar.default_calendar().last_completed_session(datetime.now(UTC))
    if market is None:
        stocks, activity = settings.sim_market_size()
        market = SimMarket(n_stocks=n_stocks or stocks, activity=activity)
    logging.getLogger("market_platform.streaming").setLevel(logging.WARNING)  # the demo prints its own lines
    echo(f"streaming {start or 'the pre-market open'}-{end or 'the after-hours close'} New York of the session of "
         f"{day} ({market.n_stocks} simulated stocks, activity {market.activity:g}) "
         f"{'as fast as it goes' if speed is None else f'at {speed:g}x real time'} ...")
    report = stream_window("stocks", day, market=market, start=start, end=end, speed=speed, store_url=store_url,
                           stale_after=30.0, repair_delay=0.0)
    with TickStore.from_settings(store_url) as store:
        minutes = minute_counts(store, report.start, report.end)
    echo(f"{'New York':<13} {'quotes':>10} {'trades':>9} {'bars':>7}   busiest minute (quotes)")
    for i in range(0, len(minutes), every):
        block = minutes[i:i + every]
        peak = max(block, key=lambda row: row["quotes"])
        first = block[0]["minute"].astimezone(calendar.NEW_YORK)
        last = block[-1]["minute"].astimezone(calendar.NEW_YORK)
        echo(f"{first:%H:%M}-{last:%H:%M}   {sum(r['quotes'] for r in block):>10,} {sum(r['trades'] for r in block):>9,} "
             f"{sum(r['bars'] for r in block):>7,}   {peak['minute'].astimezone(calendar.NEW_YORK):%H:%M} "
             f"{peak['quotes']:,}")
    rate = report.quotes / report.wall_seconds if report.wall_seconds else 0.0
    echo(f"total         {report.quotes:>10,} {report.trades:>9,} {report.bars:>7,}   "
         f"in {report.wall_seconds:.1f} s ({rate:,.0f} quotes/s), {report.duplicates} duplicates, "
         f"{report.dead_letters} dead letters, {report.gaps} gaps")
    return report, minutes
