"""The snapshots slice through Dagster and the CLI: schedules, the poll and process jobs with the
queue sensor, feed health's sensor, job and check on a witnessed stall, and `market-platform
snapshots [status]`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from click.testing import CliRunner
from dagster._core.test_utils import create_run_for_test

from market_platform import calendar
from market_platform.cli import main
from market_platform.defs.resources import AlertsResource, SimMarketResource, TickStoreResource, VendorsResource
from market_platform.defs.snapshots.assets import snapshots
from market_platform.defs.snapshots.checks import build_stream_not_silent
from market_platform.defs.snapshots.jobs import (
    feed_health_job,
    poll_run_config,
    snapshot_poll_job,
    snapshot_process_job,
)
from market_platform.defs.snapshots.resources import SnapshotQueueResource
from market_platform.defs.snapshots.schedules import crypto_snapshot_poll_schedule, snapshot_poll_schedule
from market_platform.defs.snapshots.sensors import build_feed_health_sensor, build_snapshot_queue_sensor
from market_platform.schemas import SNAPSHOTS
from market_platform.storage.timescale import TickStore
from market_platform_tests.fixtures.history import replay_vendors
from market_platform_tests.fixtures.sim import SIM_DAY

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
UTC, NY = timezone.utc, calendar.NEW_YORK
MINUTE = timedelta(minutes=1)
START = datetime(2024, 11, 26, 15, 0, tzinfo=UTC)  # 10:00 New York
SIM = {"n_stocks": 20, "n_crypto": 5, "activity": 0.02}


def test_poll_schedules_follow_the_calendar() -> None:
    holiday = snapshot_poll_schedule(dg.build_schedule_context(scheduled_execution_time=datetime(2024, 7, 4, 4, tzinfo=NY)))
    assert isinstance(holiday, dg.SkipReason) and "2024-07-04 is not a trading session" in holiday.skip_message
    half_day = snapshot_poll_schedule(dg.build_schedule_context(
        scheduled_execution_time=datetime(2024, 11, 29, 4, tzinfo=NY)))
    assert half_day.run_key == "snapshots:stocks:2024-11-29"
    assert half_day.run_config == poll_run_config("stocks", "2024-11-29", start="04:00", end="17:00")
    crypto = crypto_snapshot_poll_schedule(dg.build_schedule_context(
        scheduled_execution_time=datetime(2024, 11, 30, 0, tzinfo=UTC)))  # a Saturday: crypto trades
    assert crypto.run_config == poll_run_config("crypto", "2024-11-30")


def test_poll_job_then_the_queue_sensor_launches_processing(stream_db, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MARKET_PLATFORM_HOME", str(tmp_path))
    tick_store = TickStore(stream_db)
    resources = {"tick_store": TickStoreResource(url=tick_store.url), "snapshot_queue": SnapshotQueueResource(),
                 "vendors": VendorsResource(), "bars_source": SimMarketResource(**SIM)}
    with dg.instance_for_test() as instance:
        polled = snapshot_poll_job.execute_in_process(
            run_config=poll_run_config("stocks", SIM_DAY.isoformat(), start="10:00", end="10:04", speed=0),
            resources=resources, instance=instance)
        assert polled.success
        observed = instance.fetch_observations(snapshots.key, limit=1).records[0].asset_observation.metadata
        assert observed["minutes_polled"].value == 5 and observed["minutes_missed"].value == 0

        def tick(at: datetime, cursor: str | None = None):
            sensor = build_snapshot_queue_sensor(now=lambda: at)
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                return sensor(context), context.cursor

        enqueued = tick_store.snapshot_queue_stats()["oldest"]
        waiting, _ = tick(enqueued + timedelta(seconds=20))
        assert isinstance(waiting, dg.SkipReason) and "5 messages waiting: not due yet" in waiting.skip_message
        busy = create_run_for_test(instance, job_name=snapshot_process_job.name, status=dg.DagsterRunStatus.STARTED)
        skipped, _ = tick(enqueued + 2 * MINUTE)
        assert isinstance(skipped, dg.SkipReason) and busy.run_id in skipped.skip_message
        instance.report_run_failed(busy)
        request, cursor = tick(enqueued + 2 * MINUTE)
        assert isinstance(request, dg.RunRequest) and "the oldest of 5 messages has waited" in request.tags["market_platform/reason"]
        processed = snapshot_process_job.execute_in_process(resources=resources, instance=instance)
        assert processed.success
        made = instance.get_latest_materialization_event(snapshots.key).asset_materialization.metadata
        assert (made["rows_inserted"].value, made["messages"].value, made["queue_depth_after"].value) == (100, 5, 0)
        empty, _ = tick(enqueued + 3 * MINUTE, cursor)
        assert isinstance(empty, dg.SkipReason) and "is empty" in empty.skip_message


def _witnessed_stall(store: TickStore, sim, start: datetime) -> None:
    """Twelve minutes of a stream that sent no bar for AAPL over 10:03-10:07, and the snapshots of
    the same minutes (each carrying the minute bar just ended), as the jobs would have left them."""
    bars = sim.minute_bars(SIM_DAY)
    ts = bars["ts"]
    bars = bars.filter(pc.and_(pc.greater_equal(ts, pa.scalar(start, ts.type)),
                               pc.less(ts, pa.scalar(start + 12 * MINUTE, ts.type))))
    silent = pc.and_(pc.equal(bars["symbol"], "AAPL"),
                     pc.and_(pc.greater_equal(bars["ts"], pa.scalar(start + 3 * MINUTE, ts.type)),
                             pc.less(bars["ts"], pa.scalar(start + 8 * MINUTE, ts.type))))
    live = bars.filter(pc.invert(silent))
    store.write_bars(live.set_column(live.schema.get_field_index("source"), "source",
                                     pa.repeat(pa.scalar("alpaca_stream"), live.num_rows)))
    store.write_stream_stats([{"stream": "alpaca_stocks_iex", "minute": start + i * MINUTE} for i in range(12)])
    n = bars.num_rows
    columns = {"symbol": bars["symbol"], "minute": pc.add(bars["ts"], pa.scalar(60_000_000_000, pa.duration("ns"))),
               "source": pa.repeat(pa.scalar("polygon_rest"), n), "min_ts": bars["ts"], "min_close": bars["close"],
               "min_volume": bars["volume"], "last_price": bars["close"]}
    store.write_snapshots(pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in SNAPSHOTS}))


def test_feed_health_sensor_job_and_check_on_a_witnessed_stall(stream_db, replay, sim, tmp_path) -> None:
    tick_store = TickStore(stream_db)
    _witnessed_stall(tick_store, sim, START)
    at = START + 12 * MINUTE
    resources = {"tick_store": TickStoreResource(url=tick_store.url), "vendors": replay_vendors(replay),
                 "alerts": AlertsResource(rules_file=str(tmp_path / "none.yaml"), json_file=str(tmp_path / "a.jsonl"))}
    check = build_stream_not_silent(now=lambda: at)
    checks = dg.Definitions(assets=[snapshots], asset_checks=[check], resources=resources)

    def checked() -> dg.AssetCheckEvaluation:
        job = checks.resolve_implicit_global_asset_job_def()
        [evaluation] = job.execute_in_process(asset_selection=[], raise_on_error=False).get_asset_check_evaluations()
        return evaluation

    with dg.instance_for_test() as instance:
        def tick():
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                return build_feed_health_sensor(now=lambda: at)(context)

        assert not checked().passed
        [request] = tick()
        assert request.run_config["ops"]["check_feed_health_op"]["config"] == {"kind": "stocks", "day": "2024-11-26"}
        assert feed_health_job.execute_in_process(run_config=request.run_config, resources=resources,
                                                  instance=instance).success
        observed = instance.fetch_observations(snapshots.key, limit=1).records[0].asset_observation.metadata
        assert (observed["symbols_silent"].value, observed["silent_minutes"].value, observed["repaired"].value,
                observed["repaired_bars"].value, observed["alerts"].value) == ("AAPL", 5, 1, 5, 1)
        assert isinstance(tick(), dg.SkipReason)  # recorded and repaired: nothing to launch
        assert checked().passed
    gap = tick_store.stalls(START, at)[0]
    assert (gap["symbol"], gap["gap_start"], gap["gap_end"], gap["repaired_bars"]) == \
        ("AAPL", START + 3 * MINUTE, START + 8 * MINUTE, 5)
    alert = json.loads((tmp_path / "a.jsonl").read_text())
    assert (alert["rule"], alert["symbol"], alert["value"]) == ("silent_stall", "AAPL", 5.0)


def test_snapshots_cli_polls_processes_and_reports(tmp_path, make_database) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "POLYGON_", "MARKET_", "DAGSTER_"))}
    env = {**base, "MARKET_PLATFORM_HOME": str(tmp_path / "home"), "MARKET_DB_URL": make_database("postgres"),
           "MARKET_SIM_STOCKS": "20", "MARKET_SIM_ACTIVITY": "0.02"}  # the one simulated market of every command
    command = [str(BIN / "market-platform"), "snapshots"]
    done = subprocess.run(command + ["--day", "2024-11-26", "--start", "10:00", "--end", "10:03"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["polled"].startswith("4 minutes polled, 0 missed") and summary["missed"] == []
    assert summary["processed"].startswith("4 messages in 1 batches: 80 rows stored")
    status = CliRunner().invoke(main, ["snapshots", "status", "--day", "2024-11-26"], env=env)  # in process
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["queue"]["depth"] == 0 and report["queue"]["oldest_message"] is None
    assert report["last_processed"]["minute"] == "2024-11-26T15:03:00+00:00"
    assert report["snapshots"] == [{"source": "polygon_rest", "rows": 80, "minutes": 4}]
    assert report["feed_health"]["stalls"] == 0
    bad = CliRunner().invoke(main, ["snapshots", "--speed", "fast"], env={"MARKET_PLATFORM_HOME": str(tmp_path)})
    assert bad.exit_code == 2 and "error: --speed 'fast': expected a number" in bad.output
    own = CliRunner().invoke(main, ["snapshots", "--stocks", "20"], env={"MARKET_PLATFORM_HOME": str(tmp_path)})
    assert own.exit_code == 2 and "No such option '--stocks'" in own.output  # no market of its own
