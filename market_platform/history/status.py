"""What the lake holds: sessions, first and last bar, gaps, sources, universe snapshots; for the
whole lake or one ticker. DuckDB computes every figure over the Parquet files in place.

A gap is a trading session between a dataset's (or a ticker's) first and last session that has no
bars: a session never backfilled, or, for a ticker, one it did not trade (halted, not listed yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.history.bars import DATASETS
from market_platform.history.universe import TOP_DATASET
from market_platform.storage import rollups
from market_platform.storage.lake import Lake

#: Bar datasets, ours then the vendors'.
BAR_DATASETS = tuple(dict.fromkeys([ds for ds, _ in rollups.TIMEFRAMES.values()] + list(DATASETS.values())))


@dataclass
class Coverage:
    """Sessions of bars of a dataset (or of one ticker in it)."""

    dataset: str
    sessions: list[date]
    rows: int
    first_bar: datetime | None
    last_bar: datetime | None
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def gaps(self) -> list[date]:
        """Sessions between the first and the last without bars."""
        if not self.sessions:
            return []
        have = set(self.sessions)
        return [d for d in calendar.sessions(self.sessions[0], self.sessions[-1]) if d not in have]


@dataclass
class Snapshots:
    category: str
    dates: list[date]
    latest_rows: int


def coverage(lake: Lake, dataset: str, symbol: str | None = None) -> Coverage:
    """Coverage of `dataset`, or of `symbol` in it."""
    if dataset not in BAR_DATASETS:
        raise InvalidInputError(f"{dataset!r} is not a bar dataset: expected one of {', '.join(BAR_DATASETS)}")
    if not lake.partitions(dataset):
        return Coverage(dataset, [], 0, None, None)
    where, params = ("WHERE symbol = $symbol", {"symbol": symbol}) if symbol else ("", {})
    by_day = lake.query(f'SELECT date, count(*) AS n, min(ts) AS first, max(ts) AS last FROM "{dataset}" {where} '
                        "GROUP BY date ORDER BY date", params).to_pylist()
    sources = lake.query(f'SELECT source, count(*) AS n FROM "{dataset}" {where} GROUP BY source ORDER BY source',
                         params).to_pylist()
    return Coverage(
        dataset=dataset,
        sessions=[r["date"] for r in by_day],
        rows=sum(r["n"] for r in by_day),
        first_bar=min((r["first"] for r in by_day), default=None),
        last_bar=max((r["last"] for r in by_day), default=None),
        sources={r["source"]: r["n"] for r in sources},
    )


@dataclass
class TickerHistory:
    """A ticker's names and fate from the lake's corporate actions (all known today)."""

    symbol: str
    names: list[tuple[str, date | None, date | None]]  # (traded as, first session, first session no longer), oldest first
    renamed_to: tuple[str, date] | None = None  # this name's company trades as another since that day
    delisted: date | None = None  # first session it no longer trades
    actions: dict[str, int] = field(default_factory=dict)  # action_type -> count, over every name

    @property
    def traded_symbols(self) -> list[str]:
        return [name for name, _, _ in self.names]


def ticker_history(lake: Lake, symbol: str) -> TickerHistory:
    """The names `symbol`'s history traded under (renames chained, oldest first), where it went if
    it was renamed away, its delisting, and its corporate actions by kind."""
    from market_platform.analytics.adjust import ACTIONS, lineage

    if not lake.partitions(ACTIONS):
        return TickerHistory(symbol, [(symbol, None, None)])
    known = lake.query("SELECT * FROM corporate_actions QUALIFY row_number() OVER "
                       "(PARTITION BY action_id ORDER BY source) = 1").to_pylist()
    renames = [(a["symbol"], a["new_symbol"], a["ex_date"]) for a in known
               if a["action_type"] == "rename" and a["new_symbol"]]
    ranges = [r for r in lineage(renames).to_pylist() if r["symbol"] == symbol]
    first_own = max((r["end_day"] for r in ranges), default=None)
    names = [(r["traded_symbol"], None if r["first_day"].year == 1900 else r["first_day"], r["end_day"])
             for r in sorted(ranges, key=lambda r: r["end_day"])] + [(symbol, first_own, None)]
    traded = {name for name, _, _ in names}
    away = min(((new, ex) for old, new, ex in renames if old == symbol and (first_own is None or ex > first_own)),
               key=lambda r: r[1], default=None)
    delisted = min((a["ex_date"] for a in known if a["action_type"] == "delisting" and a["symbol"] == symbol),
                   default=None)
    counts: dict[str, int] = {}
    for a in known:
        if a["symbol"] in traded:
            counts[a["action_type"]] = counts.get(a["action_type"], 0) + 1
    return TickerHistory(symbol, names, away, delisted, counts)


def snapshots(lake: Lake) -> list[Snapshots]:
    """Universe snapshots per category (and top3000): their days and the latest one's size."""
    found: dict[str, list[date]] = {}
    for spec in lake.partitions("universe"):
        found.setdefault(spec["category"], []).append(date.fromisoformat(spec["date"]))
    if lake.partitions(TOP_DATASET):
        found[TOP_DATASET] = [date.fromisoformat(d) for d in lake.dates(TOP_DATASET)]
    out = []
    for category, dates in sorted(found.items()):
        dates.sort()
        partition = dates[-1].isoformat() if category == TOP_DATASET else {"category": category,
                                                                            "date": dates[-1].isoformat()}
        out.append(Snapshots(category, dates, lake.count("universe" if category != TOP_DATASET else TOP_DATASET,
                                                         partition)))
    return out


def ticker_snapshots(lake: Lake, symbol: str) -> list[tuple[str, date]]:
    """(category, day) of every universe snapshot that lists `symbol`."""
    if not lake.partitions("universe"):
        return []
    rows = lake.query("SELECT DISTINCT category, date FROM universe WHERE symbol = $symbol ORDER BY date, category",
                      {"symbol": symbol}).to_pylist()
    return [(r["category"], r["date"]) for r in rows]
