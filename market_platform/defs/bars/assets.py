"""Bars in the lake: 1-minute bars per session from the source, and their rollups by DuckDB."""


from datetime import date

import dagster as dg
import pyarrow as pa

from market_platform.defs.metadata import table_metadata
from market_platform.errors import PartitionNotFoundError
from market_platform.defs.partitions import BACKFILL_POLICY, trading_days_def
from market_platform.defs.resources import LakeResource, SimMarketResource
from market_platform.defs.universe.assets import STOCK_CATEGORIES, ticker_universe
from market_platform.storage import rollups
from market_platform.storage.lake import Lake


def universe_symbols(lake: Lake, day: date) -> list[str]:
    """Symbols of the stock universe snapshot of `day`, as stored by `ticker_universe`."""
    try:
        tables = [
            lake.read_partition("universe", {"category": c, "date": day.isoformat()}, columns=["symbol"])
            for c in STOCK_CATEGORIES
        ]
    except PartitionNotFoundError:
        raise PartitionNotFoundError(
            f"no ticker_universe snapshot for {day.isoformat()} in the lake: materialize "
            "ticker_universe for that session first"
        ) from None
    return sorted(pa.concat_tables(tables)["symbol"].to_pylist())


@dg.asset(
    partitions_def=trading_days_def,
    group_name="bars",
    kinds={"parquet"},
    deps=[ticker_universe],
    backfill_policy=BACKFILL_POLICY,
)
def minute_bars(
    context: dg.AssetExecutionContext, bars_source: SimMarketResource, lake: LakeResource
) -> dg.MaterializeResult:
    """One row per symbol and minute of a session (pre-market to after-hours) in which the symbol
    traded, as the source sent it: open, high, low, close, volume, VWAP, trade count, source."""
    store = lake.lake()
    rows = 0
    for key in context.partition_keys:
        day = date.fromisoformat(key)
        table = bars_source.minute_bars(day, universe_symbols(store, day))
        rows += store.write_partition("minute_bars", key, table)
        context.log.info(f"{key}: {table.num_rows} minute bars from {bars_source.name}")
    metadata = table_metadata(table) if len(context.partition_keys) == 1 else {"rows": rows}
    return dg.MaterializeResult(metadata={**metadata, "source": bars_source.name})


def build_rollup(timeframe: str) -> dg.AssetsDefinition:
    dataset = rollups.dataset_for(timeframe)

    @dg.asset(
        name=dataset,
        partitions_def=trading_days_def,
        group_name="bars",
        kinds={"parquet", "duckdb"},
        deps=[minute_bars],
        automation_condition=dg.AutomationCondition.eager(),
        backfill_policy=BACKFILL_POLICY,
        description=(
            f"{timeframe} bars rolled up by DuckDB from `minute_bars`: buckets clock-aligned in New "
            "York time like the vendors' own, the daily bar spanning the whole session; one row per "
            "symbol, bucket and source."
        ),
    )
    def _rollup(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        store = lake.lake()
        rows = 0
        for key in context.partition_keys:
            table = rollups.rollup(store, date.fromisoformat(key), timeframe)
            rows += store.write_partition(dataset, key, table)
        metadata = table_metadata(table) if len(context.partition_keys) == 1 else {"rows": rows}
        return dg.MaterializeResult(metadata=metadata)

    return _rollup


bars_5m, bars_15m, bars_1h, bars_1d = (build_rollup(tf) for tf in ("5m", "15m", "1h", "1d"))

bars_job = dg.define_asset_job(
    "bars_job",
    selection=[ticker_universe, minute_bars, bars_5m, bars_15m, bars_1h, bars_1d],
    description="A session's universe, 1-minute bars and their 5m/15m/1h/1d rollups, into the lake.",
)
