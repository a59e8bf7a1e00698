"""The metrics assets through Dagster, and the whole definitions loading with them."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from market_platform.analytics import forecast, metrics
from market_platform.defs.metrics.assets import daily_metrics, intraday_metrics, return_features, return_forecast
from market_platform.defs.resources import LakeResource
from market_platform.storage.lake import Lake
from market_platform_tests.fixtures.metrics import METRICS_DAYS

ASSETS = [daily_metrics, intraday_metrics, return_features, return_forecast]


@pytest.fixture
def lake(metrics_lake, tmp_path) -> Lake:
    shutil.copytree(metrics_lake.url, tmp_path / "lake")
    return Lake(tmp_path / "lake")


def test_metrics_assets_materialize_in_order(lake):
    resources = {"lake": LakeResource(url=str(lake.url))}
    results = {}
    for day in METRICS_DAYS:
        result = dg.materialize(ASSETS, partition_key=day.isoformat(), resources=resources)
        assert result.success
        events = [e.materialization for e in result.get_asset_materialization_events()]
        results[day] = {m.asset_key.to_user_string(): m.metadata for m in events}
    for dataset in (metrics.DAILY_METRICS, metrics.INTRADAY_METRICS, forecast.RETURN_FEATURES, forecast.RETURN_FORECAST):
        assert lake.dates(dataset) == [d.isoformat() for d in METRICS_DAYS]
    first, last = results[METRICS_DAYS[0]], results[METRICS_DAYS[-1]]
    assert first["return_forecast"]["trained"].value is False
    assert lake.count(forecast.RETURN_FORECAST, METRICS_DAYS[0]) == 0
    meta = last["return_forecast"]
    assert meta["trained"].value is True and meta["train_rows"].value > 0
    assert "r2_oos" in meta and isinstance(meta["beats_baseline"].value, bool)
    assert meta["train_sessions"].value.startswith(METRICS_DAYS[0].isoformat())
    assert last["daily_metrics"]["movers_chart"].value.startswith("![movers 2024-11-29](data:image/png;base64,")
    movers = last["daily_metrics"]["movers"].value  # a table: the UI shows it in place
    gainers, losers = metrics.movers(lake.read_partition(metrics.DAILY_METRICS, METRICS_DAYS[-1]), n=10)
    assert [(r.data["side"], r.data["symbol"]) for r in movers.records] == \
        [("gainer", s) for s in gainers["symbol"].to_pylist()] + [("loser", s) for s in losers["symbol"].to_pylist()]
    assert movers.records[0].data["change_pct"] == round(gainers["change"][0].as_py() * 100, 2) > 0
    assert last["daily_metrics"]["rows"].value == lake.count(metrics.DAILY_METRICS, METRICS_DAYS[-1])

    # Idempotent: a rerun writes byte-identical files.
    digest = lake.file_digest(metrics.DAILY_METRICS, METRICS_DAYS[-1])
    assert dg.materialize([daily_metrics], partition_key=METRICS_DAYS[-1].isoformat(), resources=resources).success
    assert lake.file_digest(metrics.DAILY_METRICS, METRICS_DAYS[-1]) == digest


def test_definitions_load_with_the_metrics(monkeypatch):
    for name in ("MARKET_DB_URL", "MARKET_ALERTS_WEBHOOK_URL", "MARKET_ALERTS_FILE"):
        monkeypatch.delenv(name, raising=False)
    from market_platform.definitions import defs

    definitions = defs()
    graph = definitions.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"daily_metrics", "intraday_metrics", "return_features", "return_forecast"} <= keys
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {("minute_bars", "ohlc_consistent"), ("minute_bars", "no_duplicate_bars"),
            ("minute_bars", "session_complete"), ("minute_bars", "sources_agree"),
            ("quotes_daily", "quotes_not_crossed")} <= checks
    assert definitions.resolve_sensor_def("alerts_sensor") is not None
    node = graph.get(dg.AssetKey("daily_metrics"))
    assert node.automation_condition is not None
    # The previous session is an input of daily_metrics: Friday 2024-11-29 reads Wednesday too.
    mapped = graph.get_parent_partition_keys_for_child(
        "2024-11-29", dg.AssetKey("minute_bars"), dg.AssetKey("daily_metrics"))
    assert sorted(mapped.partitions_subset.get_partition_keys()) == ["2024-11-27", "2024-11-29"]
