"""`market-platform chart` and `query`: reading the lake and the tick store."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import click

from market_platform.cli.base import (
    _live_store,
    fail_cleanly,
    main,
)


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
