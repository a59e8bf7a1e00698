"""The shared vendor machinery: rate limiter, concurrency helper, symbol spellings."""

from __future__ import annotations

import threading
import time
import uuid

import pyarrow as pa
import pytest

from market_platform.errors import ConfigError, InvalidInputError
from market_platform.replay.http import max_in_window
from market_platform.sources import symbols as sym
from market_platform.sources.vendor import (
    RateLimiter,
    SharedRateLimiter,
    rate_from_env,
    rate_limiter,
    run_concurrently,
    scrub,
    symbol_list,
)


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


def test_shared_limiter_counts_every_process_against_one_plan(redis_url):
    # Three limiters on one key stand for three workers: together they get the plan's 5 calls,
    # where limiters of their own would have granted 15. Another key is another plan.
    key = uuid.uuid4().hex
    limiters = [rate_limiter(5, 60.0, shared_url=redis_url, vendor="Polygon", api_key=key) for _ in range(3)]
    assert all(isinstance(limiter, SharedRateLimiter) for limiter in limiters)
    assert key not in limiters[0].key  # the key is hashed, never stored
    waits: list[float] = []
    lock = threading.Lock()

    def worker(limiter):
        for _ in range(4):
            wait = limiter.try_acquire()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=worker, args=(limiter,)) for limiter in limiters for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert waits.count(0.0) == 5
    assert all(wait > 55.0 for wait in waits if wait)  # the rest wait for the first grant to leave the minute
    assert rate_limiter(5, 60.0, shared_url=redis_url, vendor="Polygon", api_key=key + "x").try_acquire() == 0.0
    assert isinstance(rate_limiter(5, shared_url=None, vendor="Polygon"), RateLimiter)  # no broker: in process
    assert rate_limiter(None, shared_url=redis_url, vendor="Polygon") is None


def test_shared_limiter_blocks_until_the_window_passes(redis_url):
    key = f"test:{uuid.uuid4().hex}"
    limiters = [SharedRateLimiter(2, 0.5, margin=0.0, url=redis_url, key=key) for _ in range(3)]
    started = time.monotonic()
    for limiter in limiters:
        for _ in range(2):
            limiter.acquire()
    assert time.monotonic() - started >= 1.0  # 6 calls at 2 per 0.5 s: two more windows after the first


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
