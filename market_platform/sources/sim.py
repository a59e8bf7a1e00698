"""The simulated market: deterministic trades, quotes and bars for a US-equity-like universe and crypto.

Everything is a pure function of (seed, symbol, day, activity): the same inputs give the same
rows in every process, whichever other symbols, scale or time window were asked for. It is the
single source of truth behind the replay servers, so Polygon REST, Flat Files and Alpaca serve
identical data for a (symbol, day).

Stocks, ETFs and OTC names trade in sessions (04:00-20:00 New York, 17:00 on half days); a
stock request for a day that is not a session raises NotASessionError. Crypto pairs (category
`crypto`, symbols with a slash like `BTC/USD`) trade around the clock on UTC days. FX pairs,
indices and options exist in the universe only; asking for their market data is an error.

The model, per symbol and day:

- **Daily path.** A per-symbol Brownian motion over calendar days (a tree of Brownian bridges,
  read at any day without generating the ones before it), reflected between price walls and
  pinned to the reference price on 2024-06-28, gives each day's closing price. Day d's session
  opens at day d-1's close, so prices drift plausibly across days and weekends show as gaps.
- **Minute skeleton.** For each minute of the day: an activity level (U-shaped in regular hours,
  thin pre-market and after-hours, times a log-normal burst), and from it the number of trades
  `n`, of quote messages `q` and of NBBO price changes `k <= q`; and an anchor price, a Brownian
  bridge from the open to the close rounded to the tick. The NBBO (bid and spread in ticks)
  moves only at change events, so in a minute with none it carries over.
- **Events.** Within a minute the `k` changes walk the NBBO from where it was to the minute's
  anchor; the other quote messages restate the current NBBO with new sizes and venues; a trade
  prints at the bid, the ask or (spreads of two ticks or more) in between, of the NBBO in force
  at its instant, so it is never outside the prevailing quote. Each symbol-day's first quote
  comes at the session start, before any trade.
- **Bars** aggregate the trades: open = first, high, low, close = last, volume = sum of sizes,
  vwap = sum(price * size) / sum(size), trade_count; a minute without trades has no bar. The
  daily bar aggregates the whole session (extended hours included); its `ts` is midnight New
  York (crypto: midnight UTC).

Randomness is counter-based (`sim_random`): every draw is a hash of (seed, symbol, day,
purpose, minute, event index). A day is built from minute-level arrays and events within
minutes, so generating a symbol alone, with 3,000 others, or one hour at a time evaluates the
same draws and gives identical rows.

Prices: stocks and ETFs on a one-cent grid and at least $1; OTC names under $1 in $0.0001;
crypto ticks of about a millionth of the price. Sizes: shares for stocks (odd lots, round lots,
blocks, and fractional shares in eighths, so sums are exact) and coin units to 1e-8 for crypto.
Venues are Alpaca's single-letter codes; tapes follow the listing exchange (A: NYSE,
B: NYSE Arca/American/Cboe, C: Nasdaq). Trade ids count up from day * 1e9 per symbol-day.

At full scale (3,000 stocks and ETFs, activity 1.0) a full session has about 80 million quotes,
700 thousand one-minute bars and 7 million trades; `activity` scales every message rate.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.schemas import ACTIONS_ORDER, BARS, CATEGORIES, QUOTES, TRADES, TS, UNIVERSE, Source, quote_seq
from market_platform.sources import sim_actions
from market_platform.sources import sim_random as rnd
from market_platform.sources.sim_reference import (
    CRYPTO,
    CRYPTO_GROUP,
    EQUITY,
    MICS,
    OPTION_ROOTS,
    OTC,
    OTCM,
    REFERENCE_DAY,
    REFERENCE_ONLY,
    TAPES,
    Reference,
    reference,
    third_fridays,
    well_known,
)

UTC = timezone.utc
#: Day 0 of the daily price paths; 2**16 days reach past 2150.
EPOCH = date(1990, 1, 1)
_PATH_DEPTH = 16
_NS_PER_MINUTE = 60_000_000_000
#: Events other than the opening quote fall in [1 µs, 60 s) of their minute and the opening
#: quote in [0, 1 µs), so the day's first quote precedes its first trade.
_FIRST_EVENT_NS = 1_000
_OFFSET_BITS = np.int64(36)  # a minute's 6e10 ns fit in 36 bits
_EVENT_BITS = np.uint64(24)  # counters are (minute << 24) | event index
_BATCH_EVENTS = 1_000_000    # events generated at once: bounds memory
_WINDOW_EVENTS = 400_000     # events per streaming window
_SKELETON_ROWS = 256

STOCK, CRYPTO_KIND = 0, 1

# Calibration at activity 1.0: a full session at full scale ≈ 80M quotes, 700k bars, 7M trades.
_TRADES_TOP, _TRADES_SLOPE = 610_000.0, 1.05
_QUOTES_TOP, _QUOTES_SLOPE = 1_330_000.0, 0.6
_BURST_SIGMA = 0.8
#: Names that trade far more than their market cap suggests (index ETFs, retail favourites).
_HEAVY_TRADERS = {"SPY": 20.0, "QQQ": 8.0, "IWM": 6.0, "TSLA": 6.0, "NVDA": 4.0, "AMD": 3.0, "TQQQ": 4.0,
                  "SQQQ": 4.0, "PLTR": 4.0, "F": 3.0, "RIVN": 3.0, "XLF": 3.0, "EEM": 3.0, "TLT": 3.0,
                  "GDX": 3.0, "SLV": 3.0, "INTC": 2.0, "BAC": 2.0, "COIN": 2.0, "HYG": 2.0, "SMH": 2.0,
                  "ARKK": 2.0, "USO": 2.0}
_CHANGE_RATE = 0.5  # NBBO price changes per minute ≈ this × sqrt(quote messages)

#: Venues (Alpaca's single-letter codes); "" is a crypto trade's "no exchange".
EXCHANGES = ("", "A", "B", "C", "D", "H", "J", "K", "L", "M", "N", "P", "Q", "U", "V", "X", "Y", "Z")
_TRADE_VENUES = {"D": 36, "Q": 13, "K": 7, "P": 6, "Z": 6, "U": 5, "N": 3, "V": 3, "J": 2, "Y": 2,
                 "X": 1.5, "B": 1, "H": 1.5, "A": 0.5, "M": 0.5, "C": 0.5, "L": 0.5}
_TRADE_VENUES_EXTENDED = {"D": 30, "Q": 24, "P": 18, "K": 10, "Z": 8, "U": 6, "V": 2, "N": 2}
_QUOTE_VENUES = {"Q": 16, "N": 6, "P": 12, "K": 10, "Z": 10, "U": 8, "V": 7, "J": 5, "Y": 5, "X": 4,
                 "B": 3, "H": 5, "A": 2, "M": 1, "C": 1, "L": 1}
_QUOTE_VENUES_EXTENDED = {"Q": 30, "P": 30, "K": 15, "Z": 15, "U": 10}
#: The listing exchange's own venue gets this much extra weight (XNYS, XNAS, XASE, ARCX, BATS).
_HOME_VENUE = (("N", 9.0), ("Q", 4.0), ("A", 5.0), ("P", 6.0), ("Z", 6.0))

#: Trade conditions (Alpaca/CTA letters): "@" regular, "F" intermarket sweep, "T" extended
#: hours (Form T), "I" odd lot; index = 4 * extended + 2 * sweep + odd lot.
TRADE_CONDITIONS = tuple(
    ",".join(["@"] + ["F"] * sweep + ["T"] * ext + ["I"] * odd)
    for ext in (0, 1) for sweep in (0, 1) for odd in (0, 1)
)
QUOTE_CONDITION = "R"  # regular two-sided quote

_MARKET_DATA_CATEGORIES = ("us_equities", "etf", "otc", "crypto")


def _purpose(name: str) -> int:
    return rnd.text_key("purpose", name)


_P_DAY, _P_PATH, _P_DAYFACTOR = _purpose("day"), _purpose("path"), _purpose("dayfactor")
_P_ACT, _P_COUNT, _P_SPREAD, _P_CHANGE = (_purpose(p) for p in ("act", "count", "spread", "change"))
_P_CHG_TIME, _P_CHG_LEVEL = _purpose("chg_time"), _purpose("chg_level")
_P_UPD_TIME, _P_OPEN_TIME = _purpose("upd_time"), _purpose("open_time")
_P_Q_SIZE, _P_Q_VENUE = _purpose("q_size"), _purpose("q_venue")
_P_T_TIME, _P_T_SIDE, _P_T_SIZE = _purpose("t_time"), _purpose("t_side"), _purpose("t_size")
_ROW_PURPOSES = (_P_DAYFACTOR, _P_ACT, _P_COUNT, _P_SPREAD, _P_CHANGE, _P_CHG_TIME, _P_CHG_LEVEL,
                 _P_UPD_TIME, _P_OPEN_TIME, _P_Q_SIZE, _P_Q_VENUE, _P_T_TIME, _P_T_SIDE, _P_T_SIZE)


# --------------------------------------------------------------------------- model parameters


@dataclass(frozen=True)
class _Params:
    """Per-instrument model parameters, aligned with the reference list."""

    sym_key: np.ndarray      # uint64 key of (seed, symbol)
    path_key: np.ndarray     # uint64 key of the daily price path
    trades: np.ndarray       # expected trades in a full session at activity 1
    quotes: np.ndarray       # expected quote messages in a full session at activity 1
    sigma: np.ndarray        # daily log-price volatility
    spread_bps: np.ndarray   # typical spread
    scale: np.ndarray        # ticks per currency unit (100.0: one-cent ticks)
    floor_ticks: np.ndarray  # int64 lowest bid in ticks
    log_low: np.ndarray      # walls of the daily path (log price)
    log_high: np.ndarray
    lots: np.ndarray         # mean displayed quote size in round lots (stocks)
    kind: np.ndarray         # int8 STOCK or CRYPTO_KIND
    listing: np.ndarray      # int8 listing group (venue mix, tape)


def _params(ref: Reference, seed: int) -> _Params:
    n = len(ref)
    # A name's liquidity and volatility jitter depend on the symbol only, not the seed.
    static_keys = np.array([rnd.text_key("sim.static", s) for s in ref.symbol], dtype=np.uint64)
    z_liquidity, z_vol = rnd.normal_pair(rnd.bits(static_keys, np.zeros(n, np.uint64)))
    rank = ref.rank.astype(np.float64)
    group = ref.scale_group
    is_crypto = ref.listing == CRYPTO
    is_etf = np.array([t == "ETF" for t in ref.type])
    stable = np.array([s.split("/")[0] in ("USDT", "USDC") for s in ref.symbol])
    cap = np.where(np.isnan(ref.ref_cap), 1e9, ref.ref_cap)
    price = np.where(np.isnan(ref.ref_price), 1.0, ref.ref_price)

    def by_group(equity, otc, crypto):
        return np.where(is_crypto, crypto, np.where(group == OTC, otc, np.where(group == EQUITY, equity, 0.0)))

    heavy = np.array([_HEAVY_TRADERS.get(s, 1.0) for s in ref.symbol])
    liquidity = np.exp(0.35 * np.clip(z_liquidity, -1.5, 1.5) - 0.06)
    trades = heavy * liquidity * by_group(_TRADES_TOP * (rank + 1.0) ** -_TRADES_SLOPE,
                                  400.0 * (rank + 1.0) ** -0.5, 60_000.0 * (rank + 1.0) ** -1.0)
    quotes = np.sqrt(heavy) * liquidity * by_group(_QUOTES_TOP * (rank + 1.0) ** -_QUOTES_SLOPE,
                                  3_000.0 * (rank + 1.0) ** -0.4, 400_000.0 * (rank + 1.0) ** -0.8)
    equity_sigma = np.clip(0.028 - 0.0035 * np.log(cap / 1e9), 0.008, 0.07) * np.exp(0.2 * z_vol)
    sigma = by_group(np.where(is_etf, 0.55, 1.0) * equity_sigma, 0.05,
                     np.where(stable, 0.0005, 0.035 * np.exp(0.2 * z_vol)))
    equity_bps = np.clip(0.6 * ((rank + 1.0) / 5.0) ** 0.55, 0.3, 60.0) * np.where(is_etf, 0.5, 1.0)
    spread_bps = by_group(equity_bps, 80.0, np.where(stable, 1.0, 1.5 + 0.8 * rank))

    sub_dollar = (group == OTC) & (price < 1.0)
    decimals = np.where(is_crypto, np.clip(6 - np.floor(np.log10(price)), 2, 12), np.where(sub_dollar, 4, 2))
    log_low = by_group(np.log(1.5), np.where(sub_dollar, np.log(0.01), np.log(1.5)),
                       np.where(stable, np.log(0.98), np.log(price / 500.0)))
    log_high = by_group(np.log(6000.0), np.where(sub_dollar, np.log(0.95), np.log(500.0)),
                        np.where(stable, np.log(1.02), np.log(price * 500.0)))
    sym_key = np.array([rnd.text_key("sim", seed, s) for s in ref.symbol], dtype=np.uint64)
    return _Params(
        sym_key=sym_key, path_key=rnd.derive(sym_key, _P_PATH), trades=trades, quotes=quotes,
        sigma=sigma, spread_bps=spread_bps, scale=10.0 ** decimals,
        # $1.00 for stocks (no sub-penny quotes), $0.01 for sub-dollar OTC, one tick for crypto.
        floor_ticks=np.where(is_crypto, 1, 100).astype(np.int64),
        log_low=log_low, log_high=log_high, lots=1.0 + 8.0 * np.exp(-rank / 300.0),
        kind=np.where(is_crypto, CRYPTO_KIND, STOCK).astype(np.int8), listing=ref.listing.copy(),
    )


def _venue_lookup(regular: dict[str, float], extended: dict[str, float]) -> np.ndarray:
    """Venue index by (listing group * 2 + extended, uniform bucket): an inverse-CDF table.

    A table lookup instead of a binary search per event; 4,096 buckets resolve weights to 0.02%.
    """
    lookup = np.zeros((7 * 2, _VENUE_BUCKETS), dtype=np.int64)
    buckets = (np.arange(_VENUE_BUCKETS) + 0.5) / _VENUE_BUCKETS
    for listing in range(7):
        for ext, weights in enumerate((regular, extended)):
            w = dict(weights)
            if listing == OTCM:
                w = {"D": 1.0}
            elif listing == CRYPTO:
                w = {"": 1.0}
            elif listing < len(_HOME_VENUE) and not ext:
                venue, extra = _HOME_VENUE[listing]
                w[venue] = w.get(venue, 0.0) + extra
            row = np.array([w.get(x, 0.0) for x in EXCHANGES])
            cdf = np.cumsum(row) / row.sum()
            lookup[listing * 2 + ext] = np.minimum(np.searchsorted(cdf, buckets, side="right"), len(row) - 1)
    return lookup


_VENUE_BUCKETS = 4096
_TRADE_VENUE_LOOKUP = _venue_lookup(_TRADE_VENUES, _TRADE_VENUES_EXTENDED)
_QUOTE_VENUE_LOOKUP = _venue_lookup(_QUOTE_VENUES, _QUOTE_VENUES_EXTENDED)
_D = EXCHANGES.index("D")


def _pick_venue(lookup: np.ndarray, listing: np.ndarray, extended: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Venue index per event from its listing group, phase and a uniform draw."""
    return lookup[listing.astype(np.int64) * 2 + extended, (u * _VENUE_BUCKETS).astype(np.int64)]


# --------------------------------------------------------------------------- the day's grid


@dataclass(frozen=True)
class _Grid:
    """A day's minutes for one kind of instrument, with its intraday profiles."""

    kind: int
    day: date
    start_ns: int
    minutes: int
    activity: np.ndarray  # share of a full day's messages per minute
    variance: np.ndarray  # share of the day's price variance per minute (sums to 1)
    spread: np.ndarray    # spread multiplier per minute (wider outside regular hours)
    extended: np.ndarray  # int64 1 in pre-market and after-hours minutes

    def minute_range(self, start_ns: int | None, end_ns: int | None) -> tuple[int, int]:
        """Minutes [lo, hi) overlapping [start_ns, end_ns)."""
        lo = 0 if start_ns is None else max(0, (start_ns - self.start_ns) // _NS_PER_MINUTE)
        hi = self.minutes if end_ns is None else min(self.minutes, -(-(end_ns - self.start_ns) // _NS_PER_MINUTE))
        return int(lo), int(max(lo, hi))


def _stock_shape(minutes: int, regular_open: int, regular_close: int) -> np.ndarray:
    m = np.arange(minutes, dtype=np.float64)
    to_open, since_open = regular_open - 1 - m, m - regular_open
    to_close, since_close = regular_close - 1 - m, m - regular_close
    # Pre-market builds toward the open, with a bump at 08:30 (economic releases); the regular
    # session is U-shaped; after-hours fades from the close.
    pre = 0.006 + 0.25 * np.exp(-to_open / 40.0) + 0.05 * np.exp(-np.abs(m - 270.0) / 8.0)
    regular = (1.0 + 3.0 * np.exp(-since_open / 10.0) + np.exp(-since_open / 60.0)
               + 2.5 * np.exp(-to_close / 6.0) + 0.8 * np.exp(-to_close / 45.0))
    post = 0.008 + 0.6 * np.exp(-since_close / 8.0) + 0.1 * np.exp(-since_close / 60.0)
    return np.where(m < regular_open, pre, np.where(m < regular_close, regular, post))


@functools.lru_cache(maxsize=8)
def _stock_profiles(minutes: int, regular_open: int, regular_close: int) -> tuple[np.ndarray, ...]:
    shape = _stock_shape(minutes, regular_open, regular_close)
    # Normalised by a full day's total, so a half day has fewer messages, not denser ones.
    activity = shape / _stock_shape(960, 330, 720).sum()
    extended = ((np.arange(minutes) < regular_open) | (np.arange(minutes) >= regular_close)).astype(np.int64)
    return _frozen(activity, _variance(shape), np.where(extended == 1, 2.5, 1.0), extended)


@functools.lru_cache(maxsize=1)
def _crypto_profiles() -> tuple[np.ndarray, ...]:
    m = np.arange(1440, dtype=np.float64)
    shape = 1.0 + 0.45 * np.cos(2.0 * np.pi * (m - 900.0) / 1440.0)  # busiest around 15:00 UTC
    return _frozen(shape / shape.sum(), _variance(shape), np.ones(1440), np.zeros(1440, dtype=np.int64))


def _variance(shape: np.ndarray) -> np.ndarray:
    root = np.sqrt(shape)
    return root / root.sum()


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


_UNIX = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(instant: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime (or pandas Timestamp), exactly."""
    if not isinstance(instant, datetime):
        raise InvalidInputError(f"{instant!r} is not a datetime: expected an aware datetime")
    if instant.tzinfo is None:
        raise InvalidInputError(f"instant {instant.isoformat()} has no time zone: expected an aware datetime")
    delta = instant.astimezone(UTC) - _UNIX
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * 1_000 + int(getattr(instant, "nanosecond", 0))


def _midnight_ns(day: date, tz) -> int:
    return _ns(datetime.combine(day, time(0), tzinfo=tz))


# --------------------------------------------------------------------------- the minute skeleton


@dataclass
class _Skeleton:
    """The minute skeleton of some rows (one kind) on one day: arrays of rows × minutes."""

    grid: _Grid
    rows: np.ndarray         # indices into the reference list
    symbols: pa.Array        # their symbols (dictionary of output columns)
    n: np.ndarray            # int32 trades per minute
    q: np.ndarray            # int32 quote messages per minute, the opening quote not included
    k: np.ndarray            # int32 NBBO price changes per minute (k <= q)
    bid: np.ndarray          # int64 bid ticks in force at the end of each minute
    spread: np.ndarray       # int32 spread ticks in force at the end of each minute
    bid_open: np.ndarray     # int64 per row: the NBBO at the session start
    spread_open: np.ndarray
    wander: np.ndarray       # float32 ticks: scale of the NBBO's wander inside a minute
    spread_base: np.ndarray  # float64 ticks per row: the typical spread before the phase multiplier
    trade_seq: np.ndarray    # int32 trades of the row earlier in the day (for trade ids)
    keys: dict[int, np.ndarray]  # purpose -> uint64 stream key per row
    scale: np.ndarray        # per row, from _Params
    floor: np.ndarray
    lots: np.ndarray
    listing: np.ndarray
    volume_factor: np.ndarray  # float64 per row: trade sizes times this (the inverse of the splits' factor)
    day_number: int

    def start_of(self, cr: np.ndarray, cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bid and spread in force at the start of each cell (the previous minute's end)."""
        prev = np.maximum(cm - 1, 0)
        first = cm == 0
        return (np.where(first, self.bid_open[cr], self.bid[cr, prev]),
                np.where(first, self.spread_open[cr], self.spread[cr, prev]))


#: The skeleton's fields that hold one entry (or one row of minutes) per row.
_ROW_FIELDS = tuple(f for f in _Skeleton.__dataclass_fields__ if f not in ("grid", "symbols", "keys", "day_number"))


def _spread_ticks(base: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Spread in ticks: the typical spread with log-normal noise, at least one tick, now and then one wider."""
    return np.maximum(1, np.rint(base * np.exp(0.35 * z))).astype(np.int64) + (z > 1.5)


def _forward_fill(values: np.ndarray, moved: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """`values` where `moved`, else the last moved value to the left (`initial` before any)."""
    minutes = np.arange(values.shape[1])
    last = np.maximum.accumulate(np.where(moved, minutes, -1), axis=1)
    taken = np.take_along_axis(values, np.maximum(last, 0), axis=1)
    return np.where(last >= 0, taken, initial[:, None])


# --------------------------------------------------------------------------- events


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For cells with `counts` events: each event's cell, its index within the cell, cell starts."""
    counts = counts.astype(np.int64, copy=False)
    starts = np.cumsum(counts) - counts
    cell = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return cell, np.arange(len(cell), dtype=np.int64) - starts[cell], starts


def _counters(cm: np.ndarray, cell: np.ndarray, j: np.ndarray) -> np.ndarray:
    return (cm[cell].astype(np.uint64) << _EVENT_BITS) | j.astype(np.uint64)


def _event_keys(keys: np.ndarray, counters: np.ndarray, cell: np.ndarray, *, sort: bool = True) -> np.ndarray:
    """Event instants as (cell << 36 | ns into the minute), sorted so ranks follow time."""
    u = rnd.uniform53(rnd.bits(keys, counters))
    offset = _FIRST_EVENT_NS + (u * (_NS_PER_MINUTE - _FIRST_EVENT_NS)).astype(np.int64)
    out = (cell << _OFFSET_BITS) | offset
    return np.sort(out) if sort else out


@dataclass
class _Nbbo:
    """The NBBO of a set of cells: its change instants and the levels between them."""

    keys: np.ndarray         # sorted (cell << 36 | offset) of the changes
    starts: np.ndarray       # each cell's first change
    table_start: np.ndarray  # each cell's first level: the NBBO at the minute's start
    bid: np.ndarray          # levels: bid ticks
    spread: np.ndarray       # levels: spread ticks

    def at(self, event_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bid and spread in force at each event; a change at the same instant counts as done."""
        cell = event_keys >> _OFFSET_BITS
        index = self.table_start[cell] + np.searchsorted(self.keys, event_keys, side="right") - self.starts[cell]
        return self.bid[index], self.spread[index]


def _nbbo(sk: _Skeleton, cr: np.ndarray, cm: np.ndarray) -> _Nbbo:
    k = sk.k[cr, cm].astype(np.int64)
    cell, j, starts = _expand(k)
    counters = _counters(cm, cell, j)
    keys = _event_keys(sk.keys[_P_CHG_TIME][cr][cell], counters, cell)
    bid_start, spread_start = sk.start_of(cr, cm)
    bid_end, spread_end = sk.bid[cr, cm], sk.spread[cr, cm]
    # Levels are drawn by rank in time, so they attach to the sorted instants; the walk ends at
    # the minute's anchor, wandering like a Brownian bridge in between.
    frac = (j + 1) / k[cell]
    z_level, z_spread = rnd.normal_pair(rnd.bits(sk.keys[_P_CHG_LEVEL][cr][cell], counters))
    wander = np.sqrt(frac * (1.0 - frac)) * sk.wander[cr, cm][cell] * z_level
    walk = np.rint(bid_start[cell] + frac * (bid_end - bid_start)[cell] + wander).astype(np.int64)
    walk = np.maximum(walk, sk.floor[cr][cell])
    spread = _spread_ticks(sk.spread_base[cr][cell] * sk.grid.spread[cm][cell], z_spread)
    last = j == k[cell] - 1
    table_start = starts + np.arange(len(cr), dtype=np.int64)
    table_bid = np.empty(len(cr) + len(cell), dtype=np.int64)
    table_spread = np.empty_like(table_bid)
    table_bid[table_start], table_spread[table_start] = bid_start, spread_start
    at = table_start[cell] + 1 + j
    table_bid[at] = np.where(last, bid_end[cell], walk)
    table_spread[at] = np.where(last, spread_end[cell], spread)
    return _Nbbo(keys, starts, table_start, table_bid, table_spread)


class _Trades(NamedTuple):
    cell: np.ndarray   # int64 cell of each trade
    j: np.ndarray      # rank within its cell
    offset: np.ndarray  # ns into the minute
    price: np.ndarray
    size: np.ndarray
    u_venue: np.ndarray
    u_class: np.ndarray


def _trade_events(sk: _Skeleton, cr: np.ndarray, cm: np.ndarray) -> _Trades:
    """The trades of cells (rows `cr`, minutes `cm`), grouped by cell in time order."""
    n = sk.n[cr, cm]
    cell, j, _ = _expand(n)
    counters = _counters(cm, cell, j)
    keys = _event_keys(sk.keys[_P_T_TIME][cr][cell], counters, cell)
    bid, spread = _nbbo(sk, cr, cm).at(keys)
    u_side, u_class = rnd.uniform_pair(rnd.bits(sk.keys[_P_T_SIDE][cr][cell], counters))
    # At the bid (seller-initiated), at the ask (buyer-initiated), or inside a wider spread.
    inside = 1 + ((u_side - 0.46) / 0.08 * (spread - 1)).astype(np.int64)
    level = bid + np.where(u_side < 0.46, 0, np.where((u_side >= 0.54) | (spread == 1), spread, inside))
    row = cr[cell]
    price = level / sk.scale[row]
    size_bits = rnd.bits(sk.keys[_P_T_SIZE][cr][cell], counters)
    u_size, u_venue = rnd.uniform_pair(size_bits)
    if sk.grid.kind == CRYPTO_KIND:
        notional = 250.0 * np.exp(1.4 * rnd.normal(size_bits))
        size = np.maximum(np.round(notional / price, 8), 1e-8)
    else:
        size = np.select(
            [u_class < 0.50, u_class < 0.95, u_class < 0.999],
            [1.0 + np.floor(99.0 * u_size**2),                     # odd lot
             100.0 * (1.0 + np.floor(-np.log(u_size))),           # round lots
             (1.0 + np.floor(u_size * 400.0)) / 8.0],              # fractional shares, in eighths
            100.0 * (50.0 + np.floor(u_size * 250.0)),             # block
        )
        factor = sk.volume_factor[row]
        if (factor != 1.0).any():
            # Splits scale sizes inversely to prices: whole shares stay whole, fractions in eighths.
            whole = size == np.floor(size)
            scaled = np.where(whole, np.maximum(1.0, np.rint(size * factor)),
                              np.maximum(0.125, np.rint(size * factor * 8.0) / 8.0))
            size = np.where(factor != 1.0, scaled, size)
    return _Trades(cell, j, keys & ((1 << 36) - 1), price, size, u_venue, u_class)


def _batches(counts: np.ndarray, budget: int) -> Iterator[slice]:
    """Consecutive slices of cells holding about `budget` events each (at least one cell)."""
    if len(counts) == 0:
        return
    ends = np.cumsum(counts, dtype=np.int64)
    start = 0
    while start < len(counts):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + budget, side="right")))
        yield slice(start, stop)
        start = stop


# --------------------------------------------------------------------------- Arrow helpers


def _strings(indices: np.ndarray, dictionary: pa.Array) -> pa.Array:
    codes = pa.array(indices.astype(np.int32, copy=False))
    return pa.DictionaryArray.from_arrays(codes, dictionary).cast(pa.string())


def _letters(codes: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A string column of one-character values from their ASCII codes, with no per-value work."""
    n = len(codes)
    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32))
    data = pa.py_buffer(np.ascontiguousarray(codes, dtype=np.uint8))
    if valid is None:
        return pa.Array.from_buffers(pa.string(), n, [None, offsets, data])
    bitmap = pa.array(valid, pa.bool_()).buffers()[1]
    return pa.Array.from_buffers(pa.string(), n, [bitmap, offsets, data], null_count=n - int(valid.sum()))


def _timestamps(ns: np.ndarray) -> pa.Array:
    return pa.array(ns.astype(np.int64, copy=False)).view(TS)


#: ASCII code of each venue's letter ("" is never written as a letter: crypto rows are constant).
_VENUE_CODES = np.array([ord(x) if x else 0 for x in EXCHANGES], dtype=np.uint8)
#: Tape letter by listing group (0 where there is none: OTC, crypto).
_TAPE_CODES = np.array([ord(t) if t else 0 for t in TAPES], dtype=np.uint8)
_TRADE_CONDITION_DICT = pa.array(TRADE_CONDITIONS)


def _constant(n: int, value: str | None) -> pa.Array:
    return pa.nulls(n, pa.string()) if value is None else pa.repeat(pa.scalar(value, pa.string()), n)


# --------------------------------------------------------------------------- the market


class SimMarket:
    """A deterministic simulated market.

    `n_stocks` stocks and ETFs (the first of one fixed ranking by market cap that are listed on
    the day), `n_crypto` crypto pairs (likewise), one OTC name per 20 stocks, every FX pair and
    index, and a few hundred option contracts. `activity` scales the rate of trades and quotes:
    1.0 is a realistic full market; streaming memory grows with the busiest minute, so values
    above 1 are for stress tests (at most 10).

    Market-data methods take a `day` (a date or YYYY-MM-DD) and `symbols` (None: the day's
    stocks and ETFs at this scale). Any symbol of the universe may be asked for, whatever the
    scale; one not listed on the day has no rows. Tables are sorted by (symbol, ts) and streams
    are in time order (ties by symbol).
    """

    def __init__(self, seed: int = 7, *, n_stocks: int = 3000, n_crypto: int = 20, activity: float = 1.0):
        for name, value in (("seed", seed), ("n_stocks", n_stocks), ("n_crypto", n_crypto)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InvalidInputError(f"{name}={value!r}: expected a non-negative integer")
        if isinstance(activity, bool) or not (isinstance(activity, (int, float)) and 0.0 < activity <= 10.0):
            raise InvalidInputError(f"activity={activity!r}: expected a number in (0, 10]")
        self.seed, self.n_stocks, self.n_crypto = int(seed), int(n_stocks), int(n_crypto)
        self.activity = float(activity)
        self.n_otc = (self.n_stocks + 19) // 20
        self._ref = reference()
        self._params = _params(self._ref, self.seed)
        self._w_ref = rnd.brownian(self._params.path_key, REFERENCE_DAY.toordinal() - EPOCH.toordinal(), _PATH_DEPTH)
        groups = self._ref.scale_group
        self._by_rank = {g: np.flatnonzero(groups == g)[np.argsort(self._ref.rank[groups == g], kind="stable")]
                         for g in (EQUITY, OTC, CRYPTO_GROUP, REFERENCE_ONLY)}
        self._limits = {EQUITY: self.n_stocks, OTC: self.n_otc, CRYPTO_GROUP: self.n_crypto, REFERENCE_ONLY: None}
        self._names = _names()

    @property
    def _actions(self) -> sim_actions.Schedule:
        """Every corporate action of this seed's market (built once per process and seed)."""
        return _schedule(self.seed)

    def __reduce__(self):
        # Pickle the four settings, not the arrays derived from them (workers rebuild in ~0.1 s).
        return _rebuild, (self.seed, self.n_stocks, self.n_crypto, self.activity)

    def __repr__(self) -> str:
        return (f"SimMarket(seed={self.seed}, n_stocks={self.n_stocks}, n_crypto={self.n_crypto}, "
                f"activity={self.activity})")

    # ----------------------------------------------------------------------- reference data

    @staticmethod
    def is_crypto(symbol: str) -> bool:
        """Whether `symbol` is a crypto pair of the simulated universe (trades 24/7 on UTC days)."""
        index = reference().index.get(symbol)
        return index is not None and reference().category[index] == "crypto"

    def _scale_rows(self, group: int, ordinal: int) -> tuple[np.ndarray, np.ndarray]:
        """(listed, delisted) rows of a scale group on a day at this scale, in rank order."""
        order = self._by_rank[group]
        ref = self._ref
        listed = (ref.list_day[order] <= ordinal) & (ordinal < ref.delist_day[order])
        limit = self._limits[group]
        active = order[listed][:limit]
        if limit is None or len(active) < limit:
            cutoff = np.iinfo(np.int64).max
        else:
            cutoff = ref.rank[active[-1]] if len(active) else -1
        inactive = order[(ref.delist_day[order] <= ordinal) & (ref.rank[order] <= cutoff)]
        return active, inactive

    def _category_rows(self, category: str, ordinal: int) -> tuple[np.ndarray, np.ndarray]:
        group = {"us_equities": EQUITY, "etf": EQUITY, "otc": OTC, "crypto": CRYPTO_GROUP}.get(category, REFERENCE_ONLY)
        active, inactive = self._scale_rows(group, ordinal)
        cats = self._ref.category
        return (np.array([i for i in active if cats[i] == category], dtype=np.int64),
                np.array([i for i in inactive if cats[i] == category], dtype=np.int64))

    def symbols(self, day: date | str, *, category: str = "us_equities") -> list[str]:
        """Symbols of `category` listed on `day` at this scale, sorted."""
        _check_category(category)
        day = calendar.to_date(day)
        if category == "options":
            return sorted(self.universe("options", day).column("symbol").to_pylist())
        active, _ = self._category_rows(category, day.toordinal())
        return sorted(self._names.symbols(active, day.toordinal()))

    def stock_symbols(self, day: date | str) -> list[str]:
        """The stocks and ETFs listed on `day` at this scale (what the stock stream subscribes to), sorted."""
        day = calendar.to_date(day)
        active, _ = self._scale_rows(EQUITY, day.toordinal())
        return sorted(self._names.symbols(active, day.toordinal()))

    def universe(self, category: str, day: date | str, *, include_inactive: bool = False) -> pa.Table:
        """Point-in-time ticker snapshot (schemas.UNIVERSE) of `category` on `day`, sorted by symbol.

        Rows are the symbols listed on `day` at this scale (active); `include_inactive` adds
        those delisted before `day` that would rank within this scale. `market_cap` is shares
        times the previous day's close; delist dates are shown only once they have passed.
        """
        _check_category(category)
        day = calendar.to_date(day)
        if category == "options":
            return self._options(day)
        ordinal = day.toordinal()
        active, inactive = self._category_rows(category, ordinal)
        rows = np.concatenate([active, inactive]) if include_inactive else active
        ref = self._ref
        cap = np.full(len(rows), np.nan)
        has_cap = np.zeros(len(rows), dtype=bool)
        has_cap[: len(active)] = ~np.isnan(ref.ref_cap[active])
        if has_cap.any():
            priced = rows[has_cap]
            shares = ref.ref_cap[priced] / ref.ref_price[priced]
            cap[has_cap] = shares * np.exp(self._log_close(priced, ordinal - 1))
        is_active = np.arange(len(rows)) < len(active)
        table = pa.table({
            # Inactive rows show the symbol they last traded under.
            "symbol": [self._names.symbol(i, min(ordinal, int(ref.delist_day[i]) - 1)) for i in rows],
            "name": [ref.name[i] for i in rows],
            "category": [category] * len(rows),
            "type": [ref.type[i] for i in rows],
            "exchange": [MICS[ref.listing[i]] if ref.listing[i] >= 0 else None for i in rows],
            "currency": [ref.currency[i] for i in rows],
            "market_cap": pa.array(np.round(cap, 0), mask=np.isnan(cap)),
            "active": is_active,
            "list_date": [date.fromordinal(int(ref.list_day[i])) for i in rows],
            "delist_date": [None if active else date.fromordinal(int(ref.delist_day[i]))
                            for i, active in zip(rows, is_active, strict=True)],
            "snapshot_date": [day] * len(rows),
            "source": [Source.SIM.value] * len(rows),
        })
        return _cast(table, UNIVERSE).sort_by("symbol")

    def _options(self, day: date) -> pa.Table:
        """A few hundred OCC-style contracts: monthly expiries listed 150 days ahead, 8 strikes
        around the underlying's price on the listing day, calls and puts."""
        ref, ordinal = self._ref, day.toordinal()
        records = []
        for root in OPTION_ROOTS:
            i = ref.index[root]
            if not ref.list_day[i] <= ordinal < ref.delist_day[i]:
                continue
            for expiry in third_fridays(day, 6):
                listed = expiry - timedelta(days=150)
                if not listed <= day <= expiry:
                    continue
                spot = float(np.exp(self._log_close(np.array([i]), listed.toordinal())[0]))
                step = 1.0 if spot < 50 else 5.0 if spot < 500 else 10.0
                for offset in range(-4, 4):
                    strike = round(spot / step) * step + offset * step
                    if strike <= 0:
                        continue
                    for right, word in (("C", "Call"), ("P", "Put")):
                        records.append({
                            "symbol": f"{root.replace('.', '')}{expiry:%y%m%d}{right}{round(strike * 1000):08d}",
                            "name": f"{root} {expiry:%b %d %Y} {strike:g} {word}",
                            "type": word.lower(), "list_date": listed,
                        })
        n = len(records)
        table = pa.table({
            "symbol": [r["symbol"] for r in records], "name": [r["name"] for r in records],
            "category": ["options"] * n, "type": [r["type"] for r in records], "exchange": [None] * n,
            "currency": ["USD"] * n, "market_cap": pa.nulls(n, pa.float64()), "active": [True] * n,
            "list_date": [r["list_date"] for r in records], "delist_date": pa.nulls(n, pa.date32()),
            "snapshot_date": [day] * n, "source": [Source.SIM.value] * n,
        })
        return _cast(table, UNIVERSE).sort_by("symbol")

    # ----------------------------------------------------------------------- corporate actions

    def corporate_actions(self, start: date | str, end: date | str, *,
                          symbols: Sequence[str] | None = None, as_of: date | str | None = None) -> pa.Table:
        """The simulated market's corporate actions (schemas.CORPORATE_ACTIONS, source `sim`) with
        ex_date in [start, end], sorted by (symbol, ex_date, action_type, action_id).

        Deterministic like the rest of the market (a function of the seed alone): forward splits
        (2:1, 3:1, 3:2), reverse splits (1:10), quarterly cash dividends of about a third of the
        stocks with now and then a special one, ticker renames (the history continues under the
        new symbol: e.g. RDS.A became SHEL on 2022-01-31) and delistings (the symbol stops trading,
        its history stays). Raw prices (every bar, trade and quote of this market) jump on the
        ex-date exactly as the action says: a split multiplies them by split_from / split_to and its
        volumes by split_to / split_from; a dividend takes cash_amount off the previous close.

        `symbols`: None means the stock, ETF and OTC names trading at this scale on the day before
        the action; otherwise those symbols (an action is included when its `symbol` or its
        `new_symbol` is asked for), whatever the scale. `as_of`: keep only actions announced by
        then (announced_date <= as_of), what a vendor would have served on that day.
        """
        start, end = calendar.to_date(start), calendar.to_date(end)
        if start > end:
            raise InvalidInputError(f"start {start.isoformat()} is after end {end.isoformat()}")
        schedule = self._actions
        pick = (schedule.ex >= start.toordinal()) & (schedule.ex <= end.toordinal())
        if as_of is not None:
            pick &= schedule.announced <= calendar.to_date(as_of).toordinal()
        index = np.flatnonzero(pick)
        if symbols is not None:
            wanted = {symbols} if isinstance(symbols, str) else set(symbols)
            unknown = sorted(str(s) for s in wanted if not isinstance(s, str) or self._names.row(s) is None)
            if unknown:
                raise InvalidInputError(f"unknown symbols {unknown[:20]}: expected symbols of the simulated universe")
            index = np.array([i for i in index if schedule.symbol[i] in wanted or schedule.new_symbol[i] in wanted],
                             dtype=np.int64)
        else:
            index = index[self._at_scale(schedule.row[index], schedule.ex[index])]
        table = schedule.table(index)
        return table.sort_by(ACTIONS_ORDER)

    def _at_scale(self, rows: np.ndarray, ex: np.ndarray) -> np.ndarray:
        """Whether each row traded at this scale on the calendar day before its ex-date."""
        keep = np.zeros(len(rows), dtype=bool)
        groups = self._ref.scale_group
        for day in np.unique(ex):
            at = np.flatnonzero(ex == day)
            for group in (EQUITY, OTC):
                active, _ = self._scale_rows(group, int(day) - 1)
                keep[at] |= (groups[rows[at]] == group) & np.isin(rows[at], active)
        return keep

    def _log_close_at(self, rows: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
        """`_log_close` with one day per row (the continuous path: no corporate action applied)."""
        p = self._params
        w = rnd.brownian_at(p.path_key[rows], np.asarray(ordinals, np.int64) - EPOCH.toordinal(), _PATH_DEPTH)
        x = np.log(self._ref.ref_price[rows]) + p.sigma[rows] * np.sqrt(252.0 / 365.0) * (w - self._w_ref[rows])
        return rnd.fold(x, p.log_low[rows], p.log_high[rows])

    def _log_close(self, rows: np.ndarray, ordinal: int) -> np.ndarray:
        """Log closing price of `rows` on calendar day `ordinal`, from the daily path."""
        t = ordinal - EPOCH.toordinal()
        if not 0 <= t <= 1 << _PATH_DEPTH:
            raise InvalidInputError(
                f"{date.fromordinal(ordinal).isoformat()} is outside the simulated history: expected a date "
                f"from {EPOCH.isoformat()} to {date.fromordinal(EPOCH.toordinal() + (1 << _PATH_DEPTH)).isoformat()}"
            )
        p = self._params
        w = rnd.brownian(p.path_key[rows], t, _PATH_DEPTH)
        # Calendar-day steps with a trading-day volatility: weekends add variance like ~0.7 of a day.
        x = np.log(self._ref.ref_price[rows]) + p.sigma[rows] * np.sqrt(252.0 / 365.0) * (w - self._w_ref[rows])
        return rnd.fold(x, p.log_low[rows], p.log_high[rows])

    # ----------------------------------------------------------------------- requests

    def _resolve(self, day: date | str, symbols: Sequence[str] | None) -> list[tuple[_Grid, np.ndarray]]:
        """Validate a request: per kind, its grid and the requested rows listed on `day`, by symbol."""
        day = calendar.to_date(day)
        if symbols is None:
            names = self.stock_symbols(day)
        else:
            names = [symbols] if isinstance(symbols, str) else list(symbols)
        ref = self._ref
        unknown = [s for s in names if not isinstance(s, str) or self._names.row(s) is None]
        if unknown:
            raise InvalidInputError(
                f"unknown symbols {sorted(map(str, unknown))[:20]}: expected symbols of the simulated universe "
                f"(e.g. AAPL, SPY, BTC/USD; see SimMarket.universe)"
            )
        ordinal = day.toordinal()
        # A renamed row answers to the symbol it traded under on the day only.
        traded = {self._names.row(s) for s in names if self._names.valid(s, ordinal)}
        every = {self._names.row(s) for s in names}
        rows = np.array(sorted(every, key=lambda i: ref.symbol[i]), dtype=np.int64)
        for i in rows:
            if ref.category[i] not in _MARKET_DATA_CATEGORIES:
                raise InvalidInputError(
                    f"{ref.symbol[i]} is in category {ref.category[i]!r}, which has no simulated market data: "
                    f"expected one of {', '.join(_MARKET_DATA_CATEGORIES)}"
                )
        listed = rows[(ref.list_day[rows] <= ordinal) & (ordinal < ref.delist_day[rows])
                      & np.isin(rows, np.fromiter(traded, np.int64, len(traded)))]
        # Rows sorted by the symbol they trade under on the day (the tables' order).
        listed = listed[np.argsort(self._names.symbols(listed, ordinal), kind="stable")] if len(listed) else listed
        kinds = self._params.kind[listed]
        out = []
        if (self._params.kind[rows] == STOCK).any():
            out.append((_stock_grid(day), listed[kinds == STOCK]))  # raises NotASessionError
        if (self._params.kind[rows] == CRYPTO_KIND).any():
            self._log_close(rows[:0], ordinal)  # range check
            out.append((_crypto_grid(day), listed[kinds == CRYPTO_KIND]))
        return out

    def _one_kind(self, day, symbols) -> tuple[_Grid | None, np.ndarray]:
        parts = self._resolve(day, symbols)
        if not parts:
            return None, np.zeros(0, dtype=np.int64)
        if len(parts) > 1:
            raise InvalidInputError(
                "symbols mix stocks and crypto pairs, which trade on different clocks: expected one kind "
                "per stream (stream stocks and crypto separately)"
            )
        return parts[0]

    # ----------------------------------------------------------------------- skeleton

    def _skeleton(self, grid: _Grid, rows: np.ndarray) -> _Skeleton:
        """The skeleton of `rows`, built a few hundred rows at a time into preallocated arrays."""
        if len(rows) <= _SKELETON_ROWS:
            return self._skeleton_part(grid, rows)
        arrays: dict[str, np.ndarray] = {}
        keys: dict[int, np.ndarray] = {}
        symbols = []
        for start in range(0, len(rows), _SKELETON_ROWS):
            part = self._skeleton_part(grid, rows[start:start + _SKELETON_ROWS])
            span = slice(start, start + len(part.rows))
            for field in _ROW_FIELDS:
                value = getattr(part, field)
                arrays.setdefault(field, np.empty((len(rows),) + value.shape[1:], value.dtype))[span] = value
            for purpose, value in part.keys.items():
                keys.setdefault(purpose, np.empty(len(rows), value.dtype))[span] = value
            symbols.append(part.symbols)
        merged = dict(arrays, grid=grid, keys=keys, symbols=pa.concat_arrays(symbols), day_number=part.day_number)
        return _Skeleton(**merged)

    def _skeleton_part(self, grid: _Grid, rows: np.ndarray) -> _Skeleton:
        p, ordinal = self._params, grid.day.toordinal()
        r, minutes = len(rows), grid.minutes
        day_keys = rnd.derive(p.sym_key[rows] ^ np.uint64(rnd.text_key("day", ordinal)), _P_DAY)
        keys = {purpose: rnd.derive(day_keys, purpose) for purpose in _ROW_PURPOSES}
        market = rnd.normal(rnd.bits(np.uint64(rnd.text_key("market", self.seed, ordinal)), np.zeros(1, np.uint64)))
        factor = np.exp(0.3 * rnd.normal(rnd.bits(keys[_P_DAYFACTOR], np.zeros(r, np.uint64))) - 0.045
                        + 0.12 * market - 0.0072)

        def cell_bits(purpose: int) -> np.ndarray:
            return rnd.bits(keys[purpose][:, None], np.arange(minutes, dtype=np.uint64)[None, :])

        z_burst, z_move = rnd.normal_pair(cell_bits(_P_ACT))
        u_n, u_q = rnd.uniform_pair(cell_bits(_P_COUNT))
        z_spread, _ = rnd.normal_pair(cell_bits(_P_SPREAD))
        u_k, _ = rnd.uniform_pair(cell_bits(_P_CHANGE))

        burst = np.exp(_BURST_SIGMA * z_burst - _BURST_SIGMA**2 / 2)
        intensity = (self.activity * factor)[:, None] * grid.activity[None, :]
        n = np.floor(intensity * p.trades[rows][:, None] * burst + u_n).astype(np.int32)
        # Quotes follow the bursts less closely; the divisor keeps their mean.
        quote_burst = np.sqrt(burst) / np.exp(-_BURST_SIGMA**2 / 8)
        q = np.floor(intensity * p.quotes[rows][:, None] * quote_burst + u_q).astype(np.int32)
        k = np.minimum(q, np.floor(_CHANGE_RATE * np.sqrt(q) + u_k)).astype(np.int32)

        # The anchor: a Brownian bridge from the previous close to today's, in variance time, in
        # today's raw terms: the corporate actions in effect today scale the whole day, so the
        # session opens at the previous close times the ex-date's factor.
        log_c, log_split = self._actions.factors(rows, ordinal)
        a, b = self._log_close(rows, ordinal - 1) + log_c, self._log_close(rows, ordinal) + log_c
        sigma, scale = p.sigma[rows], p.scale[rows]
        var_cum = np.cumsum(grid.variance)
        var_frac = var_cum / var_cum[-1]
        walk = np.cumsum(np.sqrt(grid.variance)[None, :] * z_move, axis=1)
        x = (a[:, None] + sigma[:, None] * (walk - var_frac[None, :] * walk[:, -1:])
             + var_frac[None, :] * (b - a)[:, None])
        mid = np.exp(x) * scale[:, None]
        floor = p.floor_ticks[rows]
        spread_base = np.exp(a) * scale * p.spread_bps[rows] * 1e-4
        spread_raw = _spread_ticks(spread_base[:, None] * grid.spread[None, :], z_spread)
        bid_raw = np.maximum(np.rint(mid - spread_raw / 2.0).astype(np.int64), floor[:, None])
        spread_open = _spread_ticks(spread_base * grid.spread[0], np.zeros(r))
        bid_open = np.maximum(np.rint(np.exp(a) * scale - spread_open / 2.0).astype(np.int64), floor)
        moved = k > 0
        n64 = n.astype(np.int64)
        return _Skeleton(
            grid=grid, rows=rows, symbols=pa.array(self._names.symbols(rows, ordinal), pa.string()),
            n=n, q=q, k=k,
            bid=_forward_fill(bid_raw, moved, bid_open),
            spread=_forward_fill(spread_raw, moved, spread_open).astype(np.int32),
            bid_open=bid_open, spread_open=spread_open,
            # Stored in float32 to halve the skeleton; every path reads the same rounded values.
            wander=(0.5 * mid * sigma[:, None] * np.sqrt(grid.variance)[None, :]).astype(np.float32),
            spread_base=spread_base, trade_seq=(np.cumsum(n64, axis=1) - n64).astype(np.int32), keys=keys,
            scale=scale, floor=floor, lots=p.lots[rows], listing=p.listing[rows],
            volume_factor=np.exp(-log_split), day_number=ordinal - EPOCH.toordinal(),
        )

    # ----------------------------------------------------------------------- counts

    def _count(self, day, symbols, count) -> int:
        total = 0
        for grid, rows in self._resolve(day, symbols):
            for i in range(0, len(rows), _SKELETON_ROWS):
                total += count(self._skeleton(grid, rows[i:i + _SKELETON_ROWS]))
        return total

    def expected_quote_count(self, day: date | str, symbols: Sequence[str] | None = None) -> int:
        """Exactly how many quotes `iter_quotes(day, symbols)` yields, from the minute skeleton alone."""
        return self._count(day, symbols, lambda sk: int(sk.q.sum(dtype=np.int64)) + len(sk.rows))

    def expected_trade_count(self, day: date | str, symbols: Sequence[str] | None = None) -> int:
        """Exactly how many trades the day has for `symbols`, without generating them."""
        return self._count(day, symbols, lambda sk: int(sk.n.sum(dtype=np.int64)))

    def expected_bar_count(self, day: date | str, symbols: Sequence[str] | None = None) -> int:
        """Exactly how many one-minute bars `minute_bars(day, symbols)` returns."""
        return self._count(day, symbols, lambda sk: int(np.count_nonzero(sk.n)))

    # ----------------------------------------------------------------------- bars

    def _minute_aggregates(self, day, symbols) -> Iterator[tuple[_Skeleton, dict[str, np.ndarray]]]:
        """Per skeleton chunk: the aggregates of every minute with trades, by (row, minute)."""
        for grid, rows in self._resolve(day, symbols):
            for i in range(0, len(rows), _SKELETON_ROWS):
                sk = self._skeleton(grid, rows[i:i + _SKELETON_ROWS])
                cr, cm = np.nonzero(sk.n)
                counts = sk.n[cr, cm].astype(np.int64)
                parts = []
                for part in _batches(counts, _BATCH_EVENTS):
                    t = _trade_events(sk, cr[part], cm[part])
                    c = counts[part]
                    starts = np.cumsum(c) - c
                    parts.append({
                        "open": t.price[starts], "close": t.price[starts + c - 1],
                        "high": np.maximum.reduceat(t.price, starts), "low": np.minimum.reduceat(t.price, starts),
                        "volume": np.add.reduceat(t.size, starts),
                        "notional": np.add.reduceat(t.price * t.size, starts),
                    })
                agg = {key: np.concatenate([p[key] for p in parts]) if parts else np.zeros(0) for key in
                       ("open", "close", "high", "low", "volume", "notional")}
                agg.update(row=cr.astype(np.int64), minute=cm.astype(np.int64), count=counts)
                yield sk, agg

    def minute_bars(self, day: date | str, symbols: Sequence[str] | None = None) -> pa.Table:
        """One-minute bars (schemas.BARS) of the day's trades, sorted by (symbol, ts)."""
        tables = []
        for sk, agg in self._minute_aggregates(day, symbols):
            ts = sk.grid.start_ns + agg["minute"] * _NS_PER_MINUTE
            tables.append(_bars_table(sk, agg, ts))
        return _sorted_concat(tables, BARS)

    def daily_bars(self, day: date | str, symbols: Sequence[str] | None = None) -> pa.Table:
        """One bar per symbol that traded (schemas.BARS): the whole session, extended hours included.

        `ts` is midnight New York for stocks and midnight UTC for crypto. Volume and VWAP come
        from the minute aggregates, so they equal the trades' totals to floating-point rounding.
        """
        tables = []
        for sk, agg in self._minute_aggregates(day, symbols):
            if not len(agg["row"]):
                continue
            first = np.flatnonzero(np.r_[True, agg["row"][1:] != agg["row"][:-1]])
            last = np.r_[first[1:], len(agg["row"])] - 1
            daily = {
                "row": agg["row"][first], "open": agg["open"][first], "close": agg["close"][last],
                "high": np.maximum.reduceat(agg["high"], first), "low": np.minimum.reduceat(agg["low"], first),
                "volume": np.add.reduceat(agg["volume"], first), "notional": np.add.reduceat(agg["notional"], first),
                "count": np.add.reduceat(agg["count"], first),
            }
            tz = UTC if sk.grid.kind == CRYPTO_KIND else calendar.NEW_YORK
            ts = np.full(len(first), _midnight_ns(sk.grid.day, tz), dtype=np.int64)
            tables.append(_bars_table(sk, daily, ts))
        return _sorted_concat(tables, BARS)

    # ----------------------------------------------------------------------- trades

    def trades(self, day: date | str, symbols: Sequence[str] | None = None, *,
               start: datetime | None = None, end: datetime | None = None) -> pa.Table:
        """The day's trades (schemas.TRADES) in [start, end), sorted by (symbol, ts)."""
        start_ns, end_ns = _bounds(start, end)
        tables = []
        for grid, rows in self._resolve(day, symbols):
            lo, hi = grid.minute_range(start_ns, end_ns)
            for i in range(0, len(rows), _SKELETON_ROWS):
                sk = self._skeleton(grid, rows[i:i + _SKELETON_ROWS])
                cr, cm = np.nonzero(sk.n[:, lo:hi])
                cm = cm + lo
                for part in _batches(sk.n[cr, cm], _BATCH_EVENTS):
                    table = _trade_table(sk, cr[part], cm[part], start_ns, end_ns, time_order=False)
                    tables.append(table)
        return _sorted_concat(tables, TRADES)

    def iter_trades(self, day: date | str, symbols: Sequence[str] | None = None, *,
                    start: datetime | None = None, end: datetime | None = None,
                    batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        """The day's trades in [start, end) as record batches in time order, generated a few
        minutes at a time (memory stays bounded at any scale). One kind per call: stocks or crypto."""
        start_ns, end_ns = _bounds(start, end)
        _check_batch_size(batch_size)
        grid, rows = self._one_kind(day, symbols)
        return self._stream(grid, rows, start_ns, end_ns, batch_size, quotes=False)

    # ----------------------------------------------------------------------- quotes

    def iter_quotes(self, day: date | str, symbols: Sequence[str] | None = None, *,
                    start: datetime | None = None, end: datetime | None = None,
                    batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        """The day's quotes (schemas.QUOTES) in [start, end) as record batches in time order,
        generated a few minutes at a time. One kind per call: stocks or crypto."""
        start_ns, end_ns = _bounds(start, end)
        _check_batch_size(batch_size)
        grid, rows = self._one_kind(day, symbols)
        return self._stream(grid, rows, start_ns, end_ns, batch_size, quotes=True)

    def quotes(self, day: date | str, symbols: Sequence[str] | None = None, *,
               start: datetime | None = None, end: datetime | None = None) -> pa.Table:
        """The quotes of `iter_quotes` as one table sorted by (symbol, ts): for small requests."""
        start_ns, end_ns = _bounds(start, end)
        tables = [pa.Table.from_batches(list(self._stream(grid, rows, start_ns, end_ns, 1 << 20, quotes=True)),
                                        schema=QUOTES)
                  for grid, rows in self._resolve(day, symbols)]
        table = pa.concat_tables(tables) if tables else QUOTES.empty_table()
        # Arrow's sort is stable: quotes of a symbol at the same instant keep their stream order.
        return table.sort_by([("symbol", "ascending"), ("ts", "ascending")]).combine_chunks()

    # ----------------------------------------------------------------------- latest events

    def latest(self, day: date | str, symbols: Sequence[str] | None = None, *,
               before: datetime) -> tuple[pa.Table, pa.Table]:
        """The last trade (schemas.TRADES) and the last quote (schemas.QUOTES) of each symbol in
        the minutes of `day` that ended by `before` - what a vendor's snapshot shows then -
        sorted by symbol; a symbol without one yet has no row. Only the minute holding each
        symbol's last event is generated."""
        end_ns = _bounds(None, before)[1]
        trades, quotes = [], []
        for grid, rows in self._resolve(day, symbols):
            done = int(min(grid.minutes, max(0, (end_ns - grid.start_ns) // _NS_PER_MINUTE)))
            for i in range(0, len(rows) if done else 0, _SKELETON_ROWS):
                sk = self._skeleton(grid, rows[i:i + _SKELETON_ROWS])
                cr, cm = _last_cells(sk.n[:, :done] > 0)
                trades.append(_last_per_symbol(_trade_table(sk, cr, cm, None, None, time_order=False)))
                quoted = sk.q[:, :done] > 0
                quoted[:, 0] = True  # every symbol-day opens with a quote
                cr, cm = _last_cells(quoted)
                quotes.append(_last_per_symbol(_quote_table(sk, cr, cm, None, None)))
        return _sorted_concat(trades, TRADES), _sorted_concat(quotes, QUOTES)

    def _stream(self, grid: _Grid | None, rows: np.ndarray, start_ns: int | None, end_ns: int | None,
                batch_size: int, *, quotes: bool) -> Iterator[pa.RecordBatch]:
        if grid is None or not len(rows):
            return
        lo, hi = grid.minute_range(start_ns, end_ns)
        if lo >= hi:
            return
        sk = self._skeleton(grid, rows)
        events = sk.q.sum(axis=0, dtype=np.int64) if quotes else sk.n.sum(axis=0, dtype=np.int64)
        if quotes:
            events[0] += len(rows)  # the opening quotes
        for window in _batches(events[lo:hi], _WINDOW_EVENTS):
            m0, m1 = lo + window.start, lo + window.stop
            counts = sk.q[:, m0:m1] if quotes else sk.n[:, m0:m1]
            cells = counts > 0
            if quotes and m0 == 0:
                cells[:, 0] = True
            # Minute-major cells, rows in symbol order: a stable sort on time then breaks ties by symbol.
            cm, cr = np.nonzero(cells.T)
            cm = cm + m0
            table = _quote_table(sk, cr, cm, start_ns, end_ns) if quotes else \
                _trade_table(sk, cr, cm, start_ns, end_ns, time_order=True)
            yield from table.to_batches(max_chunksize=batch_size)


@functools.lru_cache(maxsize=1)
def _names() -> sim_actions.Names:
    return sim_actions.Names(reference())


@functools.lru_cache(maxsize=4)
def _schedule(seed: int) -> sim_actions.Schedule:
    market = SimMarket(seed, n_stocks=0, n_crypto=0)
    return sim_actions.build(market._ref, market._log_close_at, well_known())


def _rebuild(seed: int, n_stocks: int, n_crypto: int, activity: float) -> SimMarket:
    return SimMarket(seed, n_stocks=n_stocks, n_crypto=n_crypto, activity=activity)


# --------------------------------------------------------------------------- grids and checks


def _stock_grid(day: date) -> _Grid:
    session = calendar.session(day)
    minute = timedelta(minutes=1)
    regular_open = (session.regular_open - session.start) // minute
    regular_close = (session.regular_close - session.start) // minute
    minutes = session.expected_minutes()
    activity, variance, spread, extended = _stock_profiles(minutes, regular_open, regular_close)
    return _Grid(STOCK, day, _ns(session.start), minutes, activity, variance, spread, extended)


def _crypto_grid(day: date) -> _Grid:
    activity, variance, spread, extended = _crypto_profiles()
    return _Grid(CRYPTO_KIND, day, _midnight_ns(day, UTC), 1440, activity, variance, spread, extended)


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise InvalidInputError(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)}")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size!r}: expected a positive integer")


def _bounds(start: datetime | None, end: datetime | None) -> tuple[int | None, int | None]:
    start_ns = None if start is None else _ns(start)
    end_ns = None if end is None else _ns(end)
    if start_ns is not None and end_ns is not None and start_ns > end_ns:
        raise InvalidInputError(f"start {start.isoformat()} is after end {end.isoformat()}")
    return start_ns, end_ns


# --------------------------------------------------------------------------- tables


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays([table.column(f.name).cast(f.type) for f in schema], schema=schema)


def _sorted_concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Concatenate tables that are each sorted by (symbol, ts); sort only if kinds interleave."""
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables).combine_chunks()
    symbol = table.column("symbol")
    if table.num_rows > 1 and not pc.all(pc.less_equal(symbol[:-1], symbol[1:])).as_py():
        table = table.sort_by([("symbol", "ascending"), ("ts", "ascending")])
    return table


def _last_cells(active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, minute) of each row's last True cell, for the rows that have one."""
    has = active.any(axis=1)
    last = active.shape[1] - 1 - np.argmax(active[:, ::-1], axis=1)
    return np.flatnonzero(has), last[has].astype(np.int64)


def _last_per_symbol(table: pa.Table) -> pa.Table:
    """Each symbol's latest row (the last of equal times in the table's order)."""
    n = table.num_rows
    if n < 2:
        return table
    table = table.take(pc.sort_indices(table, [("symbol", "ascending"), ("ts", "ascending")]))
    symbol = table.column("symbol").combine_chunks()
    ends = np.flatnonzero(pc.not_equal(symbol.slice(1), symbol.slice(0, n - 1)).to_numpy(zero_copy_only=False))
    return table.take(pa.array(np.append(ends, n - 1)))


def _bars_table(sk: _Skeleton, agg: dict[str, np.ndarray], ts: np.ndarray) -> pa.Table:
    n = len(ts)
    return pa.Table.from_arrays([
        _strings(agg["row"], sk.symbols), _timestamps(ts),
        pa.array(agg["open"]), pa.array(agg["high"]), pa.array(agg["low"]), pa.array(agg["close"]),
        pa.array(agg["volume"]), pa.array(agg["notional"] / agg["volume"]), pa.array(agg["count"].astype(np.int64)),
        _constant(n, Source.SIM.value),
    ], schema=BARS)


def _trade_table(sk: _Skeleton, cr: np.ndarray, cm: np.ndarray, start_ns: int | None, end_ns: int | None,
                 *, time_order: bool) -> pa.Table:
    t = _trade_events(sk, cr, cm)
    row, minute = cr[t.cell], cm[t.cell]
    ts = sk.grid.start_ns + minute * _NS_PER_MINUTE + t.offset
    keep = _in_bounds(ts, start_ns, end_ns)
    order = np.argsort(ts, kind="stable") if time_order else None
    select = _selection(keep, order)
    row, minute, ts = row[select], minute[select], ts[select]
    price, size, u_venue, u_class = t.price[select], t.size[select], t.u_venue[select], t.u_class[select]
    trade_id = sk.day_number * 1_000_000_000 + sk.trade_seq[row, minute].astype(np.int64) + t.j[select] + 1
    n = len(ts)
    if sk.grid.kind == CRYPTO_KIND:
        exchange, conditions, tape = _constant(n, ""), _constant(n, None), _constant(n, None)
    else:
        extended = sk.grid.extended[minute]
        listing = sk.listing[row]
        venue = _pick_venue(_TRADE_VENUE_LOOKUP, listing, extended, u_venue)
        venue = np.where(size != np.floor(size), _D, venue)  # fractional shares print off-exchange
        sweep = (u_class >= 0.50) & (u_class < 0.545) & (extended == 0)
        condition = 4 * extended + 2 * sweep + (size < 100)
        exchange = _letters(_VENUE_CODES[venue])
        conditions = _strings(condition, _TRADE_CONDITION_DICT)
        tape = _tape(listing)
    return pa.Table.from_arrays([
        _strings(row, sk.symbols), _timestamps(ts), pa.array(price), pa.array(size), exchange,
        pa.array(trade_id.astype(np.int64)), conditions, tape, _constant(n, Source.SIM.value),
    ], schema=TRADES)


def _tape(listing: np.ndarray) -> pa.Array:
    codes = _TAPE_CODES[listing]
    return _letters(codes, codes > 0)


def _quote_table(sk: _Skeleton, cr: np.ndarray, cm: np.ndarray, start_ns: int | None,
                 end_ns: int | None) -> pa.Table:
    q, k = sk.q[cr, cm].astype(np.int64), sk.k[cr, cm].astype(np.int64)
    nbbo = _nbbo(sk, cr, cm)
    ucell, uj, _ = _expand(q - k)
    updates = _event_keys(sk.keys[_P_UPD_TIME][cr][ucell], _counters(cm, ucell, uj), ucell, sort=False)
    ocell = np.flatnonzero(cm == 0)
    opening_offset = (rnd.bits(sk.keys[_P_OPEN_TIME][cr][ocell], np.zeros(len(ocell), np.uint64))
                      % np.uint64(_FIRST_EVENT_NS)).astype(np.int64)
    keys = np.sort(np.concatenate([nbbo.keys, updates, (ocell << _OFFSET_BITS) | opening_offset]))
    cell = keys >> _OFFSET_BITS
    bid, spread = nbbo.at(keys)
    counts = q + (cm == 0)
    rank = np.arange(len(keys), dtype=np.int64) - (np.cumsum(counts) - counts)[cell]
    counters = _counters(cm, cell, rank)
    row, minute = cr[cell], cm[cell]
    ts = sk.grid.start_ns + minute * _NS_PER_MINUTE + (keys & ((1 << 36) - 1))
    select = _selection(_in_bounds(ts, start_ns, end_ns), np.argsort(ts, kind="stable"))
    row, minute, ts = row[select], minute[select], ts[select]
    bid, spread, counters = bid[select], spread[select], counters[select]
    scale = sk.scale[row]
    bid_price, ask_price = bid / scale, (bid + spread) / scale
    size_bits = rnd.bits(sk.keys[_P_Q_SIZE][row], counters)
    n = len(ts)
    if sk.grid.kind == CRYPTO_KIND:
        z_bid, z_ask = rnd.normal_pair(size_bits)
        bid_size = np.maximum(np.round(20_000.0 * np.exp(z_bid) / bid_price, 8), 1e-8)
        ask_size = np.maximum(np.round(20_000.0 * np.exp(z_ask) / ask_price, 8), 1e-8)
        bid_exchange = ask_exchange = conditions = tape = _constant(n, None)
    else:
        u_bid, u_ask = rnd.uniform_pair(size_bits)
        lots = sk.lots[row]
        bid_size = 100.0 * (1.0 + np.floor(-np.log(u_bid) * lots))
        ask_size = 100.0 * (1.0 + np.floor(-np.log(u_ask) * lots))
        u_bx, u_ax = rnd.uniform_pair(rnd.bits(sk.keys[_P_Q_VENUE][row], counters))
        listing, extended = sk.listing[row], sk.grid.extended[minute]
        bid_exchange = _letters(_VENUE_CODES[_pick_venue(_QUOTE_VENUE_LOOKUP, listing, extended, u_bx)])
        ask_exchange = _letters(_VENUE_CODES[_pick_venue(_QUOTE_VENUE_LOOKUP, listing, extended, u_ax)])
        conditions = _constant(n, QUOTE_CONDITION)
        tape = _tape(listing)
    ts_array = _timestamps(ts)
    columns = [pa.array(bid_price), pa.array(bid_size), pa.array(ask_price), pa.array(ask_size)]
    return pa.Table.from_arrays([
        _strings(row, sk.symbols), ts_array, *columns, bid_exchange, ask_exchange, conditions, tape,
        quote_seq(ts_array, *columns), _constant(n, Source.SIM.value),
    ], schema=QUOTES)


def _in_bounds(ts: np.ndarray, start_ns: int | None, end_ns: int | None) -> np.ndarray | None:
    if start_ns is None and end_ns is None:
        return None
    keep = np.ones(len(ts), dtype=bool)
    if start_ns is not None:
        keep &= ts >= start_ns
    if end_ns is not None:
        keep &= ts < end_ns
    return keep


def _selection(keep: np.ndarray | None, order: np.ndarray | None) -> np.ndarray | slice:
    """Indices that put rows in `order` (or as they are) and drop those not in `keep`."""
    if order is None:
        return slice(None) if keep is None else np.flatnonzero(keep)
    return order if keep is None else order[keep[order]]
