"""`market-platform chart` and `query`: reading the lake and the tick store."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import click

from market_platform.cli.base import (
    _store,
    fail_cleanly,
    main,
)

#: Rows `query --max-rows` may show in table format (--format csv or json for more).
MAX_SHOWN_ROWS = 1_000_000


@main.command()
@click.argument("symbol")
@click.option("--from", "start", required=True, help="First session, YYYY-MM-DD.")
@click.option("--to", "end", help="Last session, YYYY-MM-DD (default: --from).")
@click.option("--timeframe", default="5m", show_default=True, type=click.Choice(["1m", "5m", "15m", "1h", "1d"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="FILE.png or FILE.html")
@click.option("--adjust", default="none", show_default=True, type=click.Choice(["none", "split", "all"]),
              help="Prices as traded (none), adjusted for splits, or for splits and dividends, as of today.")
@fail_cleanly
def chart(symbol: str, start: str, end: str | None, timeframe: str, out: str, adjust: str) -> None:
    """Candlestick chart with volume of SYMBOL over sessions, from the lake and the tick store's
    bars for sessions the lake lacks (MARKET_DB_URL, or the embedded server). With --adjust split
    or all, a renamed ticker's chart includes its bars under the old name."""
    import psycopg

    from market_platform import calendar
    from market_platform.analytics import charts
    from market_platform.storage.lake import Lake

    end = end or start
    live = None
    first, last = calendar.to_date(start), calendar.to_date(end)
    sessions = calendar.sessions(first, last) if first <= last else []  # charts names a backwards range
    if sessions:
        try:
            live = _store().read_bars("1m", calendar.session(sessions[0]).start,
                                      calendar.session(sessions[-1]).end, symbols=[symbol])
        except psycopg.errors.UndefinedTable:
            live = None  # a tick store without its schema yet holds no bars
    info = charts.candles_chart(Lake.from_settings(), symbol, start, end, out, timeframe=timeframe, live=live,
                                adjust=adjust)
    click.echo(f"{out}: {info.description}")


@main.command()
@click.argument("sql_text", metavar="SQL")
@click.option("--since", help="Earliest ts of live tables without a ts filter in the SQL: an ISO instant "
                              "or a duration back from now (90m, 2h, 3d). Default: the latest session's start.")
@click.option("--as-of", "as_of", help="Date the adjusted views (<dataset>_adjusted_split, _adjusted_all) are as of: "
                                       "only the corporate actions announced and in effect by then. Default: today.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "csv", "json"]))
@click.option("--max-rows", default="100", show_default=True, help="Rows shown in table format.")
@fail_cleanly
def query(sql_text: str, since: str | None, as_of: str | None, fmt: str, max_rows: str) -> None:
    """Run one read-only SELECT over the lake's datasets (views named as the datasets) and the tick
    store's tables as live.bars_1m, live.quotes, live.trades, ... (same column names); the tick
    store is MARKET_DB_URL, or the embedded server. Bars are raw; every bar dataset also has
    <dataset>_adjusted_split and <dataset>_adjusted_all views (as of --as-of) with traded_symbol
    beside symbol. The SQL reaches nothing else: no other file, no network, no extension."""
    from market_platform.analytics import query as q
    from market_platform.analytics.alerts import parse_duration
    from market_platform.errors import InvalidInputError
    from market_platform.storage.lake import Lake

    try:
        shown = int(max_rows)
    except ValueError:
        shown = 0
    if not 1 <= shown <= MAX_SHOWN_ROWS:
        raise InvalidInputError(f"--max-rows {max_rows!r}: expected a number of rows from 1 to {MAX_SHOWN_ROWS:,} "
                                "(--format csv or json for every row)")
    lake = Lake.from_settings()
    lake.check()
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
    from market_platform import calendar

    store = _store() if q.live_tables(sql_text) else None
    table, fetched = q.run(sql_text, lake=lake, store=store, since=since_at,
                           as_of=calendar.to_date(as_of) if as_of else None)
    for read in fetched:
        click.echo(read.describe(), err=True)
    if fmt == "csv":
        import pyarrow.csv as pacsv

        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer)
        click.echo(buffer.getvalue().decode("utf-8"), nl=False)
    elif fmt == "json":
        for row in table.to_pylist():
            click.echo(json.dumps(row, default=str))
    else:
        frame = table.slice(0, shown).to_pandas()
        floats = {name: _plain_number for name in frame.columns if frame[name].dtype.kind == "f"}
        click.echo(frame.to_string(index=False, max_colwidth=60, formatters=floats) if table.num_rows else "(no rows)")
        if table.num_rows > shown:
            click.echo(f"... {table.num_rows - shown} more rows ({table.num_rows} in all; --format csv for all)")


def _plain_number(value: float) -> str:
    """A float as a person reads it in a table: 739,591,800 and 242.92, never 7.395918e+08; up to
    6 decimals (a smaller magnitude in scientific notation rather than as 0)."""
    if value != value:  # NaN: a NULL in a float column
        return "NaN"
    if value != 0 and abs(value) < 1e-4:
        return f"{value:.3e}"
    text = f"{value:,.6f}".rstrip("0")
    return text[:-1] if text.endswith(".") else text
