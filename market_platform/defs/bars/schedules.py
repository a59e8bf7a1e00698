"""Bars nobody has to ask for: each session from REST when it closes, then re-verified the next
morning from the Flat Files once the vendor publishes them (and again if it republishes).

`after_close_schedule` ticks five minutes after both possible after-hours closes (17:00 on half
days, 20:00 otherwise, New York): the last minute bar is final at the close and the vendors' REST
aggregates lag it by seconds to a minute. A tick requests the session that has just closed and
skips, with the reason, weekends, holidays and the tick that does not match the day's close. It is
a plain schedule that picks the day's own partition (a schedule built from the partitioned job
would request the last *completed* partition, i.e. the previous session).

`flatfiles_verify_sensor` looks at the last five sessions: once a session's flat file is published
(from 11:00 New York the next day), and its ETag differs from the one the session's latest
`minute_bars` materialization recorded (none, after a REST build), it requests the session again
from the Flat Files. The run key carries the ETag, so a republished file is verified once more.
"""

from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone

import dagster as dg

from market_platform import calendar
from market_platform.defs.bars.assets import bars_job, minute_bars, recorded_session
from market_platform.defs.resources import VendorsResource
from market_platform.errors import NotASessionError
from market_platform.history.vendors import Vendors, published_at
from market_platform.schemas import Source

UTC = timezone.utc
AFTER_CLOSE_CRON = "5 17,20 * * 1-5"
VERIFY_SESSIONS = 5


def bars_run_config(**options) -> dict:
    """Run config of `bars_job` giving `minute_bars` these BarsConfig options."""
    return {"ops": {"minute_bars": {"config": options}}}


def after_close_request(instant: datetime) -> dg.RunRequest | dg.SkipReason:
    """What the schedule asks for at `instant`: the session that closed just before, from REST."""
    day = instant.astimezone(calendar.NEW_YORK).date()
    try:
        session = calendar.session(day)
    except NotASessionError as exc:
        return dg.SkipReason(str(exc))
    close = session.after_hours_close
    close_text = close.astimezone(calendar.NEW_YORK).strftime("%H:%M")
    if instant < close:
        return dg.SkipReason(f"the {day.isoformat()} session's after-hours run until {close_text} New York")
    if instant - close >= timedelta(hours=1):
        return dg.SkipReason(f"the {day.isoformat()} session (a half day) was requested at its {close_text} close")
    return dg.RunRequest(
        run_key=f"after-close:{day.isoformat()}",
        partition_key=day.isoformat(),
        run_config=bars_run_config(source="rest"),
        tags={"market_platform/trigger": "after_close"},
    )


@dg.schedule(job=bars_job, cron_schedule=AFTER_CLOSE_CRON, execution_timezone="America/New_York")
def after_close_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """After each session's after-hours close: its minute bars from REST, and their rollups."""
    return after_close_request(context.scheduled_execution_time or datetime.now(UTC))


def verify_requests(now: datetime, recorded: Callable[[str], dict | None],
                    etag_of: Callable[[date], str | None], *, sessions: int = VERIFY_SESSIONS) -> Iterator[dg.RunRequest]:
    """Requests to rebuild recent sessions from their flat files: those built (`recorded(day)`, the
    metadata of the session's latest materialization) whose published file's ETag is not the one recorded."""
    cal = calendar.default_calendar()
    last = cal.last_completed_session(now)
    for day in cal.sessions(last - timedelta(days=sessions * 2 + 7), last)[-sessions:]:
        if now < published_at(day):
            continue
        record = recorded(day.isoformat())
        if record is None:
            continue
        etag = etag_of(day)
        if etag is None or record.get("etag") == etag:
            continue
        yield dg.RunRequest(
            run_key=f"verify:{day.isoformat()}:{etag.strip(chr(34))}",
            partition_key=day.isoformat(),
            run_config=bars_run_config(source=Source.POLYGON_FLATFILES.value),
            tags={"market_platform/trigger": "flatfiles_verify"},
        )


def verification(instance: dg.DagsterInstance, vendors: Vendors) -> list[dg.RunRequest] | dg.SkipReason:
    """What `flatfiles_verify_sensor` asks for, given the instance's materializations and the vendors."""
    if vendors.flatfiles is None:
        return dg.SkipReason("Flat Files are not configured (POLYGON_S3_ACCESS_KEY / POLYGON_S3_SECRET_KEY)")

    def recorded(day: str) -> dict | None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=minute_bars.key, asset_partitions=[day]), limit=1).records
        if not records:
            return None
        return recorded_session(records[0].asset_materialization.metadata)

    requests = list(verify_requests(vendors.now(), recorded, vendors.flatfile_etag))
    return requests or dg.SkipReason("every recent session is verified against its published flat file")


@dg.sensor(job=bars_job, minimum_interval_seconds=600)
def flatfiles_verify_sensor(context: dg.SensorEvaluationContext, vendors: VendorsResource):
    """Re-verifies recent sessions from the Flat Files once published, and when republished."""
    return verification(context.instance, vendors.vendors())
