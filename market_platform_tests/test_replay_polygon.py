"""The Polygon REST replay, driven by the real polygon-api-client (and raw HTTP for the wire details)."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from polygon import RESTClient
from polygon.exceptions import BadResponse

from market_platform import calendar
from market_platform.replay import ReplayData, SimProvider
from market_platform.replay.polygon import PolygonReplay
from market_platform.sources.sim import SimMarket
from market_platform_tests.fixtures.replay import REPLAY_NOW
from market_platform_tests.fixtures.sim import SIM_DAY

NY = calendar.NEW_YORK
TODAY = REPLAY_NOW.astimezone(NY).date()


def client(replay, key: str | None = None, **options) -> RESTClient:
    return RESTClient(key or replay.keys.polygon_api_key, base=replay.polygon_url, **{"retries": 0, **options})


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """Status, JSON body and headers of a GET, whatever the status."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def auth(replay) -> dict[str, str]:
    return {"Authorization": f"Bearer {replay.keys.polygon_api_key}"}


def only(table: pa.Table, symbol: str) -> pa.Table:
    return table.filter(pc.equal(table.column("symbol"), symbol))


def ms(table: pa.Table) -> list[int]:
    return (pc.cast(table.column("ts"), pa.int64()).to_numpy() // 1_000_000).tolist()


# --------------------------------------------------------------------------- aggregates


def test_minute_aggs_paginate_by_base_aggregates(replay, sim):
    expected = sim.minute_bars(SIM_DAY, ["AAPL"])
    aggs = list(client(replay).list_aggs("AAPL", 1, "minute", SIM_DAY, SIM_DAY, limit=100))
    assert [a.timestamp for a in aggs] == ms(expected)
    assert [a.volume for a in aggs] == expected.column("volume").to_pylist()
    assert [a.vwap for a in aggs] == expected.column("vwap").to_pylist()
    assert [a.transactions for a in aggs] == expected.column("trade_count").to_pylist()
    assert replay.polygon.log.count("/v2/aggs/ticker/AAPL/", statuses={200}) == math.ceil(expected.num_rows / 100)


def test_minute_aggs_descending_pages_are_the_reverse(replay):
    up = list(client(replay).list_aggs("MSFT", 1, "minute", SIM_DAY, SIM_DAY, limit=150))
    down = list(client(replay).list_aggs("MSFT", 1, "minute", SIM_DAY, SIM_DAY, limit=150, sort="desc"))
    assert len(up) > 300
    assert [a.timestamp for a in down] == [a.timestamp for a in reversed(up)]


@pytest.mark.parametrize(("multiplier", "timespan", "freq"), [(5, "minute", "5min"), (15, "minute", "15min"),
                                                              (1, "hour", "1h")])
def test_coarser_aggs_are_clock_aligned_rollups(replay, sim, multiplier, timespan, freq):
    minutes = sim.minute_bars(SIM_DAY, ["SPY"]).to_pandas()
    grouped = minutes.groupby(minutes["ts"].dt.floor(freq))
    aggs = list(client(replay).list_aggs("SPY", multiplier, timespan, SIM_DAY, SIM_DAY, limit=50_000))
    assert [pd.Timestamp(a.timestamp, unit="ms", tz="UTC") for a in aggs] == list(grouped.groups)
    assert [a.volume for a in aggs] == pytest.approx(grouped["volume"].sum().tolist(), rel=1e-12)
    assert [a.open for a in aggs] == grouped["open"].first().tolist()
    assert [a.close for a in aggs] == grouped["close"].last().tolist()
    assert [a.high for a in aggs] == grouped["high"].max().tolist()
    assert [a.transactions for a in aggs] == grouped["trade_count"].sum().tolist()


def test_day_aggs_over_a_week_are_stamped_at_new_york_midnight(replay, sim):
    aggs = list(client(replay).list_aggs("AAPL", 1, "day", "2024-11-25", "2024-11-29", limit=2))
    days = calendar.sessions("2024-11-25", "2024-11-29")
    assert [datetime.fromtimestamp(a.timestamp / 1000, NY) for a in aggs] == \
        [datetime.combine(d, datetime.min.time(), tzinfo=NY) for d in days]
    assert [a.volume for a in aggs] == pytest.approx([sim.minute_bars(d, ["AAPL"])["volume"].to_numpy().sum()
                                                      for d in days], rel=1e-12)
    assert replay.polygon.log.count("/v2/aggs") == 2  # limit=2 daily aggregates per page
    pairs = list(client(replay).list_aggs("AAPL", 2, "day", "2024-11-25", "2024-11-29"))
    assert [datetime.fromtimestamp(a.timestamp / 1000, NY).day for a in pairs] == [25, 27, 29]
    assert [a.volume for a in pairs] == pytest.approx([aggs[0].volume + aggs[1].volume, aggs[2].volume,
                                                       aggs[3].volume], rel=1e-12)


def test_crypto_aggs_cover_the_utc_day(replay, sim):
    expected = sim.minute_bars(SIM_DAY, ["BTC/USD"])
    aggs = list(client(replay).list_aggs("X:BTCUSD", 1, "minute", SIM_DAY, SIM_DAY, limit=50_000))
    assert [a.timestamp for a in aggs] == ms(expected)
    assert expected["ts"][0].as_py().date() == SIM_DAY and expected["ts"][-1].as_py().date() == SIM_DAY


def test_millisecond_bounds_are_inclusive(replay, sim):
    expected = sim.minute_bars(SIM_DAY, ["AAPL"]).slice(10, 20)
    first, last = ms(expected)[0], ms(expected)[-1]
    aggs = list(client(replay).list_aggs("AAPL", 1, "minute", first, last, limit=50_000))
    assert [a.timestamp for a in aggs] == ms(expected)


def test_unknown_ticker_is_ok_without_results(replay):
    status, body, _ = get(f"{replay.polygon_url}/v2/aggs/ticker/NOPE/range/1/minute/2024-11-26/2024-11-26",
                          auth(replay))
    assert status == 200 and body["resultsCount"] == 0 and "results" not in body and "next_url" not in body
    assert list(client(replay).list_aggs("NOPE", 1, "minute", SIM_DAY, SIM_DAY)) == []


def test_bad_dates_get_400(replay):
    status, body, _ = get(f"{replay.polygon_url}/v2/aggs/ticker/AAPL/range/1/minute/yesterday/2024-11-26",
                          auth(replay))
    assert status == 400 and body["status"] == "ERROR" and "'from'" in body["error"]


# --------------------------------------------------------------------------- reference data


def test_reference_tickers_page_through_every_stock(replay, sim):
    tickers = list(client(replay).list_tickers(market="stocks", limit=7))
    expected = sorted(sim.symbols(TODAY, category="us_equities") + sim.symbols(TODAY, category="etf"))
    assert [t.ticker for t in tickers] == expected
    assert {t.market for t in tickers} == {"stocks"} and {t.locale for t in tickers} == {"us"}
    assert replay.polygon.log.count("/v3/reference/tickers") == math.ceil(len(expected) / 7)


def test_reference_cursor_alone_keeps_every_filter(replay):
    url = f"{replay.polygon_url}/v3/reference/tickers?market=stocks&type=ETF&limit=2&date=2024-11-26"
    status, page, _ = get(url, auth(replay))
    seen = [r["ticker"] for r in page["results"]]
    while "next_url" in page:
        assert list(page["next_url"].split("?", 1)[1].split("&")) == [page["next_url"].split("?", 1)[1]]
        status, page, _ = get(page["next_url"], auth(replay))  # only ?cursor=..., as the client sends it
        assert status == 200 and {r["type"] for r in page["results"]} == {"ETF"}
        seen += [r["ticker"] for r in page["results"]]
    assert seen == ["IVV", "SPY", "VOO"]


def test_reference_filters(replay):
    c = client(replay)
    assert [t.ticker for t in c.list_tickers(search="apple")] == ["AAPL"]
    assert {t.primary_exchange for t in c.list_tickers(exchange="XNYS", limit=100)} == {"XNYS"}
    assert [t.ticker for t in c.list_tickers(ticker="META", date="2024-11-26")] == ["META"]
    assert list(c.list_tickers(ticker="META", date="2010-01-04")) == []  # listed 2012: point in time
    assert [t.ticker for t in c.list_tickers(ticker_gte="V", market="stocks", limit=100)] == ["V", "VOO", "WMT", "XOM"]
    crypto = list(c.list_tickers(market="crypto", limit=100))
    btc = next(t for t in crypto if t.ticker == "X:BTCUSD")
    assert (btc.base_currency_symbol, btc.currency_symbol, btc.locale) == ("BTC", "USD", "global")
    fx = [t.ticker for t in c.list_tickers(market="fx", limit=3)]
    assert fx[:3] == ["C:AUDJPY", "C:AUDUSD", "C:EURAUD"] and len(fx) == 20
    assert next(iter(c.list_tickers(market="indices", limit=1))).ticker.startswith("I:")


def test_reference_inactive_tickers_are_the_delisted():
    server = PolygonReplay(ReplayData(SimProvider(SimMarket(n_stocks=3000))), api_keys=["k"])
    with server:
        c = RESTClient("k", base=server.url, retries=0)
        gone = list(c.list_tickers(market="stocks", active=False, date="2024-11-26", limit=1000))
        listed = {t.ticker for t in c.list_tickers(market="stocks", date="2024-11-26", limit=1000)}
    assert gone and all(t.active is False and t.delisted_utc < "2024-11-26" for t in gone)
    assert not listed & {t.ticker for t in gone}


def test_ticker_types_and_options_contracts(replay):
    c = client(replay)
    codes = {t.code for t in c.get_ticker_types(asset_class="stocks", locale="us")}
    assert {"CS", "ETF", "ADRC"} <= codes
    contracts = list(c.list_options_contracts(underlying_ticker="AAPL", as_of="2024-11-26", limit=5))
    assert len(contracts) > 5 and {x.underlying_ticker for x in contracts} == {"AAPL"}
    assert all(x.ticker.startswith("O:AAPL") and x.contract_type in ("call", "put") for x in contracts)


# --------------------------------------------------------------------------- snapshot, status


def test_snapshot_has_today_so_far_and_the_previous_session(replay, sim):
    snaps = {s.ticker: s for s in client(replay).get_snapshot_all("stocks", tickers=["AAPL", "SPY"])}
    assert set(snaps) == {"AAPL", "SPY"}
    today = only(sim.minute_bars(TODAY, ["AAPL"]), "AAPL")
    today = today.filter(pc.less_equal(today["ts"], pa.scalar(REPLAY_NOW - timedelta(minutes=1))))
    assert snaps["AAPL"].day.volume == pytest.approx(pc.sum(today["volume"]).as_py(), rel=1e-12)
    assert snaps["AAPL"].prev_day.volume == pytest.approx(
        pc.sum(sim.minute_bars(SIM_DAY, ["AAPL"])["volume"]).as_py(), rel=1e-12)
    assert snaps["AAPL"].min.timestamp == ms(today)[-1]


@pytest.mark.parametrize(("instant", "market", "early"), [
    (REPLAY_NOW, "open", False),
    (datetime(2024, 11, 27, 13, 0, tzinfo=timezone.utc), "extended-hours", True),  # 08:00 New York
    (datetime(2024, 11, 30, 15, 0, tzinfo=timezone.utc), "closed", False),         # Saturday
])
def test_market_status_follows_the_calendar(replay, instant, market, early):
    replay.clock = lambda: instant
    status = client(replay).get_market_status()
    assert (status.market, status.early_hours) == (market, early)


# --------------------------------------------------------------------------- auth, limits, faults


def test_authentication_by_bearer_or_api_key(replay):
    base = f"{replay.polygon_url}/v1/marketstatus/now"
    status, body, _ = get(base)
    assert (status, body["status"], body["error"]) == (401, "ERROR", "API Key was not provided")
    status, body, _ = get(base, {"Authorization": "Bearer wrong"})
    assert (status, body["status"], body["error"]) == (401, "ERROR", "Unknown API Key")
    assert get(f"{base}?apiKey={replay.keys.polygon_api_key}")[0] == 200
    with pytest.raises(BadResponse, match="Unknown API Key"):
        client(replay, key="wrong").get_market_status()


def test_a_plan_without_the_data_gets_403(replay):
    free = {"Authorization": f"Bearer {replay.keys.polygon_free_key}"}
    status, body, _ = get(f"{replay.polygon_url}/v2/aggs/ticker/AAPL/range/1/day/2024-11-26/2024-11-26", free)
    assert (status, body["status"]) == (403, "NOT_AUTHORIZED") and "not entitled" in body["message"]
    assert get(f"{replay.polygon_url}/v3/reference/tickers", free)[0] == 200  # reference data is in every plan


def test_rate_limit_answers_429_like_the_vendor(replay):
    replay.set_rate_limit(2, 60.0)
    url = f"{replay.polygon_url}/v1/marketstatus/now"
    assert [get(url, auth(replay))[0] for _ in range(2)] == [200, 200]
    status, body, headers = get(url, auth(replay))
    assert status == 429 and "exceeded the maximum requests per minute" in body["error"]
    assert "Retry-After" not in headers
    other = {"Authorization": f"Bearer {replay.keys.polygon_free_key}"}
    assert get(url, other)[0] == 200  # limits are per key


def test_injected_5xx_on_a_later_page_is_retried_by_the_client(replay, sim):
    replay.polygon.faults.fail_page("/v2/aggs", 3, 503)
    aggs = list(client(replay, retries=3).list_aggs("AAPL", 1, "minute", SIM_DAY, SIM_DAY, limit=100))
    assert len(aggs) == sim.minute_bars(SIM_DAY, ["AAPL"]).num_rows
    statuses = [e.status for e in replay.polygon.log.entries("/v2/aggs")]
    assert statuses[:4] == [200, 200, 503, 200]
    assert not replay.polygon.errors


def test_server_dates_follow_new_york_not_utc(replay):
    # 2024-11-26 in New York runs 05:00Z to 05:00Z next day; a session's bars all fall in it.
    aggs = list(client(replay).list_aggs("AAPL", 1, "minute", date(2024, 11, 26), date(2024, 11, 26)))
    days = {datetime.fromtimestamp(a.timestamp / 1000, NY).date() for a in aggs}
    assert days == {date(2024, 11, 26)}
