"""`market-platform stream`: a window of the live stream into the tick store."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone

import click

from market_platform.cli.base import (
    _store,
    fail_cleanly,
    main,
)


def parse_speed(text: str) -> float | None:
    """`--speed`: a positive, finite number of times real time, or `max` (None: as fast as it goes)."""
    from market_platform.errors import InvalidInputError

    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InvalidInputError(f"--speed {text!r}: expected a positive number of times real time "
                                "(60 streams an hour a minute) or max (as fast as it goes)")
    return value


def parse_symbols(text: str | None, *, crypto: bool) -> list[str] | None:
    """`--symbols`: None when not given (the universe); else the symbols, in Alpaca's syntax."""
    from market_platform.sources.alpaca import check_symbol_syntax

    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    check_symbol_syntax(names, crypto=crypto)  # none at all is an error too: "" does not mean everything
    return names


@main.command()
@click.option("--day", help="Session (stocks) or UTC day (crypto), YYYY-MM-DD; default today (the last session for a replay).")
@click.option("--start", help="Stocks: HH:MM New York to start at (default the pre-market open).")
@click.option("--end", help="Stocks: HH:MM New York to end at (default the after-hours close).")
@click.option("--speed", default="max", show_default=True,
              help="Replay only: times real time (a positive number), or max (as fast as it goes).")
@click.option("--crypto", is_flag=True, help="Stream crypto pairs (a UTC day) instead of stocks.")
@click.option("--symbols", help="Comma-separated symbols (default: the universe; the simulated one for a replay).")
@click.option("--change-filter", is_flag=True, help="Store a quote only when its bid or ask price changed.")
@fail_cleanly
def stream(day, start, end, speed, crypto, symbols, change_filter) -> None:
    """Stream quotes, trades and minute bars into the tick store: from Alpaca when ALPACA_API_KEY and
    ALPACA_SECRET_KEY are set (ALPACA_FEED: iex or sip), else from a replay of the simulated market
    (the one the backfills use: MARKET_SIM_STOCKS, MARKET_SIM_ACTIVITY). Prints the run's report."""
    import logging

    from market_platform import calendar
    from market_platform.defs.resources import sim_market_resource
    from market_platform.streaming.runs import (
        check_live_day,
        crypto_window,
        is_loopback,
        stock_window,
        stream_window,
        today,
    )

    kind = "crypto" if crypto else "stocks"
    key, secret = os.environ.get("ALPACA_API_KEY"), os.environ.get("ALPACA_SECRET_KEY")
    stream_url = os.environ.get("ALPACA_STREAM_URL")
    live = bool(key and secret) and not is_loopback(stream_url)
    now = datetime.now(timezone.utc)
    # Every input is checked before anything is started or written.
    rate = parse_speed(speed)
    names = parse_symbols(symbols, crypto=crypto)
    if day is None:
        if live or kind == "crypto":
            day = (now.date() if kind == "crypto" else now.astimezone(calendar.NEW_YORK).date()).isoformat()
        else:
            day = calendar.default_calendar().last_completed_session(now).isoformat()
    session = calendar.to_date(day)
    if live:
        check_live_day(kind, session, now)
    from_now = live and session == today(kind, now)
    if kind == "crypto":
        crypto_window(session, now=now if from_now else None)
    else:
        stock_window(session, start=start, end=end, now=now if from_now else None)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("alpaca", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    store = _store()
    store.init_schema()
    report = stream_window(
        kind, session, market=sim_market_resource().market, symbols=names, start=start, end=end, speed=rate,
        api_key=key, secret_key=secret, feed=os.environ.get("ALPACA_FEED") or "iex", stream_url=stream_url,
        data_url=os.environ.get("ALPACA_DATA_URL") or None, store_url=store.url, from_now=from_now,
        change_filter=change_filter,
    )
    click.echo(json.dumps(report.summary(), indent=2))
