"""The Alpaca REST replay, driven by alpaca-py with its pydantic models (strict validation)."""

from __future__ import annotations

import math
import uuid
from datetime import date, datetime, time, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass, AssetExchange, AssetStatus
from alpaca.trading.requests import GetAssetsRequest, GetCalendarRequest

from market_platform import calendar
from market_platform_tests.fixtures.replay import REPLAY_NOW
from market_platform_tests.fixtures.sim import SIM_DAY, SIM_HALF_DAY

UTC = timezone.utc
NY = calendar.NEW_YORK


def stocks(replay) -> StockHistoricalDataClient:
    c = StockHistoricalDataClient(replay.keys.alpaca_key_id, replay.keys.alpaca_secret, url_override=replay.alpaca_url)
    c._retry = 0
    return c


def trading(replay) -> TradingClient:
    return TradingClient(replay.keys.alpaca_key_id, replay.keys.alpaca_secret, url_override=replay.alpaca_url)


def headers(replay, key_id=None, secret=None) -> dict[str, str]:
    return {"APCA-API-KEY-ID": key_id or replay.keys.alpaca_key_id,
            "APCA-API-SECRET-KEY": secret or replay.keys.alpaca_secret}


def ns(table: pa.Table) -> list[int]:
    return pc.cast(table.column("ts"), pa.int64()).to_pylist()


def test_stock_bars_page_by_token_across_symbols(replay, sim):
    replay.alpaca.page_cap = 500
    session = calendar.session(SIM_DAY)
    symbols = ["AAPL", "MSFT", "SPY"]
    barset = stocks(replay).get_stock_bars(StockBarsRequest(
        symbol_or_symbols=symbols, timeframe=TimeFrame.Minute, start=session.start, end=session.end,
        feed=DataFeed.SIP))
    expected = sim.minute_bars(SIM_DAY, symbols)
    total = 0
    for s in symbols:
        mine = expected.filter(pc.equal(expected["symbol"], s))
        bars = barset.data[s]
        assert [int(b.timestamp.timestamp()) * 10**9 for b in bars] == ns(mine)
        assert [b.volume for b in bars] == mine["volume"].to_pylist()
        assert [b.vwap for b in bars] == mine["vwap"].to_pylist()
        total += len(bars)
    assert replay.alpaca.log.count("/v2/stocks/bars") == math.ceil(total / 500)


def test_limit_counts_bars_across_symbols_and_the_token_is_always_there(replay):
    url = f"{replay.alpaca_url}/v2/stocks/bars"
    params = {"symbols": "MSFT,AAPL", "timeframe": "1Min", "start": "2024-11-26", "end": "2024-11-26", "limit": 10}
    page = requests.get(url, params=params, headers=headers(replay), timeout=10).json()
    assert list(page["bars"]) == ["AAPL"] and len(page["bars"]["AAPL"]) == 10 and page["next_page_token"]
    params.update(limit=10_000)
    last = requests.get(url, params=params, headers=headers(replay), timeout=10).json()
    assert set(last["bars"]) == {"AAPL", "MSFT"} and last["next_page_token"] is None
    empty = requests.get(url, params={**params, "symbols": "NOPE"}, headers=headers(replay), timeout=10).json()
    assert empty == {"bars": {}, "next_page_token": None}


def test_daily_and_hourly_bars(replay, sim):
    days = calendar.sessions("2024-11-25", "2024-11-29")
    daily = stocks(replay).get_stock_bars(StockBarsRequest(
        symbol_or_symbols="AAPL", timeframe=TimeFrame.Day, start=datetime(2024, 11, 25, 5, tzinfo=UTC),
        end=datetime(2024, 11, 30, tzinfo=UTC), feed=DataFeed.IEX)).data["AAPL"]
    assert [b.timestamp for b in daily] == [datetime.combine(d, time(), tzinfo=NY).astimezone(UTC) for d in days]
    assert [b.volume for b in daily] == pytest.approx(
        [pc.sum(sim.minute_bars(d, ["AAPL"])["volume"]).as_py() for d in days], rel=1e-12)
    session = calendar.session(SIM_HALF_DAY)
    hourly = stocks(replay).get_stock_bars(StockBarsRequest(
        symbol_or_symbols="SPY", timeframe=TimeFrame(1, TimeFrameUnit.Hour), start=session.start,
        end=session.end, feed=DataFeed.SIP)).data["SPY"]
    assert all(b.timestamp.minute == 0 for b in hourly) and hourly[-1].timestamp < session.end


def test_crypto_bars_need_no_key(replay, sim):
    start = datetime.combine(SIM_DAY, time(), tzinfo=UTC)
    client = CryptoHistoricalDataClient(url_override=replay.alpaca_url)
    bars = client.get_crypto_bars(CryptoBarsRequest(
        symbol_or_symbols=["BTC/USD", "ETH/USD"], timeframe=TimeFrame.Minute, start=start,
        end=start + timedelta(days=1) - timedelta(microseconds=1))).data
    expected = sim.minute_bars(SIM_DAY, ["BTC/USD"])
    assert [int(b.timestamp.timestamp()) * 10**9 for b in bars["BTC/USD"]] == ns(expected)
    assert replay.alpaca.log.entries("/v1beta3")[0].client is None


def test_assets_validate_against_alpaca_py_models(replay, sim):
    today = REPLAY_NOW.astimezone(NY).date()
    equities = trading(replay).get_all_assets(GetAssetsRequest(asset_class=AssetClass.US_EQUITY,
                                                               status=AssetStatus.ACTIVE))
    symbols = {a.symbol: a for a in equities}
    assert set(symbols) == set(sim.symbols(today, category="us_equities") + sim.symbols(today, category="etf")
                               + sim.symbols(today, category="otc"))
    assert symbols["AAPL"].exchange == AssetExchange.NASDAQ and isinstance(symbols["AAPL"].id, uuid.UUID)
    assert symbols["SPY"].exchange == AssetExchange.ARCA
    crypto = trading(replay).get_all_assets(GetAssetsRequest(asset_class=AssetClass.CRYPTO))
    assert {a.exchange for a in crypto} == {AssetExchange.CRYPTO} and "BTC/USD" in {a.symbol for a in crypto}
    assert trading(replay).get_asset("AAPL").symbol == "AAPL"
    with pytest.raises(APIError) as caught:
        trading(replay).get_asset("NOPE")
    assert caught.value.status_code == 404 and caught.value.message == "asset not found for NOPE"


def test_calendar_has_hh_mm_hours_and_half_days(replay):
    days = trading(replay).get_calendar(GetCalendarRequest(start=date(2024, 11, 25), end=date(2024, 11, 29)))
    assert [d.date for d in days] == calendar.sessions("2024-11-25", "2024-11-29")
    assert days[-1].close == datetime(2024, 11, 29, 13, 0) and days[0].open == datetime(2024, 11, 25, 9, 30)


def test_clock_follows_the_server_clock(replay):
    clock = trading(replay).get_clock()
    assert clock.is_open and clock.next_close == datetime(2024, 11, 27, 16, 0, tzinfo=NY)
    replay.clock = lambda: datetime(2024, 11, 28, 15, 0, tzinfo=UTC)  # Thanksgiving
    clock = trading(replay).get_clock()
    assert not clock.is_open and clock.next_open == datetime(2024, 11, 29, 9, 30, tzinfo=NY)
    assert clock.next_close == datetime(2024, 11, 29, 13, 0, tzinfo=NY)


def test_errors_have_alpaca_bodies(replay):
    url = f"{replay.alpaca_url}/v2/stocks/bars"
    params = {"symbols": "AAPL", "timeframe": "1Min", "start": "2024-11-26", "end": "2024-11-26"}
    denied = requests.get(url, params=params, timeout=10)
    assert denied.status_code == 401 and denied.json() == {"code": 40110000, "message": "request is not authorized"}
    wrong = requests.get(url, params=params, headers=headers(replay, secret="wrong"), timeout=10)
    assert wrong.status_code == 401
    free = headers(replay, replay.keys.alpaca_free_key_id, replay.keys.alpaca_free_secret)
    sip = requests.get(url, params={**params, "feed": "sip"}, headers=free, timeout=10)
    assert sip.status_code == 403 and "SIP" in sip.json()["message"]
    assert requests.get(url, params={**params, "feed": "iex"}, headers=free, timeout=10).status_code == 200
    bad = requests.get(url, params={**params, "timeframe": "7Week"}, headers=headers(replay), timeout=10)
    assert bad.status_code == 400 and bad.json()["message"] == "invalid timeframe: 7Week"
    replay.set_rate_limit(1)
    assert requests.get(url, params=params, headers=headers(replay), timeout=10).status_code == 200
    throttled = requests.get(url, params=params, headers=headers(replay), timeout=10)
    assert throttled.status_code == 429 and throttled.json()["code"] == 42910000
    assert throttled.headers["X-RateLimit-Remaining"] == "0" and "Retry-After" not in throttled.headers


def test_historical_quotes_and_trades_in_alpaca_py_models_and_pages(replay, sim):
    """/v2/stocks/{quotes,trades} and the crypto forms, as alpaca-py's strict models read them."""
    from alpaca.data.requests import CryptoTradesRequest, StockQuotesRequest, StockTradesRequest

    replay.alpaca.page_cap = 250
    start = datetime(2024, 11, 26, 15, 0, tzinfo=UTC)
    end = start + timedelta(minutes=5)
    request = dict(symbol_or_symbols=["AAPL", "SPY"], start=start, end=end, feed=DataFeed.IEX)
    quotes = stocks(replay).get_stock_quotes(StockQuotesRequest(**request))
    trades = stocks(replay).get_stock_trades(StockTradesRequest(**request))
    expected_quotes = sim.quotes(SIM_DAY, ["AAPL", "SPY"], start=start, end=end + timedelta(microseconds=1))
    expected_trades = sim.trades(SIM_DAY, ["AAPL", "SPY"], start=start, end=end + timedelta(microseconds=1))
    assert sum(len(v) for v in quotes.data.values()) == expected_quotes.num_rows > 250  # paged
    assert sum(len(v) for v in trades.data.values()) == expected_trades.num_rows
    assert replay.alpaca.log.count("/v2/stocks/quotes") == math.ceil(expected_quotes.num_rows / 250)
    first = quotes["AAPL"][0]
    row = expected_quotes.filter(pc.equal(expected_quotes["symbol"], "AAPL")).slice(0, 1).to_pylist()[0]
    assert (first.bid_price, first.ask_size, first.bid_exchange, first.conditions, first.tape) == (
        row["bid_price"], row["ask_size"], row["bid_exchange"], row["conditions"].split(","), row["tape"])
    trade = trades["SPY"][0]
    assert trade.id > 0 and trade.exchange and trade.conditions and trade.timestamp.tzinfo is not None
    crypto = CryptoHistoricalDataClient(url_override=replay.alpaca_url).get_crypto_trades(
        CryptoTradesRequest(symbol_or_symbols="BTC/USD", start=start, end=end))  # no key needed
    assert len(crypto["BTC/USD"]) == sim.trades(SIM_DAY, ["BTC/USD"], start=start, end=end).num_rows > 0
    empty = requests.get(f"{replay.alpaca_url}/v2/stocks/trades", headers=headers(replay),
                         params={"symbols": "ZZZZ", "start": start.isoformat(), "end": end.isoformat()}).json()
    assert empty == {"trades": {}, "next_page_token": None}
    bad = requests.get(f"{replay.alpaca_url}/v2/stocks/quotes", headers=headers(replay),
                       params={"symbols": "AAPL';--", "start": start.isoformat()})
    assert bad.status_code == 400 and "invalid symbol" in bad.json()["message"]
