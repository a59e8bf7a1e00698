"""The tick store's live tables as assets, and `quotes_daily`, their archive in the lake.

The stream jobs write `quotes`, `trades` and `bars_1m` outside any asset's body, so they are
`AssetSpec`s that the runs report on (rows written, last event time) as they go.
"""


from datetime import date

import dagster as dg

from market_platform import calendar
from market_platform.defs.partitions import partitioned_asset, trading_days_def
from market_platform.defs.resources import LakeResource, TickStoreResource
from market_platform.schemas import QUOTES
from market_platform.streaming.archive import iter_quotes

live_quotes = dg.AssetSpec(
    key=dg.AssetKey(["tick_store", "quotes"]),
    group_name="tick_store",
    kinds={"postgres", "alpaca"},
    description="One row per top-of-book quote the Alpaca stream delivered (stocks and crypto pairs), "
                "kept for the tick store's retention: symbol, time, bid and ask with sizes and venues, "
                "conditions, tape, and a sequence that makes redeliveries collapse.",
)
live_trades = dg.AssetSpec(
    key=dg.AssetKey(["tick_store", "trades"]),
    group_name="tick_store",
    kinds={"postgres", "alpaca"},
    description="One row per trade print the Alpaca stream delivered: symbol, time, price, size, venue, "
                "trade id, conditions and tape.",
)
live_bars_1m = dg.AssetSpec(
    key=dg.AssetKey(["tick_store", "bars_1m"]),
    group_name="tick_store",
    kinds={"postgres", "alpaca"},
    description="One row per symbol and minute: the stream's one-minute bar (source alpaca_stream, replaced "
                "by a late correction), or, for a minute a disconnect made the stream miss, the bar fetched "
                "from REST history (source alpaca_repair).",
)
LIVE_TABLES = (live_quotes, live_trades, live_bars_1m)


@partitioned_asset(
    partitions_def=trading_days_def,
    group_name="tick_store",
    kinds={"postgres", "parquet"},
    deps=[live_quotes],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def quotes_daily(context: dg.AssetExecutionContext, tick_store: TickStoreResource,
                 lake: LakeResource) -> dg.MaterializeResult:
    """One row per stock quote of the session (pre-market to after-hours) as the tick store holds it,
    copied into the lake before the tick store's retention drops it; sorted by symbol and time."""
    day = date.fromisoformat(context.partition_key)
    session = calendar.session(day)
    store = tick_store.store()
    symbols: set[str] = set()

    def batches():
        for table in iter_quotes(store, session.start, session.end):
            symbols.update(table.column("symbol").unique().to_pylist())
            yield table

    rows = lake.lake().write_partition("quotes_daily", day.isoformat(), batches(), schema=QUOTES)
    context.log.info(f"{day}: archived {rows:,} quotes of {len(symbols)} symbols")
    return dg.MaterializeResult(metadata={"rows": dg.MetadataValue.int(rows),
                                          "symbols": dg.MetadataValue.int(len(symbols))})
