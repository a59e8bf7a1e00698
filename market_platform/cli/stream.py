"""`market-platform stream`: a window of the live stream into the tick store."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import click

from market_platform.cli.base import (
    _store,
    fail_cleanly,
    main,
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
