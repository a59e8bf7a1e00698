"""The tick store's rollups after late writes: `rollup_refresh_schedule` runs `rollup_refresh_job`
while minutes written behind the rollups' watermark (late corrections, gap repairs, replays of
past sessions, any job's bars) are waiting in `rollup_dirty` for their buckets to be refreshed
(see market_platform/storage/refresh.py). Stopped by default, like every schedule here."""

import dagster as dg

from market_platform.defs.resources import TickStoreResource


@dg.op
def refresh_rollups(context: dg.OpExecutionContext, tick_store: TickStoreResource) -> None:
    """Refresh the buckets of bars_5m, bars_15m, bars_1h and bars_1d that minutes written behind
    their watermark left stale (on plain PostgreSQL, where the rollups are views, only clear
    the bookkeeping)."""
    done = tick_store.store().refresh_rollups()
    for step in done["refreshed"]:
        context.log.info(f"refreshed {step['rollup']} over [{step['start']}, {step['end']})")
    context.add_output_metadata({"refreshed": len(done["refreshed"]), "deferred": len(done["deferred"])})


@dg.job(description="Refresh the rollup buckets that late writes to bars_1m left stale.")
def rollup_refresh_job() -> None:
    refresh_rollups()


@dg.schedule(job=rollup_refresh_job, cron_schedule="*/10 * * * *", default_status=dg.DefaultScheduleStatus.STOPPED)
def rollup_refresh_schedule(context: dg.ScheduleEvaluationContext, tick_store: TickStoreResource):
    """Every 10 minutes, a refresh run when a rollup range is pending; skip otherwise."""
    pending = tick_store.store().pending_rollups()
    if not pending:
        return dg.SkipReason("no rollup range is waiting for a refresh")
    return dg.RunRequest(run_key=f"rollups:{context.scheduled_execution_time:%Y-%m-%dT%H:%M}")
