"""The snapshot poller: the vendor's whole-market snapshot, once a minute on the minute, into the queue.

One run covers a stock session from the pre-market open to the after-hours close (or a UTC day
of crypto). At each minute mark it asks the vendor for the snapshot and puts each raw response
on the queue before doing anything else with it; parsing and storing are the processor's job,
so a slow or stopped database loses nothing. Every minute that yields no message is a row in
`snapshot_misses` with the reason - the vendor down, 429s outlasting the minute's retries, the
poller running behind - never a silent hole. Requests go through the vendor's rate limiter and
retry policy (`sources.vendor`), so a storm of 429s is retried within the limit, not past it.

Vendors: Polygon's one-call snapshot (`/v2/snapshot/locale/us/markets/stocks/tickers`, or
`.../global/markets/crypto/tickers`) or Alpaca's per-symbol snapshots in chunks. With no vendor
key at all, the replay servers of the simulated market start on loopback and answer "as of" the
poller's clock, so a past session can be polled minute by minute at any speed.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from market_platform import calendar, settings
from market_platform.errors import (
    ConfigError,
    DatabaseUnavailableError,
    InvalidInputError,
    MarketPlatformError,
    VendorAuthError,
)
from market_platform.schemas import Source
from market_platform.snapshots.messages import SnapshotMessage
from market_platform.snapshots.queue import SnapshotQueue
from market_platform.sources.sim import SimMarket
from market_platform.sources.vendor import RetryPolicy, VendorGate
from market_platform.storage.timescale import TickStore

log = logging.getLogger(__name__)

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
PROVIDERS = ("auto", "polygon", "alpaca")
#: A minute whose poll starts this late is recorded as missed (the next one is due).
BEHIND_AFTER = timedelta(seconds=55)
#: Retries that fit in a minute: at most ~15 s of backoff over 5 attempts.
POLL_RETRY = RetryPolicy(attempts=5, backoff=0.5, max_backoff=8.0)


# --------------------------------------------------------------------------- the clock


class PollClock:
    """The poller's clock. Live (`live=True`): the wall clock. A replay of a past window: time
    starts at `start` when first read and runs at `speed` times real time, or with `speed=None`
    jumps to each minute as the poller reaches it (as fast as the vendor answers)."""

    def __init__(self, start: datetime, *, speed: float | None = 1.0, live: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if speed is not None and not speed > 0:
            raise InvalidInputError(f"speed={speed!r}: expected a positive number (times real time) or None (maximum)")
        self.start, self.speed, self.live = start.astimezone(UTC), speed, live
        self._sleep = sleep
        self._wall0: float | None = None
        self._current = self.start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        if self.live:
            return datetime.now(UTC)
        with self._lock:
            if self.speed is None:
                return self._current
            if self._wall0 is None:
                self._wall0 = time.monotonic()
            return self.start + timedelta(seconds=(time.monotonic() - self._wall0) * self.speed)

    def wait_until(self, instant: datetime) -> None:
        if not self.live and self.speed is None:
            with self._lock:
                self._current = max(self._current, instant)
            return
        ahead = (instant - self.now()).total_seconds() / (1.0 if self.live else self.speed)
        if ahead > 0:
            self._sleep(ahead)


# --------------------------------------------------------------------------- vendors


@dataclass
class SnapshotVendor:
    """Where a minute's snapshot comes from: `fetch()` yields (part, parts, raw body) per request."""

    source: str
    market: str
    fetch: Callable[[], Iterator[tuple[int, int, bytes]]]
    gate: VendorGate
    describe: str = ""

    @classmethod
    def polygon(cls, source, market: str = "stocks") -> SnapshotVendor:
        """Polygon's whole-market snapshot through `source` (a PolygonSource): one request."""
        def fetch() -> Iterator[tuple[int, int, bytes]]:
            yield 0, 1, source.snapshot_raw(market)

        return cls(Source.POLYGON_REST.value, market, fetch, source.gate, f"Polygon {source.base_url}")

    @classmethod
    def alpaca(cls, source, symbols: Sequence[str], market: str = "stocks") -> SnapshotVendor:
        """Alpaca's snapshots of `symbols` through `source` (an AlpacaSource), in chunks."""
        names = sorted(set(symbols))
        if not names:
            raise InvalidInputError("Alpaca snapshots need symbols: expected a non-empty universe")
        parts = math.ceil(len(names) / source.symbols_per_request)

        def fetch() -> Iterator[tuple[int, int, bytes]]:
            for part, (_, body) in enumerate(source.snapshot_raw(names)):
                yield part, parts, body

        return cls(Source.ALPACA_REST.value, market, fetch, source.gate,
                   f"Alpaca {source.data_url} ({len(names)} symbols in {parts} requests)")


# --------------------------------------------------------------------------- polling


@dataclass
class PollReport:
    """What a poll run did."""

    source: str
    market: str
    polled: list[datetime] = field(default_factory=list)  # minutes with every part enqueued
    missed: list[tuple[datetime, str]] = field(default_factory=list)
    messages: int = 0
    bytes: int = 0
    requests: int = 0
    throttled: int = 0

    def summary(self) -> str:
        return (f"{len(self.polled)} minutes polled, {len(self.missed)} missed; {self.messages} messages "
                f"({self.bytes / 1e6:.1f} MB) enqueued; {self.requests} requests, {self.throttled} answered 429")


def minute_marks(start: datetime, end: datetime) -> list[datetime]:
    """Every minute mark in [start, end], from the first at or after `start`."""
    first = start.astimezone(UTC).replace(second=0, microsecond=0)
    if first < start:
        first += MINUTE
    count = int((end - first) // MINUTE) + 1
    return [first + i * MINUTE for i in range(max(count, 0))]


def poll_window(queue: SnapshotQueue, vendor: SnapshotVendor, minutes: Sequence[datetime], clock: PollClock, *,
                store: TickStore, behind_after: timedelta = BEHIND_AFTER,
                on_polled: Callable[[datetime, PollReport], None] | None = None,
                stop: threading.Event | None = None) -> PollReport:
    """Poll `vendor` at each of `minutes` by `clock`, enqueue every response at once, and record
    each minute that yields nothing in snapshot_misses. `on_polled(minute, report)` runs after
    each minute. VendorAuthError (a key or plan problem every minute would hit) stops the run."""
    report = PollReport(vendor.source, vendor.market)
    for minute in minutes:
        if stop is not None and stop.is_set():
            break
        clock.wait_until(minute)
        late = clock.now() - minute
        if late >= behind_after:
            _miss(store, report, vendor, minute, f"the poller reached this minute {late.total_seconds():.0f} s late",
                  0, 0, [])
        else:
            _poll_minute(queue, vendor, minute, clock, store, report)
        if on_polled is not None:
            on_polled(minute, report)
    return report


def _poll_minute(queue: SnapshotQueue, vendor: SnapshotVendor, minute: datetime, clock: PollClock,
                 store: TickStore, report: PollReport) -> None:
    requests, throttled = vendor.gate.stats.requests, vendor.gate.stats.throttled
    done: list[int] = []
    parts = 1
    try:
        for part, parts, body in vendor.fetch():
            queue.put(SnapshotMessage(vendor.source, vendor.market, minute, clock.now(), body, part, parts))
            done.append(part)
            report.messages += 1
            report.bytes += len(body)
    except VendorAuthError:
        raise
    except (MarketPlatformError, OSError) as exc:
        spent = vendor.gate.stats.requests - requests
        limited = vendor.gate.stats.throttled - throttled
        failed = [p for p in range(max(parts, len(done) + 1)) if p not in done]
        _miss(store, report, vendor, minute, f"{type(exc).__name__}: {exc}", spent, limited, failed)
        return
    finally:
        report.requests += vendor.gate.stats.requests - requests
        report.throttled += vendor.gate.stats.throttled - throttled
    report.polled.append(minute)


def _miss(store: TickStore, report: PollReport, vendor: SnapshotVendor, minute: datetime, reason: str,
          requests: int, throttled: int, parts: list[int]) -> None:
    report.missed.append((minute, reason))
    log.warning("snapshots %s %s %s: missed: %s", vendor.source, vendor.market, f"{minute:%Y-%m-%d %H:%M}Z", reason)
    try:
        store.record_snapshot_miss(source=vendor.source, market=vendor.market, minute=minute, reason=reason[:1000],
                                   requests=requests, throttled=throttled, parts=parts)
    except DatabaseUnavailableError as exc:  # the run's report still has it; the run fails at the end
        log.error("snapshots: cannot record the missed minute %s: %s", minute.isoformat(), exc)


# --------------------------------------------------------------------------- a whole run


def window(market: str, day: date | str, *, start: str | None = None, end: str | None = None) -> tuple[datetime, datetime]:
    """[start, end] a poll run covers: a stock session's extended hours, or a UTC day of crypto,
    narrowed by `start`/`end` (HH:MM, New York for stocks, UTC for crypto)."""
    from market_platform.streaming.runs import _wall_time, crypto_window, stock_window

    if market == "stocks":
        return stock_window(day, start=start, end=end)
    if market != "crypto":
        raise InvalidInputError(f"market {market!r}: expected stocks or crypto")
    lo, hi = crypto_window(day)
    first = datetime.combine(lo.date(), _wall_time(start, "start"), UTC) if start else lo
    last = datetime.combine(lo.date(), _wall_time(end, "end"), UTC) if end else hi
    if not lo <= first < last <= hi:
        raise InvalidInputError(f"the crypto window {start or '00:00'}-{end or '24:00'} UTC of {lo.date()} is empty: "
                                "expected start before end, within the day")
    return first, last


def has_keys(provider: str, env: Mapping[str, str]) -> bool:
    if provider == "polygon":
        return bool(env.get(settings.POLYGON_API_KEY_VAR))
    return bool(env.get(settings.ALPACA_API_KEY_VAR) and env.get(settings.ALPACA_SECRET_KEY_VAR))


def choose_provider(provider: str, env: Mapping[str, str]) -> str:
    """`auto`: Polygon when POLYGON_API_KEY is set, else Alpaca when its keys are, else Polygon
    (served by the replay)."""
    if provider not in PROVIDERS:
        raise ConfigError(f"snapshot provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
    if provider != "auto":
        return provider
    if has_keys("polygon", env) or not has_keys("alpaca", env):
        return "polygon"
    return "alpaca"


@contextmanager
def snapshot_vendor(provider: str, market: str, clock: PollClock, *, sim_market: SimMarket,
                    symbols: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
                    retry: RetryPolicy = POLL_RETRY, **options: Any) -> Iterator[SnapshotVendor]:
    """The vendor to poll: Polygon or Alpaca with the keys of the environment, or, with no vendor
    key at all, that vendor's replay of `sim_market` on loopback, answering as of `clock`.
    Alpaca needs `symbols` (default: the replay's stocks of the day, or Alpaca's crypto pairs)."""
    from market_platform.history.vendors import has_vendor_keys
    from market_platform.replay import ReplayData, SimProvider
    from market_platform.replay.alpaca import AlpacaReplay
    from market_platform.replay.polygon import PolygonReplay
    from market_platform.replay.servers import ReplayKeys
    from market_platform.sources.alpaca import AlpacaSource
    from market_platform.sources.polygon import PolygonSource

    env = os.environ if environ is None else environ
    chosen = choose_provider(provider, env)
    if has_vendor_keys(env):
        if not has_keys(chosen, env):
            raise ConfigError(f"snapshot provider {chosen}: its keys are not set "
                              f"({settings.POLYGON_API_KEY_VAR} or {settings.ALPACA_API_KEY_VAR}/"
                              f"{settings.ALPACA_SECRET_KEY_VAR})")
        if chosen == "polygon":
            yield SnapshotVendor.polygon(PolygonSource.from_env(env, retry=retry, **options), market)
        else:
            source = AlpacaSource.from_env(env, retry=retry, **options)
            day = clock.now().astimezone(calendar.NEW_YORK).date()
            names = symbols or source.universe("crypto" if market == "crypto" else "us_equities", day)\
                .column("symbol").to_pylist()
            yield SnapshotVendor.alpaca(source, names, market)
        return
    keys = ReplayKeys()
    data = ReplayData(SimProvider(sim_market))
    options = {"rate_limit": None, **options}
    if chosen == "polygon":
        server = PolygonReplay(data, api_keys=[keys.polygon_api_key], clock=clock.now)
        server.start()
        try:
            yield SnapshotVendor.polygon(PolygonSource(keys.polygon_api_key, base_url=server.url, retry=retry,
                                                       **options), market)
        finally:
            server.stop()
        return
    server = AlpacaReplay(data, keys={keys.alpaca_key_id: keys.alpaca_secret}, clock=clock.now)
    server.start()
    try:
        source = AlpacaSource(keys.alpaca_key_id, keys.alpaca_secret, data_url=server.url, trading_url=server.url,
                              feed="sip", retry=retry, **options)
        day = clock.start.astimezone(UTC if market == "crypto" else calendar.NEW_YORK).date()
        names = symbols or (sim_market.symbols(day, category="crypto") if market == "crypto"
                            else sim_market.stock_symbols(day))
        yield SnapshotVendor.alpaca(source, names, market)
    finally:
        server.stop()


def poll_snapshots(store: TickStore, queue: SnapshotQueue, *, sim_market: SimMarket, market: str = "stocks",
                   day: date | str | None = None, start: str | None = None, end: str | None = None,
                   speed: float | None = 1.0, provider: str = "auto", symbols: Sequence[str] | None = None,
                   environ: Mapping[str, str] | None = None,
                   on_start: Callable[[SnapshotVendor, list[datetime]], None] | None = None,
                   on_polled: Callable[[datetime, PollReport], None] | None = None,
                   stop: threading.Event | None = None) -> PollReport:
    """One poll run (what `snapshot_poll_job` and `market-platform snapshots` do): the window of
    `day` (default today: the session in New York, the UTC day for crypto), from the vendor the
    environment names, or the replay at `speed` (None: as fast as possible). A live run starts at
    the next minute mark; a replay walks the window from its start."""
    from market_platform.history.vendors import has_vendor_keys

    env = os.environ if environ is None else environ
    live = has_vendor_keys(env)
    zone = UTC if market == "crypto" else calendar.NEW_YORK
    day = calendar.to_date(day) if day is not None else datetime.now(UTC).astimezone(zone).date()
    lo, hi = window(market, day, start=start, end=end)
    clock = PollClock(lo, speed=1.0 if live else speed, live=live)
    minutes = minute_marks(max(lo, clock.now()) if live else lo, hi)
    if not minutes:
        raise InvalidInputError(f"the {market} window of {day.isoformat()} ({lo:%H:%M}-{hi:%H:%M} UTC) is over: "
                                "expected a window with minutes still to come")
    with snapshot_vendor(provider, market, clock, sim_market=sim_market, symbols=symbols, environ=env) as vendor:
        if on_start is not None:
            on_start(vendor, minutes)
        return poll_window(queue, vendor, minutes, clock, store=store, on_polled=on_polled, stop=stop)
