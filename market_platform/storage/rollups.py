"""Bars at coarser timeframes, rolled up from 1-minute bars by DuckDB inside the lake.

Buckets are clock-aligned in New York time, as the vendors' own aggregates are (the 09:00 hour
holds pre-market 09:00-09:29 and regular 09:30-09:59); the daily bar is the whole session,
pre-market to after-hours, stamped at midnight New York. A bucket never spans two sessions.
"""

from __future__ import annotations

from datetime import date

import pyarrow as pa

from market_platform import schemas
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
_ROLLUP_SQL = """
SELECT symbol,
       time_bucket(CAST($width AS INTERVAL), CAST(ts AS TIMESTAMPTZ), 'America/New_York') AS ts,
       arg_min(open, ts)  AS open,
       max(high)          AS high,
       min(low)           AS low,
       arg_max(close, ts) AS close,
       sum(volume)        AS volume,
       sum(vwap * volume) / nullif(sum(volume), 0) AS vwap,
       sum(trade_count)   AS trade_count,
       source
FROM minute_bars
WHERE date = $day
GROUP BY symbol, 2, source
ORDER BY symbol, ts
"""


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
    width = TIMEFRAMES[timeframe][1]
    table = lake.query(_ROLLUP_SQL, {"width": width, "day": day})
    return schemas.conform(table, schemas.BARS)
