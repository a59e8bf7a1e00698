"""Daily and intraday metrics of 1-minute bars, computed in place by DuckDB (lake) or PostgreSQL (tick store).

Definitions (the columns are `schemas.DAILY_METRICS` and `schemas.INTRADAY_METRICS`):

- **Bars used.** One bar per symbol and minute inside the session's extended hours (04:00 to
  20:00 New York, 17:00 on half days, from `market_platform.calendar`); where several sources
  stored the same minute, the one whose name sorts first wins, so reruns pick the same bar. A
  bar's price for VWAP is its own VWAP, else its typical price (high + low + close) / 3.
- **1-minute log returns** r = ln(close / previous close) between consecutive bars of a symbol
  within the scope (the regular session for daily metrics, the whole session for windows); the
  symbol's first bar of the scope contributes ln(close / open). A missing minute makes the next
  return span the gap, so volatility is that of the sampled path, not rescaled.
- **Daily** (per symbol and session): open, high, low, close and VWAP of the regular session;
  `prev_close` the previous session's regular close (null when the symbol did not trade then or
  the lake lacks that session), in this session's terms: adjusted for the corporate actions with
  this session as ex-date, known by it (`analytics.adjust`: split, dividend, and a rename brings
  the old ticker's close to the new one), so `pct_change` and `gap` across a 2:1 split are the
  market's move, not -50%, and a dividend's drop is part of the return (total return, as the
  `_adjusted_all` views); `open_close_return` close/open - 1, `log_return` ln(close/open),
  `pct_change` close/prev_close - 1, `gap` open/prev_close - 1; `price_range` high - low and
  `range_pct` (high - low)/open; `volume`, `dollar_volume` (sum of price * volume) and
  `trade_count` over the whole session with the pre-market and after-hours shares of volume;
  `realized_vol` sqrt(sum r^2) over the regular session (a daily figure: times sqrt(252) for an
  annual one). A symbol that traded only in extended hours has null regular-session columns.
- **Intraday** (per symbol and clock-aligned 5-minute window with at least one bar): open, high,
  low, close, VWAP, volume, trade count, `observations` (1-minute bars in the window),
  `pct_change` close / the symbol's previous window's close - 1 (the window's own open for its
  first window of the session), `volatility` sqrt(sum r^2) over the window's bars, and
- **probability of profit**: each observation is a 1-minute close in the window, seen as an entry
  price; its percent change is close_i / reference - 1 with the window's reference price (the
  same for all, so the ranking is that of the closes). The latest price's rank is the number of
  observations whose percent change is at or below the latest one's (ties count, the latest
  included), and the probability is rank / observations: the empirical CDF at the latest price,
  i.e. the share of entries in the window that are at break-even or better if sold at the latest
  price. Edge cases: one observation gives 1.0; a flat window (all closes equal) gives 1.0 (every
  entry breaks even); the latest price below every other gives 1/observations, never 0. Read it
  with `observations`: with few observations it says little.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pyarrow as pa
from psycopg import sql

from market_platform import calendar, schemas
from market_platform.errors import InvalidInputError, PartitionNotFoundError
from market_platform.storage.lake import Lake
from market_platform.storage.timescale import TickStore

DAILY_METRICS = "daily_metrics"
INTRADAY_METRICS = "intraday_metrics"
WINDOW = timedelta(minutes=5)


# One bar per (symbol, minute) of the session; ties between sources go to the first name.
# The lake's timestamps are TIMESTAMPTZ_NS in DuckDB, which does not compare with parameters.
_LAKE_BARS = """
SELECT symbol, CAST(ts AS TIMESTAMPTZ) AS ts, open, high, low, close, volume, trade_count,
       coalesce(vwap, (high + low + close) / 3) AS px
FROM day_bars
WHERE CAST(ts AS TIMESTAMPTZ) >= $session_start AND CAST(ts AS TIMESTAMPTZ) < $session_end
QUALIFY row_number() OVER (PARTITION BY symbol, ts ORDER BY source) = 1
"""

_DAILY_SQL = """
WITH bars AS (""" + _LAKE_BARS + """),
prev_whole AS (
    SELECT symbol, CAST(ts AS TIMESTAMPTZ) AS ts, close FROM prev_bars
    QUALIFY row_number() OVER (PARTITION BY symbol, ts ORDER BY source) = 1
),
prev_regular AS (
    SELECT * FROM prev_whole
    WHERE ts >= $prev_regular_open AND ts < $prev_regular_close
),
prev_raw AS (SELECT symbol, arg_max(close, ts) AS prev_close FROM prev_regular GROUP BY symbol),
prev_last AS (SELECT symbol, arg_max(close, ts) AS last_close FROM prev_whole GROUP BY symbol),
-- In this session's terms: the actions taking effect today (adjust.day_actions) applied, the
-- previous close renamed to today's ticker, split, and less the dividend as adjust's factors do.
prev AS (
    SELECT coalesce(a.new_symbol, p.symbol) AS symbol,
           p.prev_close * coalesce(a.split, 1) * (1 - coalesce(a.cash, 0) / l.last_close) AS prev_close
    FROM prev_raw p JOIN prev_last l USING (symbol) LEFT JOIN day_actions a USING (symbol)
),
regular_returns AS (
    SELECT *, ln(close / coalesce(lag(close) OVER (PARTITION BY symbol ORDER BY ts), open)) AS r
    FROM bars WHERE ts >= $regular_open AND ts < $regular_close
),
regular AS (
    SELECT symbol, arg_min(open, ts) AS open, max(high) AS high, min(low) AS low,
           arg_max(close, ts) AS close, sum(px * volume) / nullif(sum(volume), 0) AS vwap,
           sqrt(sum(r * r)) AS realized_vol
    FROM regular_returns GROUP BY symbol
),
whole AS (
    SELECT symbol, sum(volume) AS volume, sum(px * volume) AS dollar_volume,
           sum(trade_count) AS trade_count, count(*) AS bars,
           sum(volume) FILTER (WHERE ts < $regular_open) / nullif(sum(volume), 0) AS premarket_volume_share,
           sum(volume) FILTER (WHERE ts >= $regular_close) / nullif(sum(volume), 0) AS afterhours_volume_share
    FROM bars GROUP BY symbol
)
SELECT w.symbol, CAST($day_ts AS TIMESTAMPTZ) AS ts, r.open, r.high, r.low, r.close, p.prev_close,
       r.close / r.open - 1 AS open_close_return, ln(r.close / r.open) AS log_return,
       r.close / p.prev_close - 1 AS pct_change, r.open / p.prev_close - 1 AS gap,
       r.high - r.low AS price_range, (r.high - r.low) / r.open AS range_pct, r.vwap,
       w.volume, w.dollar_volume, w.trade_count, w.bars, r.realized_vol,
       coalesce(w.premarket_volume_share, 0) AS premarket_volume_share,
       coalesce(w.afterhours_volume_share, 0) AS afterhours_volume_share,
       $half_day AS half_day
FROM whole w LEFT JOIN regular r USING (symbol) LEFT JOIN prev p USING (symbol)
ORDER BY w.symbol
"""

# Shared by DuckDB and PostgreSQL: {bars} is the deduplicated bar relation, {bucket} the 5-minute
# window of `ts` (clock-aligned: New York's UTC offset is whole hours, so UTC buckets are its own).
_INTRADAY_BODY = """
WITH bars AS ({bars}),
returns AS (
    SELECT *, {bucket} AS window_ts,
           ln(close / coalesce(lag(close) OVER (PARTITION BY symbol ORDER BY ts), open)) AS r
    FROM bars
),
marked AS (
    SELECT *, first_value(open) OVER w AS window_open, last_value(close) OVER w AS window_close
    FROM returns
    WINDOW w AS (PARTITION BY symbol, window_ts ORDER BY ts
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
),
windows AS (
    SELECT symbol, window_ts, min(window_open) AS open, max(high) AS high, min(low) AS low,
           min(window_close) AS close, sum(volume) AS volume,
           sum(px * volume) / nullif(sum(volume), 0) AS vwap, sum(trade_count) AS trade_count,
           count(*) AS observations, sqrt(sum(r * r)) AS volatility,
           CAST(count(*) FILTER (WHERE close <= window_close) AS DOUBLE PRECISION) / count(*)
               AS probability_of_profit
    FROM marked GROUP BY symbol, window_ts
)
SELECT symbol, window_ts AS ts,
       CASE WHEN window_ts < {regular_open} THEN 'premarket'
            WHEN window_ts < {regular_close} THEN 'regular' ELSE 'afterhours' END AS phase,
       open, high, low, close,
       close / coalesce(lag(close) OVER (PARTITION BY symbol ORDER BY window_ts), open) - 1 AS pct_change,
       vwap, volume, trade_count, observations, volatility, probability_of_profit
FROM windows
ORDER BY symbol, ts
"""

_INTRADAY_DUCKDB = _INTRADAY_BODY.format(
    bars=_LAKE_BARS,
    bucket="time_bucket(INTERVAL '5 minutes', ts)",
    regular_open="$regular_open",
    regular_close="$regular_close",
)

_PG_BARS = """
SELECT symbol, ts, open, high, low, close, volume, trade_count,
       coalesce(vwap, (high + low + close) / 3) AS px
FROM (
    SELECT *, row_number() OVER (PARTITION BY symbol, ts ORDER BY source) AS pick
    FROM bars_1m
    WHERE ts >= %(start)s AND ts < %(end)s AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s))
) b
WHERE pick = 1
"""

_INTRADAY_POSTGRES = _INTRADAY_BODY.format(
    bars=_PG_BARS,
    bucket="date_bin(INTERVAL '5 minutes', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')",
    regular_open="%(regular_open)s",
    regular_close="%(regular_close)s",
)


_COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count", "source"]


def _run(lake: Lake, query: str, params: dict, day: date, previous: date | None = None) -> pa.Table:
    """`query` by DuckDB over the session's minute bars (`day_bars`), the previous session's
    (`prev_bars`, empty when the lake lacks them) and the corporate actions taking effect on the
    session (`day_actions`), read partition by partition: the cost does not grow with the lake,
    and a local or S3 lake read the same way."""
    import duckdb

    from market_platform.analytics.adjust import day_actions

    if not lake.has_partition("minute_bars", day):
        raise PartitionNotFoundError(
            f"the lake has no minute_bars for {day.isoformat()}: materialize minute_bars for that session first"
        )
    has_previous = previous is not None and lake.has_partition("minute_bars", previous)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("day_actions", day_actions(lake, day))
        if lake.is_s3:
            today = lake.read_partition("minute_bars", day, columns=_COLUMNS)
            con.register("day_bars", today)
            con.register("prev_bars", lake.read_partition("minute_bars", previous, columns=_COLUMNS)
                         if has_previous else today.schema.empty_table())
        else:
            # DuckDB's own Parquet scan of the two files (layout: lake.py's module docstring).
            con.read_parquet(_local_file(lake, day)).create_view("day_bars")
            if has_previous:
                con.read_parquet(_local_file(lake, previous)).create_view("prev_bars")
            else:
                con.sql("SELECT * FROM day_bars WHERE false").create_view("prev_bars")
        return con.sql(query, params=params).to_arrow_table()
    finally:
        con.close()


def _local_file(lake: Lake, day: date) -> str:
    return f"{lake.url.removeprefix('file://')}/minute_bars/date={day.isoformat()}/data.parquet"


def _session_params(day: date) -> dict:
    session = calendar.session(day)
    return {
        "session_start": session.start,
        "session_end": session.end,
        "regular_open": session.regular_open,
        "regular_close": session.regular_close,
    }


def daily_metrics(lake: Lake, day: date | str) -> pa.Table:
    """schemas.DAILY_METRICS rows of session `day`, computed by DuckDB from the lake's minute bars
    (and the previous session's, for the previous close). See the module docstring."""
    day = calendar.to_date(day)
    session = calendar.session(day)
    previous = calendar.session(calendar.default_calendar().previous_session(day))
    params = {
        **_session_params(day),
        "prev_regular_open": previous.regular_open,
        "prev_regular_close": previous.regular_close,
        "day_ts": datetime.combine(day, datetime.min.time(), tzinfo=calendar.NEW_YORK),
        "half_day": session.is_half_day,
    }
    return schemas.conform(_run(lake, _DAILY_SQL, params, day, previous.day), schemas.DAILY_METRICS)


def intraday_metrics(lake: Lake, day: date | str) -> pa.Table:
    """schemas.INTRADAY_METRICS rows of session `day` from the lake's minute bars, by DuckDB."""
    day = calendar.to_date(day)
    return schemas.conform(_run(lake, _INTRADAY_DUCKDB, _session_params(day), day), schemas.INTRADAY_METRICS)


def live_intraday_metrics(
    store: TickStore,
    day: date | str,
    *,
    until: datetime | None = None,
    symbols: list[str] | None = None,
) -> pa.Table:
    """schemas.INTRADAY_METRICS of session `day` computed by PostgreSQL from the tick store's bars_1m,
    over the bars before `until` (default: the session's end), with the same definitions and
    column names as `intraday_metrics`. The last window is partial while the session runs."""
    day = calendar.to_date(day)
    session = calendar.session(day)
    end = session.end if until is None else min(session.end, _aware(until))
    params = {
        "start": session.start,
        "end": end,
        "symbols": list(symbols) if symbols is not None else None,
        "regular_open": session.regular_open,
        "regular_close": session.regular_close,
    }
    if end <= session.start:
        return schemas.INTRADAY_METRICS.empty_table()
    table = store.read_arrow(sql.SQL(_INTRADAY_POSTGRES), params)
    return schemas.conform(table, schemas.INTRADAY_METRICS)


def _aware(value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInputError(f"{value!r}: expected a timezone-aware datetime")
    return value


def movers(table: pa.Table, *, n: int = 10) -> tuple[pa.Table, pa.Table]:
    """The `n` biggest gainers and losers of a daily_metrics table, by `pct_change` (falling back to
    `open_close_return` where there is no previous close), as (gainers, losers) with a `change` column."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("m", table)
        base = ("SELECT symbol, coalesce(pct_change, open_close_return) AS change, close, dollar_volume "
                "FROM m WHERE coalesce(pct_change, open_close_return) IS NOT NULL ")
        gainers = con.sql(base + "AND coalesce(pct_change, open_close_return) > 0 "
                          "ORDER BY change DESC, symbol LIMIT $n", params={"n": n}).to_arrow_table()
        losers = con.sql(base + "AND coalesce(pct_change, open_close_return) < 0 "
                         "ORDER BY change ASC, symbol LIMIT $n", params={"n": n}).to_arrow_table()
    finally:
        con.close()
    return gainers, losers


__all__ = [
    "DAILY_METRICS",
    "INTRADAY_METRICS",
    "daily_metrics",
    "intraday_metrics",
    "live_intraday_metrics",
    "movers",
]
