"""What a vendor's market snapshot shows at an instant, from the replay's data, for the Polygon and
Alpaca snapshot endpoints to render in their own words.

At instant `now` a snapshot of a symbol holds, from the minutes that have ended by then: the day
so far (first open, running high and low, last close, volume and VWAP of the day's one-minute
bars), the last completed minute bar, the previous day's bar, and the last trade and last quote
(the simulator's own, generated for the minute that holds each); `updated` is the latest of
their times. A stock's day is the session open at `now`, else the last completed one; a crypto
pair's is the UTC day. Everything comes from the same bars the aggregates, Flat Files and the
stream serve, so a snapshot at minute m agrees with them bar for bar.

The replay answers "as of" whatever instant its clock gives, so a test can walk a past session
minute by minute as fast as it likes. A day's bars are indexed once (running aggregates per
symbol) and each snapshot is then a lookup per symbol.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.replay.data import NS_PER_MINUTE, ReplayData, aggregate, zone

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
_BAR_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "trade_count")


@dataclass(frozen=True)
class SnapshotState:
    """The snapshot of some symbols at an instant: `bars` has one row per symbol (sorted) with
    day_*, min_* (min_ts, and min_av the day's volume at that bar), prev_* columns, null where
    there is no bar; `trades` and `quotes` the last trade and quote per symbol (schemas.TRADES
    and QUOTES rows, only for symbols that have one)."""

    day: date
    previous: date
    bars: pa.Table
    trades: pa.Table
    quotes: pa.Table

    def updated_ns(self) -> np.ndarray:
        """Per row of `bars`: the later of the last trade and the last quote, in ns (the last
        bar's end for a symbol with neither, 0 with no bar either)."""
        out = np.zeros(self.bars.num_rows, np.int64)
        index = {s: i for i, s in enumerate(self.bars.column("symbol").to_pylist())}
        for table in (self.trades, self.quotes):
            if table.num_rows:
                rows = np.array([index.get(s, -1) for s in table.column("symbol").to_pylist()])
                ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()
                keep = rows >= 0
                np.maximum.at(out, rows[keep], ts[keep])
        ends = pc.cast(self.bars.column("min_ts"), pa.int64()).fill_null(-NS_PER_MINUTE).to_numpy() + NS_PER_MINUTE
        return np.where(out > 0, out, ends)


#: The bar columns of SnapshotState.bars after `symbol` (prev_* follow with _BAR_FIELDS' types).
_DAY_COLUMNS = pa.schema(
    [pa.field(f"day_{name}", pa.int64() if name == "trade_count" else pa.float64()) for name in _BAR_FIELDS]
    + [pa.field("min_ts", pa.timestamp("ns", "UTC"))]
    + [pa.field(f"min_{name}", pa.int64() if name == "trade_count" else pa.float64()) for name in _BAR_FIELDS]
    + [pa.field("min_av", pa.float64())]
)


class _Day:
    """One day's minute bars of every listed symbol, sorted by (symbol, ts), with running
    aggregates per symbol, so the day so far at any minute is a lookup."""

    def __init__(self, bars: pa.Table) -> None:
        self.bars = bars.combine_chunks()
        n = bars.num_rows
        self.symbols, codes = np.unique(np.asarray(bars.column("symbol").to_pylist(), dtype=object),
                                        return_inverse=True)
        self.codes = codes.astype(np.int64)
        self.ts = pc.cast(bars.column("ts"), pa.int64()).to_numpy() if n else np.zeros(0, np.int64)
        self.starts = np.searchsorted(self.codes, np.arange(len(self.symbols)), side="left")
        self.base = int(self.ts.min()) if n else 0
        # One sortable key per bar: the symbol's code, then the minute of the day (< 4096 minutes).
        self.keys = self.codes * 4096 + (self.ts - self.base) // NS_PER_MINUTE
        values = {name: self.bars.column(name).to_numpy(zero_copy_only=False) for name in ("open", "high", "low")}
        volume = self.bars.column("volume").to_numpy(zero_copy_only=False)
        vwap = pc.fill_null(self.bars.column("vwap"), self.bars.column("close")).to_numpy(zero_copy_only=False)
        groups = pd.DataFrame({"code": self.codes, "high": values["high"], "low": values["low"]}).groupby("code")
        self.open = values["open"]
        self.running_high = groups["high"].cummax().to_numpy()
        self.running_low = groups["low"].cummin().to_numpy()
        self.cum_volume = np.cumsum(volume)
        self.cum_notional = np.cumsum(volume * vwap)
        self.cum_count = np.cumsum(pc.fill_null(self.bars.column("trade_count"), 0).to_numpy(zero_copy_only=False))

    def at(self, symbols: np.ndarray, cutoff_ns: int) -> pa.Table:
        """_DAY_COLUMNS per symbol of `symbols` from its bars that start at or before `cutoff_ns`
        (nulls for a symbol with none)."""
        n = len(symbols)
        if not self.bars.num_rows or not n:
            return pa.table({f.name: pa.nulls(n, f.type) for f in _DAY_COLUMNS}, schema=_DAY_COLUMNS)
        code = np.minimum(np.searchsorted(self.symbols, symbols), len(self.symbols) - 1)
        known = self.symbols[code] == symbols
        minute = min(max((cutoff_ns - self.base) // NS_PER_MINUTE, -1), 4095)
        last = np.searchsorted(self.keys, code * 4096 + minute, side="right") - 1
        start = self.starts[code]
        missing = ~(known & (last >= start))
        last, start = np.where(missing, 0, last), np.where(missing, 0, start)

        def since_open(cum: np.ndarray) -> np.ndarray:
            return cum[last] - np.where(start > 0, cum[np.maximum(start - 1, 0)], 0)

        volume, notional = since_open(self.cum_volume), since_open(self.cum_notional)
        take = self.bars.take(pa.array(last))
        out = {
            "day_open": pa.array(self.open[start], mask=missing),
            "day_high": pa.array(self.running_high[last], mask=missing),
            "day_low": pa.array(self.running_low[last], mask=missing),
            "day_close": pa.array(take.column("close").to_numpy(), mask=missing),
            "day_volume": pa.array(volume, mask=missing),
            "day_vwap": pa.array(np.divide(notional, volume, out=np.zeros(n), where=volume > 0), mask=missing),
            "day_trade_count": pa.array(since_open(self.cum_count).astype(np.int64), mask=missing),
        }
        absent = pa.array(missing)
        out["min_ts"] = pc.if_else(absent, pa.scalar(None, take.column("ts").type), take.column("ts"))
        for name in _BAR_FIELDS:
            values = take.column(name)
            out[f"min_{name}"] = pc.if_else(absent, pa.scalar(None, values.type), values)
        out["min_av"] = out["day_volume"]
        return pa.table(out).cast(_DAY_COLUMNS)


class SnapshotBook:
    """Snapshot states of `data` at any instant (thread-safe); keeps the index of the last few days."""

    def __init__(self, data: ReplayData, *, days: int = 2) -> None:
        self.data = data
        self._days: OrderedDict[tuple, _Day] = OrderedDict()
        self._daily: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._latest: OrderedDict[tuple, tuple[pa.Table, pa.Table]] = OrderedDict()
        self._keep = days
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SnapshotBook({self.data!r})"

    @staticmethod
    def days_at(kind: str, now: datetime) -> tuple[date, date]:
        """(the day a snapshot at `now` shows, the day before it) for `kind`."""
        if kind == "crypto":
            day = now.astimezone(UTC).date()
            return day, day - timedelta(days=1)
        cal = calendar.default_calendar()
        current = cal.session_at(now)
        day = current.day if current is not None else cal.last_completed_session(now)
        return day, cal.previous_session(day)

    def state(self, kind: str, now: datetime, symbols: Sequence[str] | None = None) -> SnapshotState:
        """The snapshot of `symbols` (None: every symbol of `kind` listed on the day) at `now`.
        Symbols with no bar today nor on the previous day are left out."""
        day, previous = self.days_at(kind, now)
        listed = self.data.listed(kind, day)
        wanted = listed if symbols is None else sorted(set(symbols) & set(listed))
        names = np.asarray(wanted, dtype=object)
        cutoff = _ns(now) - NS_PER_MINUTE  # bars that have ended by `now`
        bars = self._day(kind, day, listed).at(names, cutoff)
        prev = self._previous(kind, previous)
        prev_index = {s: i for i, s in enumerate(prev.column("symbol").to_pylist())}
        rows = np.array([prev_index.get(s, -1) for s in wanted], np.int64)
        has_prev = rows >= 0
        for name in _BAR_FIELDS:
            values = prev.column(name).take(pa.array(np.maximum(rows, 0))) if prev.num_rows else \
                pa.nulls(len(rows), pa.float64())
            bars = bars.append_column(f"prev_{name}", pc.if_else(pa.array(has_prev), values,
                                                                 pa.scalar(None, values.type)))
        bars = bars.add_column(0, "symbol", pa.array(wanted, pa.string()))
        keep = pc.or_(pc.is_valid(bars.column("day_close")), pa.array(has_prev))
        bars = bars.filter(keep)
        trades, quotes = self._last_events(kind, day, now, listed)
        chosen = bars.column("symbol")
        return SnapshotState(day, previous, bars,
                             trades.filter(pc.is_in(trades.column("symbol"), value_set=chosen)),
                             quotes.filter(pc.is_in(quotes.column("symbol"), value_set=chosen)))

    # ----------------------------------------------------------------------- caches

    def _day(self, kind: str, day: date, listed: list[str]) -> _Day:
        key = (kind, day, self.data.revision)
        with self._lock:
            found = self._days.get(key)
            if found is not None:
                self._days.move_to_end(key)
                return found
        built = _Day(self.data.minute_bars(listed, day, cache=False))
        with self._lock:
            self._days[key] = built
            while len(self._days) > self._keep:
                self._days.popitem(last=False)
        return built

    def _previous(self, kind: str, day: date) -> pa.Table:
        key = (kind, day, self.data.revision)
        with self._lock:
            found = self._daily.get(key)
        if found is None:
            listed = self.data.listed(kind, day)
            found = aggregate(self.data.minute_bars(listed, day, cache=False), "day", tz=zone(kind))
            with self._lock:
                self._daily[key] = found
                while len(self._daily) > 4 * self._keep:
                    self._daily.popitem(last=False)
        return found

    def _last_events(self, kind: str, day: date, now: datetime, listed: list[str]) -> tuple[pa.Table, pa.Table]:
        minute = now.astimezone(UTC).replace(second=0, microsecond=0)
        key = (kind, day, minute, self.data.revision)
        with self._lock:
            found = self._latest.get(key)
        if found is None:
            found = self.data.latest(listed, day, before=minute)
            with self._lock:
                self._latest[key] = found
                while len(self._latest) > 4:
                    self._latest.popitem(last=False)
        return found


def _ns(instant: datetime) -> int:
    delta = instant.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
