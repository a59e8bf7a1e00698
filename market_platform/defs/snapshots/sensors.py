"""The snapshot sensors: process the queue when it is due, and launch feed health on new stalls.

`snapshot_queue_sensor` is the seed's "10 records trigger the function", the Dagster way: every
30 s it reads the queue's depth and launches `snapshot_process_job` once 10 messages wait or the
oldest has waited a minute (SQS does not tell the oldest message's age: the sensor times the
queue from the tick it first saw it non-empty, in its cursor). A processing run drains the whole
queue, so a backlog left while processing was off goes in one run; none is launched while one
is in progress.

`feed_health_sensor` compares, every minute, the snapshots of the open session (and of today's
UTC day, for crypto) with the live stream (`snapshots.feed_health.find_stalls`, one read), and
launches `feed_health_job` when it finds a stall not yet recorded or a recorded one not repaired.
"""


import hashlib
import json
from datetime import datetime, timezone
from typing import Callable

import dagster as dg
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from market_platform import calendar
from market_platform.defs.resources import TickStoreResource
from market_platform.defs.snapshots.jobs import (
    DAY_TAG,
    feed_health_job,
    feed_run_config,
    feed_window,
    snapshot_process_job,
)
from market_platform.defs.snapshots.resources import SnapshotQueueResource
from market_platform.errors import MarketPlatformError
from market_platform.snapshots import feed_health
from market_platform.snapshots.processor import is_due

UTC = timezone.utc
REASON_TAG = "market_platform/reason"


def build_snapshot_queue_sensor(*, name: str = "snapshot_queue_sensor",
                                now: Callable[[], datetime] = lambda: datetime.now(UTC),
                                default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED
                                ) -> dg.SensorDefinition:
    """The queue sensor (see the module docstring); the arguments exist for tests."""

    @dg.sensor(name=name, job=snapshot_process_job, minimum_interval_seconds=30, default_status=default_status,
               description="Launches snapshot_process_job when 10 snapshots wait or the oldest has waited a minute.")
    def sensor(context: dg.SensorEvaluationContext, tick_store: TickStoreResource,
               snapshot_queue: SnapshotQueueResource):
        instant = now()
        state = json.loads(context.cursor) if context.cursor else {}
        try:
            queue = snapshot_queue.queue(tick_store.store())
            stats = queue.stats()
        except MarketPlatformError as exc:
            return dg.SkipReason(f"cannot read the snapshot queue: {exc}")
        if not stats.depth:
            context.update_cursor(json.dumps({}))
            return dg.SkipReason(f"{queue.describe()} is empty")
        since = datetime.fromisoformat(state["nonempty_since"]) if "nonempty_since" in state else instant
        reason = is_due(stats, instant, nonempty_since=since)
        if reason is None:
            context.update_cursor(json.dumps({"nonempty_since": since.isoformat()}))
            return dg.SkipReason(f"{stats.depth} messages waiting: not due yet")
        running = context.instance.get_runs(filters=dg.RunsFilter(job_name=snapshot_process_job.name,
                                                                  statuses=list(IN_PROGRESS_RUN_STATUSES)), limit=1)
        if running:
            return dg.SkipReason(f"{reason}, and run {running[0].run_id} is processing the queue")
        context.update_cursor(json.dumps({"nonempty_since": instant.isoformat()}))
        return dg.RunRequest(tags={REASON_TAG: reason})

    return sensor


def build_feed_health_sensor(*, name: str = "feed_health_sensor",
                             now: Callable[[], datetime] = lambda: datetime.now(UTC),
                             default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED
                             ) -> dg.SensorDefinition:
    """The feed-health sensor (see the module docstring); the arguments exist for tests."""

    @dg.sensor(name=name, job=feed_health_job, minimum_interval_seconds=60, default_status=default_status,
               description="Launches feed_health_job when the snapshots show a silent stall of the live stream.")
    def sensor(context: dg.SensorEvaluationContext, tick_store: TickStoreResource):
        instant = now()
        store = tick_store.store()
        requests, notes = [], []
        session = calendar.default_calendar().session_at(instant)
        windows = [("crypto", instant.astimezone(UTC).date().isoformat())]
        if session is not None:
            windows.insert(0, ("stocks", session.day.isoformat()))
        for kind, day in windows:
            start, end = feed_window(kind, day, instant)
            try:
                stream, stalls = feed_health.find_stalls(store, start, end, kind=kind)
                recorded = store.stalls(start, end)
            except MarketPlatformError as exc:
                notes.append(f"{kind}: cannot compare ({exc})")
                continue
            covered = [(g["symbol"], g["gap_start"], g["gap_end"]) for g in recorded]
            new = [s for s in stalls if not any(sym == s.symbol and lo <= s.start and hi >= s.end
                                                for sym, lo, hi in covered)]
            unrepaired = sorted(g["id"] for g in recorded if g["repaired_at"] is None)
            if not new and not unrepaired:
                notes.append(f"{kind} {day}: {len(stalls)} stalls, all recorded and repaired"
                             if stream else f"{kind} {day}: no stream ran")
                continue
            key = hashlib.sha256(json.dumps([[s.symbol, s.start.isoformat(), s.end.isoformat()] for s in new]
                                            + unrepaired).encode()).hexdigest()[:16]
            requests.append(dg.RunRequest(run_key=f"feed_health:{kind}:{day}:{key}",
                                          run_config=feed_run_config(kind, day), tags={DAY_TAG: day}))
            context.log.info(f"{kind} {day}: {len(new)} new silent stalls, {len(unrepaired)} unrepaired")
        return requests if requests else dg.SkipReason("; ".join(notes))

    return sensor


snapshot_queue_sensor = build_snapshot_queue_sensor()
feed_health_sensor = build_feed_health_sensor()
