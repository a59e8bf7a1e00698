"""The stream watchdog: while a stream's window is open, its run must be alive.

Every minute, for the stock session open now (and the UTC day's crypto stream, once one ran
today): if no run is in progress, or the one in progress has shown no heartbeat (its
`stream_stats` rows, written every minute) for `heartbeat_timeout` seconds - a worker killed
without a word stays STARTED in Dagster's storage - the dead run is marked failed and a new
run is requested with the same config. The new run records the gap the dead one left and
repairs its bars. A run cancelled by a user is not relaunched, nor is a day past
`max_relaunches`.
"""


import time
from datetime import datetime, timezone
from typing import Callable

import dagster as dg
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from market_platform import calendar
from market_platform.defs.resources import TickStoreResource
from market_platform.defs.streaming.jobs import DAY_TAG, STREAM_JOBS, STREAM_TAG, run_config
from market_platform.errors import DatabaseUnavailableError

UTC = timezone.utc
RELAUNCH_TAG = "market_platform/relaunch"


def _open_day(kind: str, now: datetime) -> str | None:
    if kind == "crypto":
        return now.astimezone(UTC).date().isoformat()
    session = calendar.default_calendar().session_at(now)
    return session.day.isoformat() if session is not None else None


def _heartbeat(tick_store: TickStoreResource, kind: str) -> float | None:
    """When the stream last wrote its statistics (epoch seconds), if ever."""
    table = tick_store.store().read_arrow(
        "SELECT recorded_at FROM stream_stats WHERE stream LIKE %(pattern)s ORDER BY recorded_at DESC LIMIT 1",
        {"pattern": f"alpaca_{kind}_%"})
    return table.column("recorded_at")[0].as_py().timestamp() if table.num_rows else None


def build_stream_watchdog_sensor(
    *,
    name: str = "stream_watchdog_sensor",
    heartbeat_timeout: float = 180.0,
    max_relaunches: int = 10,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),  # decides which window is open
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """The watchdog (see the module docstring); the arguments exist for tests and tuning."""

    @dg.sensor(name=name, jobs=list(STREAM_JOBS.values()), minimum_interval_seconds=60,
               default_status=default_status,
               description="Relaunches a stream whose window is open but whose run is gone or silent.")
    def watchdog(context: dg.SensorEvaluationContext, tick_store: TickStoreResource):
        instant = now()
        requests: list[dg.RunRequest] = []
        notes: list[str] = []
        for kind, job in STREAM_JOBS.items():
            day = _open_day(kind, instant)
            if day is None:
                notes.append(f"{kind}: no session is open")
                continue
            runs = context.instance.get_runs(filters=dg.RunsFilter(job_name=job.name, tags={DAY_TAG: day}))
            if kind == "crypto" and not runs:
                notes.append("crypto: no stream ran today")
                continue
            if any(r.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED,
                                dg.DagsterRunStatus.CANCELING) for r in runs):
                notes.append(f"{kind} {day}: finished or cancelled")
                continue
            if len(runs) > max_relaunches:
                notes.append(f"{kind} {day}: relaunched {len(runs) - 1} times already")
                continue
            alive = [r for r in runs if r.status in IN_PROGRESS_RUN_STATUSES]
            if alive:
                try:
                    beat = _heartbeat(tick_store, kind)
                except DatabaseUnavailableError as exc:
                    notes.append(f"{kind} {day}: cannot check the heartbeat ({exc})")
                    continue
                dead = []
                for run in alive:
                    record = context.instance.get_run_record_by_id(run.run_id)
                    started = (record.start_time or record.create_timestamp.timestamp()) if record else 0.0
                    last_sign = max(beat or 0.0, started)
                    if time.time() - last_sign > heartbeat_timeout:
                        dead.append(run)
                if len(dead) < len(alive):
                    notes.append(f"{kind} {day}: running")
                    continue
                for run in dead:
                    context.instance.report_run_failed(
                        run, f"no heartbeat for more than {heartbeat_timeout:.0f} s: the stream worker is gone")
            previous = runs[0] if runs else None  # the latest
            config = previous.run_config if previous is not None else run_config(kind, day)
            requests.append(dg.RunRequest(
                run_key=f"{kind}:{day}:relaunch:{len(runs)}", run_config=config,
                tags={STREAM_TAG: kind, DAY_TAG: day, RELAUNCH_TAG: str(len(runs))},
            ))
            context.log.info(f"{kind} {day}: relaunching the stream ({len(runs)} earlier runs)")
        return requests if requests else dg.SkipReason("; ".join(notes))

    return watchdog


stream_watchdog_sensor = build_stream_watchdog_sensor()
