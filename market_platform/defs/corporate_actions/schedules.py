"""`corporate_actions_schedule`: the day's corporate actions before each session opens.

At 03:30 New York on weekdays (before the 04:00 pre-market), on exchange sessions only (weekends
and holidays skip with the reason), refresh the recent window of every vendor's actions, so a
split that takes effect today is known before its first trade.
"""

import dagster as dg

from market_platform import calendar
from market_platform.defs.corporate_actions.assets import corporate_actions_job

REFRESH_CRON = "30 3 * * 1-5"


def refresh_request(day) -> dg.RunRequest | dg.SkipReason:
    if not calendar.is_session(day):
        return dg.SkipReason(f"{day.isoformat()} is not a trading session")
    return dg.RunRequest(run_key=f"corporate-actions:{day.isoformat()}",
                         tags={"market_platform/trigger": "daily_refresh"})


@dg.schedule(job=corporate_actions_job, cron_schedule=REFRESH_CRON, execution_timezone="America/New_York")
def corporate_actions_schedule(context: dg.ScheduleEvaluationContext):
    """Each session's morning: refresh the corporate actions of the last 30 days and the year ahead."""
    return refresh_request(context.scheduled_execution_time.astimezone(calendar.NEW_YORK).date())
