"""Each data-quality check passes on a good partition and fails on a crafted bad one, directly and
as Dagster asset checks."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from market_platform import calendar, schemas
from market_platform.analytics import quality
from market_platform.defs.bars import checks as bar_checks
from market_platform.defs.metrics.checks import quotes_not_crossed
from market_platform.defs.partitions import trading_days_def
from market_platform.defs.resources import LakeResource, TickStoreResource
from market_platform.sources.sim import SimMarket
from market_platform.storage.lake import Lake

DAY = date(2024, 11, 26)
HALF_DAY = date(2024, 11, 29)


@pytest.fixture(scope="module")
def bars(sim) -> pa.Table:
    return sim.minute_bars(DAY)


def _replace(table: pa.Table, name: str, row: int, value) -> pa.Table:
    values = table[name].to_pylist()
    values[row] = value
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type))


def test_ohlc_consistent(bars):
    assert quality.ohlc_consistent(bars).passed
    bad = _replace(bars, "high", 10, bars["low"][10].as_py() - 0.01)
    bad = _replace(bad, "volume", 20, -5.0)
    outcome = quality.ohlc_consistent(bad)
    assert not outcome.passed
    assert outcome.metrics["inconsistent_bars"] == 2
    assert outcome.examples.num_rows == 2 and "| symbol" in outcome.examples_markdown()


def test_no_duplicate_bars(bars):
    assert quality.no_duplicate_bars(bars).passed
    bad = pa.concat_tables([bars, bars.slice(100, 3)])
    outcome = quality.no_duplicate_bars(bad)
    assert not outcome.passed
    assert outcome.metrics == {"bars": bars.num_rows + 3, "duplicate_keys": 3, "extra_rows": 3}
    # The same minute from another source is not a duplicate.
    other = bars.slice(100, 3).set_column(9, bars.schema.field("source"), pa.array(["polygon_rest"] * 3))
    assert quality.no_duplicate_bars(pa.concat_tables([bars, other])).passed


def _before(table: pa.Table, instant: datetime) -> pa.Table:
    return table.filter(pc.less(table["ts"], pa.scalar(instant, type=table.schema.field("ts").type)))


@pytest.mark.parametrize("day", [DAY, HALF_DAY], ids=["full_day", "half_day"])
def test_session_complete(sim, day):
    bars = sim.minute_bars(day)
    good = quality.session_complete(bars, day)
    assert good.passed, good.summary
    assert good.metrics["completeness_symbols_regular"] > 0.95
    assert good.metrics["expected_minutes_regular"] == (210 if day == HALF_DAY else 390)
    assert good.metrics["half_day"] == (day == HALF_DAY)

    session = calendar.session(day)
    truncated = _before(bars, session.regular_open + timedelta(minutes=90))  # a file cut mid-morning
    outcome = quality.session_complete(truncated, day)
    assert not outcome.passed
    assert outcome.metrics["completeness_market_afterhours"] == 0
    assert outcome.metrics["completeness_symbols_regular"] < 0.5

    # A 30-minute hole in the regular session, for every symbol.
    hole_start = session.regular_open + timedelta(minutes=60)
    ts = bars["ts"]
    in_hole = pc.and_(pc.greater_equal(ts, pa.scalar(hole_start, type=ts.type)),
                      pc.less(ts, pa.scalar(hole_start + timedelta(minutes=30), type=ts.type)))
    holed = quality.session_complete(bars.filter(pc.invert(in_hole)), day)
    assert not holed.passed
    assert "symbols_regular" in holed.summary


def test_session_complete_judges_extended_hours_when_dense():
    """At full activity the market trades every extended-hours minute, so a lost hour shows."""
    market = SimMarket(7, n_stocks=150, activity=1.0)
    bars = market.minute_bars(DAY)
    good = quality.session_complete(bars, DAY)
    assert good.passed and good.metrics["completeness_market_premarket"] == 1.0
    session = calendar.session(DAY)
    ts = bars["ts"]
    lost = pc.and_(pc.greater_equal(ts, pa.scalar(session.start + timedelta(hours=1), type=ts.type)),
                   pc.less(ts, pa.scalar(session.start + timedelta(hours=2), type=ts.type)))
    outcome = quality.session_complete(bars.filter(pc.invert(lost)), DAY)
    assert not outcome.passed and "market_premarket" in outcome.summary


def _quotes(bids: list[float], asks: list[float]) -> pa.Table:
    n = len(bids)
    start = datetime(2024, 11, 26, 15, tzinfo=timezone.utc)
    return schemas.conform(pa.table({
        "symbol": ["AAPL"] * n, "ts": [start + timedelta(seconds=i) for i in range(n)],
        "bid_price": bids, "bid_size": [1.0] * n, "ask_price": asks, "ask_size": [1.0] * n,
        "bid_exchange": ["Q"] * n, "ask_exchange": ["P"] * n, "conditions": [None] * n, "tape": ["C"] * n,
        "seq": list(range(n)), "source": ["sim"] * n,
    }), schemas.QUOTES)


def test_quotes_not_crossed(sim):
    quotes = sim.quotes(DAY, ["AAPL"])
    assert quality.quotes_not_crossed(quotes).passed
    outcome = quality.quotes_not_crossed(_quotes([10.0, 10.02, 10.01, 0.0], [10.01, 10.01, 10.01, 10.0]))
    assert not outcome.passed
    assert outcome.metrics["crossed"] == 1 and outcome.metrics["locked"] == 1 and outcome.metrics["two_sided"] == 3
    assert outcome.examples["bid_price"].to_pylist() == [10.02]
    assert quality.quotes_not_crossed(_quotes([10.02] + [10.0] * 999, [10.01] + [10.01] * 999), max_share=0.001).passed


def test_sources_agree(bars):
    other = bars.set_column(9, bars.schema.field("source"), pa.array(["alpaca_stream"] * bars.num_rows))
    assert quality.sources_agree(bars, other).passed
    close = other["close"].to_numpy().copy()
    high = other["high"].to_numpy().copy()
    bad_rows = np.arange(0, bars.num_rows, 20)  # 5% of the bars off by 2%
    close[bad_rows] *= 1.02
    high[bad_rows] = np.maximum(high[bad_rows], close[bad_rows])
    moved = other.set_column(5, bars.schema.field("close"), pa.array(close)).set_column(3, bars.schema.field("high"), pa.array(high))
    outcome = quality.sources_agree(bars, moved.slice(0, bars.num_rows - 50))
    assert not outcome.passed
    assert outcome.metrics["disagreeing_bars"] == len(bad_rows[bad_rows < bars.num_rows - 50])
    assert outcome.metrics["left_only_bars"] == 50
    assert outcome.examples.num_rows == quality.EXAMPLES
    assert outcome.examples["price_diff"][0].as_py() == pytest.approx(0.02 / 1.02, rel=1e-6)  # relative to the right side
    assert outcome.metrics["price_disagreeing_bars"] == outcome.metrics["disagreeing_bars"]
    assert outcome.metrics["volume_disagreeing_bars"] == 0

    # The same prices from another market: a tenth of the volume (issue 11: 52,084 live vs 651,007).
    volume = other["volume"].to_numpy().copy()
    thin = other.set_column(6, bars.schema.field("volume"), pa.array(np.floor(volume / 12.5)))
    outcome = quality.sources_agree(bars, thin)
    busy = int(np.sum(volume - np.floor(volume / 12.5) > np.maximum(0.05 * volume, 100)))
    assert not outcome.passed and busy > 0
    assert outcome.metrics["volume_disagreeing_bars"] == outcome.metrics["disagreeing_bars"] == busy
    assert outcome.metrics["price_disagreeing_bars"] == 0 and "in volume" in outcome.summary
    # Within the tolerance (a few percent: vendors drop different trade conditions) they agree.
    near = other.set_column(6, bars.schema.field("volume"), pa.array(volume * 0.97))
    assert quality.sources_agree(bars, near).passed
    assert quality.sources_agree(bars, thin, volume_tolerance=None).passed


def test_live_fresh(tick_store, sim):
    now = datetime(2024, 11, 26, 15, 30, tzinfo=timezone.utc)
    night = quality.live_fresh(tick_store, now=datetime(2024, 11, 27, 3, tzinfo=timezone.utc))
    assert night.passed and night.metrics["in_session"] is False
    assert not quality.live_fresh(tick_store, now=now).passed  # nothing arrived all morning
    bars = _before(sim.minute_bars(DAY), now - timedelta(minutes=1))
    tick_store.write_bars(bars)
    tick_store.write_quotes(sim.quotes(DAY, ["AAPL"], end=now - timedelta(seconds=20)))
    tick_store.write_trades(sim.trades(DAY, ["AAPL"], end=now - timedelta(seconds=30)))
    outcome = quality.live_fresh(tick_store, now=now)
    assert outcome.passed, outcome.summary
    late = quality.live_fresh(tick_store, now=now + timedelta(minutes=10))
    assert not late.passed and "bars_1m" in late.summary


# -- as Dagster asset checks ---------------------------------------------------------------------


def _broken(bars: pa.Table) -> pa.Table:
    """Bars with two duplicated rows and a bad low."""
    return _replace(pa.concat_tables([bars, bars.slice(0, 2)]), "low", 5, 1e6)


def test_dagster_checks_pass_and_fail(tmp_path, make_database, sim):
    lake = Lake(tmp_path / "lake")
    resources = {"lake": LakeResource(url=str(lake.url)),
                 "tick_store": TickStoreResource(url=make_database("postgres"))}
    checks = [bar_checks.ohlc_consistent, bar_checks.no_duplicate_bars, bar_checks.session_complete,
              bar_checks.sources_agree]
    lake.write_partition("minute_bars", "2024-11-26", sim.minute_bars(date(2024, 11, 26)))
    lake.write_partition("minute_bars", "2024-11-27", _broken(sim.minute_bars(date(2024, 11, 27))))
    outcomes = {}
    for key in ("2024-11-26", "2024-11-27"):
        result = _run_checks("minute_bars", checks, key, resources)
        outcomes[key] = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert outcomes["2024-11-26"] == {"ohlc_consistent": True, "no_duplicate_bars": True,
                                      "session_complete": True, "sources_agree": True}
    assert outcomes["2024-11-27"]["ohlc_consistent"] is False
    assert outcomes["2024-11-27"]["no_duplicate_bars"] is False

    # A backfill run covers several sessions: each session's result is recorded on its partition
    # (none left "planned", which the UI shows as skipped), and the bad one fails the blocking step.
    instance = dg.DagsterInstance.ephemeral()
    result = _run_checks("minute_bars", checks[:2], ("2024-11-26", "2024-11-27"), resources, instance)
    assert not result.success
    found = {(e.check_name, e.partition): e.passed for e in result.get_asset_check_evaluations()}
    assert found == {(name, day): day == "2024-11-26" for name in ("ohlc_consistent", "no_duplicate_bars")
                     for day in ("2024-11-26", "2024-11-27")}
    for check in checks[:2]:
        records = instance.event_log_storage.get_asset_check_execution_history(check.check_key, limit=10)
        assert {(r.partition, r.status.value) for r in records} == {("2024-11-26", "SUCCEEDED"),
                                                                   ("2024-11-27", "FAILED")}
        assert all(r.event.dagster_event.event_specific_data.target_materialization_data for r in records)


def _run_checks(asset: str, checks: list, partition: str | tuple[str, str], resources: dict,
                instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    """Run `checks` alone on a partition (or a (first, last) range, as a backfill run) of `asset`
    whose data is already in the lake."""

    @dg.asset(key=asset, partitions_def=trading_days_def,
              backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=10))
    def existing() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    if isinstance(partition, str):
        return dg.materialize([existing, *checks], partition_key=partition, resources=resources, raise_on_error=False)
    first, last = partition
    return dg.materialize([existing, *checks], resources=resources, raise_on_error=False, instance=instance,
                          tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})


def test_quotes_not_crossed_check_on_the_lake_dataset(tmp_path, sim):
    lake = Lake(tmp_path / "lake")
    lake.write_partition("quotes_daily", "2024-11-26", sim.quotes(DAY, ["AAPL", "SPY"]))
    lake.write_partition("quotes_daily", "2024-11-27", _quotes([10.02, 10.0], [10.01, 10.01]))
    resources = {"lake": LakeResource(url=str(lake.url))}
    for key, passed in (("2024-11-26", True), ("2024-11-27", False)):
        result = _run_checks("quotes_daily", [quotes_not_crossed], key, resources)
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.passed is passed
