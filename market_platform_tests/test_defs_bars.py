"""The bars slice through Dagster: universe snapshot -> minute bars from the vendors (the real clients
on the replay servers) -> rollups, on a real lake."""

import os
import subprocess
import sys
from datetime import date

import dagster as dg
import pandas as pd
import pyarrow.compute as pc
import pytest

from market_platform import calendar, settings
from market_platform.defs.bars.assets import bars_15m, bars_1d, bars_1h, bars_5m, bars_job, minute_bars
from market_platform.defs.partitions import categories_def, trading_days, trading_days_def
from market_platform.defs.resources import LakeResource
from market_platform.definitions import defs
from market_platform.errors import ConfigError
from market_platform.history import universe
from market_platform_tests.fixtures import HISTORY_START
from market_platform_tests.fixtures.history import replay_vendors

ASSETS = [minute_bars, bars_5m, bars_15m, bars_1h, bars_1d]
HALF_DAY = "2024-11-29"
#: What every source carries (the Flat Files have no VWAP).
COMMON = ["symbol", "ts", "open", "high", "low", "close", "volume", "trade_count"]
REST = {"ops": {"minute_bars": {"config": {"source": "rest"}}}}

SECRET_VARS = (
    "ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_FEED", "POLYGON_API_KEY",
    "POLYGON_S3_ACCESS_KEY", "POLYGON_S3_SECRET_KEY", "MARKET_DB_URL", "MARKET_LAKE_URL",
)


@pytest.fixture
def resources(tmp_path, replay):
    return {"vendors": replay_vendors(replay), "lake": LakeResource(url=str(tmp_path / "lake"))}


def discover_stocks(resources, day: str) -> None:
    for category in universe.STOCK_CATEGORIES:
        universe.discover(resources["vendors"].vendors(), resources["lake"].lake(), category, date.fromisoformat(day))


def test_definitions_load_with_no_secrets(monkeypatch, tmp_path):
    for name in SECRET_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MARKET_PLATFORM_HOME", str(tmp_path))
    from market_platform.history import vendors

    replays = dict(vendors._LOCAL)
    definitions = defs()
    dg.Definitions.validate_loadable(definitions)
    keys = {key.to_user_string() for key in definitions.resolve_all_asset_keys()}
    assert {"ticker_universe", "minute_bars", "bars_5m", "bars_15m", "bars_1h", "bars_1d", "top3000_universe",
            "vendor_bars_5m", "vendor_bars_1d"} <= keys
    assert definitions.resolve_job_def("bars_job").partitions_def == trading_days_def
    assert definitions.resolve_assets_def("ticker_universe").partitions_def == categories_def
    assert {"after_close_schedule"} <= {s.name for s in definitions.schedules}
    assert {"universe_change_sensor", "flatfiles_verify_sensor"} <= {s.name for s in definitions.sensors}
    # Loading must not have started a database, a replay server or written anything.
    assert not (tmp_path / "postgres").exists()
    assert vendors._LOCAL == replays


def test_trading_days_partitions_follow_the_exchange_calendar():
    keys = trading_days_def.get_partition_keys()
    assert keys[0] == HISTORY_START == os.environ["MARKET_HISTORY_START"]  # conftest sets it
    assert len([k for k in keys if k.startswith("2024")]) == 252
    for holiday in ("2024-07-04", "2024-12-25", "2025-01-09"):  # 2025-01-09: national day of mourning
        assert holiday not in keys
    assert HALF_DAY in keys and "2024-11-30" not in keys
    assert trading_days("2024-01-01").get_partition_keys()[0] == "2024-01-02"  # from the first session on


def test_history_start_defaults_to_last_january_and_honours_the_setting(monkeypatch):
    monkeypatch.delenv("MARKET_HISTORY_START")
    assert settings.history_start(date(2026, 12, 2)) == date(2025, 1, 1)
    assert settings.history_start(date(2027, 1, 4)) == date(2026, 1, 1)
    january = date(date.today().year - 1, 1, 1)
    assert trading_days().get_partition_keys()[0] == calendar.sessions(january, date(january.year, 1, 10))[0].isoformat()
    monkeypatch.setenv("MARKET_HISTORY_START", "2026-10-01")
    assert settings.history_start() == date(2026, 10, 1)
    assert trading_days().get_partition_keys()[:2] == ["2026-10-01", "2026-10-02"]
    for bad in ("2003-12-31", "2026-13-01", "next year", "2999-01-01"):
        monkeypatch.setenv("MARKET_HISTORY_START", bad)
        with pytest.raises(ConfigError, match=f"MARKET_HISTORY_START='{bad}': expected a day YYYY-MM-DD from "
                                              "2004-01-02"):
            settings.history_start()


def test_bars_job_builds_the_lake_and_a_rerun_gives_identical_files(resources, sim):
    lake = resources["lake"].lake()
    discover_stocks(resources, HALF_DAY)
    digests = []
    job = dg.Definitions(assets=ASSETS, jobs=[bars_job], resources=resources).resolve_job_def("bars_job")
    for _ in range(2):
        assert job.execute_in_process(partition_key=HALF_DAY).success
        digests.append({ds: lake.file_digest(ds, HALF_DAY)
                        for ds in ("minute_bars", "bars_5m", "bars_15m", "bars_1h", "bars_1d")})
    assert digests[0] == digests[1]

    day = date.fromisoformat(HALF_DAY)
    expected = sim.minute_bars(day, sim.stock_symbols(day))
    stored = lake.read_partition("minute_bars", HALF_DAY)
    assert stored.num_rows == expected.num_rows > 0
    assert stored.select(COMMON).equals(expected.select(COMMON))
    assert set(stored["source"].to_pylist()) == {"polygon_flatfiles"}  # an old session: the flat file
    # A half day: nothing after the 17:00 after-hours close.
    session = calendar.session(HALF_DAY)
    assert pc.max(stored["ts"]).as_py() < session.after_hours_close


def _pandas_rollup(minute: pd.DataFrame, rule: str) -> pd.DataFrame:
    """An independent resample: clock-aligned buckets in New York, daily = the New York date."""
    frame = minute.assign(local=minute["ts"].dt.tz_convert("America/New_York"), pv=minute["vwap"] * minute["volume"])
    grouped = frame.set_index("local").groupby("symbol").resample(rule)
    out = pd.DataFrame({
        "open": grouped["open"].first(), "high": grouped["high"].max(), "low": grouped["low"].min(),
        "close": grouped["close"].last(), "volume": grouped["volume"].sum(),
        "pv": grouped["pv"].sum(), "trade_count": grouped["trade_count"].sum(), "n": grouped["open"].count(),
    })
    out = out[out["n"] > 0].reset_index()
    out["vwap"] = out["pv"] / out["volume"]
    out["ts"] = out["local"].dt.tz_convert("UTC")
    return out.sort_values(["symbol", "ts"]).reset_index(drop=True)


@pytest.mark.parametrize("day", ["2024-11-26", HALF_DAY])
def test_rollups_equal_an_independent_pandas_resample(resources, day):
    discover_stocks(resources, day)
    result = dg.materialize(ASSETS, partition_key=day, resources=resources, run_config=REST)  # REST: with VWAP
    assert result.success
    lake = resources["lake"].lake()
    minute = lake.read_partition("minute_bars", day).to_pandas()
    for dataset, rule in (("bars_5m", "5min"), ("bars_15m", "15min"), ("bars_1h", "1h"), ("bars_1d", "1D")):
        ours = lake.read_partition(dataset, day).to_pandas()
        theirs = _pandas_rollup(minute, rule)
        assert len(ours) == len(theirs), dataset
        assert (ours["symbol"].to_numpy() == theirs["symbol"].to_numpy()).all(), dataset
        assert (ours["ts"].to_numpy() == theirs["ts"].to_numpy()).all(), dataset
        for column in ("open", "high", "low", "close", "volume", "trade_count"):
            assert (ours[column].to_numpy() == theirs[column].to_numpy()).all(), (dataset, column)
        assert ours["vwap"].to_numpy() == pytest.approx(theirs["vwap"].to_numpy(), rel=1e-12), dataset
        assert (ours["source"] == "polygon_rest").all()
    daily = lake.read_partition("bars_1d", day)
    midnight = pd.Timestamp(day, tz="America/New_York").tz_convert("UTC")
    assert set(daily["ts"].to_pylist()) == {midnight.to_pydatetime()}


def test_minute_bars_without_a_universe_snapshot_fails_clearly(resources):
    result = dg.materialize([minute_bars], partition_key="2024-11-26", resources=resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no stocks universe snapshot in the lake: discover it first" in str(failure.step_failure_data.error)


def test_the_platform_defines_its_objects_without_beta_or_preview_warnings_and_users_still_get_theirs():
    """Issue 11: nine BetaWarnings per backfill. The platform's knowing uses of beta and preview
    APIs are silenced where they are made; the same API in a user's code still warns."""
    code = "\n".join([
        "import warnings, dagster as dg",
        "warnings.simplefilter('error', dg.BetaWarning)",
        "warnings.simplefilter('error', dg.PreviewWarning)",
        "import market_platform.defs.bars.assets, market_platform.defs.bars.checks",
        "import market_platform.defs.metrics.assets, market_platform.defs.metrics.checks",
        "import market_platform.defs.streaming.assets",
        "from market_platform.definitions import defs",
        "defs().resolve_asset_graph()",
        "try:",
        "    dg.asset(backfill_policy=dg.BackfillPolicy.single_run())",
        "except dg.BetaWarning:",
        "    print('users warned')",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "users warned"
