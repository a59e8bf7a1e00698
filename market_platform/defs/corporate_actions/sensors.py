"""`new_ticker_actions_sensor`: all-history corporate actions for tickers a universe snapshot adds.

It follows `ticker_universe` materializations of the stock categories (its own cursor, like
`universe_change_sensor`, which requests those tickers' bars) and asks for the new tickers'
actions over all history, so their bars can be adjusted as soon as they land.
"""

import dagster as dg

from market_platform.defs.corporate_actions.assets import corporate_actions_job
from market_platform.defs.resources import LakeResource
from market_platform.defs.universe.sensors import new_stock_snapshots
from market_platform.history import universe


@dg.sensor(job=corporate_actions_job, minimum_interval_seconds=60)
def new_ticker_actions_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    """Requests the corporate actions of all history for tickers a new stock universe snapshot adds."""
    requests = []
    for category, day in new_stock_snapshots(context):
        table = universe.read_snapshot(lake.lake(), category, day)
        previous, added, _ = universe.diff(lake.lake(), category, day, table)
        if previous is not None and added:
            requests.append(dg.RunRequest(
                run_key=f"new-ticker-actions:{category}:{day.isoformat()}",
                run_config={"ops": {"corporate_actions": {"config": {"tickers": list(added)}}}},
                tags={"market_platform/trigger": "universe_change", "market_platform/new_tickers": str(len(added))},
            ))
    return requests or dg.SkipReason("no stock universe snapshot added tickers")
