"""`market-platform replay-server`: the replay servers for other processes to share."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from market_platform.cli.base import (
    fail_cleanly,
    main,
)


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
