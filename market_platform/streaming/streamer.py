"""The live streamer: one Alpaca stream (stocks or crypto) into the tick store for one window.

    alpaca-py (raw dicts) -> lists by type -> flush (N rows or T seconds) -> Pipeline
        (convert + validate -> bounded queue -> binary COPY; spool when the database lags)

One asyncio loop in the calling thread runs alpaca-py's own client (`_run_forever`, so its
reconnects and backoff apply) beside a ticker that flushes on time, closes each minute's
statistics, watches for a stream that is connected but silent, and ends the run. Every
disconnect becomes a gap (from the last event before it to the first after it) written to
`stream_gaps`; a run that starts where an earlier run of the same window stopped (a crash, a
kill) records the gap between them. The minute check compares each symbol's minutes with the
vendor's bars as the stream goes and at its end, so a silence too short to notice becomes a gap
too; every gap's quotes, trades and bars are refilled from the vendor's history (repair.py).

Two clocks: `wall` (a live feed: the window is real time) and `events` (a replay of a past
session at any speed: the stream's time is the latest event time of a valid message inside the
window, so no single message can move it past the window's end, or the checkpoint with it).

Fatal: 402 (bad key) and 409 (feed not in the plan) raise `VendorAuthError` after alpaca-py's
first attempt, 406 (connection limit) `VendorError` after a few (alpaca-py alone would retry 402
and 406 forever); a stream that cannot connect at all `VendorUnavailableError` after
`connect_attempts` tries; a writer that stops (the database refused a write for anything but a
row's content, which goes to dead_letters) `StorageError`, what was not written kept in the spool.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from market_platform import settings
from market_platform.errors import (
    DatabaseUnavailableError,
    InvalidInputError,
    StorageError,
    VendorAuthError,
    VendorError,
    VendorUnavailableError,
)
from market_platform.schemas import Source
from market_platform.sources.alpaca import check_symbol_syntax
from market_platform.storage.server import one_line
from market_platform.storage.timescale import TickStore
from market_platform.streaming.client import describe_error, make_client
from market_platform.streaming.convert import Bounds, Converter
from market_platform.streaming.pipeline import Op, Pipeline, Unit, read_checkpoint
from market_platform.streaming.repair import History, RepairWorker
from market_platform.streaming.spool import Spool
from market_platform.streaming.stats import StreamStats, log_line

log = logging.getLogger(__name__)

UTC = timezone.utc
NS = 1_000_000_000
MINUTE_NS = 60 * NS
_TICK = 0.05  # seconds between ticker rounds


@dataclass(frozen=True)
class StreamConfig:
    """What to stream, from where, and how.

    symbols, start, end  the subscription and the window [start, end) of event time
    kind, feed           "stocks" with feed "iex" or "sip", or "crypto" with feed "us"
    api_key, secret_key  Alpaca credentials (never logged); url: alpaca-py's `url_override`
    clock                "wall" for a live feed, "events" for a replay of a past session
    flush_rows, flush_interval   a batch goes to the database at N messages or T seconds
    queue_units, queue_batches   bounds of the two in-memory queues (then backpressure/spool)
    stale_after          seconds without data, connected, during the window: reconnect
    end_grace            wall clock: seconds after `end` to wait for the last minute's bars
    end_idle             events clock: seconds without data, once the window's end was
                         reached, before the run ends
    drain_timeout        seconds the end of a run waits for the database
    give_up_after        events clock: seconds without any data after which the run ends
    repair_delay         seconds after a gap (or a chunk of minutes to check) before its history
                         is fetched: the vendor's REST history needs a moment after a minute closes
    check_minutes        minutes checked against the vendor's bars at a time (repair.py)
    late_start_after     a first event this long after `start` records a gap from `start`
    connect_attempts     failed connections in a row, before the first success, that fail the run
    bounds               plausible prices, sizes and timestamps (convert.Bounds)
    change_filter        store a quote only when its bid or ask price changed
    fast_dispatch        hand messages to the batcher by type directly (see client.py)
    compression          negotiate permessage-deflate (alpaca-py's default; off here: inflating
                         costs CPU the client is short of - 5 to 30% of the throughput in the
                         benchmarks on 2 cores - while a full session is ~100 KB/s on average
                         and ~5 MB/s at the open uncompressed)
    gc_threshold         the garbage collector's first threshold during the run (None: as it
                         is): messages are millions of short-lived dicts that hold no cycles,
                         and collecting at the default 700 allocations costs a third of the time
    spool_dir            where batches wait while the database is away
                         (default $MARKET_PLATFORM_HOME/spool/<stream>)
    stream               the name in stream_stats, stream_gaps, dead_letters
                         (default alpaca_stocks_<feed> / alpaca_crypto_<feed>)
    """

    symbols: tuple[str, ...]
    start: datetime
    end: datetime
    kind: str = "stocks"
    feed: str = "iex"
    api_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    url: str | None = None
    clock: str = "wall"
    flush_rows: int = 20_000
    flush_interval: float = 0.25
    queue_units: int = 4
    queue_batches: int = 4
    stale_after: float = 15.0
    end_grace: float = 90.0
    end_idle: float = 1.0
    drain_timeout: float = 120.0
    give_up_after: float = 600.0
    repair_delay: float = 60.0
    check_minutes: int = 5
    late_start_after: float = 120.0
    change_filter: bool = False
    fast_dispatch: bool = True
    compression: bool = False
    gc_threshold: int | None = 100_000
    connection_limit_retries: int = 5
    connect_attempts: int = 5
    bounds: Bounds = Bounds()
    spool_dir: Path | None = None
    stream: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("stocks", "crypto"):
            raise InvalidInputError(f"kind={self.kind!r}: expected 'stocks' or 'crypto'")
        feeds = ("us",) if self.kind == "crypto" else ("iex", "sip")
        if self.feed not in feeds:
            raise InvalidInputError(f"feed={self.feed!r} for {self.kind}: expected one of {', '.join(feeds)}")
        if self.clock not in ("wall", "events"):
            raise InvalidInputError(f"clock={self.clock!r}: expected 'wall' or 'events'")
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidInputError(f"{name}={value!r}: expected a timezone-aware datetime")
        if self.end <= self.start:
            raise InvalidInputError(f"end={self.end.isoformat()} is not after start={self.start.isoformat()}")
        check_symbol_syntax(self.symbols, crypto=self.kind == "crypto")
        for name in ("flush_rows", "queue_units", "queue_batches", "check_minutes", "connect_attempts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidInputError(f"{name}={getattr(self, name)!r}: expected a whole number >= 1")
        for name in ("flush_interval", "stale_after", "end_idle"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name}={getattr(self, name)!r}: expected a positive number of seconds")

    @property
    def name(self) -> str:
        return self.stream or f"alpaca_{self.kind}_{self.feed}"

    @property
    def crypto(self) -> bool:
        return self.kind == "crypto"


@dataclass
class StreamReport:
    """What a run did: totals, gaps, the spool, and each minute's statistics row."""

    stream: str
    start: datetime
    end: datetime
    received: int = 0
    quotes: int = 0
    trades: int = 0
    bars: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    filtered: int = 0
    outside_window: int = 0  # valid messages of the feed before or after the window: not this run's
    errors: int = 0
    reconnects: int = 0
    gaps: int = 0
    repaired_gaps: int = 0
    repaired_bars: int = 0
    repaired_quotes: int = 0
    repaired_trades: int = 0
    repair_calls: int = 0
    repairs: list[dict[str, Any]] = field(default_factory=list)  # per gap: what was refilled
    repair_failures: list[str] = field(default_factory=list)
    spooled: int = 0
    replayed: int = 0
    spool_left: int = 0
    spool_set_aside: int = 0  # spooled entries of an earlier run moved to dead_letters
    db_outages: int = 0
    first_event: datetime | None = None
    last_event: datetime | None = None
    wall_seconds: float = 0.0
    stream_seconds: float = 0.0  # from the first message's arrival to the last commit
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    minutes: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The totals as plain values (no per-minute rows)."""
        out = {k: v for k, v in vars(self).items() if k != "minutes"}
        for key in ("start", "end", "first_event", "last_event"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


@dataclass
class _Gap:
    start_ns: int
    reason: str


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // NS, UTC) + timedelta(microseconds=ns % NS // 1000)


def _to_ns(instant: datetime) -> int:
    delta = instant.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1000


class Streamer:
    """Streams `config` into the tick store (see the module docstring); `run()` blocks.

    store_url            the tick store (default: `database_url()`); each thread opens its own
    history              the vendor's history that checks minutes and refills gaps (repair.py;
                         None: gaps are recorded only)
    event_to_wall        event ns -> the wall time it happened (a replay's clock), for the lag
                         from event to commit; default: the event time itself on the wall
                         clock, and the arrival time on the events clock
    on_minute            called in the run's thread with each minute's stream_stats row
    """

    def __init__(
        self,
        config: StreamConfig,
        *,
        store_url: str | None = None,
        history: History | None = None,
        event_to_wall: Callable[[np.ndarray], np.ndarray] | None = None,
        on_minute: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self._store_url = store_url
        self._history = history
        if event_to_wall is None and config.clock == "wall":
            event_to_wall = _event_seconds
        self._event_to_wall = event_to_wall
        self._on_minute = on_minute
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._fatal: BaseException | None = None
        self.report = StreamReport(config.name, config.start, config.end)
        self._start_ns, self._end_ns = _to_ns(config.start), _to_ns(config.end)

    # -- public --------------------------------------------------------------------------------

    def run(self) -> StreamReport:
        """Stream until the window ends (or `stop()`); flush, drain, sweep the gaps; report.

        Raises VendorAuthError on 402/409, VendorError on a lasting 406 or a refused
        subscription, VendorUnavailableError when it cannot connect at all, StorageError when
        the writer stops.
        """
        thresholds = gc.get_threshold()
        if self.config.gc_threshold is not None:
            gc.set_threshold(self.config.gc_threshold, *thresholds[1:])
        try:
            return asyncio.run(self._main())
        finally:
            gc.set_threshold(*thresholds)

    def stop(self) -> None:
        """Ask the run to end (from any thread); it flushes and drains as at the window's end."""
        self._stop_requested.set()
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)

    # -- setup and teardown ----------------------------------------------------------------------

    def _store(self) -> TickStore:
        return TickStore.from_settings(self._store_url)

    async def _main(self) -> StreamReport:
        cfg = self.config
        started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop_event.set()
        store = self._store()
        store.init_schema()
        spool_dir = cfg.spool_dir or settings.home() / "spool" / cfg.name
        self._spool = Spool(spool_dir)
        self._stats = StreamStats(cfg.name)
        self._stats.start(self._minute_of(self._start_ns))
        self._repairer = (RepairWorker(self._store, cfg.name, self._history, cfg.symbols, (cfg.start, cfg.end),
                                       delay=cfg.repair_delay, check_minutes=cfg.check_minutes)
                          if self._history is not None else None)
        converter = Converter(cfg.name, crypto=cfg.crypto, symbols=cfg.symbols, window=(cfg.start, cfg.end),
                              change_filter=cfg.change_filter, bounds=cfg.bounds)
        self._pipeline = Pipeline(
            self._store, converter, self._stats, self._spool, queue_units=cfg.queue_units,
            queue_batches=cfg.queue_batches, on_gap=self._gap_recorded, event_to_wall=self._event_to_wall,
            checkpoint=spool_dir / "checkpoint.json",
        )
        if self._pipeline.depth():
            log.info("%s: %d spooled batches from an earlier run go first", cfg.name, self._pipeline.depth())
        self._gap: _Gap | None = self._restart_gap(store)
        store.close()
        self._quotes: list = []
        self._trades: list = []
        self._bars: list = []
        self._dead: list[dict] = []
        self._sinks = {"q": self._quotes, "t": self._trades, "b": self._bars, "u": self._bars}
        self._clock_ns = self._start_ns
        self._first_seen: float | None = None
        self._flushed = 0
        self._seen_count, self._seen_at = -1, time.monotonic()
        self._connected = False
        self._connections = 0
        self._connect_failures = 0
        self._connect_first_failure: float | None = None
        self._stopping = False
        self._first_data = True
        self._limit_errors = 0
        self._flushing = asyncio.Lock()
        if self._repairer is not None:
            self._repairer.start()
        self._pipeline.start()
        self._client = make_client(
            self, crypto=cfg.crypto, api_key=cfg.api_key, secret_key=cfg.secret_key, feed=cfg.feed, url=cfg.url,
            symbols=list(cfg.symbols), sinks=self._sinks, flush_rows=cfg.flush_rows, fast=cfg.fast_dispatch,
            compression=cfg.compression,
        )
        runner = asyncio.ensure_future(self._client._run_forever())
        ticker = asyncio.ensure_future(self._ticker())
        stopper = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({runner, stopper, ticker}, return_when=asyncio.FIRST_COMPLETED)
            await self._shutdown(runner)
        finally:
            ticker.cancel()
            stopper.cancel()
            if not runner.done():
                runner.cancel()
        for task in (runner, ticker):  # a failure of either ends the run with its error
            if task.done() and not task.cancelled() and task.exception() is not None and self._fatal is None:
                self._fatal = task.exception()
        await self._finish(started)
        if self._fatal is not None:
            raise self._fatal
        return self.report

    async def _shutdown(self, runner: asyncio.Future) -> None:
        self._stopping = True
        if not runner.done():
            await self._client.stop_ws()
            ws = self._client._ws
            if ws is not None:
                try:
                    await asyncio.wait_for(ws.close(), 5)
                except (asyncio.TimeoutError, Exception):  # closing a dead socket may fail any way
                    pass
            try:
                await asyncio.wait_for(asyncio.shield(runner), 10)
            except asyncio.TimeoutError:
                log.warning("%s: alpaca-py did not stop within 10 s", self.config.name)
        await self._flush()
        # A gap still open (disconnected at the end, or no valid event since) runs to where the
        # window (or the run) ended.
        end_ns = self._end_ns if self.config.clock == "events" else min(self._end_ns, _to_ns(datetime.now(UTC)))
        if self._gap is not None and self._fatal is None:
            await self._put(self._gap_op(self._gap.start_ns, max(end_ns, self._gap.start_ns),
                                         self._gap.reason + " (not reconnected before the end)"))
            self._gap = None
        await self._put(Op("close_gap", {"end_ns": end_ns}))

    async def _finish(self, started: float) -> None:
        cfg = self.config
        drained = await asyncio.get_running_loop().run_in_executor(None, self._pipeline.drain, cfg.drain_timeout)
        if not drained:
            log.error("%s: the tick store did not take everything within %.0f s; the rest stays in %s for the next run",
                      cfg.name, cfg.drain_timeout, self._spool.directory)
        # The last minute's row, complete now that everything is written (an upsert of its minute).
        row = self._stats.snapshot(0 if drained else self._pipeline.depth())
        self._emit_minute(row)
        if drained:
            drained = await asyncio.get_running_loop().run_in_executor(None, self._write_stats, row)
        if not drained:
            self._pipeline.put(Op("stats", {"rows": [row]}))
        left = self._pipeline.close()
        report = self.report
        if self._repairer is not None:
            self._repairer.close()
            if drained and self._fatal is None:
                await asyncio.get_running_loop().run_in_executor(None, self._repairer.sweep, self._checked_until())
            repairs = [r for r in self._repairer.repairs if r.error is None]
            report.repaired_gaps = len(repairs)
            report.repaired_bars = sum(r.bars for r in repairs)
            report.repaired_quotes = sum(r.quotes for r in repairs)
            report.repaired_trades = sum(r.trades for r in repairs)
            report.repair_calls = sum(r.calls for r in self._repairer.repairs)
            report.repairs = [r.summary() for r in self._repairer.repairs]
            report.repair_failures = list(self._repairer.failures)
            report.gaps += self._repairer.gaps_found
        totals = self._stats.totals
        report.received = totals["received"]
        if self._pipeline.first_event_ns:
            report.first_event = _from_ns(self._pipeline.first_event_ns)
        if self._pipeline.converted_event_ns:
            report.last_event = _from_ns(self._pipeline.converted_event_ns)
        report.quotes, report.trades, report.bars = (totals["quotes_inserted"], totals["trades_inserted"],
                                                     totals["bars_inserted"])
        report.duplicates, report.dead_letters = totals["duplicates"], totals["dead_letters"]
        report.errors, report.reconnects = totals["errors"], totals["reconnects"]
        report.filtered, report.outside_window = self._stats.filtered, self._stats.outside_window
        report.spooled, report.replayed, report.spool_left = self._pipeline.spooled, self._pipeline.replayed, left
        report.spool_set_aside = self._pipeline.set_aside
        report.db_outages = self._pipeline.db_outages
        p50, p99 = self._stats.lag_total.percentile(50), self._stats.lag_total.percentile(99)
        report.lag_p50_ms = round(p50, 3) if p50 is not None else None
        report.lag_p99_ms = round(p99, 3) if p99 is not None else None
        report.wall_seconds = round(time.monotonic() - started, 3)
        if self._pipeline.first_arrival is not None and self._pipeline.last_commit is not None:
            report.stream_seconds = round(self._pipeline.last_commit - self._pipeline.first_arrival, 3)
        # The caller prints or logs the report (`summary()`); once is enough.
        log.debug("%s: done: %s", cfg.name, report.summary())

    def _checked_until(self) -> datetime:
        """How far the minute check at the end goes: the window's end, unless the run was
        stopped before it (then up to the last minute committed)."""
        if not self._stop_requested.is_set():
            return self.config.end
        committed = self._pipeline.committed_event_ns
        return self.config.start if not committed else min(self.config.end, self._minute_of(committed))

    def _write_stats(self, row: dict[str, Any]) -> bool:
        try:
            with self._store() as store:
                store.write_stream_stats([row])
            return True
        except DatabaseUnavailableError:
            return False

    def _restart_gap(self, store: TickStore) -> _Gap | None:
        """An earlier run of this window stopped at the last event it committed: a gap from there."""
        cfg = self.config
        candidates = []
        checkpoint = read_checkpoint(self._spool.directory / "checkpoint.json")
        if checkpoint is not None:
            candidates.append(checkpoint)
        last_bar = store.read_arrow(
            "SELECT ts FROM bars_1m WHERE source = %(source)s AND ts >= %(start)s AND ts < %(end)s "
            "AND symbol = ANY(%(symbols)s) ORDER BY ts DESC LIMIT 1",
            {"source": Source.ALPACA_STREAM.value, "start": cfg.start, "end": cfg.end, "symbols": list(cfg.symbols)},
        ).column("ts")
        if len(last_bar):
            candidates.append(_to_ns(last_bar[0].as_py()) + MINUTE_NS)  # a bar arrives once its minute is over
        previous = [ns for ns in candidates if self._start_ns <= ns < self._end_ns]
        if not previous:
            return None
        return _Gap(max(previous), f"stream restarted (an earlier run stopped at {_from_ns(max(previous)):%H:%M:%S} UTC)")

    # -- the ticker -------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            count = self._flushed + len(self._quotes) + len(self._trades) + len(self._bars)
            if count != self._seen_count:
                self._seen_count, self._seen_at = count, now
                if self._first_seen is None and count > self._flushed:
                    self._first_seen = time.time()
            if self._first_seen is not None and time.time() - self._first_seen >= cfg.flush_interval:
                await self._flush()
            if self._pipeline.failure is not None:
                self._fail(StorageError(
                    f"the tick store refused a write, so the stream stopped: {one_line(self._pipeline.failure)}; "
                    f"what was not written is kept in {self._spool.directory} and goes first at the next run"))
                return
            self._clock_ns = max(self._clock_ns, self._pipeline.converted_event_ns)
            if self._repairer is not None:
                self._repairer.watch(self._pipeline.committed_event_ns)
            rows = self._stats.roll(self._minute_of(self._clock()), self._pipeline.depth())
            for row in rows:
                self._emit_minute(row)
            if rows:  # one write for the minutes a fast clock went past at once
                await self._put(Op("stats", {"rows": rows}))
            idle = now - self._seen_at
            if self._connected and not self._stopping and self._window_open() and idle > cfg.stale_after:
                await self._stale(idle)
            if self._ended(idle):
                log.info("%s: the window has ended", cfg.name)
                self._stop_event.set()
                return

    def _clock(self) -> int:
        if self.config.clock == "wall":
            return min(max(_to_ns(datetime.now(UTC)), self._start_ns), self._end_ns)
        return min(max(self._clock_ns, self._pipeline.converted_event_ns), self._end_ns)

    def _minute_of(self, ns: int) -> datetime:
        return _from_ns(ns - ns % MINUTE_NS)

    def _window_open(self) -> bool:
        if self.config.clock == "wall":
            return self._start_ns <= _to_ns(datetime.now(UTC)) < self._end_ns
        return self._clock() < self._end_ns - MINUTE_NS

    def _ended(self, idle: float) -> bool:
        cfg = self.config
        if cfg.clock == "wall":
            now = _to_ns(datetime.now(UTC))
            if now >= self._end_ns + int(cfg.end_grace * NS):
                return True
            return now >= self._end_ns and self._clock_ns >= self._end_ns and idle >= cfg.end_idle
        clock = self._clock()
        if self._pipeline.beyond_event_ns >= self._end_ns + MINUTE_NS:
            # A feed that serves more than the window (a replay of the whole session) is a minute
            # past its end: the last minute's bars have come, and waiting for silence would read on.
            return True
        if clock >= self._end_ns:
            return idle >= cfg.end_idle
        if idle >= cfg.give_up_after:
            # The events clock stands still without events: a replay that stopped sending would
            # otherwise keep the run waiting for the end of a window it never reaches.
            log.error("%s: no data for %.0f s; ending the run", cfg.name, idle)
            return True
        # The last minute had no trades (no bars): stop once it has been quiet a while longer.
        return clock >= self._end_ns - MINUTE_NS and idle >= 5 * cfg.end_idle and self._connected

    async def _stale(self, idle: float) -> None:
        await self.on_disconnect(f"stale: connected but no market data for {idle:.1f} s")
        ws = self._client._ws
        if ws is not None:
            # alpaca-py sees the connection close and reconnects with its own backoff.
            asyncio.ensure_future(ws.close())

    def _emit_minute(self, row: dict[str, Any]) -> None:
        self.report.minutes.append(row)
        log.info(log_line(row))
        if self._on_minute is not None:
            try:
                self._on_minute(row)
            except Exception:  # a reporting hook must not stop the stream
                log.exception("%s: the on_minute callback failed", self.config.name)

    # -- flushing -----------------------------------------------------------------------------------

    async def _put(self, item: Unit | Op) -> None:
        # A full queue holds up alpaca-py's receive loop here: backpressure on the websocket.
        while not self._pipeline.put(item):
            await asyncio.sleep(0.002)

    async def on_full(self) -> None:
        await self._flush()

    async def _flush(self) -> None:
        async with self._flushing:
            if not (self._quotes or self._trades or self._bars or self._dead):
                return
            unit = Unit(self._quotes, self._trades, self._bars, self._dead, arrived=self._first_seen or time.time())
            self._quotes, self._trades, self._bars, self._dead = [], [], [], []
            self._sinks.update(q=self._quotes, t=self._trades, b=self._bars, u=self._bars)
            self._first_seen = None
            size = len(unit)
            self._flushed += size
            self._stats.add(received=size)
            if size:
                # A gap goes ahead of the data that ends it; the converter closes it at the first
                # valid event of that data (a message with a wrong time must not move it).
                if self._gap is not None:
                    gap, self._gap = self._gap, None
                    await self._put(self._gap_op(gap.start_ns, None, gap.reason))
                elif self._first_data:
                    await self._put(self._gap_op(self._start_ns, None, "the stream started after the window opened",
                                                 late_after_ns=int(self.config.late_start_after * NS)))
                self._first_data = False
            await self._put(unit)

    def _gap_op(self, start_ns: int, end_ns: int | None, reason: str, **extra: int) -> Op:
        """A gap from `start_ns` to `end_ns` (None: to the first valid event that follows it)."""
        return Op("gap", {"start_ns": start_ns, "end_ns": end_ns, "reason": reason,
                          "symbols": list(self.config.symbols), **extra})

    def _gap_recorded(self, gap_id: int, start: datetime, end: datetime, reason: str) -> None:
        self.report.gaps += 1
        if self._repairer is not None:
            self._repairer.submit(gap_id, start, end, reason)

    # -- listener: alpaca-py's events ------------------------------------------------------------

    def on_connecting(self) -> None:
        log.info("%s: connecting to %s", self.config.name, self.config.url or "Alpaca")

    def on_connected(self) -> None:
        self._connections += 1
        if self._connections > 1:
            self._stats.add(reconnects=1)
        self._connected = True
        self._limit_errors = 0
        self._connect_failures = 0
        self._seen_at = time.monotonic()
        log.info("%s: authenticated (connection %d)", self.config.name, self._connections)

    def on_connect_error(self, error: BaseException) -> None:
        """A connection that failed before authenticating (refused, unreachable, a bad handshake)."""
        cfg = self.config
        self._stats.add(errors=1)
        self._connect_failures += 1
        if self._connect_first_failure is None or self._connect_failures == 1:
            self._connect_first_failure = time.monotonic()
        where = cfg.url or f"Alpaca's {cfg.kind} stream"
        log.warning("%s: cannot connect to %s (attempt %d): %s", cfg.name, where, self._connect_failures,
                    describe_error(error))
        if self._connections == 0 and self._connect_failures >= cfg.connect_attempts:
            seconds = time.monotonic() - self._connect_first_failure
            self._fail(VendorUnavailableError(
                f"cannot connect to {where}: {self._connect_failures} attempts in {seconds:.0f} s failed (last: "
                f"{describe_error(error)}); check ALPACA_STREAM_URL and the network, and run the stream again"))

    def on_auth_error(self, message: str, code: int | None) -> None:
        cfg = self.config
        where = cfg.url or f"Alpaca's {cfg.kind} stream"
        if code == 402 or message == "auth failed":
            self._fail(VendorAuthError(
                f"{where} rejected the credentials (402 {message}): check ALPACA_API_KEY and ALPACA_SECRET_KEY"))
        elif code == 409 or "insufficient subscription" in message:
            self._fail(VendorAuthError(
                f"{where} refused the {cfg.feed!r} feed (409 {message}): the plan does not include it; "
                "use ALPACA_FEED=iex or upgrade the plan"))
        elif code == 406 or "connection limit" in message:
            self._limit_errors += 1
            if self._limit_errors > cfg.connection_limit_retries:
                self._fail(VendorError(
                    f"{where} refused the connection {self._limit_errors} times (406 {message}): another stream "
                    "already uses this key; stop it, or wait for it to disconnect"))
        else:
            log.warning("%s: authentication failed (%s %s); alpaca-py retries", cfg.name, code, message)
            self.on_connect_error(VendorError(f"authentication failed ({code} {message})"))

    def on_server_error(self, message: dict) -> None:
        self._stats.add(errors=1)
        code, text = message.get("code"), message.get("msg")
        log.warning("%s: the server reported error %s: %s", self.config.name, code, text)
        if code == 405:  # the subscription stays as it was (nothing, at the start): streaming would be silent
            self._fail(VendorError(
                f"{self.config.url or 'Alpaca'} refused to subscribe {len(self.config.symbols)} symbols (405 {text}): "
                "the plan's symbol limit is lower; subscribe to fewer symbols or upgrade the plan"))

    def _fail(self, error: BaseException) -> None:
        if self._fatal is None:
            self._fatal = error
            log.error("%s: %s", self.config.name, error)
        self._stop_event.set()

    async def on_disconnect(self, reason: str) -> None:
        if self._stopping:
            return
        self._connected = False
        if self._gap is not None:
            return
        await self._flush()
        start = self._clock() if self._flushed else self._start_ns
        if start >= self._end_ns:  # the window is over: nothing can be missed any more
            log.info("%s: the connection closed at the end of the window: %s", self.config.name, reason)
            return
        self._gap = _Gap(start, reason)
        log.warning("%s: disconnected at %s UTC (event time): %s", self.config.name, f"{_from_ns(start):%H:%M:%S}", reason)

    def on_dead_letter(self, reason: str, item: Any = None, *, raw: bytes | None = None) -> None:
        """A frame or item the stream could not hand over as a message (see client.py)."""
        self._dead.append(self._pipeline.converter.dead_letter(reason, item, raw=raw))


def _event_seconds(ns: np.ndarray) -> np.ndarray:
    return ns / 1e9
