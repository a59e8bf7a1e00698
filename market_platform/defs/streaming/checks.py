"""Freshness of the live tables during sessions: the stream run reports on them every few minutes,
so a table that has not been reported on lately, while a session is open, means a stream in trouble."""


from datetime import datetime, timedelta, timezone

import dagster as dg

from market_platform import calendar
from market_platform.defs.streaming.assets import LIVE_TABLES

UTC = timezone.utc
#: A run reports every 5 stream minutes by default; twice that is late.
MAX_AGE = timedelta(minutes=10)
CHECK_NAME = "fresh_during_session"


def freshness(now: datetime, last_report: datetime | None) -> tuple[bool, str]:
    """Whether a live table reported on at `last_report` is fresh at `now`, and why."""
    session = calendar.default_calendar().session_at(now)
    if session is None:
        return True, "no session is open"
    if now - session.start < MAX_AGE:
        return True, "the session has just opened"
    if last_report is None:
        return False, "never reported on"
    age = now - last_report
    return age <= MAX_AGE, f"last reported on {age.total_seconds():.0f} s ago"


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(CHECK_NAME, asset=spec.key, description=f"Reported on within {MAX_AGE} while a session is open")
           for spec in LIVE_TABLES],
)
def live_tables_fresh(context: dg.AssetCheckExecutionContext):
    """Passes outside sessions and in a session's first minutes; fails when a live table's last report
    is older than MAX_AGE while the session is open."""
    now = datetime.now(UTC)
    for spec in LIVE_TABLES:
        event = context.instance.get_latest_materialization_event(spec.key)
        last = datetime.fromtimestamp(event.timestamp, UTC) if event is not None else None
        passed, why = freshness(now, last)
        yield dg.AssetCheckResult(asset_key=spec.key, check_name=CHECK_NAME, passed=passed,
                                  severity=dg.AssetCheckSeverity.WARN, metadata={"why": why})


live_tables_freshness_job = dg.define_asset_job(
    "live_tables_freshness_job", selection=dg.AssetSelection.checks(live_tables_fresh),
    description="Check that the stream keeps reporting on the live tables.",
)


@dg.schedule(job=live_tables_freshness_job, cron_schedule="*/5 4-19 * * 1-5", execution_timezone="America/New_York")
def live_tables_freshness_schedule(context: dg.ScheduleEvaluationContext):
    """Every 5 minutes of a session's extended hours."""
    day = context.scheduled_execution_time.astimezone(calendar.NEW_YORK).date()
    if not calendar.is_session(day):
        return dg.SkipReason(f"{day} is not a trading session")
    return dg.RunRequest()
