"""The ticker universe: which symbols were listed on each trading day."""


from datetime import date

import dagster as dg
import pyarrow as pa

from market_platform.defs.metadata import table_metadata
from market_platform.defs.partitions import BACKFILL_POLICY, trading_days_def
from market_platform.defs.resources import LakeResource, SimMarketResource, TickStoreResource

#: The categories a stock session streams and backfills.
STOCK_CATEGORIES = ("us_equities", "etf")


@dg.asset(
    partitions_def=trading_days_def,
    group_name="universe",
    kinds={"parquet", "postgres"},
    backfill_policy=BACKFILL_POLICY,
)
def ticker_universe(
    context: dg.AssetExecutionContext,
    bars_source: SimMarketResource,
    lake: LakeResource,
    tick_store: TickStoreResource,
) -> dg.MaterializeResult:
    """One row per US stock or ETF listed on the session: a point-in-time snapshot (symbol, name,
    type, primary exchange, market cap, listing dates), kept in the lake and the `universe` table."""
    day = date.fromisoformat(context.partition_key)
    tables = []
    for category in STOCK_CATEGORIES:
        table = bars_source.universe(category, day)
        lake.lake().write_partition("universe", {"category": category, "date": day.isoformat()}, table)
        tick_store.store().write_universe(table)
        tables.append(table)
    snapshot = pa.concat_tables(tables)
    return dg.MaterializeResult(metadata={**table_metadata(snapshot), "source": bars_source.name})
