"""Calendar-driven poll runs: stocks at the pre-market open of every session, crypto at each UTC midnight."""


import dagster as dg

from market_platform import calendar
from market_platform.defs.snapshots.jobs import DAY_TAG, MARKET_TAG, poll_run_config, snapshot_poll_job


@dg.schedule(job=snapshot_poll_job, cron_schedule="0 4 * * 1-5", execution_timezone="America/New_York")
def snapshot_poll_schedule(context: dg.ScheduleEvaluationContext):
    """Poll the stock snapshot from 04:00 New York to the after-hours close of every session."""
    day = context.scheduled_execution_time.astimezone(calendar.NEW_YORK).date()
    if not calendar.is_session(day):
        return dg.SkipReason(f"{day} is not a trading session")
    session = calendar.session(day)
    start, end = (t.astimezone(calendar.NEW_YORK) for t in (session.start, session.end))
    return dg.RunRequest(
        run_key=f"snapshots:stocks:{day}",
        run_config=poll_run_config("stocks", day.isoformat(), start=f"{start:%H:%M}", end=f"{end:%H:%M}"),
        tags={MARKET_TAG: "stocks", DAY_TAG: day.isoformat()},
    )


@dg.schedule(job=snapshot_poll_job, cron_schedule="0 0 * * *", execution_timezone="UTC")
def crypto_snapshot_poll_schedule(context: dg.ScheduleEvaluationContext):
    """Poll the crypto snapshot around the clock: one run per UTC day, from its midnight."""
    day = context.scheduled_execution_time.astimezone(calendar.UTC).date()
    return dg.RunRequest(run_key=f"snapshots:crypto:{day}", run_config=poll_run_config("crypto", day.isoformat()),
                         tags={MARKET_TAG: "crypto", DAY_TAG: day.isoformat()})
