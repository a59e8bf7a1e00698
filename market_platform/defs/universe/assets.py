"""The ticker universe: which tickers each category listed on a day, and the top 3,000 by dollar volume.

`ticker_universe` is partitioned by category. A materialization takes a dated, point-in-time
snapshot (run config `as_of`, default today in New York) into the lake (`universe`, partition
{category, date}) and the `universe` table. Snapshots of past days are kept as first taken, so a
later discovery never changes what an earlier backfill used (`replace: true` overrides). Dagster
tracks one partition per category, not per day: the dated history lives in the lake, where
`minute_bars` finds the snapshot in force for each session (see `history.universe`).
"""

from datetime import date
from typing import Optional

import dagster as dg
from pydantic import Field

from market_platform import calendar
from market_platform.defs.metadata import table_metadata
from market_platform.defs.partitions import categories_def
from market_platform.defs.resources import LakeResource, TickStoreResource, VendorsResource
from market_platform.history import universe
from market_platform.history.universe import STOCK_CATEGORIES, Discovery
from market_platform.history.vendors import Vendors

__all__ = ["STOCK_CATEGORIES", "STOCK_UNIVERSE_DEP", "ticker_universe", "top3000_universe"]


class UniverseConfig(dg.Config):
    as_of: Optional[str] = Field(default=None, description="Snapshot day YYYY-MM-DD (default: today in New York)")
    limit: Optional[int] = Field(default=None, description="At most this many tickers, the first by symbol")
    replace: bool = Field(default=False, description="Overwrite an existing snapshot of a past day")


class Top3000Config(dg.Config):
    as_of: Optional[str] = Field(default=None, description="Snapshot day YYYY-MM-DD (default: today in New York)")
    size: int = Field(default=universe.TOP_SIZE, description="How many tickers to keep")
    sessions: int = Field(default=universe.TOP_SESSIONS, description="Sessions of dollar volume to rank by")
    replace: bool = Field(default=False, description="Overwrite an existing snapshot of a past day")


def snapshot_day(as_of: str | None, vendors: Vendors) -> date:
    """The snapshot day a run asks for: `as_of`, or today in New York; never in the future."""
    today = vendors.today()
    return today if as_of is None else universe.check_snapshot_day(calendar.to_date(as_of), today)


def discovery_metadata(found: Discovery, vendors: Vendors) -> dict[str, dg.MetadataValue]:
    return {
        **table_metadata(found.table),
        "snapshot_date": dg.MetadataValue.text(found.day.isoformat()),
        "kept_existing": dg.MetadataValue.bool(found.kept),
        "previous_snapshot": dg.MetadataValue.text(found.previous.isoformat() if found.previous else "none"),
        "added": dg.MetadataValue.int(len(found.added)),
        "removed": dg.MetadataValue.int(len(found.removed)),
        "added_sample": dg.MetadataValue.text(", ".join(found.added[:20])),
        "vendors": dg.MetadataValue.text(vendors.describe()),
    }


@dg.asset(partitions_def=categories_def, group_name="universe", kinds={"parquet", "postgres"})
def ticker_universe(
    context: dg.AssetExecutionContext,
    config: UniverseConfig,
    vendors: VendorsResource,
    lake: LakeResource,
    tick_store: TickStoreResource,
) -> dg.MaterializeResult:
    """One row per ticker of the category (partition) listed on the snapshot day, as the vendor's
    reference data (Polygon tickers, or Alpaca assets) had it then: symbol, name, type, primary
    exchange, currency, listing state. Dated snapshots are kept in the lake (`universe`, by category
    and date) and the `universe` table."""
    v = vendors.vendors()
    day = snapshot_day(config.as_of, v)
    found = universe.discover(v, lake.lake(), context.partition_key, day, limit=config.limit, replace=config.replace)
    tick_store.store().write_universe(found.table)
    context.log.info(
        f"{context.partition_key} on {day}: {found.table.num_rows} tickers"
        + (" (kept the existing snapshot)" if found.kept else "")
        + (f"; {len(found.added)} added and {len(found.removed)} removed since {found.previous}"
           if found.previous else "; first snapshot"))
    return dg.MaterializeResult(metadata=discovery_metadata(found, v))


#: What bars depend on: the stock categories' snapshots (the one in force on each session).
STOCK_UNIVERSE_DEP = dg.AssetDep(
    ticker_universe, partition_mapping=dg.SpecificPartitionsPartitionMapping(list(STOCK_CATEGORIES)))


@dg.asset(group_name="universe", kinds={"parquet"},
          deps=[dg.AssetDep(ticker_universe, partition_mapping=dg.SpecificPartitionsPartitionMapping(["us_equities"]))])
def top3000_universe(
    context: dg.AssetExecutionContext, config: Top3000Config, vendors: VendorsResource, lake: LakeResource
) -> dg.MaterializeResult:
    """The 3,000 us_equities of the snapshot in force with the highest average daily dollar volume
    (close x volume) over the 20 sessions before the snapshot day, with their rank: the platform's
    stand-in for the Russell 3000, a liquidity ranking and not the index itself. Dated snapshots in
    the lake dataset `top3000`."""
    v = vendors.vendors()
    day = snapshot_day(config.as_of, v)
    found = universe.rank_top(v, lake.lake(), day, size=config.size, sessions=config.sessions, replace=config.replace)
    context.log.info(f"top {config.size} on {day}: {found.table.num_rows} tickers ranked over {config.sessions} sessions")
    return dg.MaterializeResult(metadata=discovery_metadata(found, v))
