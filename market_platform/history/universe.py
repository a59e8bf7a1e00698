"""Universe snapshots in the lake: discovery of a category's tickers on a day, the snapshot in force
for a session, and the `top3000` ranking.

    found = discover(vendors, lake, "etf", date(2024, 11, 27), limit=100)
    symbols, used = session_symbols(lake, date(2024, 3, 7))           # what minute_bars fetches
    top = rank_top(vendors, lake, date(2024, 11, 27), size=3000)

Snapshots live in the lake dataset `universe`, partition {category, date}: the tickers the vendor
listed that day (point in time). A snapshot of a past day is written once: discovering that day
again keeps it, unless `replace=True`, so what a backfill used stays reproducible; only today's
snapshot is refreshed by a new discovery.

The snapshot in force for session D, per category, is the latest one dated on or before D, never a
later one: a later snapshot lists tickers that did not exist yet on D (look-ahead). A category
discovered only after D gets a snapshot as of D from the vendor's dated reference data (Polygon's
tickers of that day; Alpaca lists only today's assets and is refused for a past day), written to
the lake like any discovery; without vendors to ask, the error names the day and the command.

`top3000` ranks the us_equities snapshot in force by average daily dollar volume (close x volume,
the Flat Files carrying no VWAP) over the 20 sessions before the day. It is the platform's stand-in
for the Russell 3000 — a liquidity ranking, not the index, whose membership FTSE Russell sets by
market capitalization once a year.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar, progress
from market_platform.errors import InvalidInputError, MarketPlatformError, PartitionNotFoundError
from market_platform.history.vendors import Vendors
from market_platform.schemas import BARS, CATEGORIES, RANKED_UNIVERSE, STOCK_CATEGORIES, UNIVERSE, conform
from market_platform.sources.vendor import run_concurrently
from market_platform.storage.lake import Lake

TOP_DATASET = "top3000"

#: Universes a bars backfill can follow.
UNIVERSES = ("stocks", TOP_DATASET)
TOP_SIZE = 3000
TOP_SESSIONS = 20


@dataclass(frozen=True)
class Discovery:
    """A snapshot as discovery left it, and how it differs from the previous one."""

    category: str
    day: date
    table: pa.Table         # schemas.UNIVERSE (or RANKED_UNIVERSE for top3000)
    kept: bool              # a snapshot of this past day existed and was kept as it was
    previous: date | None   # the latest snapshot before `day`
    added: list[str]        # tickers not in the previous snapshot
    removed: list[str]      # tickers of the previous snapshot no longer listed


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit {limit!r}: expected a positive number of tickers")


def check_snapshot_day(day: date, today: date, *, name: str = "as_of") -> date:
    """`day` when a snapshot can be taken of it: from the start of the platform's history to today."""
    if not calendar.CALENDAR_START <= day <= today:
        raise InvalidInputError(f"{name} {day.isoformat()}: expected a day from {calendar.CALENDAR_START.isoformat()} "
                                f"(the start of the platform's history) to today, {today.isoformat()}")
    return day


def check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise InvalidInputError(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)}")


# --------------------------------------------------------------------------- snapshots


def snapshot_dates(lake: Lake, category: str) -> list[date]:
    """Days with a snapshot of `category` (or of `top3000`) in the lake, sorted."""
    if category == TOP_DATASET:
        return [date.fromisoformat(d) for d in lake.dates(TOP_DATASET)]
    return sorted(date.fromisoformat(spec["date"]) for spec in lake.partitions("universe")
                  if spec["category"] == category)


def read_snapshot(lake: Lake, category: str, day: date) -> pa.Table:
    if category == TOP_DATASET:
        return lake.read_partition(TOP_DATASET, day)
    return lake.read_partition("universe", {"category": category, "date": day})


def _write_snapshot(lake: Lake, category: str, day: date, table: pa.Table) -> None:
    if category == TOP_DATASET:
        lake.write_partition(TOP_DATASET, day, table)
    else:
        lake.write_partition("universe", {"category": category, "date": day}, table)


def in_force(dates: Sequence[date], day: date) -> date | None:
    """The snapshot day in force on `day`: the latest on or before it (None: there is none)."""
    before = [d for d in dates if d <= day]
    return before[-1] if before else None


def snapshot_in_force(lake: Lake, category: str, day: date, vendors: Vendors | None = None) -> date:
    """The day of the `category` snapshot in force on `day`; when the lake has none on or before
    it, one as of `day` taken from `vendors` now (see the module docstring).

    Raises PartitionNotFoundError naming the day when there is none and no vendor to ask.
    """
    dates = snapshot_dates(lake, category)
    chosen = in_force(dates, day)
    if chosen is not None:
        return chosen
    later = f" (the earliest is {dates[0].isoformat()}, after it)" if dates else ""
    if vendors is None or category == TOP_DATASET:
        command = f"market-platform discover {category} --as-of {day.isoformat()}"
        raise PartitionNotFoundError(
            f"no {category} universe snapshot on or before {day.isoformat()} in the lake{later}: a later one would "
            f"list tickers not listed yet on that day; take one as of that day (`{command}`) or give tickers")
    try:
        discover(vendors, lake, category, day)
    except MarketPlatformError as exc:
        raise type(exc)(f"no {category} universe snapshot on or before {day.isoformat()} in the lake{later}, "
                        f"and none as of that day from the vendor: {exc}") from None
    return day


def _symbols(table: pa.Table) -> set[str]:
    return set(table.filter(table.column("active")).column("symbol").to_pylist())


def diff(lake: Lake, category: str, day: date, table: pa.Table) -> tuple[date | None, list[str], list[str]]:
    """(previous snapshot day, added tickers, removed tickers) of `table` against the latest
    snapshot of `category` before `day`."""
    earlier = [d for d in snapshot_dates(lake, category) if d < day]
    if not earlier:
        return None, [], []
    before, now = _symbols(read_snapshot(lake, category, earlier[-1])), _symbols(table)
    return earlier[-1], sorted(now - before), sorted(before - now)


def _kept_or_new(lake: Lake, category: str, day: date, today: date, replace: bool, fetch) -> tuple[pa.Table, bool]:
    """The past snapshot as stored (write-once), or a fresh one written now."""
    if not replace and day < today and day in snapshot_dates(lake, category):
        return read_snapshot(lake, category, day), True
    table = fetch()
    _write_snapshot(lake, category, day, table)
    return table, False


def discover(vendors: Vendors, lake: Lake, category: str, day: date, *, limit: int | None = None,
             replace: bool = False) -> Discovery:
    """Snapshot the tickers of `category` listed on `day` (the first `limit` by symbol) into the lake."""
    check_category(category)
    check_limit(limit)
    table, kept = _kept_or_new(lake, category, day, vendors.today(), replace,
                               lambda: conform(vendors.universe(category, day, limit=limit), UNIVERSE))
    previous, added, removed = diff(lake, category, day, table)
    return Discovery(category, day, table, kept, previous, added, removed)


def discovered_categories(lake: Lake, universe: str = "stocks") -> list[str]:
    """The categories of `universe` with at least one snapshot in the lake.

    Raises PartitionNotFoundError when the lake holds no snapshot of the universe at all.
    """
    if universe not in UNIVERSES:
        raise InvalidInputError(f"unknown universe {universe!r}: expected one of {', '.join(UNIVERSES)}")
    categories = [c for c in (STOCK_CATEGORIES if universe == "stocks" else (TOP_DATASET,))
                  if snapshot_dates(lake, c)]
    if not categories:
        first = "top3000" if universe == TOP_DATASET else "us_equities"
        raise PartitionNotFoundError(
            f"no {universe} universe snapshot in the lake: discover it first "
            f"(`market-platform discover {first}`, or materialize ticker_universe), or give tickers")
    return categories


def session_symbols(lake: Lake, day: date, universe: str = "stocks",
                    vendors: Vendors | None = None) -> tuple[list[str], dict[str, str]]:
    """The tickers a session's bars cover when none are given: the snapshots in force on `day` of
    the categories discovered (see the module docstring; `vendors` gives one as of `day` where the
    lake has none on or before it), and {category: snapshot day used}.

    Raises PartitionNotFoundError when the lake holds no snapshot of the universe at all, or none
    in force on `day` and no vendor to take one from.
    """
    symbols: set[str] = set()
    used: dict[str, str] = {}
    for category in discovered_categories(lake, universe):
        chosen = snapshot_in_force(lake, category, day, vendors)
        symbols |= _symbols(read_snapshot(lake, category, chosen))
        used[category] = chosen.isoformat()
    return sorted(symbols), used


# --------------------------------------------------------------------------- top 3000


def ranking_sessions(day: date, sessions: int = TOP_SESSIONS) -> list[date]:
    """The `sessions` trading sessions before `day` (whose bars are complete)."""
    if sessions < 1:
        raise InvalidInputError(f"sessions {sessions!r}: expected a positive number")
    start = max(calendar.CALENDAR_START, day - timedelta(days=sessions * 2 + 14))
    found = [d for d in calendar.sessions(start, day) if d < day][-sessions:]
    if len(found) < sessions:
        raise InvalidInputError(f"only {len(found)} sessions before {day.isoformat()} in the calendar: "
                                f"expected {sessions}")
    return found


def daily_bars(vendors: Vendors, days: Sequence[date], symbols: Sequence[str]) -> pa.Table:
    """schemas.BARS daily bars of `symbols` on `days`: from the Flat Files where published (one
    file per day for the whole market, two days at once), from the provider's REST for the other
    days."""
    def from_files(day: date) -> pa.Table | None:
        if vendors.flatfiles is not None and vendors.flatfile_etag(day, timeframe="1d") is not None:
            table = vendors.flatfiles.day_bars(day, symbols)
        else:
            table = None
        advance(1, f"top3000: daily bars of {day.isoformat()}")
        return table

    with progress.task(f"top3000: daily bars of {len(days)} sessions", total=len(days)) as advance:
        found = run_concurrently(list(days), from_files, workers=2)
    tables = [t for t in found if t is not None]
    missing = [d for d, t in zip(days, found, strict=True) if t is None]
    if missing:
        start = datetime.combine(missing[0], datetime.min.time(), tzinfo=calendar.NEW_YORK)
        end = datetime.combine(missing[-1] + timedelta(days=1), datetime.min.time(), tzinfo=calendar.NEW_YORK)
        rest = vendors.rest(vendors.rest_source)
        if vendors.rest_source == "alpaca_rest":
            table = rest.bars(list(symbols), start, end, timeframe="1d")
        else:
            with progress.task(f"top3000: daily bars of {len(symbols)} tickers from REST", total=len(symbols)) as step:
                table = pa.concat_tables(run_concurrently(
                    list(symbols), lambda s: rest.bars(s, start, end, timeframe="1d"), workers=rest.workers,
                    on_done=lambda s, _: step(1)))
        wanted = pa.array([datetime.combine(d, datetime.min.time(), tzinfo=calendar.NEW_YORK) for d in missing],
                          BARS.field("ts").type)
        tables.append(table.filter(pc.is_in(table.column("ts"), value_set=wanted)))
    return pa.concat_tables(tables) if tables else BARS.empty_table()


def rank(candidates: pa.Table, bars: pa.Table, sessions: int, size: int) -> pa.Table:
    """RANKED_UNIVERSE: the `size` candidates (UNIVERSE rows) of highest average daily dollar
    volume (close x volume summed over `bars`, divided by `sessions`), ties by symbol."""
    dollars = pc.multiply(bars.column("close"), bars.column("volume"))
    totals = pa.table({"symbol": bars.column("symbol"), "dv": dollars}).group_by("symbol").aggregate([("dv", "sum")])
    by_symbol = dict(zip(totals.column("symbol").to_pylist(), totals.column("dv_sum").to_pylist(), strict=True))
    symbols = candidates.column("symbol").to_pylist()
    average = np.array([by_symbol.get(s, 0.0) / sessions for s in symbols])
    order = sorted(range(len(symbols)), key=lambda i: (-average[i], symbols[i]))[:size]
    chosen = candidates.take(pa.array(order, pa.int64()))
    table = chosen.append_column("rank", pa.array(np.arange(1, len(order) + 1), pa.int32())) \
                  .append_column("dollar_volume", pa.array(average[order], pa.float64()))
    return conform(table, RANKED_UNIVERSE)


def rank_top(vendors: Vendors, lake: Lake, day: date, *, size: int = TOP_SIZE, sessions: int = TOP_SESSIONS,
             replace: bool = False) -> Discovery:
    """Snapshot the `top3000` universe of `day` (the `size` most traded us_equities) into the lake."""
    check_limit(size)
    if not snapshot_dates(lake, "us_equities"):
        raise PartitionNotFoundError("no us_equities universe snapshot in the lake to rank: discover it first "
                                     "(`market-platform discover us_equities`)")

    def fetch() -> pa.Table:
        candidates = read_snapshot(lake, "us_equities", snapshot_in_force(lake, "us_equities", day, vendors))
        candidates = candidates.filter(candidates.column("active"))
        days = ranking_sessions(day, sessions)
        bars = daily_bars(vendors, days, candidates.column("symbol").to_pylist())
        table = rank(candidates, bars, sessions, size)
        return table.set_column(table.schema.get_field_index("snapshot_date"), RANKED_UNIVERSE.field("snapshot_date"),
                                pa.array([day] * table.num_rows, pa.date32()))

    table, kept = _kept_or_new(lake, TOP_DATASET, day, vendors.today(), replace, fetch)
    previous, added, removed = diff(lake, TOP_DATASET, day, table)
    return Discovery(TOP_DATASET, day, table, kept, previous, added, removed)
