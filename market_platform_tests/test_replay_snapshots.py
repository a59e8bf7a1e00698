"""The replays' whole-market snapshots (Polygon stocks and crypto, Alpaca stocks and crypto) as of
a minute of a past session, through the real clients, consistent with the bars, trades and
quotes of the simulated market; and their parsing into `snapshots` rows."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
from alpaca.data.requests import CryptoSnapshotRequest, StockSnapshotRequest
from polygon import RESTClient

from market_platform import calendar
from market_platform.errors import MalformedResponseError
from market_platform.snapshots.messages import SnapshotMessage
from market_platform.snapshots.parse import parse
from market_platform_tests.fixtures.sim import SIM_DAY

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
AT = datetime(2024, 11, 26, 15, 30, tzinfo=UTC)  # 10:30 New York
COMPARED = ("last_price", "last_size", "last_trade_ts", "bid_price", "bid_size", "ask_price", "ask_size", "quote_ts",
            "day_open", "day_high", "day_low", "day_close", "day_volume", "min_ts", "min_open", "min_high", "min_low",
            "min_close", "min_volume", "min_vwap", "prev_close", "updated")


def _ns(value) -> int:
    return pa.scalar(value, pa.timestamp("ns", "UTC")).cast(pa.int64()).as_py()


def _only(table: pa.Table, symbol: str) -> pa.Table:
    return table.filter(pc.equal(table["symbol"], symbol))


def _expected(sim, symbol: str, day, at: datetime) -> dict:
    bars = _only(sim.minute_bars(day, [symbol]), symbol)
    bars = bars.filter(pc.less_equal(bars["ts"], pa.scalar(at - MINUTE, bars.schema.field("ts").type)))
    trades = _only(sim.trades(day, [symbol], end=at), symbol)
    quotes = _only(sim.quotes(day, [symbol], end=at), symbol)
    previous = sim.daily_bars(calendar.default_calendar().previous_session(day) if "/" not in symbol
                              else day - timedelta(days=1), [symbol])
    volume = pc.sum(bars["volume"]).as_py()
    return {
        "open": bars["open"][0].as_py(), "high": pc.max(bars["high"]).as_py(), "low": pc.min(bars["low"]).as_py(),
        "close": bars["close"][-1].as_py(), "volume": volume,
        "vwap": pc.sum(pc.multiply(bars["vwap"], bars["volume"])).as_py() / volume,
        "minute": bars.slice(bars.num_rows - 1).to_pylist()[0], "trade": trades.slice(trades.num_rows - 1).to_pylist()[0],
        "trade_ns": _ns(trades["ts"][-1]), "quote": quotes.slice(quotes.num_rows - 1).to_pylist()[0],
        "quote_ns": _ns(quotes["ts"][-1]), "previous": previous.to_pylist()[0],
    }


def test_polygon_snapshot_as_of_a_minute_matches_the_market(replay, sim):
    replay.clock = lambda: AT
    client = RESTClient(replay.keys.polygon_api_key, base=replay.polygon_url, retries=0)
    body = json.loads(client.get_snapshot_all("stocks", raw=True).data)
    assert body["status"] == "OK" and body["count"] == len(body["tickers"]) == len(sim.stock_symbols(SIM_DAY))
    aapl = next(t for t in body["tickers"] if t["ticker"] == "AAPL")
    want = _expected(sim, "AAPL", SIM_DAY, AT)
    assert aapl["day"]["o"] == want["open"] and aapl["day"]["h"] == want["high"] and aapl["day"]["l"] == want["low"]
    assert aapl["day"]["c"] == want["close"]
    assert aapl["day"]["v"] == pytest.approx(want["volume"], rel=1e-12)
    assert aapl["day"]["vw"] == pytest.approx(want["vwap"], rel=1e-9)
    assert aapl["min"]["t"] == (_ns(AT) - 60 * 10**9) // 10**6  # the last completed minute, in ms
    assert aapl["min"]["c"] == want["minute"]["close"] and aapl["min"]["av"] == pytest.approx(want["volume"])
    assert aapl["prevDay"]["c"] == want["previous"]["close"]
    assert aapl["prevDay"]["v"] == pytest.approx(want["previous"]["volume"], rel=1e-12)
    assert aapl["lastTrade"]["t"] == want["trade_ns"] and aapl["lastTrade"]["p"] == want["trade"]["price"]
    assert isinstance(aapl["lastTrade"]["i"], str) and isinstance(aapl["lastTrade"]["x"], int)
    quote = aapl["lastQuote"]  # uppercase P/S are the ask
    assert (quote["P"], quote["S"], quote["p"], quote["s"]) == (want["quote"]["ask_price"], want["quote"]["ask_size"],
                                                                want["quote"]["bid_price"], want["quote"]["bid_size"])
    assert quote["t"] == want["quote_ns"] and aapl["updated"] == max(want["trade_ns"], want["quote_ns"])
    assert aapl["todaysChange"] == pytest.approx(want["close"] - want["previous"]["close"], abs=1e-6)
    # The client's own models read it, and a later minute moves on.
    replay.clock = lambda: AT + 5 * MINUTE
    later = {s.ticker: s for s in client.get_snapshot_all("stocks", tickers=["AAPL"])}
    assert later["AAPL"].min.timestamp == (_ns(AT) + 4 * 60 * 10**9) // 10**6
    assert not replay.polygon.errors


def test_alpaca_and_crypto_snapshots_match_the_market(replay, sim):
    replay.clock = lambda: AT
    stocks = StockHistoricalDataClient(replay.keys.alpaca_key_id, replay.keys.alpaca_secret,
                                       url_override=replay.alpaca_url)
    snap = stocks.get_stock_snapshot(StockSnapshotRequest(symbol_or_symbols=["AAPL", "SPY", "ZZZZ"]))
    assert set(snap) == {"AAPL", "SPY"}  # no data, no entry
    want = _expected(sim, "AAPL", SIM_DAY, AT)
    aapl = snap["AAPL"]
    assert aapl.minute_bar.timestamp == AT - MINUTE and aapl.daily_bar.close == want["close"]
    assert aapl.daily_bar.volume == pytest.approx(want["volume"], rel=1e-12)
    assert aapl.previous_daily_bar.close == want["previous"]["close"]
    assert aapl.latest_trade.price == want["trade"]["price"] and aapl.latest_quote.ask_price == want["quote"]["ask_price"]
    crypto = CryptoHistoricalDataClient(url_override=replay.alpaca_url)
    pair = crypto.get_crypto_snapshot(CryptoSnapshotRequest(symbol_or_symbols=["BTC/USD"]))["BTC/USD"]
    btc = _expected(sim, "BTC/USD", AT.date(), AT)  # a UTC day
    assert pair.daily_bar.close == btc["close"] and pair.latest_trade.price == btc["trade"]["price"]
    polygon = RESTClient(replay.keys.polygon_api_key, base=replay.polygon_url, retries=0)
    x = {s.ticker: s for s in polygon.get_snapshot_all("crypto")}["X:BTCUSD"]
    assert x.day.close == btc["close"] and x.prev_day.close == btc["previous"]["close"]
    assert not replay.alpaca.errors and not replay.polygon.errors


def test_both_vendors_parse_to_the_same_rows(replay):
    replay.clock = lambda: AT
    symbols = ["AAPL", "MSFT", "SPY", "UNH"]
    polygon = parse(SnapshotMessage("polygon_rest", "stocks", AT, AT, replay.polygon_source().snapshot_raw("stocks")))
    polygon = polygon.filter(pc.is_in(polygon["symbol"], pa.array(symbols)))
    [(chunk, body)] = list(replay.alpaca_source().snapshot_raw(symbols))
    alpaca = parse(SnapshotMessage("alpaca_rest", "stocks", AT, AT, body))
    assert chunk == sorted(symbols) and polygon.num_rows == alpaca.num_rows == 4
    polygon, alpaca = (t.sort_by("symbol") for t in (polygon, alpaca))
    for name in COMPARED:
        left, right = polygon[name].to_pylist(), alpaca[name].to_pylist()
        assert left == pytest.approx(right, rel=1e-9) if isinstance(left[0], float) else left == right, name
    assert set(polygon["minute"].to_pylist()) == {AT} and set(polygon["source"].to_pylist()) == {"polygon_rest"}
    assert polygon["change_pct"].to_pylist() == pytest.approx(alpaca["change_pct"].to_pylist(), abs=1e-5)


@pytest.mark.parametrize("source, body, message", [
    ("polygon_rest", b"<html>502 Bad Gateway</html>", "not the documented JSON"),
    ("polygon_rest", b'{"status":"OK","tickers":[{"ticker":"A","day":{"o":"ten"}}]}', "not the documented JSON"),
    ("polygon_rest", b'{"status":"ERROR","error":"Unknown API Key"}', "has no tickers"),
    ("polygon_rest", b'{"status":"OK","tickers":[{"day":{"o":1}}]}', "have no `ticker`"),
    ("polygon_rest", b'{"status":"OK","tickers":[{"ticker":"A"},{"ticker":"A"}]}', "more than once"),
    ("alpaca_rest", b'["AAPL"]', "expected a map of symbol to snapshot"),
    ("alpaca_rest", b'{"AAPL":{"latestTrade":{"t":"yesterday","p":1.0}}}', "do not have the documented fields"),
    ("alpaca_rest", b"\x00\xff", "are not JSON"),
])
def test_malformed_bodies_are_named(source, body, message):
    with pytest.raises(MalformedResponseError, match=message):
        parse(SnapshotMessage(source, "stocks", AT, AT, body))
