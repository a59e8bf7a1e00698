"""Universe discovery through Dagster with the real clients on the replay servers: every category
with limits, Polygon and Alpaca, point-in-time snapshots that later discoveries leave alone, the
snapshot in force for a session, the top 3000 by dollar volume, and the universe change sensor."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pyarrow as pa
import pytest

from market_platform import calendar
from market_platform.defs.bars.assets import bars_15m, bars_1d, bars_1h, bars_5m, bars_job, minute_bars
from market_platform.defs.universe.assets import ticker_universe, top3000_universe
from market_platform.defs.universe.sensors import universe_change_sensor
from market_platform.errors import PartitionNotFoundError
from market_platform.history.universe import STOCK_CATEGORIES, in_force, session_symbols
from market_platform.schemas import CATEGORIES, UNIVERSE
from market_platform_tests.fixtures.history import replay_vendors
from market_platform_tests.fixtures.sim import SIM_DAY

BEFORE_META, AFTER_META = date(2012, 5, 1), date(2012, 6, 1)  # META listed on 2012-05-18, MA gone


def discover(resources, category: str, instance=None, **config) -> dg.ExecuteInProcessResult:
    return dg.materialize([ticker_universe], partition_key=category, resources=resources, instance=instance,
                          run_config={"ops": {"ticker_universe": {"config": config}}})


def metadata(result) -> dict:
    return result.get_asset_materialization_events()[0].event_specific_data.materialization.metadata


def stored(resources, category: str, day: date) -> tuple[pa.Table, pa.Table]:
    lake = resources["lake"].lake().read_partition("universe", {"category": category, "date": day})
    table = resources["tick_store"].store().read_arrow(
        "SELECT symbol FROM universe WHERE snapshot_date = %s AND category = %s ORDER BY symbol", [day, category])
    return lake, table


@pytest.mark.parametrize("category", CATEGORIES)
def test_discovery_by_every_category_with_a_limit(history_resources, sim, category):
    everything = sorted(sim.universe(category, SIM_DAY)["symbol"].to_pylist())
    result = discover(history_resources, category, as_of=SIM_DAY.isoformat(), limit=3)
    lake, table = stored(history_resources, category, SIM_DAY)
    assert lake.schema == UNIVERSE
    assert lake["symbol"].to_pylist() == table["symbol"].to_pylist() == everything[:3]
    assert set(lake["category"].to_pylist()) == {category}
    assert set(lake["snapshot_date"].to_pylist()) == {SIM_DAY}
    assert metadata(result)["rows"].value == len(everything[:3]) > 0
    assert metadata(result)["snapshot_date"].value == SIM_DAY.isoformat()


def test_a_full_discovery_lists_the_day_point_in_time(history_resources, sim):
    discover(history_resources, "us_equities", as_of=BEFORE_META.isoformat())
    lake, _ = stored(history_resources, "us_equities", BEFORE_META)
    assert lake["symbol"].to_pylist() == sim.symbols(BEFORE_META, category="us_equities")
    assert "META" not in lake["symbol"].to_pylist() and "MA" in lake["symbol"].to_pylist()


def test_alpaca_lists_todays_assets_and_refuses_what_it_does_not_have(replay, history_resources, sim):
    resources = {**history_resources, "vendors": replay_vendors(replay, provider="alpaca")}
    today = resources["vendors"].vendors().today()
    for category, limit in (("us_equities", 4), ("otc", None), ("crypto", 2)):
        discover(resources, category, limit=limit)
        lake, table = stored(resources, category, today)
        assert lake["symbol"].to_pylist() == table["symbol"].to_pylist()
        assert set(lake["source"].to_pylist()) == {"alpaca_rest"}
    replay_day = replay.clock().astimezone(calendar.NEW_YORK).date()
    assert stored(resources, "crypto", today)[0]["symbol"].to_pylist() == sim.symbols(replay_day, category="crypto")[:2]
    for category, config, message in (("etf", {}, "Alpaca has no 'etf' category"),
                                      ("us_equities", {"as_of": "2024-11-26"}, "Alpaca lists only today's assets")):
        result = dg.materialize([ticker_universe], partition_key=category, resources=resources, raise_on_error=False,
                                run_config={"ops": {"ticker_universe": {"config": config}}})
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert message in str(failure.step_failure_data.error)
    assert not resources["lake"].lake().has_partition("universe", {"category": "etf", "date": today})


def test_a_past_snapshot_is_unchanged_by_later_discoveries_and_new_tickers_get_history(history_resources, replay, sim):
    instance = dg.DagsterInstance.ephemeral()
    lake = history_resources["lake"].lake()
    spec = {"category": "us_equities", "date": BEFORE_META.isoformat()}
    first = discover(history_resources, "us_equities", instance, as_of=BEFORE_META.isoformat())
    assert metadata(first)["previous_snapshot"].value == "none"
    digest, rows = lake.file_digest("universe", spec), stored(history_resources, "us_equities", BEFORE_META)[1]

    later = discover(history_resources, "us_equities", instance, as_of=AFTER_META.isoformat())
    assert metadata(later)["added_sample"].value == "META" and metadata(later)["removed"].value == 1
    again = discover(history_resources, "us_equities", instance, as_of=BEFORE_META.isoformat(), limit=2)
    assert metadata(again)["kept_existing"].value is True
    assert lake.file_digest("universe", spec) == digest
    assert stored(history_resources, "us_equities", BEFORE_META)[1].equals(rows)

    context = dg.build_sensor_context(instance=instance, resources={"lake": history_resources["lake"]})
    requests = universe_change_sensor(context)
    assert len(requests) == 26  # 252 sessions before 2012-06-01, ten per run
    assert {r.run_config["ops"]["minute_bars"]["config"]["tickers"][0] for r in requests} == {"META"}
    last = requests[-1]
    assert last.tags["dagster/asset_partition_range_end"] == calendar.default_calendar().previous_session(AFTER_META).isoformat()
    assert universe_change_sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor,
                                                          resources={"lake": history_resources["lake"]})).skip_message

    # The newest of those runs: META's bars merge into sessions the universe had without it.
    days = calendar.sessions(last.tags["dagster/asset_partition_range_start"], last.tags["dagster/asset_partition_range_end"])
    definitions = dg.Definitions(assets=[minute_bars, bars_5m, bars_15m, bars_1h, bars_1d], jobs=[bars_job],
                                 resources=history_resources)
    result = definitions.resolve_job_def("bars_job").execute_in_process(run_config=last.run_config, tags=last.tags)
    assert result.success
    for day in days:
        bars = lake.read_partition("minute_bars", day)
        assert bars["symbol"].unique().to_pylist() == ["META"]
        assert bars.num_rows == sim.minute_bars(day, ["META"]).num_rows > 0


def test_the_snapshot_in_force_for_a_session(lake):
    def snapshot(category, day, symbols):
        rows = [{"symbol": s, "category": category, "active": True, "snapshot_date": day, "source": "sim"}
                for s in symbols]
        lake.write_partition("universe", {"category": category, "date": day}, pa.Table.from_pylist(rows, UNIVERSE))

    with pytest.raises(PartitionNotFoundError, match="discover it first"):
        session_symbols(lake, SIM_DAY)
    snapshot("us_equities", date(2024, 6, 3), ["AAPL", "OLD"])
    snapshot("us_equities", date(2024, 11, 1), ["AAPL", "NEW"])
    snapshot("etf", date(2024, 11, 25), ["SPY"])
    assert session_symbols(lake, date(2024, 11, 26)) == (["AAPL", "NEW", "SPY"],
                                                         {"us_equities": "2024-11-01", "etf": "2024-11-25"})
    # Never a later snapshot: without a vendor to ask, the error names the day and the command.
    with pytest.raises(PartitionNotFoundError, match=r"no etf universe snapshot on or before 2024-10-31 .*"
                                                     r"earliest is 2024-11-25.*discover etf --as-of 2024-10-31"):
        session_symbols(lake, date(2024, 10, 31))
    assert in_force([date(2024, 11, 25)], date(2024, 10, 31)) is None
    assert in_force([], SIM_DAY) is None


def test_a_session_before_every_snapshot_takes_one_as_of_its_day_from_the_vendor(history_resources, sim):
    """The exact case of issue 11: a 2024-11-26 backfill when the lake holds only 2026-12-01 snapshots."""
    lake, late = history_resources["lake"].lake(), date(2026, 12, 1)
    for category in STOCK_CATEGORIES:
        lake.write_partition("universe", {"category": category, "date": late}, sim.universe(category, late))
    result = dg.materialize([minute_bars], partition_key="2024-11-26", resources=history_resources)
    assert metadata(result)["universe_snapshots"].value == {"us_equities": "2024-11-26", "etf": "2024-11-26"}
    for category in STOCK_CATEGORIES:
        taken = lake.read_partition("universe", {"category": category, "date": "2024-11-26"})
        assert taken["symbol"].to_pylist() == sim.universe(category, SIM_DAY)["symbol"].to_pylist()
    assert set(lake.read_partition("minute_bars", "2024-11-26")["symbol"].to_pylist()) <= set(
        sim.stock_symbols(SIM_DAY))

    # A ticker listed later (META, 2012-05-18) stays out of a session before its listing.
    lake.write_partition("universe", {"category": "us_equities", "date": AFTER_META},
                         sim.universe("us_equities", AFTER_META))
    with pytest.raises(PartitionNotFoundError, match="on or before 2012-05-01"):
        session_symbols(lake, date(2012, 5, 1))
    symbols, used = session_symbols(lake, date(2012, 5, 1), vendors=history_resources["vendors"].vendors())
    assert "META" not in symbols and "MA" in symbols
    assert used["us_equities"] == "2012-05-01"


def test_top3000_ranks_by_dollar_volume_over_twenty_sessions(history_resources, sim):
    as_of = date(2024, 11, 27)
    discover(history_resources, "us_equities", as_of=as_of.isoformat())
    result = dg.materialize([top3000_universe], resources=history_resources, run_config={
        "ops": {"top3000_universe": {"config": {"as_of": as_of.isoformat(), "size": 5}}}})
    assert result.success
    top = history_resources["lake"].lake().read_partition("top3000", as_of).sort_by("rank")

    sessions = [d for d in calendar.sessions("2024-10-01", as_of) if d < as_of][-20:]
    symbols = sim.symbols(as_of, category="us_equities")
    totals = dict.fromkeys(symbols, 0.0)
    for day in sessions:
        daily = sim.daily_bars(day, symbols).to_pylist()
        for bar in daily:
            totals[bar["symbol"]] += bar["close"] * bar["volume"] / 20
    expected = sorted(symbols, key=lambda s: (-totals[s], s))[:5]
    assert top["symbol"].to_pylist() == expected
    assert top["rank"].to_pylist() == [1, 2, 3, 4, 5]
    assert top["dollar_volume"].to_pylist() == pytest.approx([totals[s] for s in expected], rel=1e-9)
    assert set(top["snapshot_date"].to_pylist()) == {as_of}
