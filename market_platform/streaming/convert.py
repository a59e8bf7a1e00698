"""Alpaca stream messages (alpaca-py's raw dicts) to Arrow tables, with validation.

The fast path builds each column with one C-level pass (`map(itemgetter(key), msgs)` into
`pa.array(..., type)`), so no Python code runs per message. A batch that fails to convert
(a wrong type, a missing field, a number out of range: any exception) is split in halves until
the bad messages stand alone; those become dead letters with the reason, and the rest converts
as usual. Valid-looking rows are then checked in bulk against `Bounds` (finite prices and sizes
within plausible limits, bars whose high is not below their low and whose open and close lie
between them), for text PostgreSQL cannot store (a NUL byte), for a timestamp inside the
stream's window (give or take `Bounds.time_tolerance`) and for a symbol the stream subscribed to.
Conditions are stored as the vendor sent them: a list of codes comma-joined, a string as it is.

Quotes get `seq` from `schemas.quote_seq` (a content hash), so a redelivered quote has the same
key (symbol, ts, seq) and the tick store ignores it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import attrgetter, itemgetter
from typing import Any, Callable, Iterable, Sequence

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform.schemas import BARS, QUOTES, TRADES, TS, Source, quote_seq

UTC = timezone.utc
NS = 1_000_000_000
MINUTE_NS = 60 * NS

_SECONDS = attrgetter("seconds")
_NANOS = attrgetter("nanoseconds")
_STREAM_SOURCE = Source.ALPACA_STREAM.value

#: Dead-letter table: what `TickStore.write_dead_letters` takes, as Arrow (so it can be spooled).
DEAD_LETTERS = pa.schema([
    pa.field("received_at", TS, nullable=False),
    pa.field("stream", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("raw", pa.binary()),
    pa.field("detail", pa.string()),  # JSON
])


@dataclass(frozen=True)
class Bounds:
    """What a plausible message holds; anything else is a dead letter with the reason.

    max_price        a price (quote, trade, bar OHLC and VWAP) above this is implausible (the
                     dearest US share trades near 10^6; prices of zero or below are refused
                     for trades and bars, quotes may show 0 for an empty side)
    max_size         a quote or trade size (shares or coins) above this is implausible
    max_volume       a bar's volume above this is implausible
    max_trade_count  a bar's trade count above this is implausible
    time_tolerance   seconds a timestamp may lie before the window's start or after its end
                     and still be the feed's own (a replay or a feed that serves more than the
                     window, a clock a little off): such a message is counted as outside the
                     window and not stored; one further out is a dead letter
    """

    max_price: float = 1e7
    max_size: float = 1e10
    max_volume: float = 1e13
    max_trade_count: int = 10**10
    time_tolerance: float = 86_400.0


def event_ns(msg: Any) -> int | None:
    """The event time of a raw message in ns (a bar's is its minute's end), or None if it has none."""
    try:
        ts = msg["t"]
        ns = ts.seconds * NS + ts.nanoseconds
        return ns + MINUTE_NS if msg.get("T") in ("b", "u") else ns
    except (KeyError, AttributeError, TypeError):
        return None


def pack_raw(msg: Any) -> bytes:
    """The message as msgpack bytes, as the wire carried it (repr as a last resort)."""
    try:
        return msgpack.packb(msg)
    except (TypeError, ValueError, OverflowError):
        return repr(msg).encode()


def _constant(n: int, value: str) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _strings(values: list) -> pa.Array:
    return pa.array(values, pa.string())


def _floats(values: list) -> np.ndarray:
    # Arrow refuses strings and other non-numbers where numpy would parse "1.5", but takes True
    # for 1.0: a boolean is no price. Only the values that came out 0 or 1 can have been one.
    array = pa.array(values, pa.float64()).to_numpy(zero_copy_only=False)
    suspects = np.flatnonzero((array == 1.0) | (array == 0.0))
    if len(suspects) and any(type(values[i]) is bool for i in suspects.tolist()):
        raise TypeError("a boolean where a number is expected")
    return array


def _ints(values: list, type_: pa.DataType) -> pa.Array:
    # Arrow would truncate 1.5 to 1: an id or a count is a whole number or nothing.
    if set(map(type, values)) != {int}:
        raise TypeError("a number that is not a whole number where an id or a count is expected")
    return pa.array(values, type_)


def _times(values: list) -> np.ndarray:
    n = len(values)
    return np.fromiter(map(_SECONDS, values), np.int64, n) * NS + np.fromiter(map(_NANOS, values), np.int64, n)


def _joined(values: list) -> list:
    # ",".join("RX") would store "R,X": only lists are joined (a string is kept, in `_condition`).
    if set(map(type, values)) != {list}:
        raise TypeError("conditions that are not a list of codes")
    return list(map(",".join, values))


def _condition(value: Any) -> str | None:
    """One message's conditions as the vendor sent them: codes comma-joined, a string as it is."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(code, str) for code in value):
        return ",".join(value)
    raise TypeError(f"conditions {value!r:.60}: expected a list of codes or a string")


class _Fields:
    """Column getters over a list of messages: strict (a missing key fails) or lenient."""

    def __init__(self, msgs: Sequence[dict], lenient: bool) -> None:
        self.msgs, self.lenient = msgs, lenient

    def required(self, key: str) -> list:
        return list(map(itemgetter(key), self.msgs))

    def optional(self, key: str) -> list:
        if self.lenient:
            return [m.get(key) for m in self.msgs]
        return list(map(itemgetter(key), self.msgs))

    def conditions(self, key: str) -> pa.Array:
        values = self.optional(key)
        if self.lenient:
            return _strings([_condition(v) for v in values])
        return _strings(_joined(values))


def _check_strings(*arrays: pa.Array) -> None:
    for array in arrays:
        if array.null_count:
            raise TypeError("a required string is missing or null")


def _quotes(msgs: Sequence[dict], crypto: bool, lenient: bool) -> pa.Table:
    f = _Fields(msgs, lenient)
    n = len(msgs)
    symbol = _strings(f.required("S"))
    ts = _times(f.required("t"))
    bid, bid_size = _floats(f.required("bp")), _floats(f.required("bs"))
    ask, ask_size = _floats(f.required("ap")), _floats(f.required("as"))
    _check_strings(symbol)
    if crypto:
        nulls = pa.nulls(n, pa.string())
        bx = ax = cond = tape = nulls
    else:
        bx, ax = _strings(f.optional("bx")), _strings(f.optional("ax"))
        cond, tape = f.conditions("c"), _strings(f.optional("z"))
    ts_array = pa.array(ts, TS)
    prices = [pa.array(bid), pa.array(bid_size), pa.array(ask), pa.array(ask_size)]
    return pa.Table.from_arrays(
        [symbol, ts_array, *prices, bx, ax, cond, tape, quote_seq(ts_array, *prices),
         _constant(n, _STREAM_SOURCE)],
        schema=QUOTES,
    )


def _trades(msgs: Sequence[dict], crypto: bool, lenient: bool) -> pa.Table:
    f = _Fields(msgs, lenient)
    n = len(msgs)
    symbol = _strings(f.required("S"))
    ts = _times(f.required("t"))
    price, size = _floats(f.required("p")), _floats(f.required("s"))
    # Unsigned 64-bit ids keep their bits as int64 (schemas.TRADES).
    trade_id = _ints(f.required("i"), pa.uint64()).view(pa.int64())
    _check_strings(symbol)
    if crypto:
        exchange = _constant(n, "")
        cond = tape = pa.nulls(n, pa.string())
    else:
        exchange = _strings(f.required("x"))
        _check_strings(exchange)
        cond, tape = f.conditions("c"), _strings(f.optional("z"))
    return pa.Table.from_arrays(
        [symbol, pa.array(ts, TS), pa.array(price), pa.array(size), exchange, trade_id, cond, tape,
         _constant(n, _STREAM_SOURCE)],
        schema=TRADES,
    )


def _bars(msgs: Sequence[dict], crypto: bool, lenient: bool) -> pa.Table:
    f = _Fields(msgs, lenient)
    n = len(msgs)
    symbol = _strings(f.required("S"))
    _check_strings(symbol)
    columns = [pa.array(_floats(f.required(k))) for k in ("o", "h", "l", "c", "v")]
    return pa.Table.from_arrays(
        [symbol, pa.array(_times(f.required("t")), TS), *columns, pa.array(_floats(f.required("vw"))),
         _ints(f.required("n"), pa.int64()), _constant(n, _STREAM_SOURCE)],
        schema=BARS,
    )


_BUILDERS: dict[str, Callable[[Sequence[dict], bool, bool], pa.Table]] = {
    "quotes": _quotes, "trades": _trades, "bars": _bars,
}
_SCHEMAS = {"quotes": QUOTES, "trades": TRADES, "bars": BARS}


@dataclass
class Converted:
    """One kind's rows from a list of messages, and the dead letters they produced."""

    table: pa.Table
    dead: list[dict] = field(default_factory=list)
    filtered: int = 0  # quotes the change filter left out
    max_event_ns: int = 0  # the latest event time of a valid row inside the window (0: none)
    min_event_ns: int = 0  # the earliest event time of a valid row (0: none)
    outside: int = 0  # valid rows of the feed outside the window (another run's): not stored
    beyond_ns: int = 0  # the latest event time of a valid row after the window (0: none)


class Converter:
    """Turns raw message lists into tables of `schemas` for one stream.

    `symbols`: the subscribed symbols (None accepts any); `window`: (start, end) of the stream,
    timestamps further than `bounds.time_tolerance` outside it are refused (None accepts any);
    `change_filter`: keep a quote only when its bid or ask price differs from the symbol's
    previous quote; `bounds`: the plausible prices and sizes.
    """

    def __init__(
        self,
        stream: str,
        *,
        crypto: bool = False,
        symbols: Iterable[str] | None = None,
        window: tuple[datetime, datetime] | None = None,
        change_filter: bool = False,
        bounds: Bounds = Bounds(),
    ) -> None:
        self.stream = stream
        self.crypto = crypto
        self.symbols = pa.array(sorted(set(symbols)), pa.string()) if symbols is not None else None
        self.window = None if window is None else tuple(_ns(w) for w in window)
        self.change_filter = change_filter
        self.bounds = bounds
        self._last_quote: dict[str, tuple[float, float]] = {}

    def convert(self, kind: str, msgs: Sequence[dict], received_at: datetime | None = None) -> Converted:
        """`kind` is quotes, trades or bars (bars take `b` and `u` messages alike, in order)."""
        received_at = received_at or datetime.now(UTC)
        dead: list[dict] = []
        if not msgs:
            return Converted(_SCHEMAS[kind].empty_table())
        pieces: list[tuple[pa.Table, np.ndarray]] = []
        self._bisect(kind, msgs, np.arange(len(msgs)), pieces, dead, received_at)
        if not pieces:
            return Converted(_SCHEMAS[kind].empty_table(), dead)
        table = pa.concat_tables([p for p, _ in pieces]).combine_chunks() if len(pieces) > 1 else pieces[0][0]
        index = np.concatenate([i for _, i in pieces]) if len(pieces) > 1 else pieces[0][1]
        try:
            bad, reasons = self._validate(kind, table)
        except Exception as exc:  # a check that cannot run on these rows: each is judged alone
            bad, reasons = self._validate_alone(kind, table, exc)
        if bad is not None:
            for row in np.flatnonzero(bad):
                dead.append(self.dead_letter(reasons[row], msgs[index[row]], received_at))
            table = table.filter(pa.array(~bad))
        outside = beyond_ns = 0
        if self.window is not None and table.num_rows:
            ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()
            inside = (ts >= self.window[0]) & (ts < self.window[1])
            outside = int((~inside).sum())
            if outside:
                table = table.filter(pa.array(inside))
                after = ts[ts >= self.window[1]]
                beyond_ns = int(after.max()) + (MINUTE_NS if kind == "bars" else 0) if len(after) else 0
        filtered = 0
        if kind == "quotes" and self.change_filter and table.num_rows:
            keep = self._changed(table)
            filtered = int((~keep).sum())
            table = table.filter(pa.array(keep))
        return Converted(table, dead, filtered, *self._event_range(kind, table), outside=outside,
                         beyond_ns=beyond_ns)

    def _event_range(self, kind: str, table: pa.Table) -> tuple[int, int]:
        """(latest, earliest) event time of the valid rows (a bar's is its minute's end), the
        latest among those inside the window: what the stream's clock and checkpoint may move to,
        and where a gap before them ends."""
        if not table.num_rows:
            return 0, 0
        ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()
        if kind == "bars":
            ts = ts + MINUTE_NS
        inside = ts[ts <= self.window[1]] if self.window is not None else ts
        return (int(inside.max()) if len(inside) else 0), int(ts.min())

    def dead_letter(self, reason: str, msg: Any, received_at: datetime | None = None, *,
                    raw: bytes | None = None) -> dict:
        detail: dict[str, Any] = {}
        if isinstance(msg, dict):
            for key in ("T", "S"):
                value = msg.get(key)
                if isinstance(value, (str, int, float)):
                    detail[key] = value[:100] if isinstance(value, str) else value
        return {
            "received_at": received_at or datetime.now(UTC), "stream": self.stream, "reason": reason,
            "raw": raw if raw is not None else pack_raw(msg), "detail": detail or None,
        }

    def _bisect(self, kind: str, msgs: Sequence[dict], index: np.ndarray, out: list, dead: list,
                received_at: datetime) -> None:
        build = _BUILDERS[kind]
        try:
            out.append((build([msgs[i] for i in index] if len(index) != len(msgs) else msgs,
                              self.crypto, False), index))
            return
        except Exception as exc:  # any bad value in any field: isolate it
            if len(index) > 1:
                middle = len(index) // 2
                self._bisect(kind, msgs, index[:middle], out, dead, received_at)
                self._bisect(kind, msgs, index[middle:], out, dead, received_at)
                return
            error = exc
        msg = msgs[index[0]]
        try:  # alone, optional fields may be absent and conditions a string
            out.append((build([msg], self.crypto, True), index))
        except Exception:
            dead.append(self.dead_letter(_reason(error), msg, received_at))

    def _validate(self, kind: str, table: pa.Table) -> tuple[np.ndarray | None, list[str | None]]:
        n = table.num_rows
        b = self.bounds
        checks: list[tuple[np.ndarray, str]] = []

        def values(name: str) -> np.ndarray:
            return table.column(name).to_numpy()

        def within(array: np.ndarray, low: float, high: float, *, above: bool = False) -> np.ndarray:
            return np.isfinite(array) & ((array > low) if above else (array >= low)) & (array <= high)

        if kind == "quotes":
            prices = [values("bid_price"), values("ask_price")]
            sizes = [values("bid_size"), values("ask_size")]
            checks.append((~np.logical_and.reduce([within(p, 0, b.max_price) for p in prices]),
                           f"price is negative or not a finite number, or above {b.max_price:g}"))
            checks.append((~np.logical_and.reduce([within(s, 0, b.max_size) for s in sizes]),
                           f"size is negative or not a finite number, or above {b.max_size:g}"))
        elif kind == "trades":
            checks.append((~within(values("price"), 0, b.max_price, above=True),
                           f"price is not a positive finite number, or above {b.max_price:g}"))
            checks.append((~within(values("size"), 0, b.max_size),
                           f"size is negative or not a finite number, or above {b.max_size:g}"))
        else:
            ohlc = [values(c) for c in ("open", "high", "low", "close")]
            checks.append((~np.logical_and.reduce([within(p, 0, b.max_price, above=True) for p in ohlc]),
                           f"open, high, low or close is not a positive finite number, or above {b.max_price:g}"))
            checks.append((ohlc[1] < ohlc[2], "high is below low"))
            checks.append((np.maximum(ohlc[0], ohlc[3]) > ohlc[1], "open or close is above high"))
            checks.append((np.minimum(ohlc[0], ohlc[3]) < ohlc[2], "open or close is below low"))
            count = table.column("trade_count").to_numpy(zero_copy_only=False)
            checks.append((~(within(values("volume"), 0, b.max_volume) & within(values("vwap"), 0, b.max_price))
                           | (count < 0) | (count > b.max_trade_count),
                           "volume, vwap or trade count is negative, not finite or implausibly large"))
        for name in _TEXT[kind]:
            if not self.crypto or name == "symbol":
                nul = _has_nul(table.column(name))
                if nul is not None:
                    checks.append((nul, f"{name} contains a NUL byte, which PostgreSQL text cannot hold"))
        if self.window is not None:
            ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()
            slack = int(b.time_tolerance * NS)
            lo, hi = self.window
            checks.append(((ts < lo - slack) | (ts > hi + slack), "timestamp outside the stream's window"))
        if self.symbols is not None:
            known = pc.is_in(table.column("symbol"), value_set=self.symbols).to_numpy(zero_copy_only=False)
            checks.append((~known, "symbol not subscribed"))
        bad = np.zeros(n, bool)
        reasons: list[str | None] = [None] * n
        for mask, reason in checks:
            fresh = mask & ~bad
            if fresh.any():
                for row in np.flatnonzero(fresh):
                    reasons[row] = reason
                bad |= fresh
        return (bad if bad.any() else None), reasons

    def _validate_alone(self, kind: str, table: pa.Table, error: Exception) -> tuple[np.ndarray, list[str | None]]:
        bad = np.zeros(table.num_rows, bool)
        reasons: list[str | None] = [None] * table.num_rows
        for row in range(table.num_rows):
            try:
                one, why = self._validate(kind, table.slice(row, 1))
            except Exception as exc:
                one, why = np.ones(1, bool), [_reason(exc)]
            if one is not None:
                bad[row], reasons[row] = True, why[0]
        return bad, reasons

    def _changed(self, table: pa.Table) -> np.ndarray:
        """Rows whose bid or ask price differs from the symbol's previous quote."""
        encoded = pc.dictionary_encode(table.column("symbol")).combine_chunks()
        codes = encoded.indices.to_numpy()
        names = encoded.dictionary.to_pylist()
        bid, ask = table.column("bid_price").to_numpy(), table.column("ask_price").to_numpy()
        order = np.lexsort((np.arange(len(codes)), codes))
        c, b, a = codes[order], bid[order], ask[order]
        first = np.r_[True, c[1:] != c[:-1]]
        prev_b, prev_a = np.r_[np.nan, b[:-1]], np.r_[np.nan, a[:-1]]
        for row in np.flatnonzero(first):
            prev_b[row], prev_a[row] = self._last_quote.get(names[c[row]], (math.nan, math.nan))
        keep_sorted = (b != prev_b) | (a != prev_a)
        last = np.r_[c[1:] != c[:-1], True]
        for row in np.flatnonzero(last):
            self._last_quote[names[c[row]]] = (float(b[row]), float(a[row]))
        keep = np.empty(len(codes), bool)
        keep[order] = keep_sorted
        return keep


#: String columns that go to PostgreSQL text, by kind.
_TEXT = {"quotes": ("symbol", "bid_exchange", "ask_exchange", "conditions", "tape"),
         "trades": ("symbol", "exchange", "conditions", "tape"), "bars": ("symbol",)}


def _has_nul(column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """Rows holding a NUL byte, or None when none does (one scan of the bytes, no per-row work)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not any(c.buffers()[2] is not None and b"\x00" in c.buffers()[2].to_pybytes() for c in chunks):
        return None
    found = pc.match_substring(column, "\x00")
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def _ns(instant: datetime) -> int:
    delta = instant.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1000


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    text = " ".join(str(exc).split())
    return f"malformed message: {text[:200]}" if text else f"malformed message: {type(exc).__name__}"


def dead_letter_table(rows: Sequence[dict]) -> pa.Table:
    """Dead-letter dicts as a DEAD_LETTERS table (so they travel and spool like data)."""
    import json

    return pa.Table.from_arrays([
        pa.array([r["received_at"] for r in rows], TS),
        pa.array([r["stream"] for r in rows], pa.string()),
        pa.array([r["reason"] for r in rows], pa.string()),
        pa.array([r.get("raw") for r in rows], pa.binary()),
        pa.array([json.dumps(r["detail"]) if r.get("detail") is not None else None for r in rows], pa.string()),
    ], schema=DEAD_LETTERS)


def dead_letter_rows(table: pa.Table) -> list[dict]:
    """A DEAD_LETTERS table back as rows for `TickStore.write_dead_letters`."""
    import json

    rows = table.to_pylist()
    for row in rows:
        row["detail"] = json.loads(row["detail"]) if row["detail"] is not None else None
    return rows
