"""Bars at coarser timeframes, rolled up from 1-minute bars by DuckDB inside the lake.

Buckets are clock-aligned in New York time, as the vendors' own aggregates are (the 09:00 hour
holds pre-market 09:00-09:29 and regular 09:30-09:59); the daily bar is the whole session,
pre-market to after-hours, stamped at midnight New York. A bucket never spans two sessions.
"""

from __future__ import annotations

from datetime import date, datetime, time

import pyarrow as pa

from market_platform import calendar, schemas
from market_platform.errors import InvalidInputError
from market_platform.storage.lake import Lake

#: Lake dataset of each timeframe, and its DuckDB bucket width.
TIMEFRAMES: dict[str, tuple[str, str]] = {
    "1m": ("minute_bars", "1 minute"),
    "5m": ("bars_5m", "5 minutes"),
    "15m": ("bars_15m", "15 minutes"),
    "1h": ("bars_1h", "1 hour"),
    "1d": ("bars_1d", "1 day"),
}

# Open and close by time, not by file order; VWAP is volume-weighted over the minutes' VWAPs.
# New York's UTC offset is a whole number of hours, so New York clock buckets of up to an hour
# are UTC buckets: bucketing naive UTC avoids a time-zone conversion per row (4x faster). The
# daily bucket of a one-session partition is that session's New York midnight.
_ROLLUP_SQL = """
SELECT symbol,
       {bucket} AS ts,
       arg_min(open, ts)  AS open,
       max(high)          AS high,
       min(low)           AS low,
       arg_max(close, ts) AS close,
       sum(volume)        AS volume,
       sum(vwap * volume) / nullif(sum(volume), 0) AS vwap,
       CAST(sum(trade_count) AS BIGINT) AS trade_count,
       source
FROM minute_bars
WHERE date = $day
GROUP BY symbol, 2, source
ORDER BY symbol, ts
"""
_SUBDAY_SQL = _ROLLUP_SQL.format(bucket="timezone('UTC', time_bucket(CAST($width AS INTERVAL), timezone('UTC', ts)))")
_DAILY_SQL = _ROLLUP_SQL.format(bucket="$midnight")


def dataset_for(timeframe: str) -> str:
    try:
        return TIMEFRAMES[timeframe][0]
    except KeyError:
        raise InvalidInputError(
            f"unknown timeframe {timeframe!r}: expected one of {', '.join(TIMEFRAMES)}"
        ) from None


def rollup(lake: Lake, day: date, timeframe: str) -> pa.Table:
    """schemas.BARS rows of `timeframe` for session `day`, computed from the lake's minute bars."""
    dataset_for(timeframe)
    if timeframe == "1m":
        raise InvalidInputError("timeframe '1m' is the base data: nothing to roll up")
    if timeframe == "1d":
        midnight = datetime.combine(day, time(0), tzinfo=calendar.NEW_YORK)
        table = lake.query(_DAILY_SQL, {"midnight": midnight, "day": day})
    else:
        table = lake.query(_SUBDAY_SQL, {"width": TIMEFRAMES[timeframe][1], "day": day})
    return schemas.conform(table, schemas.BARS)
