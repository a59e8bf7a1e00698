"""Gap repair: what a stream missed, refilled from the vendor's history; and the minute check that
finds what it missed without noticing.

A gap is a span of time and the symbols it concerns (a disconnect records one from the last event
before it to the first after it; the minute check records one per run of incomplete minutes).
`repair_gaps` refills each from a `History` (Alpaca's REST history, or the simulated market):

- quotes and trades of the span, written through the deduplicating path: those the stream did
  deliver have the same key (symbol, ts, seq) or (symbol, ts, exchange, trade_id) and collapse,
  so only what was missing is added (`source = alpaca_repair`);
- one-minute bars of the span's minutes that the tick store has no bar for.

Each gap's row in `stream_gaps` then says what was refilled: `repaired_bars`, `repaired_quotes`,
`repaired_trades`, the REST calls it took (`repair_calls`), or why it failed (`repair_error`).

The minute check (`incomplete_minutes`) compares, per symbol and minute, the vendor's bars with
the store: a minute the vendor has a bar for is incomplete when the store has no bar for it or
fewer trades than the bar counts. So a silence of any length, too short for the stale check,
becomes a gap. (Quotes carry no count to check against: a quote-only silence inside a minute
whose trades all arrived cannot be seen; its minute is refilled when anything else is missing.)

`RepairWorker` runs both in a thread of its own during a stream (REST calls must not hold up the
writer): gaps `repair_delay` seconds after they are recorded (the vendor's history needs a
moment after a minute closes), minutes in chunks as the stream commits past them, and at the end
of the run everything left (`sweep`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.errors import MarketPlatformError
from market_platform.schemas import BARS, QUOTES, TRADES, TS, Source, conform
from market_platform.storage.timescale import TickStore

log = logging.getLogger(__name__)

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
_REPAIR = Source.ALPACA_REPAIR.value


class History(Protocol):
    """A vendor's history of `symbols` in [start, end): 1-minute bars (schemas.BARS), quotes
    (schemas.QUOTES) and trades (schemas.TRADES); `calls` counts the requests made so far."""

    calls: int

    def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table: ...

    def quotes(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table: ...

    def trades(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table: ...


def floor_minute(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


def ceil_minute(instant: datetime) -> datetime:
    floor = floor_minute(instant)
    return floor if floor == instant else floor + MINUTE


class _SimHistory:
    """The simulated market's history (what the REST replay servers serve), in process."""

    calls = 0

    def __init__(self, market, crypto: bool) -> None:
        self.market, self.crypto = market, crypto
        self._bars: dict[tuple[date, tuple[str, ...]], pa.Table] = {}

    def _days(self, start: datetime, end: datetime) -> list[date]:
        if self.crypto:
            first, last = start.astimezone(UTC).date(), end.astimezone(UTC).date()
            return [first + timedelta(days=i) for i in range((last - first).days + 1)]
        return calendar.sessions(start.astimezone(calendar.NEW_YORK).date(), end.astimezone(calendar.NEW_YORK).date())

    def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table:
        names = tuple(sorted(symbols))
        tables = []
        for day in self._days(start, end):
            key = (day, names)
            if key not in self._bars:
                if len(self._bars) > 4:
                    self._bars.clear()
                self._bars[key] = self.market.minute_bars(day, list(names))
            tables.append(_between(self._bars[key], start, end))
        return pa.concat_tables(tables) if tables else BARS.empty_table()

    def _ticks(self, fetch, schema: pa.Schema, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table:
        tables = [fetch(day, list(symbols), start=start, end=end) for day in self._days(start, end)]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def quotes(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table:
        return self._ticks(self.market.quotes, QUOTES, symbols, start, end)

    def trades(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table:
        return self._ticks(self.market.trades, TRADES, symbols, start, end)


def sim_history(market, *, crypto: bool = False) -> History:
    """The history of `market` (a `SimMarket`) read in process: what the replay servers serve."""
    return _SimHistory(market, crypto)


class _AlpacaHistory:
    def __init__(self, source) -> None:
        self.source = source

    @property
    def calls(self) -> int:
        return self.source.requests

    def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table:
        return self.source.bars(list(symbols), start, end, timeframe="1m", source=Source.ALPACA_REPAIR)

    def quotes(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table:
        return self.source.quotes(list(symbols), start, end, source=Source.ALPACA_REPAIR)

    def trades(self, symbols: Sequence[str], start: datetime, end: datetime) -> pa.Table:
        return self.source.trades(list(symbols), start, end, source=Source.ALPACA_REPAIR)


def alpaca_history(source) -> History:
    """Alpaca's REST history (`sources.alpaca.AlpacaSource`): bars, quotes and trades."""
    return _AlpacaHistory(source)


def _between(table: pa.Table, start: datetime, end: datetime) -> pa.Table:
    ts = table.column("ts")
    return table.filter(pc.and_(pc.greater_equal(ts, pa.scalar(start, TS)), pc.less(ts, pa.scalar(end, TS))))


def _as_repair(table: pa.Table) -> pa.Table:
    return table.set_column(table.schema.get_field_index("source"), "source",
                            pa.repeat(pa.scalar(_REPAIR, pa.string()), table.num_rows))


# --------------------------------------------------------------------------- repairing gaps


@dataclass(frozen=True)
class Gap:
    """A span a stream missed: [start, end) of `symbols`; `id` its stream_gaps row (None: none)."""

    start: datetime
    end: datetime
    symbols: tuple[str, ...]
    id: int | None = None
    reason: str = ""


@dataclass
class GapRepair:
    """What refilling one gap stored (rows the store did not have) and what it cost."""

    gap: Gap
    bars: int = 0
    quotes: int = 0
    trades: int = 0
    calls: int = 0
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"gap_id": self.gap.id, "start": self.gap.start.isoformat(), "end": self.gap.end.isoformat(),
                "reason": self.gap.reason, "bars": self.bars, "quotes": self.quotes, "trades": self.trades,
                "rest_calls": self.calls, "error": self.error}


def repair_bars(store: TickStore, history: History, symbols: Sequence[str], start: datetime, end: datetime) -> int:
    """Write the vendor's bars in [start, end) that the tick store has no bar for (any source);
    returns how many."""
    if end <= start or not symbols:
        return 0
    fetched = conform(history.bars(list(symbols), start, end), BARS)
    if not fetched.num_rows:
        return 0
    existing = store.read_arrow(
        "SELECT DISTINCT symbol, ts FROM bars_1m WHERE ts >= %(start)s AND ts < %(end)s AND symbol = ANY(%(symbols)s)",
        {"start": start, "end": end, "symbols": list(symbols)},
    )
    keys = fetched.select(["symbol", "ts"]).append_column("__row", pa.array(range(fetched.num_rows), pa.int64()))
    if existing.num_rows:
        keys = keys.join(existing, keys=["symbol", "ts"], join_type="left anti")
    rows = np.sort(keys.column("__row").to_numpy())  # the join does not keep the order
    missing = fetched.take(pa.array(rows))
    return store.write_bars(_as_repair(missing)) if missing.num_rows else 0


def repair_gaps(store: TickStore, history: History, gaps: Sequence[Gap], *,
                bars_until: Callable[[Gap], datetime] | None = None) -> list[GapRepair]:
    """Refill each gap (see the module docstring) and, for a gap with an `id`, record in its
    stream_gaps row what was refilled, or why it failed. Returns one `GapRepair` per gap; a
    vendor failure is reported there, never raised.

    Quotes and trades cover [start, end) exactly; bars cover the gap's minutes up to
    `bars_until(gap)` (default: the minute after the one `end` falls in, since the bar of a
    minute the stream was back in before it closed comes from the stream itself)."""
    out = []
    for gap in gaps:
        result = GapRepair(gap)
        calls = history.calls
        try:
            if gap.end > gap.start and gap.symbols:
                for what, write in (("quotes", store.write_quotes), ("trades", store.write_trades)):
                    fetched = getattr(history, what)(list(gap.symbols), gap.start, gap.end)
                    if fetched.num_rows:
                        setattr(result, what, write(_as_repair(fetched), dedupe=True))
            last = bars_until(gap) if bars_until is not None else ceil_minute(gap.end)
            result.bars = repair_bars(store, history, gap.symbols, floor_minute(gap.start), last)
        except Exception as exc:  # a vendor or database failure: reported per gap, the others go on
            result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        result.calls = history.calls - calls
        if gap.id is not None:
            if result.error is None:
                store.mark_gap_repaired(gap.id, repaired_bars=result.bars, repaired_quotes=result.quotes,
                                        repaired_trades=result.trades, repair_calls=result.calls)
            else:
                store.mark_gap_repair_failed(gap.id, result.error, repair_calls=result.calls)
        out.append(result)
    return out


# --------------------------------------------------------------------------- the minute check


#: The recorded gaps of a stream that hold each (symbol, minute) given (ordinality `i`, from 1).
COVERING_GAPS_SQL = """
SELECT m.i, min(g.id) AS gap_id
FROM unnest(%(symbols)s::text[], %(minutes)s::timestamptz[]) WITH ORDINALITY AS m(symbol, ts, i)
JOIN stream_gaps g ON g.stream = %(stream)s AND g.gap_start < m.ts + INTERVAL '1 minute'
     AND coalesce(g.gap_end, 'infinity') > m.ts AND (cardinality(g.symbols) = 0 OR m.symbol = ANY(g.symbols))
GROUP BY m.i
"""


def incomplete_minutes(store: TickStore, history: History, symbols: Sequence[str], start: datetime,
                       end: datetime, *, stream: str | None = None) -> list[tuple[datetime, datetime, int]]:
    """Runs of minutes in [start, end) where some symbol has a bar at the vendor but none in the
    tick store, or fewer trades stored than the bar counts: (first minute, end, symbols short).

    With `stream`, a symbol's minute inside a gap of that stream already recorded for it (by any
    detector: a disconnect, an earlier check, the snapshots' stall detector) is not counted
    again: one row per silence. Those gaps get `minute_check` among their detectors."""
    if end <= start or not symbols:
        return []
    expected = history.bars(list(symbols), start, end).select(["symbol", "ts", "trade_count"])
    if not expected.num_rows:
        return []
    params = {"start": start, "end": end, "symbols": list(symbols)}
    stored_bars = store.read_arrow(
        "SELECT DISTINCT symbol, ts, true AS has_bar FROM bars_1m "
        "WHERE ts >= %(start)s AND ts < %(end)s AND symbol = ANY(%(symbols)s)", params)
    stored_trades = store.read_arrow(
        "SELECT symbol, date_trunc('minute', ts) AS ts, count(*) AS trades FROM trades "
        "WHERE ts >= %(start)s AND ts < %(end)s AND symbol = ANY(%(symbols)s) GROUP BY 1, 2", params)
    expected = expected.set_column(1, "ts", pc.cast(expected.column("ts"), pa.timestamp("us", "UTC")))
    for stored in (stored_bars, stored_trades):
        if stored.num_rows:
            stored = stored.set_column(1, "ts", pc.cast(stored.column("ts"), pa.timestamp("us", "UTC")))
            expected = expected.join(stored, keys=["symbol", "ts"], join_type="left outer")
        else:
            expected = expected.append_column(
                stored.column_names[2], pa.nulls(expected.num_rows, stored.schema.field(2).type))
    has_bar = pc.fill_null(expected.column("has_bar"), False).to_numpy(zero_copy_only=False)
    trades = pc.fill_null(expected.column("trades"), 0).to_numpy(zero_copy_only=False)
    counted = pc.fill_null(expected.column("trade_count"), 0).to_numpy(zero_copy_only=False)
    short = ~has_bar | (trades < counted)
    if stream is not None and short.any():
        short &= ~_recorded(store, stream, expected, short)
    if not short.any():
        return []
    minutes = pc.cast(expected.column("ts"), pa.int64()).to_numpy()[short]
    per_minute = dict(zip(*np.unique(minutes, return_counts=True)))
    runs: list[tuple[datetime, datetime, int]] = []
    for minute in sorted(per_minute):
        begin = datetime.fromtimestamp(minute / 1e6, UTC)
        if runs and runs[-1][1] == begin:
            first, _, count = runs[-1]
            runs[-1] = (first, begin + MINUTE, max(count, int(per_minute[minute])))
        else:
            runs.append((begin, begin + MINUTE, int(per_minute[minute])))
    return runs


def _recorded(store: TickStore, stream: str, expected: pa.Table, short: np.ndarray) -> np.ndarray:
    """Which rows of `expected` (symbol, ts) among `short` lie in a gap `stream` has recorded for
    the symbol; those gaps are marked as seen by the minute check too."""
    rows = np.flatnonzero(short)
    picked = expected.take(pa.array(rows))
    covering = store.read_arrow(COVERING_GAPS_SQL, {
        "stream": stream, "symbols": picked.column("symbol").to_pylist(), "minutes": picked.column("ts").to_pylist()})
    out = np.zeros(len(short), bool)
    if covering.num_rows:
        out[rows[covering.column("i").to_numpy() - 1]] = True
        store.witness_gaps(sorted(set(covering.column("gap_id").to_pylist())), "minute_check")
    return out


# --------------------------------------------------------------------------- during a stream


@dataclass(order=True)
class _Task:
    due: float
    seq: int
    kind: str = field(compare=False)   # "gap" or "check"
    start: datetime = field(compare=False)
    end: datetime = field(compare=False)
    gap_id: int | None = field(compare=False, default=None)
    reason: str = field(compare=False, default="")


def _merged(tasks: list[_Task]) -> list[_Task]:
    """`tasks` in order, with runs of checks of adjacent minutes made one check (one history
    request instead of one per chunk)."""
    out: list[_Task] = []
    for task in tasks:
        last = out[-1] if out else None
        if last is not None and last.kind == task.kind == "check" and last.end == task.start:
            out[-1] = _Task(last.due, last.seq, "check", last.start, task.end)
        else:
            out.append(task)
    return out


class RepairWorker:
    """Repairs a stream's gaps and checks its minutes in a thread of its own (see the module
    docstring).

    `submit(gap_id, start, end)` queues a recorded gap for `delay` seconds from now; `watch(ns)`
    tells how far the stream has committed (event time, ns), and each chunk of `check_minutes`
    minutes before it is checked `delay` seconds later; `sweep(until)` repairs, in the calling
    thread, every unrepaired gap of the stream in the window and checks every minute not checked
    yet up to `until`. `repairs` lists what each repair did; `gaps_found` counts the gaps the
    minute check recorded."""

    def __init__(self, store_factory: Callable[[], TickStore], stream: str, history: History,
                 symbols: Sequence[str], window: tuple[datetime, datetime], *, delay: float = 60.0,
                 check_minutes: int = 5, on_repaired: Callable[[GapRepair], None] | None = None) -> None:
        self._store_factory = store_factory
        self.stream, self.history, self.symbols, self.delay = stream, history, tuple(symbols), delay
        self.window = window
        self.check_minutes = max(1, check_minutes)
        self._checked = floor_minute(window[0])  # minutes before it are checked or queued
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._on_repaired = on_repaired
        self._lock = threading.Lock()
        self._seq = 0
        self.repairs: list[GapRepair] = []
        self.failures: list[str] = []
        self.gaps_found = 0

    @property
    def repaired_bars(self) -> int:
        return sum(r.bars for r in self.repairs)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"repair-{self.stream}", daemon=True)
        self._thread.start()

    def _task(self, kind: str, start: datetime, end: datetime, gap_id: int | None = None, reason: str = "") -> _Task:
        with self._lock:
            self._seq += 1
            return _Task(time.monotonic() + self.delay, self._seq, kind, start, end, gap_id, reason)

    def submit(self, gap_id: int, start: datetime, end: datetime, reason: str = "") -> None:
        self._queue.put(self._task("gap", start, end, gap_id, reason))

    def watch(self, committed_ns: int) -> None:
        """The stream has committed everything up to `committed_ns` (a bar counts at its
        minute's end): queue the chunks of minutes now complete (their bars are in)."""
        if not committed_ns:
            return
        committed = datetime.fromtimestamp(committed_ns / 1e9, UTC)
        chunk = self.check_minutes * MINUTE
        while self._checked < self.window[1] and self._checked + chunk + MINUTE <= committed:
            self._queue.put(self._task("check", self._checked, self._checked + chunk))
            self._checked += chunk

    def close(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        store = self._store_factory()
        waiting: list[_Task] = []
        try:
            while True:
                timeout = max(0.0, min(waiting).due - time.monotonic()) if waiting else None
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = ()
                if item is None:
                    return
                if item:
                    waiting.append(item)
                now = time.monotonic()
                due = sorted(t for t in waiting if t.due <= now)
                for task in due:
                    waiting.remove(task)
                for task in _merged(due):
                    self._safely(store, task)
        finally:
            for task in sorted(waiting):  # left for the sweep
                self._queue.put(task)
            store.close()

    def _safely(self, store: TickStore, task: _Task) -> None:
        """`_do(task)`; whatever fails is reported (`failures`), never the end of the thread."""
        try:
            self._do(store, task)
        except Exception as exc:
            message = (f"{task.kind} {task.start:%H:%M:%S}-{task.end:%H:%M:%S} UTC failed: "
                       f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            log.warning("%s: %s", self.stream, message)
            self.failures.append(message)

    def _do(self, store: TickStore, task: _Task) -> None:
        if task.kind == "gap":
            gap = Gap(task.start, task.end, self.symbols, task.gap_id, task.reason)
            # Right after a reconnect the minute in progress is left out: its bar comes from the stream.
            self._repaired(repair_gaps(store, self.history, [gap], bars_until=lambda g: floor_minute(g.end)))
        else:
            self._check(store, task.start, task.end)

    def _check(self, store: TickStore, start: datetime, end: datetime) -> None:
        start, end = max(start, floor_minute(self.window[0])), min(end, ceil_minute(self.window[1]))
        try:
            runs = incomplete_minutes(store, self.history, self.symbols, start, end, stream=self.stream)
        except (MarketPlatformError, OSError, ValueError) as exc:  # the vendor: the minutes stay unchecked
            message = f"minutes {start:%H:%M}-{end:%H:%M} UTC not checked: {' '.join(str(exc).split())[:300]}"
            log.warning("%s: %s", self.stream, message)
            self.failures.append(message)
            return
        for first, last, short in runs:
            reason = (f"incomplete minutes {first:%H:%M}-{last:%H:%M} UTC: {short} of {len(self.symbols)} symbols "
                      "lacked bars or trades the vendor has (found by the minute check; the gap takes in the "
                      "minute on each side, where the silence may have begun or ended between two trades)")
            first = max(first - MINUTE, floor_minute(self.window[0]))
            last = min(last + MINUTE, self.window[1])
            gap_id = store.record_gap(self.stream, first, last, reason=reason, symbols=self.symbols,
                                      detected_by="minute_check")
            self.gaps_found += 1
            log.warning("%s: gap %d recorded: %s", self.stream, gap_id, reason)
            self._repaired(repair_gaps(store, self.history, [Gap(first, last, self.symbols, gap_id, reason)]))

    def _repaired(self, results: list[GapRepair]) -> None:
        for result in results:
            self.repairs.append(result)
            gap = result.gap
            if result.error is not None:
                message = f"gap {gap.id} ({gap.start:%H:%M:%S}-{gap.end:%H:%M:%S} UTC) not repaired: {result.error}"
                log.warning("%s: %s", self.stream, message)
                self.failures.append(message)
            else:
                log.info("%s: repaired gap %s (%s - %s UTC): %d quotes, %d trades, %d bars in %d REST calls",
                         self.stream, gap.id, f"{gap.start:%H:%M:%S}", f"{gap.end:%H:%M:%S}", result.quotes,
                         result.trades, result.bars, result.calls)
            if self._on_repaired is not None:
                self._on_repaired(result)

    def sweep(self, until: datetime) -> int:
        """Everything left, in the calling thread (after `close()`): queued tasks, every
        unrepaired gap of the stream overlapping the window, the minutes up to `until`
        not checked yet. Returns the gaps repaired."""
        store = self._store_factory()
        before = len(self.repairs)
        try:
            self._sweep(store, until)
        except Exception as exc:  # the stream's data is in: a failed repair is reported, not raised
            message = f"the final repair failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log.warning("%s: %s", self.stream, message)
            self.failures.append(message)
        finally:
            store.close()
        return len(self.repairs) - before

    def _sweep(self, store: TickStore, until: datetime) -> None:
        left: list[_Task] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item:
                left.append(item)
        start, end = self.window
        gaps = store.read_arrow(
            "SELECT id, gap_start, gap_end, reason, array_to_string(symbols, ' ') AS symbols FROM stream_gaps WHERE stream = %(stream)s "
            "AND repaired_at IS NULL AND gap_start < %(end)s AND coalesce(gap_end, gap_start) >= %(start)s "
            "ORDER BY gap_start",
            {"stream": self.stream, "start": start, "end": end},
        ).to_pylist()
        # A gap of a few symbols (a silent stall) is refilled for them only.
        pending = [Gap(max(g["gap_start"], floor_minute(start)), min(g["gap_end"] or end, end),
                       tuple(g["symbols"].split()) or self.symbols, g["id"], g["reason"]) for g in gaps]
        self._repaired(repair_gaps(store, self.history, pending,
                                   bars_until=lambda g: min(ceil_minute(g.end), ceil_minute(end))))
        for task in _merged(sorted(t for t in left if t.kind == "check")):  # after the gaps they may overlap
            self._safely(store, task)
        if until > self._checked:
            self._safely(store, _Task(0.0, 0, "check", self._checked, until))
            self._checked = until
