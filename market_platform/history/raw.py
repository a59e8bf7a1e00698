"""Lakes written before bars were stored raw: find their REST partitions that may be split-adjusted.

Since corporate actions became data, every bars file says its prices are raw (schemas.RAW_BARS_KEY
in its Parquet metadata) and every source asks for raw bars (Polygon `adjusted=false`, Alpaca
`adjustment=raw`; the Flat Files always were). Before, Polygon REST aggregates were asked with
Polygon's default, split-adjusted as of the day of the request, so a lake built then mixes
conventions: raw bars from the Flat Files, adjusted ones from REST. A partition is *suspect* when
its file lacks the marker and holds Polygon REST rows; when the lake has `corporate_actions`, only
when one of those rows' symbols split after the session (otherwise adjusted and raw are equal).

Nothing is rewritten silently: `suspects` names them and `rebuild_command` says how to fetch them
again, raw (a backfill merges the refetched tickers into each session).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from market_platform.history.bars import DATASETS
from market_platform.schemas import RAW_BARS_KEY, RAW_BARS_VALUE, Source
from market_platform.storage.lake import Lake

#: Datasets fetched from vendors (rollups are rebuilt from minute_bars) -> backfill timeframe.
FETCHED = {dataset: timeframe for timeframe, dataset in DATASETS.items()}


@dataclass(frozen=True)
class Suspect:
    dataset: str
    day: date
    rest_rows: int          # Polygon REST rows in the partition
    split_symbols: tuple[str, ...]  # of them, the symbols with a split after `day` (empty: unknown)


def suspects(lake: Lake) -> list[Suspect]:
    """The partitions of the fetched bar datasets that may hold split-adjusted REST bars."""
    splits = _splits(lake)
    found = []
    for dataset in FETCHED:
        for spec in lake.partitions(dataset):
            day = date.fromisoformat(spec["date"])
            rest = _unmarked_rest(lake, dataset, day)
            if rest is None:
                continue
            split_symbols: tuple[str, ...] = ()
            if splits is not None:
                symbols = set(rest.column("symbol").to_pylist())
                split_symbols = tuple(sorted(s for s in symbols if any(ex > day for ex in splits.get(s, ()))))
                if not split_symbols:
                    continue
            found.append(Suspect(dataset, day, rest.num_rows, split_symbols))
    return found


def _unmarked_rest(lake: Lake, dataset: str, day: date) -> pa.Table | None:
    """The Polygon REST rows (symbol, source) of a partition written before bars were stored raw,
    None when its file says it is raw or it holds no such rows."""
    if lake.file_metadata(dataset, day).get(RAW_BARS_KEY) == RAW_BARS_VALUE:
        return None
    table = lake.read_partition(dataset, day, columns=["symbol", "source"])
    rest = table.filter(pc.equal(table.column("source"), Source.POLYGON_REST.value))
    return rest if rest.num_rows else None


def is_raw(lake: Lake, dataset: str, day: date) -> bool:
    """Whether a partition's bars are all raw for sure (see the module docstring)."""
    return _unmarked_rest(lake, dataset, day) is None


def _splits(lake: Lake) -> dict[str, list[date]] | None:
    """Ex-dates of the splits by symbol, from any source in the lake's corporate_actions (None: none there)."""
    if not lake.partitions("corporate_actions"):
        return None
    rows = lake.query("SELECT DISTINCT symbol, ex_date FROM corporate_actions WHERE action_type = 'split'").to_pylist()
    out: dict[str, list[date]] = {}
    for row in rows:
        out.setdefault(row["symbol"], []).append(row["ex_date"])
    return out


def rebuild_command(found: list[Suspect]) -> list[str]:
    """The backfill commands that fetch the suspect sessions again, raw: one per fetched timeframe."""
    commands = []
    for dataset, timeframe in FETCHED.items():
        days = sorted({s.day for s in found if s.dataset == dataset})
        if days:
            commands.append(f"market-platform backfill --from {days[0].isoformat()} --to {days[-1].isoformat()} "
                            f"--timeframes {timeframe} --source rest")
    return commands


def report(lake: Lake) -> list[str]:
    """Lines for `status`: what is suspect and the commands to rebuild it (none when all is raw)."""
    found = suspects(lake)
    if not found:
        return []
    lines = []
    for dataset in FETCHED:
        mine = [s for s in found if s.dataset == dataset]
        if mine:
            symbols = sorted({x for s in mine for x in s.split_symbols})
            why = f" (split after the session: {', '.join(symbols[:8])}{' ...' if len(symbols) > 8 else ''})" \
                if symbols else ""
            lines.append(f"{dataset}: {len(mine)} sessions from {mine[0].day} to {mine[-1].day} hold Polygon REST "
                         f"bars written before bars were stored raw, possibly split-adjusted{why}")
    lines.append("fetch them again, raw (nothing is rewritten until you do):")
    lines.extend(f"  {command}" for command in rebuild_command(found))
    return lines
