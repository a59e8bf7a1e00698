"""ReplayData (cache, corrections) and the vendors' aggregation, without any server."""

from __future__ import annotations

from datetime import date, datetime, time, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.replay import ReplayData, SimProvider, aggregate
from market_platform.replay.data import days_between
from market_platform.schemas import BARS
from market_platform_tests.fixtures.sim import SIM_DAY

NY = calendar.NEW_YORK
UTC = timezone.utc


def test_a_small_cache_serves_the_same_bars(sim):
    data = ReplayData(SimProvider(sim), cache_rows=500)
    symbols = sim.stock_symbols(SIM_DAY)
    for _ in range(2):
        assert data.minute_bars(symbols, SIM_DAY).equals(sim.minute_bars(SIM_DAY, symbols))
    assert data._cached_rows <= 500 + 1000  # at most one symbol-day over the bound
    assert data.minute_bars(["NOPE", "EUR/USD"], SIM_DAY).num_rows == 0  # unknown, no market data
    assert data.minute_bars(["AAPL"], date(2024, 11, 28)).num_rows == 0  # a holiday
    assert data.minute_bars(["BTC/USD"], date(2024, 11, 28)).num_rows > 0  # crypto trades


def test_corrections_replace_and_add_bars(sim):
    data = ReplayData(SimProvider(sim))
    original = data.minute_bars(["AAPL"], SIM_DAY)
    first = original.slice(0, 1).to_pylist()[0]
    added = {**first, "ts": datetime(2024, 11, 27, 0, 59, tzinfo=UTC), "volume": 1.0}  # 19:59 New York
    data.correct(SIM_DAY, pa.Table.from_pylist([{**first, "volume": 7.0}, added], schema=BARS))
    corrected = data.minute_bars(["AAPL", "MSFT"], SIM_DAY)
    aapl = corrected.filter(pc.equal(corrected["symbol"], "AAPL"))
    assert aapl.num_rows == original.num_rows + 1 and aapl["volume"][0].as_py() == 7.0
    assert aapl["volume"][-1].as_py() == 1.0
    assert corrected.filter(pc.equal(corrected["symbol"], "MSFT")).equals(sim.minute_bars(SIM_DAY, ["MSFT"]))
    data.clear_corrections(SIM_DAY)
    assert data.minute_bars(["AAPL"], SIM_DAY).equals(original)


def test_daily_buckets_follow_daylight_saving(sim):
    before, after = date(2024, 11, 1), date(2024, 11, 4)  # DST ends on 2024-11-03
    bars = pa.concat_tables([sim.minute_bars(d, ["SPY"]) for d in (before, after)])
    daily = aggregate(bars, "day", tz=NY)
    assert daily["ts"].to_pylist() == [datetime.combine(d, time(), tzinfo=NY) for d in (before, after)]
    assert [t.astimezone(UTC).hour for t in daily["ts"].to_pylist()] == [4, 5]
    hourly = aggregate(bars, "hour", tz=NY)
    assert {t.astimezone(NY).minute for t in hourly["ts"].to_pylist()} == {0}
    assert pc.sum(hourly["base_count"]).as_py() == bars.num_rows
    four_hours = aggregate(bars, "hour", 4, tz=NY)
    assert {t.astimezone(NY).hour % 4 for t in four_hours["ts"].to_pylist()} == {0}  # aligned in New York
    with pytest.raises(InvalidInputError, match="unknown unit 'week'"):
        aggregate(bars, "week", tz=NY)


def test_days_between_by_kind():
    start, end = datetime(2024, 11, 27, 12, tzinfo=UTC), datetime(2024, 11, 29, 23, tzinfo=UTC)
    assert days_between(start, end, "stocks") == [date(2024, 11, 27), date(2024, 11, 29)]
    assert days_between(start, end, "crypto") == [date(2024, 11, 27), date(2024, 11, 28), date(2024, 11, 29)]
