"""Corporate actions from the vendors into the lake (`corporate_actions`, one file per source) and
the tick store (table `corporate_actions`).

A refresh asks each configured vendor (Polygon: splits, dividends, delistings; Alpaca: the same
and renames) for the actions with ex-dates in a window and replaces what is stored for that
window and source, so what the vendor says now is what the platform holds. The first refresh of a
source, a `full` one, or one for given tickers (new in the universe) covers all history from
`HISTORY_START`; a daily one covers the last `RECENT_DAYS` days and the year ahead (actions are
announced before their ex-date). Bars themselves are never touched: they are stored raw and
adjusted at read time from these rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from market_platform.history.vendors import Vendors
from market_platform.schemas import ACTIONS_ORDER, CORPORATE_ACTIONS, conform
from market_platform.storage.lake import Lake
from market_platform.storage.timescale import TickStore

DATASET = "corporate_actions"
HISTORY_START = date(2004, 1, 2)
RECENT_DAYS = 30
AHEAD_DAYS = 366


@dataclass(frozen=True)
class Refreshed:
    """What one source's refresh fetched and what the lake holds for it afterwards."""

    source: str
    start: date
    end: date
    fetched: int
    stored: int
    by_type: dict[str, int]


def sources(vendors: Vendors) -> dict[str, object]:
    """The configured vendors that report corporate actions, by `source` value."""
    return {name: adapter for name, adapter in (("polygon", vendors.polygon), ("alpaca", vendors.alpaca))
            if adapter is not None}


def refresh(vendors: Vendors, lake: Lake, store: TickStore | None, *, full: bool = False,
            tickers: Sequence[str] | None = None, today: date | None = None) -> list[Refreshed]:
    """Fetch and store every configured vendor's corporate actions (see the module docstring)."""
    today = today or vendors.today()
    end = today + timedelta(days=AHEAD_DAYS)
    out = []
    for name, adapter in sources(vendors).items():
        first_time = not lake.has_partition(DATASET, {"source": name})
        start = HISTORY_START if full or tickers or first_time else today - timedelta(days=RECENT_DAYS)
        fresh = adapter.corporate_actions(start, end, symbols=tickers)
        merged = merge(lake.read_partition(DATASET, {"source": name}) if not first_time else None,
                       fresh, start=start, end=end, symbols=tickers)
        lake.write_partition(DATASET, {"source": name}, merged)
        if store is not None:
            store.write_corporate_actions(fresh, source=name, start=start, end=end, symbols=tickers)
        counts = pc.value_counts(merged.column("action_type")).to_pylist() if merged.num_rows else []
        out.append(Refreshed(name, start, end, fresh.num_rows, merged.num_rows,
                             {c["values"]: c["counts"] for c in counts}))
    return out


def merge(old: pa.Table | None, fresh: pa.Table, *, start: date, end: date,
          symbols: Sequence[str] | None = None) -> pa.Table:
    """`old` without its rows in the refreshed scope (ex_date in [start, end], and with `symbols`
    only theirs, by symbol or new_symbol), plus `fresh`: sorted, one row per action_id."""
    fresh = conform(fresh, CORPORATE_ACTIONS)
    if old is None or not old.num_rows:
        kept = CORPORATE_ACTIONS.empty_table()
    else:
        old = conform(old, CORPORATE_ACTIONS)
        ex = old.column("ex_date")
        scope = pc.and_(pc.greater_equal(ex, pa.scalar(start, pa.date32())), pc.less_equal(ex, pa.scalar(end, pa.date32())))
        if symbols is not None:
            names = pa.array(list(symbols), pa.string())
            mine = pc.or_(pc.is_in(old.column("symbol"), value_set=names),
                          pc.fill_null(pc.is_in(old.column("new_symbol"), value_set=names), False))
            scope = pc.and_(scope, mine)
        kept = old.filter(pc.invert(scope))
        kept = kept.filter(pc.invert(pc.is_in(kept.column("action_id"), value_set=fresh.column("action_id"))))
    table = pa.concat_tables([kept, fresh])
    return table.sort_by(ACTIONS_ORDER)
