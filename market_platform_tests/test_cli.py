"""The command lines a user types: `market-platform ...` and Dagster's own CLI, run for real."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from market_platform.storage.lake import Lake
from market_platform_tests.fixtures import HISTORY_START

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path, make_database) -> dict[str, str]:
    """A user's shell: no vendor keys, a fresh database, a private home, a small simulated market."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "POLYGON_", "MARKET_", "DAGSTER_"))}
    return {
        **base,
        "MARKET_PLATFORM_HOME": str(tmp_path / "home"),
        "MARKET_DB_URL": make_database("postgres"),
        "MARKET_SIM_STOCKS": "20",
        "MARKET_HISTORY_START": HISTORY_START,
    }


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_holiday_partition_is_refused_with_the_reason(env):
    result = run([str(BIN / "market-platform"), "materialize", "--select", "minute_bars", "--partition", "2024-07-04"], env)
    assert_one_error_line(result, "2024-07-04 is not a trading session", "holiday")


def test_an_unknown_dataset_is_refused(env):
    result = run([str(BIN / "market-platform"), "status", "--dataset", "minute_barz"], env)
    assert_one_error_line(result, "unknown lake dataset 'minute_barz'", "minute_bars")


def test_an_unreachable_database_is_one_line_without_the_password(env):
    env = {**env, "MARKET_DB_URL": "postgresql://postgres:s3cret-pw@127.0.0.1:1/market"}
    result = run([str(BIN / "market-platform"), "db", "status"], env)
    assert_one_error_line(result, "cannot reach the tick store", "127.0.0.1:1")
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_db_init_then_status(env, pg_server_variant):
    first = run([str(BIN / "market-platform"), "db", "init"], env)
    assert first.returncode == 0, first.stderr
    assert "migrations applied: 0" not in first.stdout
    again = run([str(BIN / "market-platform"), "db", "init"], env)
    assert "migrations applied: 0" in again.stdout
    status = json.loads(run([str(BIN / "market-platform"), "db", "status", "--json"], env).stdout)
    assert status["variant"] == pg_server_variant
    assert status["tables"]["bars_1m"]["rows"] == 0 and status["pending"] == []
    # For a person: the variant, the migrations as counted and named, a line per table.
    text = run([str(BIN / "market-platform"), "db", "status"], env).stdout
    lines = text.splitlines()
    assert f"variant      {pg_server_variant} (" in text
    assert f"migrations   {status['migrations_applied']} applied, the newest {status['latest_migration']}; none pending" in lines
    [bars] = [line.split() for line in lines if line.startswith("bars_1m ")]
    assert bars[1] == "0" and bars[4:6] == ["-", "-"]  # rows; no oldest or newest day: nothing stored


def test_demo_backfills_through_the_replay_servers(env, monkeypatch):
    result = run([str(BIN / "market-platform"), "demo", "--sessions", "1", "--history", "1", "--stocks", "20",
                  "--no-stream"], {**env, "POLYGON_API_KEY": "a-real-key-the-demo-must-not-use"})
    assert result.returncode == 0, result.stderr
    assert "built 2 sessions of 20 simulated stocks through the replay servers" in result.stdout
    assert "the local replay servers (no vendor keys set)" in result.stdout
    lake = Lake(str(Path(env["MARKET_PLATFORM_HOME"]) / "lake"))
    assert set(lake.datasets()) >= {"minute_bars", "bars_5m", "bars_15m", "bars_1h", "bars_1d", "universe",
                                    "vendor_bars_1d", "daily_metrics", "intraday_metrics", "return_features",
                                    "return_forecast"}
    sources = lake.query("SELECT DISTINCT source FROM minute_bars ORDER BY 1")["source"].to_pylist()
    assert sources == ["polygon_flatfiles", "polygon_rest"]  # two months ago from the files, yesterday from REST
    days = lake.dates("minute_bars")
    assert lake.dates("daily_metrics") == lake.dates("intraday_metrics") == days and len(days) == 2
    # Quiet: no warnings of Dagster's beta APIs, no embedded-PostgreSQL internals, no traceback.
    for noise in ("Warning", "PG_VERSION", "postmaster_info", "remaining pids", "Traceback"):
        assert noise not in result.stdout + result.stderr
    assert "market-platform db stop" in result.stdout and "a later command starts it again" in result.stdout
    # One simulated market: later commands of this home serve the demo's, not 3,000 stocks.
    from market_platform import settings

    monkeypatch.delenv("MARKET_SIM_STOCKS", raising=False)
    monkeypatch.delenv("MARKET_SIM_ACTIVITY", raising=False)
    monkeypatch.setenv("MARKET_PLATFORM_HOME", env["MARKET_PLATFORM_HOME"])
    assert settings.sim_market_size() == (20, 1.0)
    monkeypatch.setenv("MARKET_SIM_STOCKS", "30")
    assert settings.sim_market_size() == (30, 1.0)  # the variable still decides

    # In the UI: the metrics group materialized per session; every run with its target (asset
    # selection) and its code location (the Overview timeline shows only those).
    import dagster as dg

    monkeypatch.setenv("MARKET_DB_URL", env["MARKET_DB_URL"])
    with dg.DagsterInstance.from_config(str(Path(env["MARKET_PLATFORM_HOME"]) / "dagster")) as instance:
        with instance.event_log_storage.index_connection() as conn:  # run events: no wait for the disk each
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
        for name in ("daily_metrics", "intraday_metrics", "return_features", "return_forecast", "minute_bars"):
            assert instance.get_materialized_partitions(dg.AssetKey(name)) == set(days), name
        records = instance.get_run_records()
        assert len(records) >= 4  # two universes, then bars and metrics backfills
        for record in records:
            dagster_run = record.dagster_run
            assert dagster_run.asset_selection and record.start_time is not None, dagster_run.run_id
            origin = dagster_run.remote_job_origin
            assert (origin.location_name, origin.repository_origin.repository_name) == \
                ("market_platform", "__repository__")
        assert {dg.AssetKey("daily_metrics"), dg.AssetKey("return_forecast")} in [
            set(r.dagster_run.asset_selection) & {dg.AssetKey("daily_metrics"), dg.AssetKey("return_forecast")}
            for r in records]


def test_dagster_cli_validates_materializes_and_executes_from_the_repository_root(env, tmp_path):
    validate = run([str(BIN / "dagster"), "definitions", "validate"], env)
    assert validate.returncode == 0, validate.stderr[-2000:]

    lake = Lake(str(Path(env["MARKET_PLATFORM_HOME"]) / "lake"))
    # No vendor key: the replay servers start in the run's process. Dagster's default executor
    # starts a process per step (a second or more each): the first command, one step, keeps it;
    # the others (bars_job: nine steps) take the in-process one.
    in_process = ["--config-json", json.dumps({"execution": {"config": {"in_process": {}}}})]
    (tmp_path / "in_process.yaml").write_text("execution:\n  config:\n    in_process: {}\n")
    universe = run([str(BIN / "dagster"), "asset", "materialize", "-m", "market_platform.definitions",
                    "--select", "ticker_universe", "--partition", "us_equities"], env)
    assert universe.returncode == 0, universe.stderr[-2000:]
    assert lake.partitions("universe")[0]["category"] == "us_equities"
    materialize = run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "market_platform.definitions",
         "--select", "minute_bars", "--partition", "2024-11-29", *in_process], env)
    assert materialize.returncode == 0, materialize.stderr[-2000:]
    assert lake.count("minute_bars", "2024-11-29") > 0

    execute = run(
        [str(BIN / "dagster"), "job", "execute", "-m", "market_platform.definitions", "-j", "bars_job",
         "--tags", json.dumps({"dagster/partition": "2024-11-26"}), "-c", str(tmp_path / "in_process.yaml")], env)
    assert execute.returncode == 0, execute.stderr[-2000:]
    symbols = lake.query("SELECT count(DISTINCT symbol) AS n FROM minute_bars WHERE date = '2024-11-26'")["n"][0].as_py()
    assert lake.count("bars_1d", "2024-11-26") == symbols > 0


# -- configuration checked before any run (issue 11, items 7, 8 and 14) ------------------------


def invoke(args: list[str], env: dict[str, str | None]):
    from click.testing import CliRunner

    from market_platform.cli import main

    return CliRunner().invoke(main, args, env=env)


def assert_one_line(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_settings_that_would_fail_a_run_are_one_line_before_any_run(tmp_path, make_database, replay):
    home, url = tmp_path / "home", make_database("postgres")
    clean = {name: None for name in os.environ if name.startswith(("ALPACA_", "POLYGON_", "MARKET_", "DAGSTER_"))}
    base = {**clean, "MARKET_PLATFORM_HOME": str(home), "MARKET_DB_URL": url, "MARKET_HISTORY_START": HISTORY_START}
    (tmp_path / "a-file").write_text("not a lake")
    alpaca_only = {**base, **{k: v for k, v in replay.env(rates=True).items() if k.startswith("ALPACA_")}}
    for args, env, fragments in (
        (["discover", "us_equities"], {**base, "MARKET_DB_URL": "postgresql://postgres:pw@127.0.0.1:1/market"},
         ["cannot reach the tick store at postgresql://postgres:***@127.0.0.1:1/market", "check MARKET_DB_URL"]),
        (["backfill", "--from", "2024-11-25", "--to", "2024-11-26", "--tickers", "AAPL"],
         {**base, "MARKET_LAKE_URL": "ftp://files.example.com/lake"},
         ["lake URL 'ftp://files.example.com/lake' is not supported", "s3://bucket"]),
        (["discover", "etf"], {**base, "MARKET_LAKE_URL": str(tmp_path / "a-file")},
         [f"'{tmp_path / 'a-file'}' is a file: expected a directory", "MARKET_LAKE_URL"]),
        (["discover", "etf"], alpaca_only, ["Alpaca has no 'etf' category", "POLYGON_API_KEY"]),
        (["status"], {**base, "MARKET_LAKE_URL": str(tmp_path / "nowhere")},
         [f"no lake at '{tmp_path / 'nowhere'}'", "MARKET_LAKE_URL"]),
        (["status", "AAPL"], {**base, "MARKET_LAKE_URL": str(tmp_path / "a-file" / "lake")}, ["is a file"]),
    ):
        assert_one_line(invoke(args, env), *fragments)
    assert not home.exists() or not (home / "dagster").exists()
    with psycopg.connect(url) as conn:  # no run, so no Dagster table, was created
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
                            ).fetchone()[0] == 0


def test_a_command_that_starts_the_embedded_server_says_so(tmp_path):
    from market_platform.storage.timescale import stop_embedded

    env = {"MARKET_PLATFORM_HOME": str(tmp_path / "home"), "MARKET_DB_URL": None}
    try:
        started = invoke(["db", "init"], env)
        assert started.exit_code == 0, started.output
        assert started.stderr == (f"note: this command started the embedded PostgreSQL in {tmp_path / 'home' / 'postgres'}; "
                                  "it keeps running (`market-platform db stop` stops it)\n")
        again = invoke(["db", "status"], env)
        assert again.exit_code == 0 and again.stderr == ""
        assert invoke(["db", "stop"], env).stdout == "stopped\n"
        restarted = invoke(["db", "status"], env)
        assert restarted.exit_code == 0 and restarted.stderr.startswith("note: this command started the embedded")
    finally:
        stop_embedded(tmp_path / "home")
