"""The streaming slice through Dagster: jobs, schedules, the watchdog sensor, quotes_daily, the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import dagster as dg
from dagster._core.test_utils import create_run_for_test
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from market_platform import calendar
from market_platform.defs.resources import LakeResource, SimMarketResource, TickStoreResource
from market_platform.defs.streaming.assets import LIVE_TABLES, quotes_daily
from market_platform.defs.streaming.jobs import (
    DAY_TAG,
    OP_NAMES,
    STREAM_TAG,
    crypto_stream_job,
    run_config,
    stock_stream_job,
)
from market_platform.defs.streaming.resources import AlpacaStreamResource
from market_platform.defs.streaming.schedules import premarket_stream_schedule, quotes_archive_schedule
from market_platform.defs.streaming.sensors import build_stream_watchdog_sensor
from market_platform.storage.lake import Lake
from market_platform_tests.fixtures import HISTORY_START
from market_platform.sources.sim import SimMarket
from market_platform.storage.timescale import TickStore
from market_platform.streaming.runs import stock_window
from market_platform_tests.fixtures.sim import SIM_DAY
from market_platform_tests.fixtures.stream import db_rows, window

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NY = calendar.NEW_YORK
UTC = timezone.utc
SIM = {"n_stocks": 20, "n_crypto": 5, "activity": 0.02}


def _resources(url: str, **alpaca) -> dict:
    return {"tick_store": TickStoreResource(url=url), "alpaca_stream": AlpacaStreamResource(**alpaca),
            "bars_source": SimMarketResource(**SIM)}


def test_premarket_schedule_skips_holidays_and_ends_half_days_at_17() -> None:
    holiday = dg.build_schedule_context(scheduled_execution_time=datetime(2024, 7, 4, 4, 0, tzinfo=NY))
    skipped = premarket_stream_schedule(holiday)
    assert isinstance(skipped, dg.SkipReason) and "2024-07-04 is not a trading session" in skipped.skip_message
    weekend = premarket_stream_schedule(dg.build_schedule_context(
        scheduled_execution_time=datetime(2024, 11, 30, 4, 0, tzinfo=NY)))
    assert isinstance(weekend, dg.SkipReason)
    half_day = premarket_stream_schedule(dg.build_schedule_context(
        scheduled_execution_time=datetime(2024, 11, 29, 4, 0, tzinfo=NY)))
    assert isinstance(half_day, dg.RunRequest)
    config = half_day.run_config["ops"]["stream_stocks"]["config"]
    assert config == {"day": "2024-11-29", "start": "04:00", "end": "17:00"}
    assert half_day.tags[DAY_TAG] == "2024-11-29" and half_day.run_key == "stocks:2024-11-29"
    start, end = stock_window("2024-11-29", start=config["start"], end=config["end"])
    assert (start.astimezone(NY).hour, end.astimezone(NY).hour) == (4, 17)
    # A run launched late streams from then on.
    late = datetime(2024, 11, 26, 15, 7, 30, tzinfo=UTC)
    assert stock_window("2024-11-26", now=late) == (late, calendar.session("2024-11-26").end)
    archive = quotes_archive_schedule(dg.build_schedule_context(
        scheduled_execution_time=datetime(2024, 11, 29, 20, 30, tzinfo=NY)))
    assert isinstance(archive, dg.RunRequest) and archive.partition_key == "2024-11-29"


def test_stock_stream_job_streams_a_window_and_reports_on_the_live_tables(stream_db, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MARKET_PLATFORM_HOME", str(tmp_path))
    with dg.instance_for_test() as instance:
        result = stock_stream_job.execute_in_process(
            run_config=run_config("stocks", SIM_DAY.isoformat(), start="09:30", end="09:40", speed=0),
            resources=_resources(stream_db), instance=instance)
        assert result.success
        quotes = db_rows(stream_db, "SELECT count(*) AS n FROM quotes")[0]["n"]
        assert quotes > 1000
        for spec in LIVE_TABLES:
            event = instance.get_latest_materialization_event(spec.key)
            assert event is not None
        reported = instance.get_latest_materialization_event(LIVE_TABLES[0].key).asset_materialization.metadata
        assert reported["rows_this_run"].value == quotes
        assert reported["last_event_time"].value.startswith("2024-11-26T14:40")


def test_crypto_stream_job_streams_a_utc_day(stream_db, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MARKET_PLATFORM_HOME", str(tmp_path))
    result = crypto_stream_job.execute_in_process(
        run_config=run_config("crypto", "2024-11-24", speed=0), resources=_resources(stream_db))  # a Sunday
    assert result.success
    rows = db_rows(stream_db, "SELECT min(ts) AS lo, max(ts) AS hi, count(DISTINCT symbol) AS n FROM quotes")[0]
    assert rows["n"] == 5 and rows["lo"].date().isoformat() == rows["hi"].date().isoformat() == "2024-11-24"
    assert db_rows(stream_db, "SELECT DISTINCT stream FROM stream_stats")[0]["stream"] == "alpaca_crypto_us"


@pytest.mark.parametrize("kind", ["stocks", "crypto"])
def test_a_stream_job_that_cannot_reach_the_vendor_fails(stream_db, tmp_path, monkeypatch, kind) -> None:
    """Keys that cannot connect, or a vendor that is not there: a failed run, never 0 rows and success."""
    import socket

    monkeypatch.setenv("MARKET_PLATFORM_HOME", str(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    path = "/v1beta3/crypto/us" if kind == "crypto" else "/v2/iex"
    resources = _resources(stream_db, api_key="a-key", secret_key="a-secret", stream_url=f"ws://127.0.0.1:{port}{path}")
    job = crypto_stream_job if kind == "crypto" else stock_stream_job
    config = run_config(kind, "2024-11-24" if kind == "crypto" else SIM_DAY.isoformat(), speed=0, connect_attempts=2)
    result = job.execute_in_process(run_config=config, resources=resources, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node(OP_NAMES[kind]).error.cause
    assert "VendorUnavailableError" in failure.cls_name and "cannot connect to ws://127.0.0.1" in failure.message
    assert "a-secret" not in failure.message
    assert db_rows(stream_db, "SELECT sum(errors) AS e FROM stream_stats")[0]["e"] == 2


def test_quotes_daily_archives_a_sessions_stock_quotes(tick_store, stream_sim, tmp_path) -> None:
    start, end = window("09:30", 5)
    quotes = stream_sim.quotes(SIM_DAY, None, start=start, end=end)
    pairs = stream_sim.quotes(SIM_DAY, ["BTC/USD"], start=start, end=end)
    next_day = stream_sim.quotes("2024-11-27", ["AAPL"], start=datetime(2024, 11, 27, 15, 0, tzinfo=UTC),
                                 end=datetime(2024, 11, 27, 15, 1, tzinfo=UTC))
    for table in (quotes, pairs, next_day):
        tick_store.write_quotes(table)
    lake = LakeResource(url=str(tmp_path / "lake"))
    result = dg.materialize([quotes_daily], partition_key=SIM_DAY.isoformat(),
                            resources={"tick_store": TickStoreResource(url=tick_store.url), "lake": lake})
    assert result.success
    stored = Lake(str(tmp_path / "lake")).read_partition("quotes_daily", SIM_DAY.isoformat())
    assert stored.num_rows == quotes.num_rows  # no crypto pairs, nothing of the next day
    expected = quotes.sort_by([("symbol", "ascending"), ("ts", "ascending"), ("seq", "ascending")])
    truncated = pc.cast(pc.cast(expected["ts"], pa.int64()), pa.int64())
    assert stored["symbol"].to_pylist() == expected["symbol"].to_pylist()
    assert pc.cast(stored["ts"], pa.int64()).to_pylist() == pc.multiply(pc.divide(truncated, 1000), 1000).to_pylist()
    assert stored["seq"].to_pylist() == expected["seq"].to_pylist()


def _fake_run(instance, kind: str, day: str, status: dg.DagsterRunStatus, config: dict | None = None) -> dg.DagsterRun:
    """A run of the stream job in `status`, as the instance would hold it."""
    job = stock_stream_job if kind == "stocks" else crypto_stream_job
    return create_run_for_test(instance, job_name=job.name, run_config=config or run_config(kind, day),
                               status=status, tags={STREAM_TAG: kind, DAY_TAG: day})


def test_watchdog_relaunches_a_dead_or_missing_stream_only_while_its_window_is_open(stream_db) -> None:
    open_at = datetime(2024, 11, 26, 15, 0, tzinfo=UTC)
    closed_at = datetime(2024, 11, 27, 2, 0, tzinfo=UTC)
    resources = {"tick_store": TickStoreResource(url=stream_db)}
    with dg.instance_for_test() as instance:
        def evaluate(at):
            sensor = build_stream_watchdog_sensor(heartbeat_timeout=60, now=lambda: at)
            return sensor(dg.build_sensor_context(instance=instance, resources=resources))

        assert isinstance(evaluate(closed_at), dg.SkipReason)
        requests = evaluate(open_at)  # the session is open and nothing runs: the schedule was missed
        assert [r.tags[STREAM_TAG] for r in requests] == ["stocks"]  # crypto has not run today
        day = "2024-11-26"
        config = run_config("stocks", day, start="10:00", end="10:30")
        running = _fake_run(instance, "stocks", day, dg.DagsterRunStatus.STARTED, config)
        with TickStore(stream_db) as store:
            store.write_stream_stats([{"stream": "alpaca_stocks_iex", "minute": open_at}])
        assert isinstance(evaluate(open_at), dg.SkipReason)  # alive: a fresh heartbeat
        stale = build_stream_watchdog_sensor(heartbeat_timeout=0.0, now=lambda: open_at)
        time.sleep(0.05)
        requests = stale(dg.build_sensor_context(instance=instance, resources=resources))
        assert len(requests) == 1 and requests[0].run_config == config
        assert requests[0].run_key == "stocks:2024-11-26:relaunch:1"
        assert instance.get_run_by_id(running.run_id).status == dg.DagsterRunStatus.FAILURE
        done = _fake_run(instance, "stocks", day, dg.DagsterRunStatus.SUCCESS)
        assert isinstance(evaluate(open_at), dg.SkipReason) and done.status == dg.DagsterRunStatus.SUCCESS


def _dagster_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "POLYGON_", "MARKET_", "DAGSTER_"))}
    (tmp_path / "dagster").mkdir(exist_ok=True)
    return {**base, "MARKET_PLATFORM_HOME": str(tmp_path / "home"), "MARKET_DB_URL": url,
            "DAGSTER_HOME": str(tmp_path / "dagster"), "MARKET_SIM_STOCKS": "20", "MARKET_SIM_ACTIVITY": "0.02",
            "MARKET_HISTORY_START": HISTORY_START,
            **extra}


def _execute(env: dict, config: dict, tmp_path: Path, tags: dict | None = None) -> subprocess.Popen:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    args = [str(BIN / "dagster"), "job", "execute", "-m", "market_platform.definitions", "-j", "stock_stream_job",
            "-c", str(path)]
    if tags:
        args += ["--tags", json.dumps(tags)]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_dagster_job_execute_streams_a_short_window_against_the_replay(stream_db, tmp_path) -> None:
    env = _dagster_env(tmp_path, stream_db)
    proc = _execute(env, run_config("stocks", SIM_DAY.isoformat(), start="11:00", end="11:05", speed=0), tmp_path)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, output[-3000:]
    assert db_rows(stream_db, "SELECT count(*) AS n FROM bars_1m")[0]["n"] > 0


def test_a_killed_stream_relaunched_by_the_sensor_leaves_only_its_gap(
    stream_db, replay_factory, replay, stream_sim, tmp_path, monkeypatch
) -> None:
    # The stream replay and the Alpaca REST replay (repairs) take the same keys, as Alpaca does.
    rest = replay
    start, end = window("10:00", 12)
    replay = replay_factory(start=start, end=end, speed=60)
    assert (replay.key, replay.secret) == (rest.keys.alpaca_key_id, rest.keys.alpaca_secret)
    alpaca = {"ALPACA_API_KEY": replay.key, "ALPACA_SECRET_KEY": replay.secret, "ALPACA_STREAM_URL": replay.url("iex"),
              "ALPACA_DATA_URL": rest.alpaca_url}
    env = _dagster_env(tmp_path, stream_db, **alpaca)
    day = SIM_DAY.isoformat()
    config = run_config("stocks", day, start="10:00", end="10:12", stale_after_seconds=5, repair_delay_seconds=0)
    proc = _execute(env, config, tmp_path, tags={STREAM_TAG: "stocks", DAY_TAG: day})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            clock = replay.clock()
            if clock is not None and clock >= start + (end - start) / 4 and db_rows(
                    stream_db, "SELECT count(*) AS n FROM bars_1m")[0]["n"]:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the stream run did not get going: " + (proc.stdout.read() if proc.poll() is not None else ""))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    time.sleep(1.5)  # the dead run's heartbeat goes stale

    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    resources = _resources(stream_db, api_key=replay.key, secret_key=replay.secret, stream_url=replay.url("iex"),
                           data_url=rest.alpaca_url)
    sensor = build_stream_watchdog_sensor(heartbeat_timeout=1.0, now=lambda: start)
    requests = sensor(dg.build_sensor_context(instance=instance, resources={"tick_store": resources["tick_store"]}))
    assert len(requests) == 1 and requests[0].run_config == config
    (dead,) = instance.get_runs(filters=dg.RunsFilter(job_name="stock_stream_job"))
    assert dead.status == dg.DagsterRunStatus.FAILURE

    monkeypatch.setenv("MARKET_PLATFORM_HOME", env["MARKET_PLATFORM_HOME"])  # the spool and its checkpoint
    result = stock_stream_job.execute_in_process(run_config=requests[0].run_config, tags=requests[0].tags,
                                                 instance=instance, resources=resources)
    assert result.success

    (gap,) = db_rows(stream_db, "SELECT * FROM stream_gaps")
    assert gap["reason"].startswith("stream restarted") and gap["repaired_at"] is not None
    assert gap["repaired_bars"] > 0 and rest.alpaca.log.count("/v2/stocks/bars") >= 1
    symbols = replay.symbols_for("stocks")
    bars = stream_sim.minute_bars(SIM_DAY, symbols)
    expected = bars.filter(pc.and_(pc.greater_equal(bars["ts"], pa.scalar(start, bars["ts"].type)),
                                   pc.less(bars["ts"], pa.scalar(end, bars["ts"].type))))
    assert db_rows(stream_db, "SELECT count(DISTINCT (symbol, ts)) AS n FROM bars_1m")[0]["n"] == expected.num_rows
    # Every quote is there, once: the gap's own refilled from the REST history.
    quotes = stream_sim.quotes(SIM_DAY, symbols, start=start, end=end)
    with TickStore(stream_db) as store:
        stored = store.read_arrow("SELECT symbol, ts, seq, source FROM quotes")
    stored_keys = set(zip(stored["symbol"].to_pylist(), pc.cast(stored["ts"], pa.int64()).to_pylist(),
                          stored["seq"].to_pylist()))
    us = pc.multiply(pc.divide(pc.cast(quotes["ts"], pa.int64()), 1000), 1000).to_pylist()
    assert stored_keys == set(zip(quotes["symbol"].to_pylist(), us, quotes["seq"].to_pylist()))
    assert len(stored_keys) == stored.num_rows == quotes.num_rows
    refilled = stored["source"].to_pylist().count("alpaca_repair")
    assert 0 < refilled == gap["repaired_quotes"] and rest.alpaca.log.count("/v2/stocks/quotes") >= 1


def test_market_platform_stream_command(stream_db, tmp_path) -> None:
    # The replay streams the simulated market the backfills use (MARKET_SIM_STOCKS, MARKET_SIM_ACTIVITY).
    env = _dagster_env(tmp_path, stream_db)
    args = [str(BIN / "market-platform"), "stream", "--day", "2024-11-26", "--start", "11:00", "--end", "11:03"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)  # the report, printed once (and nothing else on stdout)
    assert summary["quotes"] == db_rows(stream_db, "SELECT count(*) AS n FROM quotes")[0]["n"] > 0
    # One line per minute, and none of alpaca-py's noise about the close at the end.
    for minute in ("16:00", "16:01", "16:02"):
        assert f"alpaca_stocks_iex 2024-11-26 {minute} UTC: quotes +" in done.stderr, done.stderr[-2000:]
    assert "sent 1000 (OK)" not in done.stderr and "done:" not in done.stderr
    # One simulated market: the streamed bars are the bars a backfill of the same market gets.
    stored = db_rows(stream_db, "SELECT symbol, ts, open, high, low, close, volume FROM bars_1m ORDER BY 1, 2")
    market = SimMarket(7, n_stocks=20, activity=0.02).minute_bars(SIM_DAY, sorted({r["symbol"] for r in stored}))
    backfilled = {(r["symbol"], r["ts"]): r for r in market.to_pylist()}
    assert stored and all(r["volume"] == backfilled[(r["symbol"], r["ts"])]["volume"] for r in stored)
    holiday = subprocess.run(args[:3] + ["2024-07-04"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert holiday.returncode == 2 and holiday.stderr.strip() == "error: 2024-07-04 is not a trading session (an exchange holiday)"


def test_live_tables_freshness_check_runs_on_every_live_table(stream_db) -> None:
    """The check's logic (newest row within its lag during a session) is tested in test_quality;
    here it runs as scheduled, on all three live tables, against a real database."""
    from market_platform.defs.resources import TickStoreResource
    from market_platform.defs.streaming.checks import live_tables_fresh, live_tables_freshness_job

    definitions = dg.Definitions(assets=list(LIVE_TABLES), asset_checks=[live_tables_fresh],
                                 jobs=[live_tables_freshness_job],
                                 resources={"tick_store": TickStoreResource(url=stream_db)})
    result = definitions.resolve_job_def("live_tables_freshness_job").execute_in_process()
    evaluations = result.get_asset_check_evaluations()
    assert result.success and {e.asset_key for e in evaluations} == {spec.key for spec in LIVE_TABLES}
    assert all("summary" in e.metadata for e in evaluations)


def test_the_stream_subscribes_to_the_universe_in_force_on_the_session(tick_store, sim) -> None:
    early = pa.concat_tables([sim.universe(c, date(2024, 11, 20)) for c in ("us_equities", "etf")])
    late = sim.universe("us_equities", date(2024, 11, 27))
    late = late.filter(pc.invert(pc.equal(late["symbol"], late["symbol"][0])))  # one ticker fewer
    tick_store.write_universe(early)
    tick_store.write_universe(late)
    assert tick_store.universe_symbols("2024-11-26") == sorted(early["symbol"].to_pylist())
    after = set(late["symbol"].to_pylist()) | set(sim.universe("etf", date(2024, 11, 20))["symbol"].to_pylist())
    assert tick_store.universe_symbols("2024-11-29") == sorted(after)
    assert tick_store.universe_symbols(date(2024, 11, 1)) == []  # before any snapshot: none, never a later one
    assert tick_store.universe_symbols("2024-11-29", categories=["etf"]) == sorted(
        sim.universe("etf", date(2024, 11, 20))["symbol"].to_pylist())
