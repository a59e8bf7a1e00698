"""What the replay servers serve: one provider of minute bars and reference data behind every
protocol, so a (symbol, day) is identical whichever server, REST or Flat Files, returns it.

A `MarketProvider` knows two things: the 1-minute bars of some symbols on a day, and the
point-in-time universe of a category on a day. `SimProvider` serves the simulated market; a
provider of recorded days from the lake can take its place later. `ReplayData` wraps the
provider with a bounded cache and with late corrections (`correct`), which every server then
serves, and `aggregate` builds the vendors' coarser bars from the minute bars.

Days: a stock's day is its session (New York date, 04:00-20:00); a crypto pair's day is a UTC
day. Daily bars are stamped at midnight New York for stocks and midnight UTC for crypto, as the
simulator and the lake do.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.schemas import BARS, CATEGORIES, CORPORATE_ACTIONS, QUOTES, TRADES, TS
from market_platform.sources import symbols as sym
from market_platform.sources import sim_actions
from market_platform.sources.sim import SimMarket
from market_platform.sources.sim_reference import reference

UTC = timezone.utc
NS_PER_MINUTE = 60_000_000_000
NS_PER_DAY = 86_400_000_000_000
#: Categories whose instruments have bars, by kind of clock.
STOCK_CATEGORIES = ("us_equities", "etf", "otc")
CRYPTO_CATEGORIES = ("crypto",)
#: `aggregate` output: BARS plus how many minute bars each bucket holds.
AGG_BARS = BARS.append(pa.field("base_count", pa.int64(), nullable=False))
UNITS = ("minute", "hour", "day")


@runtime_checkable
class MarketProvider(Protocol):
    """Where the replay servers' data comes from."""

    def minute_bars(self, symbols: Sequence[str], day: date) -> pa.Table:
        """schemas.BARS rows of `symbols` on `day` (a session for stocks, a UTC day for crypto),
        sorted by (symbol, ts). Symbols it does not know, or that did not trade, have no rows."""
        ...

    def universe(self, category: str, day: date, *, include_inactive: bool = False) -> pa.Table:
        """schemas.UNIVERSE rows of `category` listed on `day`, sorted by symbol; with
        `include_inactive`, also those delisted before `day` (active = False)."""
        ...

    # Optional: `corporate_actions(start, end, *, symbols=None)` -> schemas.CORPORATE_ACTIONS
    # rows with ex_date in [start, end] (None: the provider's whole market), as `SimMarket`'s.


class SimProvider:
    """The simulated market as a provider."""

    def __init__(self, sim: SimMarket) -> None:
        self.sim = sim
        ref = reference()
        self._tradable = {s for s, c in zip(ref.symbol, ref.category, strict=True)
                          if c in STOCK_CATEGORIES + CRYPTO_CATEGORIES} | set(sim_actions.Names(ref).aliases)

    def __repr__(self) -> str:
        return f"SimProvider({self.sim!r})"

    def minute_bars(self, symbols: Sequence[str], day: date) -> pa.Table:
        wanted = [s for s in symbols if s in self._tradable]
        if not calendar.is_session(day):
            wanted = [s for s in wanted if sym.is_crypto(s)]
        if not wanted:
            return BARS.empty_table()
        return self.sim.minute_bars(day, wanted)

    def universe(self, category: str, day: date, *, include_inactive: bool = False) -> pa.Table:
        return self.sim.universe(category, day, include_inactive=include_inactive)

    def corporate_actions(self, start: date, end: date, *, symbols: Sequence[str] | None = None) -> pa.Table:
        return self.sim.corporate_actions(start, end, symbols=symbols)

    def latest(self, symbols: Sequence[str], day: date, *, before: datetime) -> tuple[pa.Table, pa.Table]:
        """The last trade and quote of each symbol in the minutes of `day` ended by `before`
        (`SimMarket.latest`), for snapshots."""
        wanted = [s for s in symbols if s in self._tradable]
        if not calendar.is_session(day):
            wanted = [s for s in wanted if sym.is_crypto(s)]
        if not wanted:
            return TRADES.empty_table(), QUOTES.empty_table()
        return self.sim.latest(day, wanted, before=before)


def kind_of(symbol: str) -> str:
    """"crypto" for crypto pairs (UTC days), "stocks" for everything else (sessions)."""
    return "crypto" if sym.is_crypto(symbol) else "stocks"


def zone(kind: str) -> ZoneInfo | timezone:
    """The time zone a kind's days and daily bars follow."""
    return UTC if kind == "crypto" else calendar.NEW_YORK


def day_bounds(day: date, kind: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of a stock session (pre-market to after-hours) or a crypto UTC day."""
    if kind == "crypto":
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        return start, start + timedelta(days=1)
    session = calendar.session(day)
    return session.start, session.end


def days_between(start: datetime, end: datetime, kind: str) -> list[date]:
    """The days of `kind` whose bars can fall in [start, end]: sessions for stocks, UTC days for crypto."""
    tz = zone(kind)
    first, last = start.astimezone(tz).date(), end.astimezone(tz).date()
    if first > last:
        return []
    if kind == "crypto":
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]
    cal = calendar.default_calendar()
    first, last = max(first, cal.start), min(last, cal.end)
    return cal.sessions(first, last) if first <= last else []


class ReplayData:
    """A provider with a cache of (symbol, day) minute bars and late corrections on top.

    Thread-safe: the servers call it from one thread per request. `cache_rows` bounds the cached
    bars (least recently used go first).
    """

    def __init__(self, provider: MarketProvider, *, cache_rows: int = 2_000_000) -> None:
        self.provider = provider
        self.cache_rows = cache_rows
        self._bars: OrderedDict[tuple[str, date], pa.Table] = OrderedDict()
        self._cached_rows = 0
        self._universes: dict[tuple[str, date, bool], pa.Table] = {}
        self._corrections: dict[date, pa.Table] = {}
        self._actions: pa.Table | None = None
        self._action_rows: dict[date, list[dict]] = {}
        self._lock = threading.Lock()
        #: Goes up whenever served bars change (corrections), for caches built on top.
        self.revision = 0

    def __repr__(self) -> str:
        return f"ReplayData({self.provider!r})"

    # ----------------------------------------------------------------------- bars

    def minute_bars(self, symbols: Sequence[str], day: date, *, cache: bool = True) -> pa.Table:
        """schemas.BARS of `symbols` on `day`, corrections applied, sorted by (symbol, ts)."""
        wanted = sorted(set(symbols))
        found: dict[str, pa.Table] = {}
        with self._lock:
            for s in wanted:
                table = self._bars.get((s, day))
                if table is not None:
                    self._bars.move_to_end((s, day))
                    found[s] = table
        missing = [s for s in wanted if s not in found]
        if missing:
            fetched = self._corrected(self.provider.minute_bars(missing, day), missing, day)
            parts = split_by_symbol(fetched, missing)
            found.update(parts)
            if cache:
                self._remember(day, parts)
        tables = [found[s] for s in wanted if found[s].num_rows]
        return pa.concat_tables(tables).combine_chunks() if tables else BARS.empty_table()

    def bars_between(self, symbol: str, start: datetime, end: datetime) -> pa.Table:
        """One symbol's minute bars with `ts` in [start, end], across days."""
        kind = kind_of(symbol)
        tables = [self.minute_bars([symbol], day) for day in days_between(start, end, kind)]
        table = pa.concat_tables(tables) if tables else BARS.empty_table()
        ts = table.column("ts")
        keep = pc.and_(pc.greater_equal(ts, pa.scalar(start, TS)), pc.less_equal(ts, pa.scalar(end, TS)))
        return table.filter(keep).combine_chunks()

    def day_bars(self, kind: str, day: date) -> pa.Table:
        """Minute bars of every symbol of `kind` listed on `day` (what a flat file holds); not cached."""
        return self.minute_bars(self.listed(kind, day), day, cache=False)

    def _remember(self, day: date, parts: dict[str, pa.Table]) -> None:
        with self._lock:
            for s, table in parts.items():
                old = self._bars.pop((s, day), None)
                if old is not None:
                    self._cached_rows -= max(old.num_rows, 1)
                self._bars[(s, day)] = table
                self._cached_rows += max(table.num_rows, 1)
            while self._cached_rows > self.cache_rows and self._bars:
                _, old = self._bars.popitem(last=False)
                self._cached_rows -= max(old.num_rows, 1)

    # ----------------------------------------------------------------------- corrections

    def correct(self, day: date, rows: pa.Table) -> None:
        """Late corrections for `day`: each row of `rows` (schemas.BARS) replaces the bar with
        its (symbol, ts), or adds it. Every server serves the corrected bars from now on."""
        rows = rows.select(BARS.names).cast(BARS)
        with self._lock:
            previous = self._corrections.get(day)
            if previous is not None:
                keep = pc.invert(pc.is_in(_keys(previous), value_set=_keys(rows)))
                rows = pa.concat_tables([previous.filter(keep), rows])
            self._corrections[day] = rows.sort_by([("symbol", "ascending"), ("ts", "ascending")])
            self._forget(day)

    def clear_corrections(self, day: date) -> None:
        """Serve `day` as the provider has it again (flat files keep what was last published)."""
        with self._lock:
            self._corrections.pop(day, None)
            self._forget(day)

    def _forget(self, day: date) -> None:
        """Drop `day` from the cache (the lock is held)."""
        self.revision += 1
        for key in [k for k in self._bars if k[1] == day]:
            self._cached_rows -= max(self._bars.pop(key).num_rows, 1)

    def _corrected(self, table: pa.Table, symbols: Sequence[str], day: date) -> pa.Table:
        with self._lock:
            fixes = self._corrections.get(day)
        if fixes is None:
            return table
        fixes = fixes.filter(pc.is_in(fixes.column("symbol"), value_set=pa.array(list(symbols), pa.string())))
        if not fixes.num_rows:
            return table
        table = table.filter(pc.invert(pc.is_in(_keys(table), value_set=_keys(fixes))))
        fixes = fixes.set_column(BARS.get_field_index("source"), BARS.field("source"),
                                 pa.repeat(pa.scalar(_source(table), pa.string()), fixes.num_rows))
        return pa.concat_tables([table, fixes]).sort_by([("symbol", "ascending"), ("ts", "ascending")])

    # ----------------------------------------------------------------------- reference

    def universe(self, category: str, day: date, *, include_inactive: bool = False) -> pa.Table:
        if category not in CATEGORIES:
            raise InvalidInputError(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)}")
        key = (category, day, include_inactive)
        with self._lock:
            table = self._universes.get(key)
        if table is None:
            table = self.provider.universe(category, day, include_inactive=include_inactive)
            with self._lock:
                if len(self._universes) > 256:
                    self._universes.clear()
                self._universes[key] = table
        return table

    def latest(self, symbols: Sequence[str], day: date, *, before: datetime) -> tuple[pa.Table, pa.Table]:
        """The last trade (schemas.TRADES) and quote (schemas.QUOTES) of each symbol in the
        minutes of `day` ended by `before`, from a provider that has them (none otherwise)."""
        latest = getattr(self.provider, "latest", None)
        if latest is None:
            return TRADES.empty_table(), QUOTES.empty_table()
        return latest(symbols, day, before=before)

    # ----------------------------------------------------------------------- corporate actions

    def corporate_actions(self, *, as_of: date, symbols: Sequence[str] | None = None,
                          start: date | None = None, end: date | None = None) -> pa.Table:
        """schemas.CORPORATE_ACTIONS the vendor knows on `as_of` (announced by then), with ex_date
        in [start, end] (None: unbounded), of `symbols` (None: the provider's whole market)."""
        actions = getattr(self.provider, "corporate_actions", None)
        if actions is None:
            return CORPORATE_ACTIONS.empty_table()
        if symbols is None:
            with self._lock:
                table = self._actions
            if table is None:
                table = actions(sim_actions.FIRST, sim_actions.HORIZON)
                with self._lock:
                    self._actions = table
        else:
            table = actions(sim_actions.FIRST, sim_actions.HORIZON, symbols=list(symbols))
        keep = pc.less_equal(table.column("announced_date"), pa.scalar(as_of, pa.date32()))
        if start is not None:
            keep = pc.and_(keep, pc.greater_equal(table.column("ex_date"), pa.scalar(start, pa.date32())))
        if end is not None:
            keep = pc.and_(keep, pc.less_equal(table.column("ex_date"), pa.scalar(end, pa.date32())))
        return table.filter(keep)

    def corporate_action_rows(self, as_of: date) -> list[dict]:
        """`corporate_actions(as_of=as_of)` of the whole market as dicts, sorted by (symbol,
        ex_date); cached per day, for servers that page through them."""
        with self._lock:
            rows = self._action_rows.get(as_of)
        if rows is None:
            rows = self.corporate_actions(as_of=as_of).to_pylist()
            with self._lock:
                if len(self._action_rows) > 8:
                    self._action_rows.clear()
                self._action_rows[as_of] = rows
        return rows

    def previous_close(self, symbol: str, day: date) -> float | None:
        """`symbol`'s last raw price of the session before `day` (None when it did not trade)."""
        try:
            prev = calendar.default_calendar().previous_session(day)
        except InvalidInputError:  # the calendar's first session
            return None
        bars = self.minute_bars([symbol], prev)
        return bars.column("close")[-1].as_py() if bars.num_rows else None

    def adjust(self, bars: pa.Table, *, as_of: date, splits: bool = True, dividends: bool = False) -> pa.Table:
        """`bars` (schemas.BARS of stocks, any symbols) adjusted as a vendor adjusts them on `as_of`:
        prices of a bar before an action's ex-date (ex_date <= as_of, announced by then) times
        split_from / split_to for `splits` and 1 - cash_amount / previous close for `dividends`,
        volumes divided by the splits' factor. Later actions (and unknown symbols) change nothing."""
        if not bars.num_rows or not (splits or dividends):
            return bars
        symbols = sorted(set(bars.column("symbol").to_pylist()))
        actions = self.corporate_actions(as_of=as_of, symbols=symbols, end=as_of)
        price = np.ones(bars.num_rows)
        volume = np.ones(bars.num_rows)
        day = _ny_days(bars.column("ts"))
        symbol_column = bars.column("symbol").to_numpy(zero_copy_only=False)
        for row in actions.to_pylist():
            if row["action_type"] == "split" and splits:
                p, v = row["split_from"] / row["split_to"], row["split_to"] / row["split_from"]
            elif row["action_type"] == "dividend" and dividends:
                close = self.previous_close(row["symbol"], row["ex_date"])
                if not close:
                    continue
                p, v = 1.0 - row["cash_amount"] / close, 1.0
            else:
                continue
            before = (symbol_column == row["symbol"]) & (day < np.datetime64(row["ex_date"], "D"))
            price[before] *= p
            volume[before] *= v
        if (price == 1.0).all() and (volume == 1.0).all():
            return bars
        out = bars
        for name in ("open", "high", "low", "close", "vwap"):
            out = out.set_column(out.schema.get_field_index(name), out.schema.field(name),
                                 pc.multiply(out.column(name), pa.array(price)))
        return out.set_column(out.schema.get_field_index("volume"), out.schema.field("volume"),
                              pc.multiply(out.column("volume"), pa.array(volume)))

    def listed(self, kind: str, day: date) -> list[str]:
        """Symbols of `kind` ("stocks": us_equities, etf, otc; "crypto") listed on `day`, sorted."""
        categories = CRYPTO_CATEGORIES if kind == "crypto" else STOCK_CATEGORIES
        if kind == "stocks" and not calendar.is_session(day):
            return []
        return sorted(s for c in categories for s in self.universe(c, day).column("symbol").to_pylist())


def _ny_days(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The New York date (datetime64[D]) of each UTC timestamp."""
    local = pc.local_timestamp(pc.cast(ts, pa.timestamp("ns", tz="America/New_York")))
    return local.to_numpy(zero_copy_only=False).astype("datetime64[D]")


def _source(table: pa.Table) -> str:
    return table.column("source")[0].as_py() if table.num_rows else "sim"


def _keys(table: pa.Table) -> pa.Array:
    """`symbol|ts-in-ns` per row: a single column to match bars on."""
    ts = pc.cast(pc.cast(table.column("ts"), pa.int64()), pa.string())
    keys = pc.binary_join_element_wise(table.column("symbol"), ts, "|")
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def split_by_symbol(table: pa.Table, symbols: Sequence[str]) -> dict[str, pa.Table]:
    """Zero-copy slices of a table sorted by symbol, one per symbol of `symbols` (empty when absent)."""
    out = {s: table.schema.empty_table() for s in symbols}
    n = table.num_rows
    if not n:
        return out
    column = table.column("symbol").combine_chunks()
    changes = pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(changes) + 1])
    ends = np.concatenate([starts[1:], [n]])
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        out[column[start].as_py()] = table.slice(start, end - start)
    return out


# --------------------------------------------------------------------------- aggregation


def _local_ns(ts: np.ndarray, tz: ZoneInfo | timezone) -> np.ndarray:
    if tz is UTC:
        return ts
    index = pd.DatetimeIndex(ts.view("M8[ns]")).tz_localize("UTC").tz_convert(tz).tz_localize(None)
    return index.as_unit("ns").asi8


def _local_midnights_utc(day_index: np.ndarray, tz: ZoneInfo | timezone) -> np.ndarray:
    """UTC ns of local midnight for days counted from 1970-01-01."""
    if tz is UTC:
        return day_index * NS_PER_DAY
    unique, inverse = np.unique(day_index, return_inverse=True)
    index = pd.DatetimeIndex((unique * NS_PER_DAY).view("M8[ns]")).tz_localize(tz)
    return index.as_unit("ns").asi8[inverse]


def bucket_starts(ts: np.ndarray, unit: str, multiplier: int, tz: ZoneInfo | timezone,
                  *, anchor: date | None = None) -> np.ndarray:
    """UTC ns start of the bucket of each `ts`: `multiplier` minutes or hours clock-aligned from
    local midnight (never spanning two days), or `multiplier` local days counted from `anchor`."""
    if unit not in UNITS:
        raise InvalidInputError(f"unknown unit {unit!r}: expected one of {', '.join(UNITS)}")
    if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 1:
        raise InvalidInputError(f"multiplier {multiplier!r}: expected a positive integer")
    local = _local_ns(ts, tz)
    if unit == "day":
        day_index = local // NS_PER_DAY
        if multiplier > 1:
            base = (anchor - date(1970, 1, 1)).days if anchor else int(day_index.min())
            day_index = base + ((day_index - base) // multiplier) * multiplier
        return _local_midnights_utc(day_index, tz)
    width = multiplier * (60 if unit == "minute" else 3600) * 1_000_000_000
    midnight = local - local % NS_PER_DAY
    return midnight + ((local - midnight) // width) * width - (local - ts)


def aggregate(bars: pa.Table, unit: str, multiplier: int = 1, *, tz: ZoneInfo | timezone,
              anchor: date | None = None) -> pa.Table:
    """Coarser bars (AGG_BARS: schemas.BARS plus `base_count`) from 1-minute bars sorted by
    (symbol, ts): first open, last close, extreme high and low, summed volume and trade count,
    VWAP weighted by volume. Buckets follow `bucket_starts`."""
    n = bars.num_rows
    if not n:
        return AGG_BARS.empty_table()
    ts = pc.cast(bars.column("ts"), pa.int64()).to_numpy()
    bucket = bucket_starts(ts, unit, multiplier, tz, anchor=anchor)
    symbol = bars.column("symbol").combine_chunks()
    new_symbol = pc.not_equal(symbol.slice(1), symbol.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.concatenate([[True], new_symbol | (bucket[1:] != bucket[:-1])]))
    ends = np.concatenate([starts[1:], [n]]) - 1

    def column(name: str, fill: float = 0.0) -> np.ndarray:
        return bars.column(name).to_numpy().astype(np.float64) if bars.column(name).null_count == 0 else \
            pc.fill_null(bars.column(name), fill).to_numpy().astype(np.float64)

    volume = column("volume")
    vwap = pc.coalesce(bars.column("vwap"), bars.column("close")).to_numpy()
    volume_sum = np.add.reduceat(volume, starts)
    notional = np.add.reduceat(vwap * volume, starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        bucket_vwap = np.where(volume_sum > 0, notional / np.where(volume_sum > 0, volume_sum, 1.0), np.nan)
    counts = pc.fill_null(bars.column("trade_count"), 0).to_numpy()
    return pa.Table.from_arrays([
        symbol.take(pa.array(starts)),
        pa.array(bucket[starts], pa.int64()).cast(TS),
        pa.array(column("open")[starts]),
        pa.array(np.maximum.reduceat(column("high"), starts)),
        pa.array(np.minimum.reduceat(column("low"), starts)),
        pa.array(column("close")[ends]),
        pa.array(volume_sum),
        pa.array(bucket_vwap, mask=np.isnan(bucket_vwap)),
        pa.array(np.add.reduceat(counts.astype(np.int64), starts)),
        bars.column("source").combine_chunks().take(pa.array(starts)),
        pa.array(np.diff(np.concatenate([starts, [n]])), pa.int64()),
    ], schema=AGG_BARS)
