"""`market-platform discover | backfill | status`, run for real against the replay servers of the
`replay` fixture (the environment `market-platform replay-server` prints): one clear error line and
nothing written for bad input, a backfill visible in Dagster, and a backfill killed with SIGKILL
that a second run completes exactly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow.compute as pc
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from market_platform.storage.lake import Lake

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).parent / "market-platform")]
COMMON = ["symbol", "ts", "open", "high", "low", "close", "volume", "trade_count"]


def run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def lake_of(env: dict[str, str]) -> Lake:
    return Lake(str(Path(env["MARKET_PLATFORM_HOME"]) / "lake"))


def tables_in(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()[0]


def assert_refused(result: subprocess.CompletedProcess, env: dict[str, str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (Path(env["MARKET_PLATFORM_HOME"]) / "lake").exists()
    assert tables_in(env["MARKET_DB_URL"]) == 0  # no tick store schema, no Dagster run storage


@pytest.mark.parametrize("args, fragments", [
    (["discover", "bonds"], ["unknown category 'bonds'", "us_equities", "top3000"]),
    (["discover", "etf", "--limit", "0"], ["limit 0: expected a positive number"]),
    (["discover", "etf", "--as-of", "2099-01-02"], ["--as-of 2099-01-02: expected a day from 2004-01-02", "to today"]),
    (["discover", "us_equities", "--as-of", "1800-01-01"], ["--as-of 1800-01-01: expected a day from 2004-01-02"]),
    (["status", ""], ["TICKER '': expected a ticker symbol"]),
    (["backfill", "--from", "2024-11-29", "--to", "2024-11-25"], ["--from 2024-11-29 is after --to 2024-11-25"]),
    (["backfill", "--from", "2024-11-28", "--to", "2024-11-28"], ["2024-11-28 is not a trading session (an exchange holiday)"]),
    (["backfill", "--from", "2024-11-30", "--to", "2024-12-01"], ["no trading session from 2024-11-30 to 2024-12-01"]),
    (["backfill", "--from", "2024-02-30", "--to", "2024-03-01"], ["'2024-02-30' is not a date"]),
    (["backfill", "--from", "2024-11-25", "--to", "2024-11-26", "--timeframes", "1m,2m"], ["--timeframes '1m,2m'"]),
    (["backfill", "--from", "2024-11-25", "--to", "2024-11-26", "--tickers", "AAPL,ZZZZ"],
     ["Polygon does not list ZZZZ on 2024-11-25 or 2024-11-26"]),
    (["backfill", "--from", "2024-11-25", "--to", "2024-11-26"], ["no stocks universe snapshot", "discover"]),
])
def test_bad_input_is_one_error_line_and_writes_nothing(history_env, args, fragments):
    assert_refused(run(args, history_env), history_env, *fragments)


@pytest.mark.parametrize("args, fragments", [
    (["backfill", "--from", "2023-12-27", "--to", "2024-01-03"],
     ["session 2023-12-27 is before the history start 2024-01-02", "set MARKET_HISTORY_START=2023-12-27"]),
    (["materialize", "--select", "minute_bars", "--partition", "2023-12-29"],
     ["session 2023-12-29 is before the history start 2024-01-02"]),
])
def test_sessions_before_the_history_start_are_refused(history_env, args, fragments):
    env = {**history_env, "MARKET_HISTORY_START": "2024-01-02"}
    assert_refused(run(args, env), env, *fragments)


def test_a_rejected_key_is_named_as_the_problem_and_never_shown(history_env):
    env = {**history_env, "POLYGON_API_KEY": "sk-live-9d8c7b6a5f4e"}
    result = run(["backfill", "--from", "2024-11-25", "--to", "2024-11-25", "--tickers", "AAPL"], env)
    assert_refused(result, env, "Polygon rejected the credentials", "POLYGON_API_KEY")
    assert "sk-live-9d8c7b6a5f4e" not in result.stdout + result.stderr


def test_a_run_that_fails_inside_dagster_is_one_line_and_writes_nothing(history_env, sim):
    """Issue 11: a rejected key inside a run printed 100-200 lines of step tracebacks, and a hint
    to run the command again that could not help."""
    env = {**history_env, "POLYGON_API_KEY": "sk-live-9d8c7b6a5f4e"}
    lake = lake_of(env)
    lake.write_partition("universe", {"category": "us_equities", "date": "2024-11-22"},
                         sim.universe("us_equities", "2024-11-22"))
    result = run(["backfill", "--from", "2024-11-25", "--to", "2024-11-25", "--source", "polygon_rest"], env)
    assert result.returncode == 2, result.stderr
    # The progress bar's label and the error line; no warning (Dagster's BetaWarnings: issue 11).
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and len(lines) <= 2 and "Traceback" not in result.stderr, result.stderr
    assert "Polygon rejected the credentials" in errors[0] and "check POLYGON_API_KEY" in errors[0]
    assert "resume" not in errors[0] and "sk-live-9d8c7b6a5f4e" not in result.stdout + result.stderr
    assert lake.partitions("minute_bars") == [] and lake.staged("minute_bars", "2024-11-25") == []


def test_discover_backfill_and_status(history_env, sim, monkeypatch):
    env = history_env
    discovered = run(["discover", "us_equities", "--as-of", "2024-11-25", "--limit", "4"], env)
    assert discovered.returncode == 0, discovered.stderr
    assert "us_equities  2024-11-25:      4 tickers, the first snapshot" in discovered.stdout
    backfill = run(["backfill", "--from", "2024-11-25", "--to", "2024-11-27", "--timeframes", "1m,5m"], env)
    assert backfill.returncode == 0, backfill.stderr
    assert "3 sessions (2024-11-25 to 2024-11-27), timeframes 1m,5m, 1 runs (in-process)" in backfill.stdout
    assert "Warning" not in backfill.stdout + backfill.stderr  # none of Dagster's nine BetaWarnings (issue 11)

    lake = lake_of(env)
    symbols = sorted(sim.symbols("2024-11-25", category="us_equities"))[:4]
    for day in ("2024-11-25", "2024-11-26", "2024-11-27"):
        stored = lake.read_partition("minute_bars", day)
        assert stored.select(COMMON).equals(sim.minute_bars(day, symbols).select(COMMON))
        assert set(stored["source"].to_pylist()) == {"polygon_flatfiles"}
        assert lake.count("bars_1d", day) == 4
        assert set(lake.read_partition("vendor_bars_5m", day)["source"].to_pylist()) == {"polygon_rest"}

    status = run(["status"], env)
    assert status.returncode == 0, status.stderr
    assert "us_equities      1 days, 2024-11-25 to 2024-11-25; latest 4 tickers" in status.stdout
    rows = lake.query("SELECT count(*) AS n FROM minute_bars")["n"][0].as_py()
    assert re.search(rf"minute_bars +3  2024-11-25 \d\d:\d\d  2024-11-2[78] \d\d:\d\d +{rows:,} +0  "
                     rf"polygon_flatfiles {rows:,}", status.stdout), status.stdout
    ticker = run(["status", symbols[0]], env)
    assert ticker.returncode == 0, ticker.stderr
    assert re.search(r"minute_bars +3 .* +0  polygon_flatfiles", ticker.stdout), ticker.stdout

    monkeypatch.setenv("MARKET_DB_URL", env["MARKET_DB_URL"])  # the instance's storage (PlatformStorage)
    instance = dg.DagsterInstance.from_config(str(Path(env["MARKET_PLATFORM_HOME"]) / "dagster"))
    [record] = instance.get_backfills()
    assert record.status == BulkActionStatus.COMPLETED_SUCCESS and record.title.startswith("backfill 2024-11-25")
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": record.backfill_id}))
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    # The run's target as the UI shows it, and the code location the Overview timeline groups it by.
    assert runs[0].asset_selection == {dg.AssetKey(k) for k in ("minute_bars", "bars_5m", "bars_15m", "bars_1h",
                                                                 "bars_1d", "vendor_bars_5m")}
    assert runs[0].remote_job_origin.location_name == "market_platform"
    assert runs[0].run_config["execution"] == {"config": {"in_process": {}}}
    instance.dispose()


def test_a_backfill_killed_midway_and_rerun_ends_exact(history_env, replay, sim, monkeypatch):
    env, lake = history_env, lake_of(history_env)
    assert run(["discover", "us_equities", "--as-of", "2024-11-26"], env).returncode == 0
    replay.polygon.faults.delay(0.3, prefix="/v2/aggs")
    process = subprocess.Popen([*CLI, "backfill", "--from", "2024-11-26", "--to", "2024-11-26", "--source", "rest",
                                "--stage-every", "2"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    progress = Path(env["MARKET_PLATFORM_HOME"]) / "lake/_staging/backfill_progress/dataset=minute_bars/date=2024-11-26"
    try:
        deadline = time.monotonic() + 120
        while not list(progress.glob("*.parquet")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    spec = {"dataset": "minute_bars", "date": "2024-11-26"}
    staged = {s for name in lake.staged("backfill_progress", spec)
              if name in lake.staged("minute_bars", "2024-11-26")
              for s in lake.read_staged("backfill_progress", spec, name)["symbol"].to_pylist()}
    symbols = sim.symbols("2024-11-26", category="us_equities")
    assert 2 <= len(staged) < len(symbols)  # killed midway, some tickers staged
    assert not lake.has_partition("minute_bars", "2024-11-26")

    replay.reset()
    started = time.monotonic()  # requests of the killed run may still be answered (and logged) after this
    rerun = run(["backfill", "--from", "2024-11-26", "--to", "2024-11-26", "--source", "rest"], env)
    assert rerun.returncode == 0, rerun.stderr
    asked = [e.path.split("/")[4] for e in replay.polygon.log.entries("/v2/aggs") if e.at > started]
    assert sorted(asked) == sorted(set(symbols) - staged)  # only what was missing, once each
    stored = lake.read_partition("minute_bars", "2024-11-26")
    assert stored.select(COMMON).equals(sim.minute_bars("2024-11-26", symbols).select(COMMON))
    keys = stored.select(["symbol", "ts"]).group_by(["symbol", "ts"]).aggregate([([], "count_all")])
    assert keys.num_rows == stored.num_rows and pc.all(pc.equal(stored["source"], "polygon_rest")).as_py()
    assert lake.staged("minute_bars", "2024-11-26") == []

    assert "lost its process: marked failed" in rerun.stderr  # the killed backfill is not left "in progress"
    monkeypatch.setenv("MARKET_DB_URL", env["MARKET_DB_URL"])
    instance = dg.DagsterInstance.from_config(str(Path(env["MARKET_PLATFORM_HOME"]) / "dagster"))
    statuses = sorted(b.status.value for b in instance.get_backfills())
    assert statuses == ["COMPLETED_SUCCESS", "FAILED"]
    assert sorted(r.status.value for r in instance.get_runs() if "dagster/backfill" in r.tags) == ["FAILURE", "SUCCESS"]
    instance.dispose()
