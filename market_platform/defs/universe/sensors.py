"""History for tickers that appear: when a new stock universe snapshot lists tickers the previous
one did not, request their minute bars (and rollups) over the sessions before it.

The sensor follows `ticker_universe` materializations of the stock categories (cursor: the last
event's storage id). For each, it compares the snapshot with the previous one in the lake; a first
snapshot requests nothing (backfilling a whole new universe is a deliberate `market-platform
backfill`). New tickers get the `NEW_TICKER_HISTORY` sessions before the snapshot day, in runs of ten
sessions (the backfill policy's size), each merging just those tickers into the sessions.
"""

from datetime import date, timedelta

import dagster as dg

from market_platform import calendar
from market_platform.defs.bars.assets import bars_job
from market_platform.defs.bars.schedules import bars_run_config
from market_platform.defs.resources import LakeResource
from market_platform.defs.universe.assets import ticker_universe
from market_platform.history import universe
from market_platform.storage.lake import Lake

#: Sessions of history requested for a ticker that appears (a year).
NEW_TICKER_HISTORY = 252
RUN_SESSIONS = 10
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def history_requests(lake: Lake, category: str, day: date, *, sessions: int = NEW_TICKER_HISTORY) -> list[dg.RunRequest]:
    """Runs that fetch the history of the tickers snapshot `day` of `category` added."""
    table = universe.read_snapshot(lake, category, day)
    previous, added, _ = universe.diff(lake, category, day, table)
    if previous is None or not added:
        return []
    # Sessions before the snapshot day: that day's own bars come with the after-close run.
    start = max(calendar.CALENDAR_START, day - timedelta(days=sessions * 2 + 14))
    days = [d for d in calendar.sessions(start, day) if d < day][-sessions:]
    requests = []
    for i in range(0, len(days), RUN_SESSIONS):
        chunk = days[i:i + RUN_SESSIONS]
        requests.append(dg.RunRequest(
            run_key=f"new-tickers:{category}:{day.isoformat()}:{chunk[0].isoformat()}",
            run_config=bars_run_config(tickers=added, check_tickers=False),
            tags={RANGE_START: chunk[0].isoformat(), RANGE_END: chunk[-1].isoformat(),
                  "market_platform/trigger": "universe_change", "market_platform/new_tickers": str(len(added))},
        ))
    return requests


def new_stock_snapshots(context: dg.SensorEvaluationContext) -> list[tuple[str, date]]:
    """(category, snapshot day) of the stock categories' `ticker_universe` materializations since
    the sensor's cursor, which moves past them."""
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=ticker_universe.key, after_storage_id=after), limit=100, ascending=True,
    ).records
    found = []
    for record in records:
        category = record.partition_key
        snapshot = record.asset_materialization.metadata.get("snapshot_date")
        if category in universe.STOCK_CATEGORIES and snapshot is not None:
            found.append((category, date.fromisoformat(snapshot.value)))
    if records:
        context.update_cursor(str(records[-1].storage_id))
    return found


@dg.sensor(job=bars_job, minimum_interval_seconds=60)
def universe_change_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    """Requests minute bars of the last year for tickers a new stock universe snapshot adds."""
    requests = []
    for category, day in new_stock_snapshots(context):
        requests.extend(history_requests(lake.lake(), category, day))
    return requests or dg.SkipReason("no stock universe snapshot added tickers")
