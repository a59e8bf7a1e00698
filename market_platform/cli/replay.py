"""`market-platform replay-server`: the replay servers for other processes to share."""

from __future__ import annotations

from datetime import date, datetime, timezone

import click

from market_platform.cli.base import (
    fail_cleanly,
    main,
)


@main.command("replay-server")
@click.option("--polygon-port", default=0, show_default=True, help="Polygon REST port (0: any free port).")
@click.option("--alpaca-port", default=0, show_default=True, help="Alpaca REST port (0: any free port).")
@click.option("--s3-port", default=0, show_default=True, help="Flat Files (S3) port (0: any free port).")
@click.option("--stream-port", default=0, show_default=True, help="Alpaca stream port (0: any free port).")
@click.option("--from", "start", default=None, help="First day of flat files (default: two sessions before --to).")
@click.option("--to", "end", default=None, help="Last day of flat files (default: the last completed session).")
@click.option("--stream-start", default=None, help="HH:MM New York: where the stream's session starts (default the "
                                                   "pre-market open).")
@click.option("--stream-end", default=None, help="HH:MM New York: where it ends (default the after-hours close).")
@click.option("--stocks", default=500, show_default=True, help="Size of the simulated stock universe.")
@click.option("--crypto", default=20, show_default=True, help="Number of simulated crypto pairs.")
@click.option("--rate-limit", type=int, default=None, help="REST calls per minute per key (default: no limit).")
@fail_cleanly
def replay_server(polygon_port: int, alpaca_port: int, s3_port: int, stream_port: int, start: str | None, end: str | None,
                  stream_start: str | None, stream_end: str | None, stocks: int, crypto: int,
                  rate_limit: int | None) -> None:
    """Serve the simulated market as Polygon REST, Polygon Flat Files (S3), Alpaca REST and the
    Alpaca stream (the --to session) on 127.0.0.1 until Ctrl-C, and print the URLs and the
    environment that points the platform at them, stream included."""
    from market_platform import calendar
    from market_platform.errors import ConfigError, InvalidInputError
    from market_platform.replay import ReplayServers, serve
    from market_platform.replay.alpaca_stream import AlpacaStreamReplay
    from market_platform.sources.sim import SimMarket
    from market_platform.streaming.runs import stock_window

    for option, port in (("--polygon-port", polygon_port), ("--alpaca-port", alpaca_port), ("--s3-port", s3_port),
                         ("--stream-port", stream_port)):
        if not 0 <= port <= 65535:
            raise InvalidInputError(f"{option} {port}: expected a TCP port from 1 to 65535, or 0 for any free port")
    if stocks < 1 or crypto < 0:
        raise InvalidInputError(f"--stocks {stocks} --crypto {crypto}: expected at least one stock and no negative "
                                "number of pairs")
    cal = calendar.default_calendar()
    completed = cal.last_completed_session(datetime.now(timezone.utc))
    def bounded(option: str, day: date) -> date:
        if not calendar.CALENDAR_START <= day <= completed:
            raise InvalidInputError(f"{option} {day.isoformat()}: expected a day from {calendar.CALENDAR_START.isoformat()} "
                                    f"to the last completed session, {completed.isoformat()}")
        return day

    last = bounded("--to", calendar.to_date(end)) if end else completed
    first = bounded("--from", calendar.to_date(start)) if start else cal.sessions(calendar.CALENDAR_START, last)[-3:][0]
    if first > last:
        raise InvalidInputError(f"--from {first.isoformat()} is after --to {last.isoformat()}")
    if rate_limit is not None and rate_limit < 1:
        raise InvalidInputError(f"--rate-limit {rate_limit}: expected a positive number of calls per minute")
    sim = SimMarket(n_stocks=stocks, n_crypto=crypto)
    servers = ReplayServers(sim=sim, polygon_port=polygon_port, alpaca_port=alpaca_port, s3_port=s3_port,
                            flatfile_days=(first, last), rate_limit=rate_limit)
    stream_day = last if cal.is_session(last) else cal.previous_session(last)
    lo, hi = stock_window(stream_day, start=stream_start, end=stream_end)
    stream = AlpacaStreamReplay(sim, stream_day, start=lo, end=hi, speed=None, port=stream_port, max_connections=4)
    click.echo(f"simulated market: {stocks} stocks, {crypto} crypto pairs; writing flat files "
               f"{first.isoformat()} to {last.isoformat()}...")
    try:
        serve(servers, stream=stream, echo=click.echo)
    except OSError as exc:
        raise ConfigError(f"cannot listen on the requested ports: {exc}") from None
