"""Raw snapshot responses into schemas.SNAPSHOTS rows, column by column.

Polygon (`{"status", "count", "tickers": [...]}`, PROTOCOLS.md C4) is read by Arrow's JSON
reader against an explicit schema: the body never becomes Python objects. Alpaca's (a map from
symbol to snapshot, or `{"snapshots": {...}}` for crypto) is keyed by symbol, which no fixed
schema describes, so it is decoded by the json module and its values converted to one Arrow
struct array in C++ against an explicit type. No pydantic model and no Python object per row
is built by the platform in either case.

Units: Polygon's `updated`, `lastTrade.t` and `lastQuote.t` are ns, `min.t` is ms; in
`lastQuote` uppercase P/S are the ask, lowercase p/s the bid. Alpaca's times are RFC-3339.
Zeros a vendor sends for "nothing yet" (Polygon's `day` before the first trade) become nulls.
A body of another shape, or with values of the wrong types, raises MalformedResponseError.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from market_platform.errors import MalformedResponseError
from market_platform.schemas import SNAPSHOTS, TS, Source
from market_platform.snapshots.messages import SnapshotMessage
from market_platform.sources import symbols as sym

F64 = pa.float64()
_OHLCV = [pa.field(name, F64) for name in ("o", "h", "l", "c", "v", "vw")]
POLYGON_TICKER = pa.struct([
    pa.field("ticker", pa.string()),
    pa.field("todaysChange", F64),
    pa.field("todaysChangePerc", F64),
    pa.field("updated", pa.int64()),
    pa.field("day", pa.struct(_OHLCV)),
    pa.field("min", pa.struct([*_OHLCV, pa.field("av", F64), pa.field("t", pa.int64()), pa.field("n", pa.int64())])),
    pa.field("prevDay", pa.struct(_OHLCV)),
    pa.field("lastTrade", pa.struct([pa.field("p", F64), pa.field("s", F64), pa.field("t", pa.int64())])),
    pa.field("lastQuote", pa.struct([pa.field("P", F64), pa.field("S", F64), pa.field("p", F64), pa.field("s", F64),
                                     pa.field("t", pa.int64())])),
])
POLYGON_BODY = pa.schema([pa.field("status", pa.string()), pa.field("tickers", pa.list_(POLYGON_TICKER))])

_ALPACA_BAR = pa.struct([pa.field("t", pa.string()), *[pa.field(n, F64) for n in ("o", "h", "l", "c", "v", "vw")]])
ALPACA_SNAPSHOT = pa.struct([
    pa.field("latestTrade", pa.struct([pa.field("t", pa.string()), pa.field("p", F64), pa.field("s", F64)])),
    pa.field("latestQuote", pa.struct([pa.field("t", pa.string()), pa.field("bp", F64), pa.field("bs", F64),
                                       pa.field("ap", F64), pa.field("as", F64)])),
    pa.field("minuteBar", _ALPACA_BAR),
    pa.field("dailyBar", _ALPACA_BAR),
    pa.field("prevDailyBar", _ALPACA_BAR),
])


def parse(message: SnapshotMessage) -> pa.Table:
    """schemas.SNAPSHOTS rows (without inserted_at) of one queued response."""
    if message.source == Source.POLYGON_REST.value:
        return polygon_rows(message.body, message)
    return alpaca_rows(message.body, message)


# --------------------------------------------------------------------------- Polygon


def _read_json(body: bytes, *, multiline: bool) -> pa.Table:
    return pajson.read_json(
        io.BytesIO(body),
        read_options=pajson.ReadOptions(use_threads=False, block_size=max(len(body) + 1, 1 << 16)),
        parse_options=pajson.ParseOptions(explicit_schema=POLYGON_BODY, unexpected_field_behavior="ignore",
                                          newlines_in_values=multiline),
    )


def polygon_rows(body: bytes, message: SnapshotMessage) -> pa.Table:
    try:
        try:
            # Polygon sends compact JSON, read twice as fast as JSON that may span lines.
            table = _read_json(body, multiline=False)
        except pa.ArrowInvalid:
            if b"\n" not in body:
                raise
            table = _read_json(body, multiline=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise MalformedResponseError(f"Polygon snapshot of {message.key} is not the documented JSON: "
                                     f"{_short(exc)}") from None
    if table.num_rows != 1:
        raise MalformedResponseError(f"Polygon snapshot of {message.key}: expected one JSON object, got {table.num_rows}")
    status = table.column("status")[0].as_py()
    tickers = table.column("tickers").combine_chunks()
    if tickers.null_count:
        if status not in ("OK", "DELAYED"):
            raise MalformedResponseError(f"Polygon snapshot of {message.key} has no tickers (status {status!r})")
        return _rows(message, {}, 0)
    flat = pc.list_flatten(tickers)
    n = len(flat)
    if n and flat.field("ticker").null_count:
        raise MalformedResponseError(f"Polygon snapshot of {message.key}: "
                                     f"{flat.field('ticker').null_count} tickers have no `ticker`")
    day, minute, prev = flat.field("day"), flat.field("min"), flat.field("prevDay")
    trade, quote = flat.field("lastTrade"), flat.field("lastQuote")
    traded_today = _positive(day.field("v"))
    bar = _positive(minute.field("v"))
    columns = {
        "symbol": _polygon_symbols(flat.field("ticker")),
        "last_price": _coalesce(trade.field("p"), _where(bar, minute.field("c")), _where(traded_today, day.field("c"))),
        "last_size": trade.field("s"),
        "last_trade_ts": _ns(trade.field("t")),
        "bid_price": quote.field("p"), "bid_size": quote.field("s"),
        "ask_price": quote.field("P"), "ask_size": quote.field("S"),
        "quote_ts": _ns(quote.field("t")),
        **{f"day_{name}": _where(traded_today, day.field(key)) for name, key in _BAR_NAMES},
        "min_ts": _ns(pc.multiply(minute.field("t"), 1_000_000), valid=bar),
        **{f"min_{name}": _where(bar, minute.field(key)) for name, key in _BAR_NAMES},
        "prev_close": _where(_positive(prev.field("c")), prev.field("c")),
        "change": _where(traded_today, flat.field("todaysChange")),
        "change_pct": _where(traded_today, flat.field("todaysChangePerc")),
        "updated": _ns(flat.field("updated")),
    }
    return _rows(message, columns, n)


_BAR_NAMES = (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"), ("volume", "v"), ("vwap", "vw"))


def _polygon_symbols(tickers: pa.Array) -> pa.Array:
    """Platform symbols of Polygon tickers, mapped once per distinct ticker (X:BTCUSD -> BTC/USD)."""
    if not pc.any(pc.match_substring(tickers, ":")).as_py():
        return tickers
    encoded = tickers.dictionary_encode()
    symbols = pa.array([sym.from_polygon(t) for t in encoded.dictionary.to_pylist()], pa.string())
    return symbols.take(encoded.indices)


# --------------------------------------------------------------------------- Alpaca


def alpaca_rows(body: bytes, message: SnapshotMessage) -> pa.Table:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedResponseError(f"Alpaca snapshots of {message.key} are not JSON: {_short(exc)}") from None
    if isinstance(document, dict) and set(document) == {"snapshots"} and isinstance(document["snapshots"], dict):
        document = document["snapshots"]  # crypto wraps the map
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise MalformedResponseError(f"Alpaca snapshots of {message.key}: expected a map of symbol to snapshot")
    try:
        snaps = pa.array(list(document.values()), type=ALPACA_SNAPSHOT)
        trade, quote = snaps.field("latestTrade"), snaps.field("latestQuote")
        minute, day, prev = snaps.field("minuteBar"), snaps.field("dailyBar"), snaps.field("prevDailyBar")
        stamps = {name: _rfc3339(value) for name, value in (("trade", trade.field("t")), ("quote", quote.field("t")),
                                                             ("minute", minute.field("t")))}
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as exc:
        raise MalformedResponseError(f"Alpaca snapshots of {message.key} do not have the documented fields: "
                                     f"{_short(exc)}") from None
    n = len(snaps)
    day_close, prev_close = day.field("c"), _where(_positive(prev.field("c")), prev.field("c"))
    change = pc.subtract(day_close, prev_close)
    columns = {
        "symbol": pa.array(list(document), pa.string()),
        "last_price": _coalesce(trade.field("p"), minute.field("c"), day_close),
        "last_size": trade.field("s"),
        "last_trade_ts": stamps["trade"],
        "bid_price": quote.field("bp"), "bid_size": quote.field("bs"),
        "ask_price": quote.field("ap"), "ask_size": quote.field("as"),
        "quote_ts": stamps["quote"],
        **{f"day_{name}": day.field(key) for name, key in _BAR_NAMES},
        "min_ts": stamps["minute"],
        **{f"min_{name}": minute.field(key) for name, key in _BAR_NAMES},
        "prev_close": prev_close,
        "change": change,
        "change_pct": pc.multiply(pc.divide(change, prev_close), 100.0),
        "updated": pc.max_element_wise(pc.cast(stamps["trade"], pa.int64()),
                                       pc.cast(stamps["quote"], pa.int64())).cast(TS),
    }
    return _rows(message, columns, n)


def _rfc3339(values: pa.Array) -> pa.Array:
    return pc.cast(values, TS)


# --------------------------------------------------------------------------- shared


def _rows(message: SnapshotMessage, columns: dict[str, pa.Array], n: int) -> pa.Table:
    """The SNAPSHOTS table (no inserted_at) of `columns`, with minute and source filled in."""
    out = []
    for field in SNAPSHOTS:
        if field.name == "inserted_at":
            continue
        if field.name == "minute":
            out.append(pa.array(np.full(n, _epoch_ns(message.minute)), pa.int64()).cast(TS))
        elif field.name == "source":
            out.append(pa.repeat(pa.scalar(message.source, pa.string()), n))
        elif field.name in columns:
            out.append(columns[field.name].cast(field.type))
        else:
            out.append(pa.nulls(n, field.type))
    schema = pa.schema([f for f in SNAPSHOTS if f.name != "inserted_at"])
    table = pa.Table.from_arrays(out, schema=schema)
    counts = pc.value_counts(table.column("symbol"))
    if n and pc.max(counts.field("counts")).as_py() > 1:
        repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
        raise MalformedResponseError(f"snapshot {message.key} lists {repeated[:5]} more than once")
    return table


def _positive(values: pa.Array) -> pa.Array:
    return pc.fill_null(pc.greater(values, 0), False)


def _where(mask: pa.Array, values: pa.Array) -> pa.Array:
    return pc.if_else(mask, values, pa.scalar(None, values.type))


def _coalesce(*values: pa.Array) -> pa.Array:
    return pc.coalesce(*values)


def _ns(values: pa.Array, *, valid: pa.Array | None = None) -> pa.Array:
    """Integer nanoseconds as timestamps, 0 (no time) and `valid` False as null."""
    keep = _positive(values) if valid is None else pc.and_(valid, _positive(values))
    return _where(keep, values).cast(TS)


def _epoch_ns(instant) -> int:
    return int(pa.scalar(instant, TS).cast(pa.int64()).as_py())


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:200] + "..."
