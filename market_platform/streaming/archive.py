"""A session's quotes out of the tick store, in (symbol, ts) order and bounded memory, for the lake.

The tick store keeps quotes for its retention (30 days by default); `quotes_daily` copies each
session's into a Parquet partition first. Symbols are found with a loose index scan of the
primary key (symbol, ts, seq) - one index probe per symbol, not a scan of the day - and their
rows are read a group of symbols at a time with COPY, so memory holds one group.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterator, Sequence

import pyarrow as pa

from market_platform.schemas import QUOTES, conform
from market_platform.storage.timescale import TickStore

_SYMBOLS = """
WITH RECURSIVE s AS (
    (SELECT symbol FROM quotes WHERE ts >= %(start)s AND ts < %(end)s ORDER BY symbol LIMIT 1)
    UNION ALL
    SELECT (SELECT q.symbol FROM quotes AS q
            WHERE q.symbol > s.symbol AND q.ts >= %(start)s AND q.ts < %(end)s ORDER BY q.symbol LIMIT 1)
    FROM s WHERE s.symbol IS NOT NULL
)
SELECT symbol FROM s WHERE symbol IS NOT NULL
"""

_ROWS = """
SELECT symbol, ts, bid_price, bid_size, ask_price, ask_size, bid_exchange, ask_exchange, conditions, tape, seq, source
FROM quotes WHERE symbol = ANY(%(symbols)s) AND ts >= %(start)s AND ts < %(end)s ORDER BY symbol, ts, seq
"""


def quote_symbols(store: TickStore, start: datetime, end: datetime) -> list[str]:
    """The symbols with quotes in [start, end), sorted."""
    return store.read_arrow(_SYMBOLS, {"start": start, "end": end}).column("symbol").to_pylist()


def iter_quotes(store: TickStore, start: datetime, end: datetime, *, symbols: Sequence[str] | None = None,
                symbols_per_read: int = 50, exclude_pairs: bool = True) -> Iterator[pa.Table]:
    """Quotes (schemas.QUOTES) in [start, end), a group of symbols per table, in (symbol, ts) order.

    `exclude_pairs` leaves out crypto pairs (symbols with a slash), which trade on UTC days.
    """
    names = list(symbols) if symbols is not None else quote_symbols(store, start, end)
    if exclude_pairs:
        names = [s for s in names if "/" not in s]
    for i in range(0, len(names), symbols_per_read):
        group = names[i:i + symbols_per_read]
        table = store.read_arrow(_ROWS, {"symbols": group, "start": start, "end": end})
        if table.num_rows:
            yield conform(table, QUOTES)
