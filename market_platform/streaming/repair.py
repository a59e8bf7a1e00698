"""Gap repair: one-minute bars a stream missed, fetched from a vendor's REST history.

The stream records each gap (from its last event before the disconnect to its first after);
the repairer fetches the bars of the gap's minutes through a `MinuteBarsFetcher` and writes
only those (symbol, minute) pairs the stream has no bar for, with `source = alpaca_repair`.
Right after a reconnect the minute in progress is left out (the stream delivers its bar when
it closes); the sweep at the end of a session includes it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import date, datetime, timedelta, timezone
from typing import Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.errors import MarketPlatformError
from market_platform.schemas import BARS, Source, conform
from market_platform.storage.timescale import TickStore

log = logging.getLogger(__name__)

UTC = timezone.utc
MINUTE = timedelta(minutes=1)


class MinuteBarsFetcher(Protocol):
    """One-minute bars (schemas.BARS, any source) of `symbols` whose start is in [start, end)."""

    def __call__(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table: ...


def floor_minute(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


def sim_fetcher(market, *, crypto: bool = False) -> MinuteBarsFetcher:
    """A fetcher over `SimMarket.minute_bars` (the bars the REST replay servers serve)."""
    cache: dict[tuple[date, tuple[str, ...]], pa.Table] = {}

    def fetch(symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table:
        names = tuple(sorted(symbols))
        if crypto:
            days = [start.astimezone(UTC).date() + timedelta(days=i)
                    for i in range((end.astimezone(UTC).date() - start.astimezone(UTC).date()).days + 1)]
        else:
            first = start.astimezone(calendar.NEW_YORK).date()
            last = end.astimezone(calendar.NEW_YORK).date()
            days = calendar.sessions(first, last)
        tables = []
        for day in days:
            key = (day, names)
            if key not in cache:
                if len(cache) > 4:
                    cache.clear()
                cache[key] = market.minute_bars(day, list(names))
            table = cache[key]
            ts = table.column("ts")
            keep = pc.and_(pc.greater_equal(ts, pa.scalar(start, ts.type)), pc.less(ts, pa.scalar(end, ts.type)))
            tables.append(table.filter(keep))
        return pa.concat_tables(tables) if tables else BARS.empty_table()

    return fetch


def alpaca_fetcher(source) -> MinuteBarsFetcher:
    """A fetcher over Alpaca's REST history (`sources.alpaca.AlpacaSource.bars`), rows marked alpaca_repair."""

    def fetch(symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table:
        return source.bars(list(symbols), start, end, timeframe="1m", source=Source.ALPACA_REPAIR)

    return fetch


def repair_window(
    store: TickStore,
    fetch: MinuteBarsFetcher,
    symbols: Sequence[str],
    start: datetime,
    end: datetime,
) -> int:
    """Write the bars in [start, end) that the stream lacks (source alpaca_repair); returns how many."""
    if end <= start or not symbols:
        return 0
    fetched = conform(fetch(list(symbols), start, end), BARS)
    if not fetched.num_rows:
        return 0
    existing = store.read_arrow(
        "SELECT symbol, ts FROM bars_1m WHERE source = %(source)s AND ts >= %(start)s AND ts < %(end)s "
        "AND symbol = ANY(%(symbols)s)",
        {"source": Source.ALPACA_STREAM.value, "start": start, "end": end, "symbols": list(symbols)},
    )
    keys = fetched.select(["symbol", "ts"]).append_column("__row", pa.array(range(fetched.num_rows), pa.int64()))
    if existing.num_rows:
        keys = keys.join(existing, keys=["symbol", "ts"], join_type="left anti")
    rows = np.sort(keys.column("__row").to_numpy())  # the join does not keep the order
    missing = fetched.take(pa.array(rows))
    if not missing.num_rows:
        return 0
    source = pa.repeat(pa.scalar(Source.ALPACA_REPAIR.value, pa.string()), missing.num_rows)
    missing = missing.set_column(missing.schema.get_field_index("source"), "source", source)
    store.write_bars(missing)
    return missing.num_rows


class RepairWorker:
    """Repairs recorded gaps in a thread of its own (REST calls must not hold up the writer).

    `submit(gap_id, start, end)` queues a gap for `delay` seconds from now (the vendor's REST
    history needs a moment after a minute closes); `sweep(window)` repairs, in the calling
    thread, every unrepaired gap of the stream in the window, the minute of each gap's end
    included.
    """

    def __init__(self, store_factory: Callable[[], TickStore], stream: str, fetch: MinuteBarsFetcher,
                 symbols: Sequence[str], *, delay: float = 60.0, on_repaired: Callable[[int, int], None] | None = None):
        self._store_factory = store_factory
        self.stream, self.fetch, self.symbols, self.delay = stream, fetch, list(symbols), delay
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._on_repaired = on_repaired
        self.repaired_bars = 0
        self.failures: list[str] = []
        self._busy = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"repair-{self.stream}", daemon=True)
        self._thread.start()

    def submit(self, gap_id: int, start: datetime, end: datetime) -> None:
        self._queue.put((time.monotonic() + self.delay, gap_id, start, end))

    def close(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        store = self._store_factory()
        waiting: list[tuple[float, int, datetime, datetime]] = []
        try:
            while True:
                timeout = max(0.0, min(w[0] for w in waiting) - time.monotonic()) if waiting else None
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = ()
                if item is None:
                    return
                if item:
                    waiting.append(item)
                now = time.monotonic()
                for entry in sorted(w for w in waiting if w[0] <= now):
                    waiting.remove(entry)
                    _, gap_id, start, end = entry
                    self._repair(store, gap_id, floor_minute(start), floor_minute(end))
        finally:
            store.close()

    def _repair(self, store: TickStore, gap_id: int, start: datetime, end: datetime) -> int | None:
        try:
            bars = repair_window(store, self.fetch, self.symbols, start, end)
            store.mark_gap_repaired(gap_id, repaired_bars=bars)
        except (MarketPlatformError, OSError, ValueError) as exc:
            message = f"gap {gap_id} ({start:%H:%M}-{end:%H:%M} UTC) not repaired: {exc}"
            log.warning("%s: %s", self.stream, message)
            self.failures.append(message)
            return None
        self.repaired_bars += bars
        log.info("%s: repaired gap %d (%s - %s UTC) with %d bars", self.stream, gap_id,
                 f"{start:%H:%M}", f"{end:%H:%M}", bars)
        if self._on_repaired is not None:
            self._on_repaired(gap_id, bars)
        return bars

    def sweep(self, window_start: datetime, window_end: datetime) -> tuple[int, int]:
        """Repair every unrepaired gap of the stream overlapping the window; returns (gaps, bars)."""
        store = self._store_factory()
        try:
            gaps = store.read_arrow(
                "SELECT id, gap_start, gap_end FROM stream_gaps WHERE stream = %(stream)s AND repaired_at IS NULL "
                "AND gap_start < %(end)s AND coalesce(gap_end, gap_start) >= %(start)s ORDER BY gap_start",
                {"stream": self.stream, "start": window_start, "end": window_end},
            ).to_pylist()
            done = bars = 0
            for gap in gaps:
                end = gap["gap_end"] or window_end
                start = max(floor_minute(gap["gap_start"]), floor_minute(window_start))
                stop = min(floor_minute(end) + MINUTE, window_end)
                repaired = self._repair(store, gap["id"], start, stop)
                if repaired is not None:
                    done += 1
                    bars += repaired
            return done, bars
        finally:
            store.close()
