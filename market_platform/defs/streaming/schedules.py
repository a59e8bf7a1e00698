"""Calendar-driven launches: the stock stream at the pre-market open of every session, crypto at
each UTC midnight, and the archive of a session's quotes after its close."""


from datetime import timedelta

import dagster as dg

from market_platform import calendar
from market_platform.defs.streaming.jobs import (
    DAY_TAG,
    STREAM_TAG,
    crypto_stream_job,
    quotes_daily_job,
    run_config,
    stock_stream_job,
)


@dg.schedule(job=stock_stream_job, cron_schedule="0 4 * * 1-5", execution_timezone="America/New_York")
def premarket_stream_schedule(context: dg.ScheduleEvaluationContext):
    """Start the stock stream at 04:00 New York on every session; skip weekdays without one."""
    day = context.scheduled_execution_time.astimezone(calendar.NEW_YORK).date()
    if not calendar.is_session(day):
        return dg.SkipReason(f"{day} is not a trading session")
    session = calendar.session(day)
    start, end = (t.astimezone(calendar.NEW_YORK) for t in (session.start, session.end))
    return dg.RunRequest(
        run_key=f"stocks:{day}",
        run_config=run_config("stocks", day.isoformat(), start=f"{start:%H:%M}", end=f"{end:%H:%M}"),
        tags={STREAM_TAG: "stocks", DAY_TAG: day.isoformat()},
    )


@dg.schedule(job=crypto_stream_job, cron_schedule="0 0 * * *", execution_timezone="UTC")
def crypto_stream_schedule(context: dg.ScheduleEvaluationContext):
    """Start the crypto stream of each UTC day at its midnight."""
    day = context.scheduled_execution_time.astimezone(calendar.UTC).date()
    return dg.RunRequest(run_key=f"crypto:{day}", run_config=run_config("crypto", day.isoformat()),
                         tags={STREAM_TAG: "crypto", DAY_TAG: day.isoformat()})


@dg.schedule(job=quotes_daily_job, cron_schedule="30 20 * * 1-5", execution_timezone="America/New_York")
def quotes_archive_schedule(context: dg.ScheduleEvaluationContext):
    """Archive the session's quotes into the lake at 20:30 New York, after the after-hours close."""
    day = context.scheduled_execution_time.astimezone(calendar.NEW_YORK).date()
    if not calendar.is_session(day):
        return dg.SkipReason(f"{day} is not a trading session")
    if context.scheduled_execution_time < calendar.session(day).end + timedelta(minutes=5):
        return dg.SkipReason(f"the session of {day} is still open")
    return dg.RunRequest(run_key=f"quotes_daily:{day}", partition_key=day.isoformat())
