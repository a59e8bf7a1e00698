"""PolygonSource (polygon-api-client underneath) against the Polygon replay over loopback."""

from __future__ import annotations

from datetime import date, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from market_platform import calendar
from market_platform.errors import (
    ConfigError,
    InvalidInputError,
    NotASessionError,
    UnknownSymbolError,
    VendorAuthError,
    VendorUnavailableError,
)
from market_platform.schemas import BARS, CATEGORIES, UNIVERSE, Source
from market_platform.sources.polygon import PolygonSource
from market_platform.sources.vendor import RetryPolicy
from market_platform_tests.fixtures.replay import FAST_RETRY
from market_platform_tests.fixtures.sim import SIM_DAY, SIM_HALF_DAY

SYMBOLS = ["AAPL", "BRK.B", "MSFT", "SPY", "TSLA"]
COMPARED = ["symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]


def test_minute_bars_of_a_session_equal_the_market(replay, sim):
    done = []
    source = replay.polygon_source(retry=FAST_RETRY, page_limit=250, workers=3)
    bars = source.minute_bars(SIM_DAY, SYMBOLS, on_symbol_done=lambda s, t: done.append((s, t.num_rows)))
    expected = sim.minute_bars(SIM_DAY, SYMBOLS)
    assert bars.schema == BARS
    assert bars.select(COMPARED).equals(expected.select(COMPARED))
    assert set(bars["source"].to_pylist()) == {Source.POLYGON_REST.value}
    counts = pc.value_counts(expected["symbol"])
    assert sorted(done) == sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    assert replay.polygon.log.count("/v2/aggs", statuses={200}) > len(SYMBOLS)  # several pages per ticker


def test_vendor_aggregates_at_every_timeframe(replay, sim):
    source = replay.polygon_source(retry=FAST_RETRY)
    minutes = sim.minute_bars(SIM_HALF_DAY, ["AAPL"])
    for timeframe, width in (("5m", 300), ("15m", 900), ("1h", 3600)):
        bars = source.aggregates(SIM_HALF_DAY, ["AAPL"], timeframe=timeframe)
        assert bars.schema == BARS
        seconds = pc.cast(bars["ts"], pa.int64()).to_numpy() // 10**9
        assert (seconds % width == 0).all()
        assert pc.sum(bars["volume"]).as_py() == pytest.approx(pc.sum(minutes["volume"]).as_py(), rel=1e-12)
    daily = source.aggregates(SIM_HALF_DAY, ["AAPL"], timeframe="1d")
    assert daily["ts"].to_pylist() == [datetime(2024, 11, 29, tzinfo=calendar.NEW_YORK)]
    with pytest.raises(InvalidInputError, match="unknown timeframe '2m'"):
        source.aggregates(SIM_DAY, ["AAPL"], timeframe="2m")


def test_bars_in_a_window_across_days(replay, sim):
    source = replay.polygon_source(retry=FAST_RETRY)
    start = calendar.session(SIM_DAY).regular_close
    end = calendar.session(date(2024, 11, 27)).regular_open
    bars = source.bars("AAPL", start, end)
    both = pa.concat_tables([sim.minute_bars(d, ["AAPL"]) for d in (SIM_DAY, date(2024, 11, 27))])
    expected = both.filter(pc.and_(pc.greater_equal(both["ts"], pa.scalar(start)), pc.less(both["ts"], pa.scalar(end))))
    assert bars.select(COMPARED).equals(expected.select(COMPARED).combine_chunks())
    assert bars["ts"][0].as_py().date() == SIM_DAY and bars["ts"][-1].as_py().date() == date(2024, 11, 27)


def test_crypto_pairs_use_utc_days(replay, sim):
    bars = replay.polygon_source().minute_bars(date(2024, 11, 28), ["BTC/USD", "ETH/USD"])  # a stock holiday
    assert bars.select(COMPARED).equals(sim.minute_bars(date(2024, 11, 28), ["BTC/USD", "ETH/USD"]).select(COMPARED))


def test_429_storm_completes_without_exceeding_the_configured_rate(replay, sim):
    replay.set_rate_limit(6, 1.0)  # the vendor allows less than the client is configured for
    source = replay.polygon_source(rate_limit=10, rate_period=1.0, rate_margin=0.3, workers=4,
                                   retry=RetryPolicy(attempts=20, backoff=0.05, max_backoff=0.3))
    symbols = sim.stock_symbols(SIM_DAY)
    bars = source.minute_bars(SIM_DAY, symbols)
    assert bars.select(COMPARED).equals(sim.minute_bars(SIM_DAY, symbols).select(COMPARED))
    log = replay.polygon.log
    assert log.count("/v2/aggs", statuses={429}) > 0  # there was a storm...
    assert log.max_in_window(1.0, "/v2/aggs") <= 10  # ...and every request, 429s included, kept the rate
    assert source.gate.stats.throttled == log.count("/v2/aggs", statuses={429})


def test_the_limiter_alone_keeps_a_plan_rate(replay, sim):
    replay.set_rate_limit(8, 1.0)
    source = replay.polygon_source(rate_limit=8, rate_period=1.0, rate_margin=0.3, workers=4, retry=FAST_RETRY)
    source.minute_bars(SIM_DAY, sim.stock_symbols(SIM_DAY)[:17])
    assert replay.polygon.log.count("/v2/aggs", statuses={429}) == 0
    assert replay.polygon.log.max_in_window(1.0, "/v2/aggs") <= 8


def test_5xx_in_the_middle_of_a_page_sequence_recovers(replay, sim):
    replay.polygon.faults.fail_page("/v2/aggs", 3, 502, times=2)
    source = replay.polygon_source(retry=FAST_RETRY, page_limit=100, workers=1)
    bars = source.minute_bars(SIM_DAY, ["AAPL"])
    assert bars.select(COMPARED).equals(sim.minute_bars(SIM_DAY, ["AAPL"]).select(COMPARED))
    statuses = [e.status for e in replay.polygon.log.entries("/v2/aggs")]
    assert statuses[:5] == [200, 200, 502, 502, 200]  # page 3 retried, pages 1-2 not fetched again


def test_exhausted_retries_raise_unavailable(replay):
    replay.polygon.faults.fail("/v2/aggs", 503, times=100)
    source = replay.polygon_source(retry=RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.02))
    with pytest.raises(VendorUnavailableError, match=r"Polygon kept failing on GET /v2/aggs/ticker/AAPL.*3 attempts"):
        source.minute_bars(SIM_DAY, ["AAPL"])
    assert replay.polygon.log.count("/v2/aggs") == 3


def test_requests_time_out(replay):
    replay.polygon.faults.delay(1.0, prefix="/v2/aggs")
    source = replay.polygon_source(read_timeout=0.1, retry=RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02))
    with pytest.raises(VendorUnavailableError, match="ReadTimeoutError"):
        source.minute_bars(SIM_DAY, ["AAPL"])


@pytest.mark.parametrize("key", ["not-a-real-key-123", "replay-polygon-free-plan"])
def test_auth_errors_are_clear_and_keep_the_key_secret(replay, key):
    source = replay.polygon_source(api_key=key, retry=FAST_RETRY)
    with pytest.raises(VendorAuthError) as caught:
        source.minute_bars(SIM_DAY, ["AAPL"])
    message = str(caught.value)
    assert key not in message and key not in repr(source)
    if key.endswith("123"):
        assert "HTTP 401" in message and "POLYGON_API_KEY" in message
    else:
        assert "HTTP 403" in message and "plan" in message and "not entitled" in message
    assert replay.polygon.log.count("/v2/aggs") == 1  # never retried


def test_unknown_ticker_and_bad_days(replay):
    source = replay.polygon_source(retry=FAST_RETRY)
    with pytest.raises(UnknownSymbolError, match="Polygon does not list NOPE on 2024-11-26"):
        source.minute_bars(SIM_DAY, ["AAPL", "NOPE"])
    with pytest.raises(UnknownSymbolError, match="META"):
        source.check_symbols(["AAPL", "META"], date(2010, 1, 4))  # META listed in 2012
    source.check_symbols(["AAPL", "META"], SIM_DAY)
    with pytest.raises(NotASessionError, match="2024-11-28 is not a trading session"):
        source.minute_bars(date(2024, 11, 28), ["AAPL"])
    with pytest.raises(InvalidInputError, match="not a date"):
        source.minute_bars("2024-13-01", ["AAPL"])


@pytest.mark.parametrize("category", CATEGORIES)
def test_universe_by_category_with_limit(replay, sim, category):
    source = replay.polygon_source(retry=FAST_RETRY)
    table = source.universe(category, SIM_DAY)
    assert table.schema == UNIVERSE and table.num_rows > 0
    assert set(table["category"].to_pylist()) == {category}
    assert table["symbol"].to_pylist() == sorted(sim.universe(category, SIM_DAY)["symbol"].to_pylist())
    limited = source.universe(category, SIM_DAY, limit=3)
    assert limited["symbol"].to_pylist() == table["symbol"].to_pylist()[:3]


def test_universe_is_point_in_time(replay):
    source = replay.polygon_source(retry=FAST_RETRY)
    assert "META" in source.universe("us_equities", SIM_DAY)["symbol"].to_pylist()
    assert "META" not in source.universe("us_equities", date(2010, 1, 4))["symbol"].to_pylist()
    with pytest.raises(InvalidInputError, match="unknown category 'bonds'"):
        source.universe("bonds", SIM_DAY)


def test_snapshot_gives_daily_bars_for_ranking(replay, sim):
    table = replay.polygon_source().snapshot(["AAPL", "SPY"])
    assert table.schema == BARS and table["symbol"].to_pylist() == ["AAPL", "AAPL", "SPY", "SPY"]
    midnight = pa.scalar(datetime(2024, 11, 26, tzinfo=calendar.NEW_YORK), type=BARS.field("ts").type)
    prev = table.filter(pc.equal(table["ts"], midnight))
    assert prev["volume"].to_pylist() == pytest.approx(
        [pc.sum(sim.minute_bars(SIM_DAY, [s])["volume"]).as_py() for s in ("AAPL", "SPY")], rel=1e-12)
    assert replay.polygon_source().market_status() == "open"


def test_from_env(replay, monkeypatch):
    env = replay.env()
    source = PolygonSource.from_env(env, retry=FAST_RETRY)
    assert source.gate.limiter.calls == 5  # the free plan unless POLYGON_RATE_LIMIT says otherwise
    assert PolygonSource.from_env({**env, "POLYGON_RATE_LIMIT": "300"}).gate.limiter.calls == 300
    with pytest.raises(ConfigError, match="POLYGON_API_KEY is not set"):
        PolygonSource.from_env({})
    with pytest.raises(ConfigError, match="POLYGON_RATE_LIMIT='fast'"):
        PolygonSource.from_env({**env, "POLYGON_RATE_LIMIT": "fast"})
