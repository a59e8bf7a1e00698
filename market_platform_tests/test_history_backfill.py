"""Backfills of bars through Dagster with the real clients on the replay servers: hybrid sources
that agree bar for bar, resumption after a failure, 429 storms, 401/403, a 5xx in a page sequence,
idempotent reruns, late corrections, merged tickers, the vendor's own timeframes, and the
after-close schedule and flat-file verification that run them unattended."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from market_platform import calendar
from market_platform.defs.bars.assets import (
    bars_1d,
    bars_5m,
    bars_15m,
    bars_1h,
    minute_bars,
    recorded_session,
    vendor_bars_1d,
    vendor_bars_5m,
)
from market_platform.defs.bars.checks import ohlc_consistent
from market_platform.defs.bars.schedules import after_close_schedule, verification, verify_requests
from market_platform.errors import VendorNotFoundError, VendorUnavailableError
from market_platform.history import universe
from market_platform.history.bars import PROGRESS_DATASET, backfill_session
from market_platform.history.vendors import Vendors
from market_platform_tests.fixtures.history import replay_vendors
from market_platform_tests.fixtures.sim import SIM_DAY, SIM_HALF_DAY

COMMON = ["symbol", "ts", "open", "high", "low", "close", "volume", "trade_count"]
ROLLUPS = [bars_5m, bars_15m, bars_1h, bars_1d]
UTC = timezone.utc


def stocks(sim, day: date) -> list[str]:
    return sim.stock_symbols(day)


def with_universe(resources, day: date = SIM_DAY) -> None:
    """Stock universe snapshots of `day` in the resources' lake (what `discover` leaves)."""
    vendors, lake = resources["vendors"].vendors(), resources["lake"].lake()
    for category in universe.STOCK_CATEGORIES:
        universe.discover(vendors, lake, category, day)


def build(resources, day, *assets, raise_on_error=True, **config) -> dg.ExecuteInProcessResult:
    assets = assets or (minute_bars,)
    return dg.materialize(list(assets), partition_key=str(day), resources=resources, raise_on_error=raise_on_error,
                          run_config={"ops": {"minute_bars": {"config": config}}} if config else None)


def by_session(result, day) -> dict:
    """What the materialization of `day`'s minute_bars recorded (source, etag, ...)."""
    event = next(e for e in result.get_asset_materialization_events()
                 if e.asset_key == minute_bars.key and e.partition == str(day))
    return recorded_session(event.event_specific_data.materialization.metadata)


def no_duplicates(table: pa.Table) -> bool:
    keys = table.select(["symbol", "ts"]).group_by(["symbol", "ts"]).aggregate([([], "count_all")])
    return keys.num_rows == table.num_rows


@pytest.fixture
def lakes(tmp_path, history_resources):
    """Resources with a stock universe, and a second lake for comparisons."""
    with_universe(history_resources)
    return history_resources


def test_flat_files_rest_and_alpaca_give_identical_bars(lakes, replay, sim, tmp_path):
    from market_platform.defs.resources import LakeResource

    day = SIM_HALF_DAY
    flat = build(lakes, day)  # an old session whose flat file is published: Flat Files
    assert by_session(flat, day)["source"] == "polygon_flatfiles"
    assert by_session(flat, day)["etag"] == replay.flatfiles.etag(day)
    ours = lakes["lake"].lake().read_partition("minute_bars", day)
    assert set(ours["source"].to_pylist()) == {"polygon_flatfiles"}
    assert ours.select(COMMON).equals(sim.minute_bars(day, stocks(sim, day)).select(COMMON))

    others = {}
    for name, vendors, source in (("rest", lakes["vendors"], "rest"),
                                  ("alpaca", replay_vendors(replay, provider="alpaca"), "rest")):
        lake = LakeResource(url=str(tmp_path / name))
        resources = {**lakes, "lake": lake, "vendors": vendors}
        result = build(resources, day, source=source, tickers=stocks(sim, day))
        others[name] = lake.lake().read_partition("minute_bars", day)
        assert by_session(result, day)["source"] == set(others[name]["source"].to_pylist()).pop()
    assert set(others["rest"]["source"].to_pylist()) == {"polygon_rest"}
    assert set(others["alpaca"]["source"].to_pylist()) == {"alpaca_rest"}
    assert ours.select(COMMON).equals(others["rest"].select(COMMON))
    assert others["rest"].select(COMMON + ["vwap"]).equals(others["alpaca"].select(COMMON + ["vwap"]))


def test_sources_by_age_and_publication(replay):
    vendors = replay_vendors(replay).vendors()
    recent = calendar.default_calendar().last_completed_session(datetime.now(UTC))
    assert vendors.choose(SIM_DAY) == "polygon_flatfiles"                  # old and published
    assert vendors.choose(date(2024, 10, 1)) == "polygon_rest"             # old, no file on this replay
    assert vendors.choose(recent) == "polygon_rest"                        # recent
    assert vendors.choose(SIM_DAY, "rest") == "polygon_rest"
    assert vendors.choose(SIM_DAY, timeframe="5m") == "polygon_rest"       # the files carry 1m and 1d only
    young = Vendors(polygon=vendors.polygon, flatfiles=vendors.flatfiles, flatfiles_after_days=100_000)
    assert young.choose(SIM_DAY) == "polygon_rest"                         # the threshold is configurable
    with pytest.raises(VendorNotFoundError, match="not published yet"):
        vendors.choose(date(2024, 10, 1), "polygon_flatfiles")


def test_a_recent_session_comes_from_rest(lakes, sim):
    day = calendar.default_calendar().last_completed_session(datetime.now(UTC))
    result = build(lakes, day)
    assert by_session(result, day)["source"] == "polygon_rest"
    stored = lakes["lake"].lake().read_partition("minute_bars", day)
    assert stored.select(COMMON).equals(sim.minute_bars(day, universe.session_symbols(lakes["lake"].lake(), day)[0])
                                        .select(COMMON))


def test_a_failed_run_resumes_with_only_the_missing_tickers(lakes, replay, sim):
    vendors, lake = replay_vendors(replay, workers=2, retry_attempts=2).vendors(), lakes["lake"].lake()
    symbols = stocks(sim, SIM_DAY)
    replay.polygon.faults.fail("/v2/aggs/ticker/TSLA/", 500, times=10)
    with pytest.raises(VendorUnavailableError, match="TSLA"):
        backfill_session(vendors, lake, SIM_DAY, symbols, source="rest", stage_every=3)
    staged = set(pa.concat_tables([lake.read_staged(PROGRESS_DATASET, {"dataset": "minute_bars", "date": SIM_DAY})])
                 .column("symbol").to_pylist())
    assert 3 <= len(staged) < len(symbols) and "TSLA" not in staged
    assert not lake.has_partition("minute_bars", SIM_DAY)  # nothing half-written

    replay.reset()
    result = backfill_session(vendors, lake, SIM_DAY, symbols, source="rest", stage_every=3)
    asked = {e.path.split("/")[4] for e in replay.polygon.log.entries("/v2/aggs")}
    assert asked == set(symbols) - staged
    assert (result.resumed, result.fetched) == (len(staged), len(symbols) - len(staged))
    stored = lake.read_partition("minute_bars", SIM_DAY)
    assert stored.select(COMMON).equals(sim.minute_bars(SIM_DAY, symbols).select(COMMON)) and no_duplicates(stored)
    assert lake.staged("minute_bars", SIM_DAY) == []


def test_a_429_storm_completes_without_exceeding_the_configured_rate(lakes, replay, sim):
    replay.set_rate_limit(6, 1.0)  # the vendor allows less than the client is configured for
    # A one-second window scales a plan's minute down: the margin absorbs this machine's scheduling jitter.
    resources = {**lakes, "vendors": replay_vendors(replay, polygon_rate_limit=10, rate_period_seconds=1.0,
                                                    rate_margin_seconds=0.3, workers=4, retry_attempts=30,
                                                    retry_backoff_seconds=0.05)}
    build(resources, SIM_DAY, source="rest")
    assert replay.polygon.log.count("/v2/aggs", statuses={429}) > 0
    assert replay.polygon.log.max_in_window(1.0, "/v2/aggs") <= 10
    stored = lakes["lake"].lake().read_partition("minute_bars", SIM_DAY)
    assert stored.select(COMMON).equals(sim.minute_bars(SIM_DAY, stocks(sim, SIM_DAY)).select(COMMON))


@pytest.mark.parametrize("key, message", [("wrong-key-7f3a9c", "rejected the credentials"),
                                          ("replay-polygon-free-plan", "refused")])
def test_401_and_403_fail_the_run_clearly_without_the_key(lakes, replay, key, message):
    resources = {**lakes, "vendors": replay_vendors(replay, polygon_api_key=key)}
    result = build(resources, SIM_DAY, raise_on_error=False, source="rest")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    error = failure.step_failure_data.error
    while error.cause is not None:
        error = error.cause
    assert message in error.message and "Polygon" in error.message
    assert key not in "".join(str(e) for e in result.all_events) or key == "replay-polygon-free-plan"
    assert not lakes["lake"].lake().has_partition("minute_bars", SIM_DAY)


def test_a_5xx_in_the_middle_of_a_page_sequence_does_not_break_the_backfill(lakes, replay, sim):
    replay.polygon.faults.fail_page("/v2/aggs", 3, 503, times=2)
    resources = {**lakes, "vendors": replay_vendors(replay, polygon_page_limit=200, workers=1)}
    build(resources, SIM_DAY, source="rest", tickers=["AAPL", "MSFT"])
    assert replay.polygon.log.count("/v2/aggs", statuses={503}) == 2
    assert replay.polygon.log.count("/v2/aggs", statuses={200}) > 6  # several pages per ticker
    stored = lakes["lake"].lake().read_partition("minute_bars", SIM_DAY)
    assert stored.select(COMMON).equals(sim.minute_bars(SIM_DAY, ["AAPL", "MSFT"]).select(COMMON))


def test_reruns_are_idempotent_and_a_republished_file_corrects_the_session(lakes, replay, sim, corrected_day):
    day, lake = corrected_day, lakes["lake"].lake()
    instance = dg.DagsterInstance.ephemeral()
    assets = [minute_bars, *ROLLUPS]
    first = dg.materialize(assets, partition_key=str(day), resources=lakes, instance=instance,
                           run_config={"ops": {"minute_bars": {"config": {"source": "rest"}}}})
    digests = {ds: lake.file_digest(ds, day) for ds in ("minute_bars", "bars_5m", "bars_1d")}
    dg.materialize(assets, partition_key=str(day), resources=lakes, instance=instance,
                   run_config={"ops": {"minute_bars": {"config": {"source": "rest"}}}})
    assert {ds: lake.file_digest(ds, day) for ds in digests} == digests
    assert by_session(first, day)["etag"] is None

    vendors = lakes["vendors"].vendors()
    at = datetime.combine(day + timedelta(days=2), datetime.min.time(), tzinfo=calendar.NEW_YORK)
    fixed = Vendors(polygon=vendors.polygon, flatfiles=vendors.flatfiles, clock=lambda: at)
    requests = verification(instance, fixed)
    assert [r.partition_key for r in requests] == [str(day)]  # built from REST: verify from the file
    before = lake.read_partition("minute_bars", day)
    dg.materialize(assets, partition_key=str(day), resources=lakes, instance=instance,
                   run_config=requests[0].run_config)
    verified = lake.read_partition("minute_bars", day)
    values = [c for c in verified.column_names if c != "source"]
    assert verified.select(values).equals(before.select(values))  # every bar confirmed, VWAP kept
    assert set(verified["source"].to_pylist()) == {"polygon_flatfiles"}
    assert verification(instance, fixed).skip_message  # verified against this ETag

    corrections = replay.flatfiles.republish(day, symbols=["MSFT"], volume_delta=12.5)
    requests = verification(instance, fixed)
    assert len(requests) == 1 and requests[0].run_key != f"verify:{day}:{by_session(first, day)['etag']}"
    result = dg.materialize(assets, partition_key=str(day), resources=lakes, instance=instance,
                            run_config=requests[0].run_config)
    after = lake.read_partition("minute_bars", day)
    msft = after.filter(pc.equal(after["symbol"], "MSFT"))
    assert msft["volume"][0].as_py() == corrections["volume"][0].as_py()
    assert msft["source"][0].as_py() == "polygon_flatfiles" and msft["vwap"][0].as_py() is None
    assert msft.num_rows == sim.minute_bars(day, ["MSFT"]).num_rows and no_duplicates(after)
    others = pc.not_equal(after["symbol"], "MSFT")
    assert after.filter(others).equals(verified.filter(pc.not_equal(verified["symbol"], "MSFT")))
    assert by_session(result, day)["confirmed"] == before.num_rows - 1
    assert msft.slice(1).select(values).equals(before.filter(pc.equal(before["symbol"], "MSFT")).slice(1).select(values))
    daily = lake.read_partition("bars_1d", day)
    assert daily.filter(pc.equal(daily["symbol"], "MSFT"))["volume"][0].as_py() == pytest.approx(
        pc.sum(msft["volume"]).as_py())
    assert verification(instance, fixed).skip_message


def test_given_tickers_merge_into_the_session(lakes, replay, sim):
    day, lake = SIM_DAY, lakes["lake"].lake()
    build(lakes, day, source="rest")
    before = lake.read_partition("minute_bars", day)
    first = sim.minute_bars(day, ["AAPL"]).slice(0, 1).to_pylist()[0]
    replay.data.correct(day, pa.Table.from_pylist([{**first, "close": first["close"] + 1.0}],
                                                  schema=before.schema))
    try:
        build(lakes, day, source="rest", tickers=["AAPL"])
    finally:
        replay.data.clear_corrections(day)
    after = lake.read_partition("minute_bars", day)
    aapl = after.filter(pc.equal(after["symbol"], "AAPL"))
    assert aapl["close"][0].as_py() == first["close"] + 1.0
    assert after.filter(pc.not_equal(after["symbol"], "AAPL")).equals(
        before.filter(pc.not_equal(before["symbol"], "AAPL")))
    assert after.num_rows == before.num_rows and no_duplicates(after)


def test_the_vendors_timeframes_land_beside_ours(lakes, sim):
    day, lake = SIM_HALF_DAY, lakes["lake"].lake()
    dg.materialize([minute_bars, bars_5m, bars_1d], partition_key=str(day), resources=lakes)
    ours = {ds: lake.file_digest(ds, day) for ds in ("bars_5m", "bars_1d")}
    dg.materialize([vendor_bars_5m, vendor_bars_1d], partition_key=str(day), resources=lakes)
    assert {ds: lake.file_digest(ds, day) for ds in ours} == ours
    for vendor, mine in (("vendor_bars_5m", "bars_5m"), ("vendor_bars_1d", "bars_1d")):
        theirs, ours_table = lake.read_partition(vendor, day), lake.read_partition(mine, day)
        assert theirs.select(["symbol", "ts", "open", "high", "low", "close"]).equals(
            ours_table.select(["symbol", "ts", "open", "high", "low", "close"])), vendor
        assert theirs["volume"].to_pylist() == pytest.approx(ours_table["volume"].to_pylist(), rel=1e-12)
    assert set(lake.read_partition("vendor_bars_1d", day)["source"].to_pylist()) == {"polygon_flatfiles"}
    assert set(lake.read_partition("vendor_bars_5m", day)["source"].to_pylist()) == {"polygon_rest"}


def test_a_run_of_several_sessions_materializes_each_with_its_own_figures(history_resources):
    """Issue 11: a multi-session run gave every session the run's total rows, and its checks one
    result for the run, which the UI listed as skipped for each session."""
    instance, lake = dg.DagsterInstance.ephemeral(), history_resources["lake"].lake()
    result = dg.materialize([minute_bars, bars_5m, ohlc_consistent], resources=history_resources, instance=instance,
                            run_config={"ops": {"minute_bars": {"config": {"tickers": ["AAPL", "MSFT"]}}}},
                            tags={"dagster/asset_partition_range_start": "2024-11-26",
                                  "dagster/asset_partition_range_end": "2024-11-29"})
    days = ["2024-11-26", "2024-11-27", "2024-11-29"]
    for dataset in ("minute_bars", "bars_5m"):
        events = {e.partition: e.event_specific_data.materialization.metadata
                  for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == dataset}
        assert {day: events[day]["rows"].value for day in days} == {day: lake.count(dataset, day) for day in days}
        assert len({events[day]["rows"].value for day in days}) == 3  # a half day among them
    assert {day: by_session(result, day)["source"] for day in days} == dict.fromkeys(days, "polygon_flatfiles")
    records = instance.event_log_storage.get_asset_check_execution_history(ohlc_consistent.check_key, limit=10)
    assert sorted((r.partition, r.status.value) for r in records) == [(day, "SUCCEEDED") for day in days]


@pytest.mark.parametrize("when, expected", [
    ("2024-11-26 20:05", "2024-11-26"),
    ("2024-11-26 17:05", "after-hours run until 20:00"),
    ("2024-11-29 17:05", "2024-11-29"),                       # a half day closes at 17:00
    ("2024-11-29 20:05", "was requested at its 17:00 close"),
    ("2024-11-28 20:05", "2024-11-28 is not a trading session (an exchange holiday)"),
])
def test_after_close_schedule_picks_the_session_that_closed(when, expected):
    instant = datetime.fromisoformat(when).replace(tzinfo=calendar.NEW_YORK)
    result = after_close_schedule(dg.build_schedule_context(scheduled_execution_time=instant))
    if isinstance(result, dg.SkipReason):
        assert expected in result.skip_message
    else:
        assert result.partition_key == expected and result.run_key == f"after-close:{expected}"
        assert result.run_config["ops"]["minute_bars"]["config"] == {"source": "rest"}


def test_verification_waits_for_publication_and_for_a_new_etag():
    day = date(2024, 11, 26)
    etags = {day: '"v1"'}
    recorded = {"2024-11-26": {"etag": None}}
    too_early = datetime(2024, 11, 27, 10, 0, tzinfo=calendar.NEW_YORK)
    later = datetime(2024, 11, 27, 11, 30, tzinfo=calendar.NEW_YORK)
    assert not list(verify_requests(too_early, recorded.get, etags.get))
    [request] = list(verify_requests(later, recorded.get, etags.get))
    assert request.partition_key == "2024-11-26" and request.run_key == "verify:2024-11-26:v1"
    recorded["2024-11-26"]["etag"] = '"v1"'
    assert not list(verify_requests(later, recorded.get, etags.get))
    etags[day] = '"v2"'  # republished
    assert [r.run_key for r in verify_requests(later, recorded.get, etags.get)] == ["verify:2024-11-26:v2"]


def test_backfill_runs_are_ten_consecutive_sessions_and_a_daemon_is_seen_by_its_heartbeat():
    from dagster._daemon.types import DaemonHeartbeat

    from market_platform.backfills import daemon_running, runs_of

    days = calendar.sessions("2024-10-01", "2024-12-31")
    assert [len(r) for r in runs_of(days[:25])] == [10, 10, 5]
    assert runs_of([days[40], days[0], days[1], days[41]]) == [[days[0], days[1]], [days[40], days[41]]]
    instance = dg.DagsterInstance.ephemeral()
    assert not daemon_running(instance)
    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 300, "BACKFILL", "old", None))
    assert not daemon_running(instance)  # a daemon that stopped five minutes ago
    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), "BACKFILL", "new", None))
    assert daemon_running(instance)


def test_merging_keeps_the_last_bar_of_a_key():
    from market_platform.history.bars import dedupe_last

    ts = [datetime(2024, 11, 26, 14, m, tzinfo=UTC) for m in (1, 0, 1, 2)]
    table = pa.table({"symbol": ["B", "A", "B", "A"], "ts": ts, "close": [1.0, 2.0, 3.0, 4.0]})
    merged = dedupe_last(table)
    assert merged["symbol"].to_pylist() == ["A", "A", "B"]
    assert merged["close"].to_pylist() == [2.0, 4.0, 3.0]  # B at 14:01 twice: the later row wins


def test_with_no_keys_the_replay_starts_here_and_publishes_files_once_due():
    from market_platform.history import vendors as vendors_module
    from market_platform_tests.fixtures.sim import small_sim

    market = small_sim(seed=11)
    now = datetime(2024, 11, 27, 10, 0, tzinfo=calendar.NEW_YORK)  # before 11:00: the 26th is not out yet
    vendors = Vendors.from_env({}, market=lambda: market, clock=lambda: now)
    assert vendors.replay is vendors_module.local_replay(market)  # one replay per process and market
    assert "no vendor keys" in vendors.describe() and "127.0.0.1" in vendors.describe()
    assert vendors.flatfile_etag(SIM_DAY) is None and vendors.choose(SIM_DAY, "rest") == "polygon_rest"
    assert vendors.flatfile_etag(date(2024, 11, 25)) is not None  # due since the 26th at 11:00: published
    later = Vendors.from_env({}, market=lambda: market, clock=lambda: now + timedelta(hours=2),
                             flatfiles_after_days=0)
    assert later.choose(SIM_DAY) == "polygon_flatfiles"
    bars = later.flatfiles.minute_bars(SIM_DAY, ["AAPL"])
    assert bars.select(COMMON).equals(market.minute_bars(SIM_DAY, ["AAPL"]).select(COMMON))
