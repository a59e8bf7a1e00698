"""Bars in the lake: 1-minute bars per session from the vendors, their rollups by DuckDB, and the
vendors' own 5m/15m/1h/1d bars beside ours.

A session's tickers are the `tickers` of the run config, or the universe snapshot in force on the
session (`history.universe.session_symbols`): the latest snapshot on or before it, never a later
one; where the lake has none, one as of the session from the vendor's dated reference data. The
source per session follows `Vendors.choose`: Flat Files for sessions older than 30 days, REST for
recent ones, Alpaca as the alternative provider; every run is resumable at ticker granularity and
merges into the session (`history.bars`). A run of several sessions materializes each with its own
metadata (`context.add_asset_metadata(..., partition_key=...)`).

Every bar dataset is raw: prices and volumes as traded, never split- or dividend-adjusted (REST is
asked `adjusted=false` / `adjustment=raw`; each file carries schemas.RAW_BARS_KEY). Adjusted views
are computed at read time from `corporate_actions`.
"""

from datetime import date
from typing import Optional

import dagster as dg
from pydantic import Field

from market_platform.defs.metadata import table_metadata
from market_platform.defs.partitions import BACKFILL_POLICY, partitioned_asset, trading_days_def
from market_platform.defs.resources import LakeResource, VendorsResource
from market_platform.defs.universe.assets import STOCK_UNIVERSE_DEP
from market_platform.history.bars import SessionResult, backfill_session, dataset_for
from market_platform.history.universe import session_symbols
from market_platform.storage import rollups


class BarsConfig(dg.Config):
    tickers: Optional[list[str]] = Field(
        default=None, description="Only these tickers, merged into the sessions (default: the universe snapshot "
                                  "in force on each session)")
    universe: str = Field(default="stocks", description="The universe to follow: stocks (us_equities and etf) "
                                                        "or top3000")
    source: str = Field(default="auto", description="auto (Flat Files for old sessions, else REST), rest, "
                                                    "polygon_flatfiles, polygon_rest or alpaca_rest")
    check_tickers: bool = Field(default=True, description="Check `tickers` against the vendor's reference data")
    stage_every: int = Field(default=100, description="Stage fetched tickers in pieces of this many (resume point)")


def backfill_partitions(context: dg.AssetExecutionContext, config: BarsConfig, vendors: VendorsResource,
                        lake: LakeResource, timeframe: str) -> dg.MaterializeResult:
    """Fill the run's sessions of `timeframe`'s dataset; each session's materialization carries
    the figures of that session (a backfill run covers up to ten)."""
    v, store = vendors.vendors(), lake.lake()
    days = [date.fromisoformat(key) for key in context.partition_keys]
    if config.tickers and config.check_tickers:
        v.check_symbols(config.tickers, days[0], days[-1])
    for day in days:
        snapshots = None
        if config.tickers:
            symbols = config.tickers
        else:
            symbols, snapshots = session_symbols(store, day, config.universe, v)
        result = backfill_session(v, store, day, symbols, timeframe=timeframe, source=config.source,
                                  stage_every=config.stage_every, log=context.log.info)
        context.log.info(f"{day}: {result.rows:,} {result.dataset} rows from {result.source}; {result.fetched} "
                         f"tickers fetched, {result.resumed} resumed" + (f", etag {result.etag}" if result.etag else ""))
        context.add_asset_metadata(session_metadata(result, snapshots), partition_key=day.isoformat())
    return dg.MaterializeResult(metadata={"vendors": dg.MetadataValue.text(v.describe())})


def session_metadata(result: SessionResult, snapshots: dict[str, str] | None) -> dict[str, dg.MetadataValue]:
    """A session's materialization metadata: its table's figures, the source, what was fetched and
    the universe snapshots in force (None: tickers were given)."""
    metadata = {
        **table_metadata(result.table),
        "source": dg.MetadataValue.text(result.source),
        "tickers": dg.MetadataValue.int(result.symbols),
        "fetched": dg.MetadataValue.int(result.fetched),
        "resumed": dg.MetadataValue.int(result.resumed),
        "confirmed": dg.MetadataValue.int(result.confirmed),
        "etag": dg.MetadataValue.text(result.etag) if result.etag else dg.MetadataValue.null(),
    }
    if snapshots is not None:
        metadata["universe_snapshots"] = dg.MetadataValue.json(snapshots)
    return metadata


@partitioned_asset(
    partitions_def=trading_days_def,
    group_name="bars",
    kinds={"polygon", "alpaca", "parquet"},
    deps=[STOCK_UNIVERSE_DEP],
    backfill_policy=BACKFILL_POLICY,
)
def minute_bars(
    context: dg.AssetExecutionContext, config: BarsConfig, vendors: VendorsResource, lake: LakeResource
) -> dg.MaterializeResult:
    """One row per ticker and minute of a session (pre-market to after-hours) in which the ticker
    traded, as the vendor sent it and raw (as traded, never split-adjusted): open, high, low, close,
    volume, VWAP (none from Flat Files), trade count, and the source (polygon_flatfiles,
    polygon_rest or alpaca_rest)."""
    return backfill_partitions(context, config, vendors, lake, "1m")


def build_vendor_bars(timeframe: str) -> dg.AssetsDefinition:
    dataset = dataset_for(timeframe)

    @partitioned_asset(
        name=dataset,
        partitions_def=trading_days_def,
        group_name="bars",
        kinds={"polygon", "alpaca", "parquet"},
        deps=[STOCK_UNIVERSE_DEP],
        backfill_policy=BACKFILL_POLICY,
        description=(
            f"The vendor's own {timeframe} bars of a session (Polygon or Alpaca aggregates"
            + (", or the Flat Files' day aggregates for old sessions" if timeframe == "1d" else "")
            + f"), raw (never split-adjusted), beside the platform's `{rollups.dataset_for(timeframe)}` rollup "
              "and never over it: one row per ticker and bucket, resumable and merged like `minute_bars`."
        ),
    )
    def _vendor_bars(
        context: dg.AssetExecutionContext, config: BarsConfig, vendors: VendorsResource, lake: LakeResource
    ) -> dg.MaterializeResult:
        return backfill_partitions(context, config, vendors, lake, timeframe)

    return _vendor_bars


vendor_bars_5m, vendor_bars_15m, vendor_bars_1h, vendor_bars_1d = (
    build_vendor_bars(tf) for tf in ("5m", "15m", "1h", "1d"))


def build_rollup(timeframe: str) -> dg.AssetsDefinition:
    dataset = rollups.dataset_for(timeframe)

    @partitioned_asset(
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
            "symbol, bucket and source; raw like the minute bars they roll up."
        ),
    )
    def _rollup(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        store = lake.lake()
        for key in context.partition_keys:
            table = rollups.rollup(store, date.fromisoformat(key), timeframe)
            store.write_partition(dataset, key, table)
            context.add_asset_metadata(table_metadata(table), partition_key=key)
        return dg.MaterializeResult()

    return _rollup


bars_5m, bars_15m, bars_1h, bars_1d = (build_rollup(tf) for tf in ("5m", "15m", "1h", "1d"))

bars_job = dg.define_asset_job(
    "bars_job",
    selection=[minute_bars, bars_5m, bars_15m, bars_1h, bars_1d],
    description="A session's 1-minute bars from the vendors and their 5m/15m/1h/1d rollups, into the lake.",
)

#: What `--timeframes` selects: 1m is our minute bars and their rollups; the others, the vendor's bars.
TIMEFRAME_ASSETS: dict[str, list[dg.AssetsDefinition]] = {
    "1m": [minute_bars, bars_5m, bars_15m, bars_1h, bars_1d],
    "5m": [vendor_bars_5m], "15m": [vendor_bars_15m], "1h": [vendor_bars_1h], "1d": [vendor_bars_1d],
}


#: Assets that take BarsConfig (a backfill gives them all the same options).
CONFIGURED_ASSETS = ("minute_bars", "vendor_bars_5m", "vendor_bars_15m", "vendor_bars_1h", "vendor_bars_1d")


def recorded_session(metadata: dict) -> dict:
    """What a bars materialization of one session recorded (source, etag, ...), as plain values."""
    return {name: getattr(value, "value", value) for name, value in metadata.items()}
