"""Freshness of the live tables during sessions: each table's newest row is recent enough.

The check reads the data itself (`analytics.quality.live_fresh`), so a stream that runs but stores
nothing fails it as surely as a dead one. A BRIN index on `ts` keeps "newest row of the last few
minutes" cheap on a day of 80 million quotes.
"""

from datetime import datetime, timezone

import dagster as dg

from market_platform import calendar
from market_platform.analytics import quality
from market_platform.defs.bars.checks import check_result
from market_platform.defs.resources import TickStoreResource
from market_platform.defs.streaming.assets import LIVE_TABLES

CHECK_NAME = "fresh_during_session"


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=spec.key,
            description=f"While a session is open, the newest row is at most "
            f"{quality.FRESHNESS_LAG[spec.key.path[-1]].total_seconds():.0f} s old",
        )
        for spec in LIVE_TABLES
    ],
)
def live_tables_fresh(context: dg.AssetCheckExecutionContext, tick_store: TickStoreResource):
    """Passes outside sessions; during one, fails (as a warning) for a table whose newest row is
    older than its allowed lag (quotes 1 min, trades 2, bars 3; a session's first minutes are grace)."""
    store = tick_store.store()
    now = datetime.now(timezone.utc)
    for spec in LIVE_TABLES:
        table = spec.key.path[-1]
        outcome = quality.live_fresh(store, now=now, max_lag={table: quality.FRESHNESS_LAG[table]})
        result = check_result(outcome, severity=dg.AssetCheckSeverity.WARN)
        yield dg.AssetCheckResult(
            asset_key=spec.key, check_name=CHECK_NAME, passed=result.passed,
            severity=result.severity, metadata=result.metadata,
        )


live_tables_freshness_job = dg.define_asset_job(
    "live_tables_freshness_job", selection=dg.AssetSelection.checks(live_tables_fresh),
    description="Check that the live tables keep receiving rows during the session.",
)


@dg.schedule(job=live_tables_freshness_job, cron_schedule="*/5 4-19 * * 1-5", execution_timezone="America/New_York")
def live_tables_freshness_schedule(context: dg.ScheduleEvaluationContext):
    """Every 5 minutes of a session's extended hours."""
    day = context.scheduled_execution_time.astimezone(calendar.NEW_YORK).date()
    if not calendar.is_session(day):
        return dg.SkipReason(f"{day} is not a trading session")
    return dg.RunRequest()
