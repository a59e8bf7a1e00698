"""The alerts sensor: alert rules evaluated on new metrics, and on the tick store during sessions.

Every tick it (1) evaluates the rules on each `daily_metrics` / `intraday_metrics` partition
materialized since its cursor, (2) during a session, evaluates the intraday rules on the 5-minute
windows closed since the last tick, computed by PostgreSQL from the tick store's bars_1m, and
(3) retries deliveries that failed. Recording is idempotent (see analytics.alerts), so a tick that
dies halfway is simply done again. It launches no runs: it reports what it did as its skip reason.
"""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.analytics import metrics
from market_platform.analytics.alerts import Alerter, Report
from market_platform.defs.resources import AlertsResource, LakeResource, TickStoreResource

WATCHED = (metrics.DAILY_METRICS, metrics.INTRADAY_METRICS)
#: A minute's bars arrive just after it ends; a window is evaluated live once this much later.
LIVE_GRACE = timedelta(seconds=75)


def closed_windows(table: pa.Table, now: datetime, after: Optional[datetime]) -> pa.Table:
    """Live windows that ended at least LIVE_GRACE before `now` and start after `after`."""
    latest_start = now - LIVE_GRACE - metrics.WINDOW
    mask = pc.less_equal(table["ts"], pa.scalar(latest_start, type=table.schema.field("ts").type))
    if after is not None:
        mask = pc.and_(mask, pc.greater(table["ts"], pa.scalar(after, type=table.schema.field("ts").type)))
    return table.filter(mask)


def evaluate_alerts(
    instance: dg.DagsterInstance,
    cursor: Optional[str],
    alerter: Alerter,
    lake: LakeResource,
    now: datetime,
) -> tuple[str, dict[str, Report]]:
    """One tick's work (see the module docstring); returns the new cursor and a report per source."""
    state = json.loads(cursor) if cursor else {}
    reports: dict[str, Report] = {}
    store = lake.lake()
    for dataset in WATCHED:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(dataset), after_storage_id=state.get(dataset)),
            limit=100, ascending=True,
        )
        for record in result.records:
            partition = record.asset_materialization.partition if record.asset_materialization else None
            if partition and store.has_partition(dataset, partition):
                reports[f"{dataset}/{partition}"] = alerter.evaluate(dataset, store.read_partition(dataset, partition))
            state[dataset] = record.storage_id
    session = calendar.default_calendar().session_at(now)
    if session is not None and any(rule.dataset == metrics.INTRADAY_METRICS for rule in alerter.rules):
        after = state.get("live_window")
        after_ts = datetime.fromisoformat(after) if after and after >= session.start.isoformat() else None
        live = metrics.live_intraday_metrics(alerter.store, session.day, until=now)
        windows = closed_windows(live, now, after_ts)
        if windows.num_rows:
            reports["live"] = alerter.evaluate(metrics.INTRADAY_METRICS, windows)
            state["live_window"] = pc.max(windows["ts"]).as_py().isoformat()
    retried = alerter.redeliver()
    if retried.fired:
        reports["redelivery"] = retried
    return json.dumps(state, sort_keys=True), reports


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def alerts_sensor(
    context: dg.SensorEvaluationContext,
    lake: LakeResource,
    tick_store: TickStoreResource,
    alerts: AlertsResource,
) -> dg.SkipReason:
    """Evaluates the alert rules (`$MARKET_PLATFORM_HOME/alerts.yaml` or MARKET_ALERTS_FILE) on new
    daily and intraday metrics, and on the tick store's bars during sessions; alerts go to the log,
    a JSON-lines file and the webhook (MARKET_ALERTS_WEBHOOK_URL), each recorded once in `alerts`."""
    # The rules file decides first: without one the sensor touches no database.
    if not Path(alerts.rules_path()).exists():
        return dg.SkipReason(f"no alert rules at {alerts.rules_path()}")
    alerter = alerts.alerter(tick_store.store())
    cursor, reports = evaluate_alerts(context.instance, context.cursor, alerter, lake, datetime.now(timezone.utc))
    context.update_cursor(cursor)
    if not reports:
        return dg.SkipReason("nothing new to evaluate")
    return dg.SkipReason("; ".join(f"{source}: {report.summary()}" for source, report in reports.items()))

