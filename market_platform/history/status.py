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
