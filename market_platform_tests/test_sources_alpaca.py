"""AlpacaSource (alpaca-py underneath) against the Alpaca replay over loopback."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

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
from market_platform.schemas import BARS, UNIVERSE, Source
from market_platform.sources.alpaca import AlpacaSource
from market_platform.sources.vendor import RetryPolicy
from market_platform_tests.fixtures.replay import FAST_RETRY
from market_platform_tests.fixtures.sim import SIM_DAY, SIM_HALF_DAY

UTC = timezone.utc
COMPARED = ["symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]


def test_session_bars_page_through_many_symbols(replay, sim):
    replay.alpaca.page_cap = 700
    symbols = sim.stock_symbols(SIM_DAY) + ["BTC/USD"]
    source = replay.alpaca_source(retry=FAST_RETRY, symbols_per_request=8)
    bars = source.minute_bars(SIM_DAY, symbols)
    expected = sim.minute_bars(SIM_DAY, symbols)
    assert bars.schema == BARS and bars.select(COMPARED).equals(expected.select(COMPARED))
    assert set(bars["source"].to_pylist()) == {Source.ALPACA_REST.value}
    assert replay.alpaca.log.count("/v2/stocks/bars") >= expected.num_rows // 700
    assert replay.alpaca.log.count("/v1beta3/crypto/us/bars") >= 1


def test_a_gap_window_for_repair(replay, sim):
    start = datetime(2024, 11, 26, 15, 7, tzinfo=UTC)
    end = start + timedelta(minutes=9)
    bars = replay.alpaca_source().bars(["AAPL", "SPY"], start, end, source=Source.ALPACA_REPAIR)
    day = sim.minute_bars(SIM_DAY, ["AAPL", "SPY"])
    expected = day.filter(pc.and_(pc.greater_equal(day["ts"], pa.scalar(start)), pc.less(day["ts"], pa.scalar(end))))
    assert bars.select(COMPARED).equals(expected.select(COMPARED).combine_chunks())
    assert set(bars["source"].to_pylist()) == {"alpaca_repair"}
    with pytest.raises(InvalidInputError, match="not before"):
        replay.alpaca_source().bars(["AAPL"], end, start)


def test_vendor_timeframes(replay, sim):
    source = replay.alpaca_source()
    hourly = source.aggregates(SIM_HALF_DAY, ["AAPL"], timeframe="1h")
    polygon = replay.polygon_source().aggregates(SIM_HALF_DAY, ["AAPL"], timeframe="1h")
    assert hourly.select(COMPARED).equals(polygon.select(COMPARED))
    daily = source.bars(["AAPL"], datetime(2024, 11, 25, tzinfo=calendar.NEW_YORK),
                        datetime(2024, 11, 30, tzinfo=calendar.NEW_YORK), timeframe="1d")
    assert daily.num_rows == len(calendar.sessions("2024-11-25", "2024-11-29"))


def test_429_and_5xx_are_retried_by_the_gate_not_by_alpaca_py(replay, sim):
    replay.alpaca.faults.fail("/v2/stocks/bars", 429, times=3)
    replay.alpaca.faults.fail("/v2/stocks/bars", 504, times=1)
    bars = replay.alpaca_source(retry=FAST_RETRY).minute_bars(SIM_DAY, ["AAPL"])
    assert bars.select(COMPARED).equals(sim.minute_bars(SIM_DAY, ["AAPL"]).select(COMPARED))
    assert [e.status for e in replay.alpaca.log.entries("/v2/stocks/bars")] == [429, 429, 429, 504, 200]


def test_rate_limit_storm(replay, sim):
    replay.set_rate_limit(4, 1.0)
    replay.alpaca.page_cap = 400
    source = replay.alpaca_source(rate_limit=6, rate_period=1.0, rate_margin=0.3,
                                  retry=RetryPolicy(attempts=20, backoff=0.05, max_backoff=0.3))
    bars = source.minute_bars(SIM_DAY, ["AAPL", "MSFT", "SPY"], check_unknown=False)
    assert bars.num_rows == sim.minute_bars(SIM_DAY, ["AAPL", "MSFT", "SPY"]).num_rows
    assert replay.alpaca.log.count(statuses={429}) > 0
    assert replay.alpaca.log.max_in_window(1.0) <= 6


def test_exhausted_retries_and_timeouts(replay):
    replay.alpaca.faults.delay(1.0, prefix="/v2/stocks")
    source = replay.alpaca_source(read_timeout=0.1, retry=RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02))
    with pytest.raises(VendorUnavailableError, match="Alpaca kept failing on GET /v2/stocks/bars.*ReadTimeout"):
        source.minute_bars(SIM_DAY, ["AAPL"])


def test_auth_errors_are_clear_and_keep_the_secret(replay):
    wrong = replay.alpaca_source(secret="not-the-secret-42", retry=FAST_RETRY)
    with pytest.raises(VendorAuthError, match="HTTP 401.*ALPACA_API_KEY and ALPACA_SECRET_KEY") as caught:
        wrong.minute_bars(SIM_DAY, ["AAPL"])
    assert "not-the-secret-42" not in str(caught.value) and "not-the-secret-42" not in repr(wrong)
    free = replay.alpaca_source(key_id=replay.keys.alpaca_free_key_id, secret=replay.keys.alpaca_free_secret,
                                feed="sip", retry=FAST_RETRY)
    with pytest.raises(VendorAuthError, match="HTTP 403.*SIP.*ALPACA_FEED=iex"):
        free.minute_bars(SIM_DAY, ["AAPL"])
    iex = replay.alpaca_source(key_id=replay.keys.alpaca_free_key_id, secret=replay.keys.alpaca_free_secret,
                               feed="iex")
    assert iex.minute_bars(SIM_DAY, ["AAPL"]).num_rows > 0


def test_unknown_symbols_and_bad_days(replay):
    source = replay.alpaca_source(retry=FAST_RETRY)
    with pytest.raises(UnknownSymbolError, match="Alpaca has no asset NOPE"):
        source.minute_bars(SIM_DAY, ["AAPL", "NOPE"])
    with pytest.raises(UnknownSymbolError, match="invalid symbol"):
        source.minute_bars(SIM_DAY, ["aapl!"])
    with pytest.raises(NotASessionError):
        source.minute_bars(date(2024, 11, 30), ["AAPL"])


def test_universe_from_assets(replay, sim):
    source = replay.alpaca_source()
    today = replay.clock().astimezone(calendar.NEW_YORK).date()
    equities = source.universe("us_equities", today)
    assert equities.schema == UNIVERSE
    assert equities["symbol"].to_pylist() == sorted(sim.symbols(today, category="us_equities")
                                                    + sim.symbols(today, category="etf"))
    assert dict(zip(equities["symbol"].to_pylist(), equities["exchange"].to_pylist()))["AAPL"] == "XNAS"
    assert source.universe("otc", today)["symbol"].to_pylist() == sim.symbols(today, category="otc")
    assert source.universe("crypto", today, limit=2)["symbol"].to_pylist() == sim.symbols(today, category="crypto")[:2]
    with pytest.raises(InvalidInputError, match="Alpaca has no 'etf' category"):
        source.universe("etf", today)


def test_calendar_and_clock(replay):
    sessions = replay.alpaca_source().calendar("2024-11-25", "2024-11-29")
    assert sessions == [calendar.session(d) for d in calendar.sessions("2024-11-25", "2024-11-29")]
    assert sessions[-1].is_half_day
    assert replay.alpaca_source().clock()["is_open"] is True
    with pytest.raises(InvalidInputError, match="after end"):
        replay.alpaca_source().calendar("2024-11-29", "2024-11-25")


def test_from_env(replay):
    env = replay.env()
    source = AlpacaSource.from_env(env)
    assert (source.feed, source.gate.limiter.calls, source.data_url) == ("sip", 200, replay.alpaca_url)
    with pytest.raises(ConfigError, match="ALPACA_API_KEY and ALPACA_SECRET_KEY"):
        AlpacaSource.from_env({})
    with pytest.raises(ConfigError, match="feed 'delayed'"):
        AlpacaSource.from_env({**env, "ALPACA_FEED": "delayed"})


def test_quotes_and_trades_have_the_stream_s_keys_and_values(replay, sim):
    """The REST history of a window is the stream's, row for row: a gap refilled from it collapses
    against what the stream delivered (key (symbol, ts, seq) / (symbol, ts, exchange, trade_id))."""
    replay.alpaca.page_cap = 400
    start = datetime(2024, 11, 26, 14, 30, tzinfo=UTC)
    end = start + timedelta(minutes=4)
    symbols = sim.stock_symbols(SIM_DAY)[:6] + ["BTC/USD"]
    source = replay.alpaca_source(retry=FAST_RETRY, symbols_per_request=4)
    calls = source.requests
    for what in ("quotes", "trades"):
        got = getattr(source, what)(symbols, start, end, source=Source.ALPACA_REPAIR)
        expected = getattr(sim, what)(SIM_DAY, symbols, start=start, end=end)
        expected = expected.sort_by([("symbol", "ascending"), ("ts", "ascending")])
        assert got.drop_columns(["source"]).equals(expected.drop_columns(["source"]).combine_chunks()), what
        assert set(got["source"].to_pylist()) == {"alpaca_repair"}
    assert source.requests - calls >= 6  # two symbol batches and the crypto pair, each paged
    with pytest.raises(InvalidInputError, match="not before"):
        source.quotes(["AAPL"], end, start)
