"""`snapshots`: the tick store's table of minute snapshots (`market_snapshots`), which the snapshot
jobs report on."""


import dagster as dg

snapshots = dg.AssetSpec(
    key=dg.AssetKey(["tick_store", "snapshots"]),
    group_name="tick_store",
    kinds={"postgres", "polygon", "alpaca"},
    description="One row per symbol and minute polled from the vendor's whole-market snapshot (Polygon, or "
                "Alpaca in chunks of symbols): the last trade and quote, the day's open, high, low, close, "
                "volume and VWAP so far, the last completed minute bar, the previous close and the change, the "
                "vendor's `updated` time, the source and when the row was inserted. Written by "
                "snapshot_process_job from the queue snapshot_poll_job fills; also the witness feed health "
                "compares the live stream with.",
)
