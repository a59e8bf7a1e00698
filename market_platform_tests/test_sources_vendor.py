"""The shared vendor machinery: rate limiter, concurrency helper, symbol spellings."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from market_platform.errors import ConfigError, InvalidInputError
from market_platform.replay.http import max_in_window
from market_platform.sources import symbols as sym
from market_platform.sources.vendor import RateLimiter, rate_from_env, run_concurrently, scrub, symbol_list


class VirtualTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(("calls", "period"), [(5, 60.0), (300, 60.0), (3, 2.0)])
def test_limiter_never_exceeds_the_limit_in_any_window(calls, period):
    vt = VirtualTime()
    limiter = RateLimiter(calls, period, margin=0.0, clock=vt.clock, sleep=vt.sleep)
    times = []
    for _ in range(calls * 4 + 1):
        limiter.acquire()
        times.append(vt.now)
    assert max_in_window(times, period) == calls
    # ...and it does not wait longer than it must: four full windows for 4 * calls + 1 calls.
    assert times[-1] == pytest.approx(4 * period)


def test_limiter_margin_and_bad_settings():
    vt = VirtualTime()
    limiter = RateLimiter(2, 1.0, margin=0.25, clock=vt.clock, sleep=vt.sleep)
    waits = [limiter.acquire() for _ in range(3)]
    assert waits == [0.0, 0.0, pytest.approx(1.25)]
    assert RateLimiter(5).margin == pytest.approx(0.6)
    for calls, period in ((0, 60.0), (True, 60.0), (5, 0.0)):
        with pytest.raises(ConfigError):
            RateLimiter(calls, period)


def test_limiter_is_shared_by_threads():
    limiter = RateLimiter(1000, 60.0)
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for _ in range(100):
            limiter.acquire()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(limiter._grants) == 800  # every grant counted once, none lost to a race


def test_run_concurrently_keeps_order_and_reports_each_item():
    done = []
    results = run_concurrently(list(range(20)), lambda i: i * i, workers=4, on_done=lambda i, r: done.append((i, r)))
    assert results == [i * i for i in range(20)]
    assert sorted(done) == [(i, i * i) for i in range(20)]
    assert run_concurrently([], lambda i: i, workers=2) == []


def test_run_concurrently_stops_at_the_first_failure():
    started = []

    def work(i):
        started.append(i)
        if i == 3:
            raise InvalidInputError("item 3 is bad")
        return i

    with pytest.raises(InvalidInputError, match="item 3"):
        run_concurrently(list(range(200)), work, workers=2)
    assert len(started) <= 6  # item 3, those already running, none after


def test_small_helpers():
    assert scrub("key=abc123 and abc123", ["abc123", None]) == "key=*** and ***"
    assert symbol_list(["MSFT", "AAPL", "MSFT"]) == ["AAPL", "MSFT"]
    with pytest.raises(InvalidInputError, match="without spaces"):
        symbol_list(["AAPL", " MSFT"])
    assert rate_from_env({}, "X", 5) == 5 and rate_from_env({"X": "300"}, "X", 5) == 300
    with pytest.raises(ConfigError, match="X='many'"):
        rate_from_env({"X": "many"}, "X", 5)


@pytest.mark.parametrize(("symbol", "polygon", "flatfile"), [
    ("AAPL", "AAPL", "AAPL"), ("BRK.B", "BRK.B", "BRK.B"), ("BTC/USD", "X:BTCUSD", "X:BTC-USD"),
    ("ETH/BTC", "X:ETHBTC", "X:ETH-BTC"), ("BTC/USDT", "X:BTCUSDT", "X:BTC-USDT"), ("EUR/USD", "C:EURUSD", "C:EUR-USD"),
    ("SPY241220C00590000", "O:SPY241220C00590000", "SPY241220C00590000"),
])
def test_symbol_spellings_round_trip(symbol, polygon, flatfile):
    assert sym.to_polygon(symbol) == polygon and sym.from_polygon(polygon) == symbol
    assert sym.to_flatfile(symbol) == flatfile
    assert sym.from_flatfile_array(pa.array([flatfile])).to_pylist() == [symbol]
    assert sym.to_polygon("SPX", index=True) == "I:SPX" and sym.from_polygon("I:SPX") == "SPX"
