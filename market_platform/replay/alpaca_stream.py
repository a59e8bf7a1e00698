"""A local Alpaca market-data stream: the websocket protocol alpaca-py speaks, fed by the simulator.

Serves `ws://127.0.0.1:<port>/v2/iex` and `/v2/sip` (stocks) and `/v1beta3/crypto/us` (crypto)
exactly as alpaca-py expects (see PROTOCOLS.md, section A): msgpack in binary frames (JSON text
frames for a client that does not ask for msgpack), `connected` and `authenticated` as separate
frames, every message a map with `T` first, `t` a msgpack Timestamp (nanoseconds), bars with `n`
and `vw`, and the error codes 400/401/402/403/404/405/406/409.

The market: `SimMarket` quotes, trades and one-minute bars of one stock session (or one UTC day
of crypto) between `start` and `end`, interleaved in time order. A minute's bars go out right
after the minute closes, before any later quote or trade, and equal `SimMarket.minute_bars`
bit for bit (the REST replay servers serve the same bars). The clock starts when the first
client subscribes and then runs at `speed` times real time whoever listens (a client that
reconnects has missed what was sent meanwhile, as on the real feed); `speed=None` sends as fast
as the slowest subscriber reads, and the market waits while nobody is subscribed.

Faults on command, as methods (thread-safe) or over HTTP on the same port
(`GET /control/<name>?arg=value`, answered with JSON), now or when the market clock reaches
`at` (an ISO time):

    drop        close every data connection (code 1011; `abort=1` cuts TCP instead)
    silence     keep connections open but send them nothing for `seconds` (wall clock)
    malformed   send a bad frame: random bytes, a JSON text frame, wrong types, NaN or negative
                prices, an unknown symbol, or a non-map item inside a valid array
    duplicate   send the next `frames` data frames twice
    correct     send late corrections (`u` messages) for bars of the last closed minute
    inject      send the given frames as they are (bytes: binary frames, str: text frames), in
                order, between data frames: any message a vendor might send (method only)
    stall       a silent stall: send nothing for `symbols` (comma-separated) for `minutes` of
                market time while everything else flows; they keep trading (REST and snapshots
                show it), the connection stays up
    status      the clock, connections, and what was sent (also `sent_counts()`)

Frames are encoded column by column with numpy (fixed-width msgpack types: float64, uint32,
uint64, timestamp64), so the server costs well under a microsecond per message and a
benchmark measures the client, not the fake. Run one in its own process with
`python -m market_platform.replay.alpaca_stream --day 2024-11-26 --speed 60`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.sources.sim import SimMarket

log = logging.getLogger(__name__)

UTC = timezone.utc
NS = 1_000_000_000
MINUTE_NS = 60 * NS

# The REST replay's keys (ReplayKeys), so one ALPACA_API_KEY/ALPACA_SECRET_KEY serves both.
DEFAULT_KEY = "replay-alpaca-key"
DEFAULT_SECRET = "replay-alpaca-secret"
STOCK_FEEDS = ("iex", "sip")
#: Path -> (market kind, feed).
ROUTES = {"/v2/iex": ("stocks", "iex"), "/v2/sip": ("stocks", "sip"), "/v1beta3/crypto/us": ("crypto", "us")}
#: Channels a client may subscribe to; the server sends data on the first four.
CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds", "orderbooks")
DATA_CHANNELS = ("quotes", "trades", "bars", "updatedBars")
MALFORMED_KINDS = (
    "random_bytes", "text_frame", "wrong_types", "nan_price", "negative_price", "unknown_symbol", "not_a_map",
)
#: Bad messages each malformed kind carries that a client can see (a random frame or a text
#: frame is one undecodable frame; `not_a_map` is one bad item plus a valid quote after it).
MALFORMED_BAD_MESSAGES = {kind: 1 for kind in MALFORMED_KINDS}
_CHANNEL_CODE = {name: i for i, name in enumerate(DATA_CHANNELS)}
_AUTH_TIMEOUT = 10.0
_WALL_SLICE = 0.02  # seconds of wall clock per slice at finite speed
_MAX_SPEED_TARGET = 4000  # messages per slice at maximum speed


# ---------------------------------------------------------------------------------------------
# msgpack, column by column


def _fixstr(text: str) -> bytes:
    raw = text.encode()
    if len(raw) < 32:
        return bytes([0xA0 | len(raw)]) + raw
    if len(raw) < 256:
        return bytes([0xD9, len(raw)]) + raw
    raise InvalidInputError(f"string {text[:40]!r}... is too long for this encoder: expected < 256 bytes")


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 65536:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


class _Rows:
    """Rows of msgpack bytes (one map per row) built from columns with no per-row Python.

    Each part is a block of bytes per row, fixed width or with a per-row length; `build()`
    concatenates a row's parts, in order, into one buffer with row offsets.
    """

    def __init__(self, n: int, fields: int) -> None:
        self.n = n
        self.parts: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.const(bytes([0x80 | fields]))

    def const(self, raw: bytes) -> None:
        self.parts.append((np.frombuffer(raw, np.uint8).reshape(1, -1), None))

    def key(self, name: str) -> None:
        self.const(_fixstr(name))

    def _fixed(self, tag: int, big_endian: np.ndarray) -> None:
        width = big_endian.dtype.itemsize
        block = np.empty((self.n, 1 + width), np.uint8)
        block[:, 0] = tag
        block[:, 1:] = big_endian.view(np.uint8).reshape(self.n, width)
        self.parts.append((block, None))

    def f64(self, name: str, values: np.ndarray) -> None:
        self.key(name)
        self._fixed(0xCB, np.ascontiguousarray(values, dtype=">f8"))

    def u32(self, name: str, values: np.ndarray) -> None:
        self.key(name)
        self._fixed(0xCE, np.ascontiguousarray(values, dtype=">u4"))

    def u64(self, name: str, values: np.ndarray) -> None:
        self.key(name)
        self._fixed(0xCF, np.ascontiguousarray(values.astype(np.int64).view(np.uint64), dtype=">u8"))

    def number(self, name: str, values: np.ndarray) -> None:
        """A size or volume: an unsigned int where it is whole (as Alpaca sends shares), else float64."""
        self.key(name)
        values = np.asarray(values, np.float64)
        whole = (values == np.floor(values)) & (values >= 0) & (values < 2**32)
        block = np.empty((self.n, 9), np.uint8)
        block[:, 0] = np.where(whole, 0xCE, 0xCB)
        as_float = np.ascontiguousarray(values, dtype=">f8").view(np.uint8).reshape(self.n, 8)
        as_int = np.ascontiguousarray(np.where(whole, values, 0).astype(np.uint32), dtype=">u4")
        block[:, 1:] = as_float
        block[whole, 1:5] = as_int.view(np.uint8).reshape(self.n, 4)[whole]
        self.parts.append((block, np.where(whole, 5, 9)))

    def timestamp(self, name: str, ns: np.ndarray) -> None:
        """msgpack timestamp 64 (ext -1): 30 bits of nanoseconds over 34 bits of seconds."""
        self.key(name)
        ns = np.asarray(ns, np.int64)
        seconds, nanos = np.divmod(ns, NS)
        packed = (nanos.astype(np.uint64) << np.uint64(34)) | seconds.astype(np.uint64)
        block = np.empty((self.n, 10), np.uint8)
        block[:, 0], block[:, 1] = 0xD7, 0xFF
        block[:, 2:] = np.ascontiguousarray(packed, dtype=">u8").view(np.uint8).reshape(self.n, 8)
        self.parts.append((block, None))

    def coded(self, name: str, codes: np.ndarray, encoded: Sequence[bytes]) -> None:
        """A value from a small dictionary of pre-encoded msgpack values, by code per row."""
        self.key(name)
        width = max(len(e) for e in encoded)
        table = np.zeros((len(encoded), width), np.uint8)
        lengths = np.array([len(e) for e in encoded], np.int64)
        for i, e in enumerate(encoded):
            table[i, : len(e)] = np.frombuffer(e, np.uint8)
        if (lengths == width).all():
            self.parts.append((table[codes], None))
        else:
            self.parts.append((table[codes], lengths[codes]))

    def strings(self, name: str, column: pa.Array, *, as_list: bool = False) -> None:
        """A string column (few distinct values) as msgpack str, nil for null, or as an array
        of the comma-separated parts (`as_list`, for condition codes)."""
        encoded = pc.dictionary_encode(column)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        values = encoded.dictionary.to_pylist()
        if as_list:
            blobs = [msgpack.packb(v.split(",") if v else []) for v in values]
        else:
            blobs = [_fixstr(v) for v in values]
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        if encoded.null_count:
            blobs.append(b"\xc0")
            codes = np.where(np.asarray(encoded.indices.is_null()), len(values), codes)
        self.coded(name, codes.astype(np.int64), blobs or [b"\xc0"])

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        """(bytes, offsets): row i is bytes[offsets[i]:offsets[i + 1]]."""
        n = self.n
        merged: list[tuple[np.ndarray, np.ndarray | None]] = []
        run: list[np.ndarray] = []
        for block, lengths in self.parts:
            if lengths is None:
                run.append(np.broadcast_to(block, (n, block.shape[1])))
                continue
            if run:
                merged.append((np.hstack(run), None))
                run = []
            merged.append((block, lengths))
        if run:
            merged.append((np.hstack(run), None))
        row_lengths = np.zeros(n, np.int64)
        for block, lengths in merged:
            row_lengths += block.shape[1] if lengths is None else lengths
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(row_lengths, out=offsets[1:])
        out = np.empty(int(offsets[-1]), np.uint8)
        position = offsets[:-1].copy()
        for block, lengths in merged:
            width = block.shape[1]
            index = position[:, None] + np.arange(width)
            if lengths is None:
                out[index] = block
                position += width
            else:
                keep = np.arange(width)[None, :] < lengths[:, None]
                out[index[keep]] = block[keep]
                position += lengths
        return out, offsets


def _take_rows(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows `rows` (indices, in that order) of an encoded buffer, as a new buffer."""
    lengths = offsets[1:][rows] - offsets[:-1][rows]
    new = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=new[1:])
    source = np.repeat(offsets[:-1][rows] - new[:-1], lengths) + np.arange(int(new[-1]))
    return data[source], new


@dataclass
class _Encoded:
    """Messages of one slice in send order, with what filtering and counting need per row."""

    data: np.ndarray
    offsets: np.ndarray
    channel: np.ndarray  # index into DATA_CHANNELS
    symbol: np.ndarray   # index into the feed's symbols
    ts: np.ndarray       # event time, ns

    def __len__(self) -> int:
        return len(self.channel)

    @staticmethod
    def concat(parts: list["_Encoded"], *, order_by_time: bool) -> "_Encoded":
        parts = [p for p in parts if len(p)]
        if not parts:
            return _Encoded(np.zeros(0, np.uint8), np.zeros(1, np.int64), *(np.zeros(0, np.int64),) * 3)
        if len(parts) == 1 and not order_by_time:
            return parts[0]
        shift = np.cumsum([0] + [len(p.data) for p in parts[:-1]])
        data = np.concatenate([p.data for p in parts])
        offsets = np.concatenate([p.offsets[:-1] + s for p, s in zip(parts, shift)] + [[len(data)]])
        joined = _Encoded(data, offsets, *(np.concatenate([getattr(p, f) for p in parts]) for f in ("channel", "symbol", "ts")))
        return joined.select(np.argsort(joined.ts, kind="stable")) if order_by_time else joined

    def select(self, rows: np.ndarray) -> "_Encoded":
        data, offsets = _take_rows(self.data, self.offsets, rows)
        return _Encoded(data, offsets, self.channel[rows], self.symbol[rows], self.ts[rows])

    def frames(self, per_frame: int) -> Iterator[tuple[bytes, slice]]:
        for start in range(0, len(self), per_frame):
            stop = min(start + per_frame, len(self))
            body = self.data[self.offsets[start]:self.offsets[stop]].tobytes()
            yield _array_header(stop - start) + body, slice(start, stop)


def _symbol_codes(column: pa.ChunkedArray | pa.Array, symbols: pa.Array) -> np.ndarray:
    return pc.index_in(column, value_set=symbols).to_numpy(zero_copy_only=False).astype(np.int64)


def _ts_ns(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)


def _np(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False) if isinstance(column, pa.Array) else column.to_numpy()


def _begin(table: pa.Table, kind: str, fields: int) -> _Rows:
    rows = _Rows(table.num_rows, fields)
    rows.key("T"), rows.const(_fixstr(kind))
    rows.strings("S", table.column("symbol"))
    return rows


def _end(rows: _Rows, table: pa.Table, channel: str, symbols: pa.Array, *, conditions: bool,
         sort_ts: np.ndarray | None = None) -> _Encoded:
    """Conditions and tape (stock quotes and trades), the timestamp last, and the encoded rows."""
    if conditions:
        rows.strings("c", table.column("conditions"), as_list=True)
        rows.strings("z", table.column("tape"))
    ts = _ts_ns(table.column("ts"))
    rows.timestamp("t", ts)
    data, offsets = rows.build()
    return _Encoded(data, offsets, np.full(table.num_rows, _CHANNEL_CODE[channel]),
                    _symbol_codes(table.column("symbol"), symbols), ts if sort_ts is None else sort_ts)


def encode_quotes(table: pa.Table, symbols: pa.Array, *, crypto: bool) -> _Encoded:
    """Quote messages (`T: q`) of a QUOTES table; crypto quotes have no venues, conditions or tape."""
    rows = _begin(table, "q", 7 if crypto else 11)
    for venue, price, size, side in (("bx", "bp", "bs", "bid"), ("ax", "ap", "as", "ask")):
        if not crypto:
            rows.strings(venue, table.column(f"{side}_exchange"))
        rows.f64(price, _np(table.column(f"{side}_price")))
        rows.number(size, _np(table.column(f"{side}_size")))
    return _end(rows, table, "quotes", symbols, conditions=not crypto)


def encode_trades(table: pa.Table, symbols: pa.Array, *, crypto: bool) -> _Encoded:
    """Trade messages (`T: t`) of a TRADES table; crypto trades have no venue, conditions or tape."""
    rows = _begin(table, "t", 6 if crypto else 9)
    rows.u64("i", _np(table.column("trade_id")))
    if not crypto:
        rows.strings("x", table.column("exchange"))
    rows.f64("p", _np(table.column("price")))
    rows.number("s", _np(table.column("size")))
    return _end(rows, table, "trades", symbols, conditions=not crypto)


def encode_bars(table: pa.Table, symbols: pa.Array, *, kind: str = "b", sort_ts: np.ndarray | None = None) -> _Encoded:
    """Bar messages (`T: b`, or `u` for corrections) of a BARS table; `t` is the minute's start."""
    rows = _begin(table, kind, 10)
    for key, name in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close")):
        rows.f64(key, _np(table.column(name)))
    rows.number("v", _np(table.column("volume")))
    rows.u32("n", _np(table.column("trade_count")))
    rows.f64("vw", _np(table.column("vwap")))
    return _end(rows, table, "bars" if kind == "b" else "updatedBars", symbols, conditions=False, sort_ts=sort_ts)


def _json_frame(frame: bytes) -> str:
    """A msgpack frame as Alpaca's JSON text frame (RFC 3339 times with nanoseconds)."""

    def convert(value: Any) -> Any:
        if isinstance(value, msgpack.Timestamp):
            ns = value.to_unix_nano()
            return datetime.fromtimestamp(ns // NS, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % NS:09d}Z"
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return json.dumps(convert(msgpack.unpackb(frame)))


# ---------------------------------------------------------------------------------------------
# The market feed of one kind (stocks or crypto)


class _Buffered:
    """Rows of a time-ordered batch iterator, taken by time bound."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._pending: list[pa.RecordBatch] = []
        self._done = False

    def take_until(self, end_ns: int) -> pa.Table | None:
        taken: list[pa.RecordBatch] = []
        while True:
            if not self._pending:
                if self._done:
                    break
                batch = next(self._batches, None)
                if batch is None:
                    self._done = True
                    break
                self._pending.append(batch)
            batch = self._pending[0]
            ts = _ts_ns(batch.column("ts"))
            cut = int(np.searchsorted(ts, end_ns, side="left"))
            if cut == batch.num_rows:
                taken.append(batch)
                self._pending.pop(0)
                continue
            if cut:
                taken.append(batch.slice(0, cut))
                self._pending[0] = batch.slice(cut)
            break
        return pa.Table.from_batches(taken) if taken else None


@dataclass
class _Connection:
    ws: ServerConnection
    kind: str
    feed: str
    key: str
    msgpack: bool
    subs: dict[str, np.ndarray] = field(default_factory=dict)  # channel -> bool per feed symbol
    wildcard: set[str] = field(default_factory=set)
    extra: dict[str, set[str]] = field(default_factory=dict)  # subscribed symbols the feed lacks
    silent_until: float = 0.0
    duplicate_frames: int = 0
    sent: dict[str, np.ndarray] = field(default_factory=dict)  # channel -> messages sent per symbol
    first_ts: int | None = None
    last_ts: int | None = None

    def subscribed(self) -> bool:
        return any(mask.any() for mask in self.subs.values()) or bool(self.wildcard)


class _Feed:
    """One kind's market: its symbols, data iterators, clock and subscribers."""

    def __init__(self, server: "AlpacaStreamReplay", kind: str) -> None:
        self.server, self.kind = server, kind
        self.crypto = kind == "crypto"
        market = server.market
        if self.crypto:
            self.day = server.crypto_day
            self.start_ns, self.end_ns = server._window_ns(kind)
            symbols = server.symbols_for("crypto")
        else:
            self.day = server.day
            self.start_ns, self.end_ns = server._window_ns(kind)
            symbols = server.symbols_for("stocks")
        self.symbols = pa.array(sorted(symbols), pa.string())
        self.index = {s: i for i, s in enumerate(self.symbols.to_pylist())}
        names = self.symbols.to_pylist()
        start = datetime.fromtimestamp(self.start_ns / NS, UTC)
        end = datetime.fromtimestamp(self.end_ns / NS, UTC)
        self.quotes = _Buffered(iter(market.iter_quotes(self.day, names, start=start, end=end)) if names else iter(()))
        self.trades = _Buffered(iter(market.iter_trades(self.day, names, start=start, end=end)) if names else iter(()))
        bars = market.minute_bars(self.day, names) if names else pa.table({})
        if bars.num_rows:
            bars = bars.sort_by([("ts", "ascending"), ("symbol", "ascending")])
            self.bar_ts = _ts_ns(bars.column("ts"))
        else:
            self.bar_ts = np.zeros(0, np.int64)
        self.bars = bars
        self.connections: list[_Connection] = []
        self.closed: list[_Connection] = []
        self.clock_ns = self.start_ns  # everything before it has been sent
        self.wall0: float | None = None  # wall time at which the clock stood at start_ns
        self.next_bar_minute = (self.start_ns // MINUTE_NS + 1) * MINUTE_NS
        self.last_bars: pa.Table | None = None
        self.pending_faults: list[tuple[str, dict]] = []
        self.scheduled: list[tuple[int, str, dict]] = []
        self.stalls: list[tuple[np.ndarray, int, int]] = []  # (symbols withheld, from, until event ns)
        self.subscribed = asyncio.Event()
        self.finished = False
        self.sent_total = {name: 0 for name in DATA_CHANNELS}
        self.task: asyncio.Task | None = None

    # -- clock -----------------------------------------------------------------------------

    def now_ns(self) -> int:
        """The market clock: where sending stands, or where real time has brought it."""
        speed = self.server.speed
        if self.wall0 is None or speed is None:
            return self.clock_ns
        return min(self.end_ns, self.start_ns + int((time.time() - self.wall0) * speed * NS))

    def wall_of(self, event_ns: int) -> float | None:
        """The wall time at which the clock reaches `event_ns` (finite speed, once started)."""
        if self.wall0 is None or self.server.speed is None:
            return None
        return self.wall0 + (event_ns - self.start_ns) / NS / self.server.speed

    # -- the producer ----------------------------------------------------------------------

    async def run(self) -> None:
        await self.subscribed.wait()
        self.wall0 = time.time()
        slice_ns = MINUTE_NS if self.server.speed is None else max(NS // 1000, int(_WALL_SLICE * self.server.speed * NS))
        while self.clock_ns < self.end_ns or self.next_bar_minute <= self.end_ns:
            if self.server.speed is None:
                while not any(c.subscribed() for c in self.connections):
                    self.subscribed.clear()
                    await self.subscribed.wait()
            t0 = self.clock_ns
            # Slices end on minute marks (the bars go out there); at the end an empty slice sends the last bars.
            t1 = max(t0, min(self.end_ns, t0 + slice_ns, self.next_bar_minute))
            wall = self.wall_of(t1)
            if wall is not None:
                delay = wall - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            self._run_scheduled(t1)
            count = await self._send_slice(t0, t1)
            self.clock_ns = t1
            if self.server.speed is None:
                slice_ns = int(min(MINUTE_NS, max(NS // 10, slice_ns * _MAX_SPEED_TARGET / max(count, 1))))
                await asyncio.sleep(0)
            if t1 >= self.end_ns and self.next_bar_minute > self.end_ns:
                break
        self.finished = True
        log.info("replay %s feed reached the end of its window", self.kind)

    def _run_scheduled(self, upto_ns: int) -> None:
        due = [item for item in self.scheduled if item[0] <= upto_ns]
        self.scheduled = [item for item in self.scheduled if item[0] > upto_ns]
        for _, name, kwargs in sorted(due, key=lambda item: item[0]):
            self.server._apply_fault(self, name, kwargs)

    def _closed_bars(self, boundary_ns: int) -> pa.Table | None:
        """Bars of the minute that ends at `boundary_ns`."""
        lo = int(np.searchsorted(self.bar_ts, boundary_ns - MINUTE_NS, side="left"))
        hi = int(np.searchsorted(self.bar_ts, boundary_ns, side="left"))
        return self.bars.slice(lo, hi - lo) if hi > lo else None

    async def _send_slice(self, t0: int, t1: int) -> int:
        parts: list[_Encoded] = []
        # A minute's bars go out when the clock reaches its end, ahead of the next minute's events.
        if t0 == self.next_bar_minute:
            bars = self._closed_bars(t0)
            if bars is not None:
                # Sorted just before the minute's end, so they precede anything at or after it.
                parts.append(encode_bars(bars, self.symbols, sort_ts=np.full(bars.num_rows, t0 - 1, np.int64)))
                self.last_bars = bars
            self.next_bar_minute += MINUTE_NS
        if t1 > t0:
            quotes = self.quotes.take_until(t1)
            trades = self.trades.take_until(t1)
            if quotes is not None and quotes.num_rows:
                parts.append(encode_quotes(quotes, self.symbols, crypto=self.crypto))
            if trades is not None and trades.num_rows:
                parts.append(encode_trades(trades, self.symbols, crypto=self.crypto))
        corrections = self._take_corrections()
        if corrections is not None:
            parts.append(corrections)
        encoded = self._unstalled(_Encoded.concat(parts, order_by_time=len(parts) > 1))
        await self._flush_faults()
        if len(encoded):
            await self._broadcast(encoded)
        return len(encoded)

    def stall(self, symbols: Sequence[str], minutes: float, from_ns: int | None = None) -> None:
        """Withhold every message of `symbols` with event time before `minutes` after `from_ns`
        (default: the clock)."""
        mask = np.zeros(len(self.symbols), bool)
        mask[[self.index[s] for s in symbols if s in self.index]] = True
        start = max(self.clock_ns, from_ns or 0)
        self.stalls.append((mask, start, start + int(minutes * MINUTE_NS)))

    def _unstalled(self, encoded: _Encoded) -> _Encoded:
        # A stall's last minute's bars go out a minute after it ends (stamped just before its end).
        self.stalls = [stall for stall in self.stalls if self.clock_ns < stall[2] + MINUTE_NS]
        if not self.stalls or not len(encoded):
            return encoded
        drop = np.zeros(len(encoded), bool)
        for mask, start, until in self.stalls:
            drop |= mask[encoded.symbol] & (encoded.ts >= start) & (encoded.ts < until)
        return encoded.select(np.flatnonzero(~drop)) if drop.any() else encoded

    def _take_corrections(self) -> _Encoded | None:
        requests = [kwargs for name, kwargs in self.pending_faults if name == "correct"]
        if not requests:
            return None
        self.pending_faults = [(n, k) for n, k in self.pending_faults if n != "correct"]
        if self.last_bars is None or not self.last_bars.num_rows:
            return None
        count = max(int(kwargs.get("count", 5)) for kwargs in requests)
        bars = self.last_bars.slice(0, min(count, self.last_bars.num_rows))
        # A late trade at the close: one more print of 100 shares, which moves close and VWAP.
        close = pc.add(bars.column("close"), 0.0)
        volume = pc.add(bars.column("volume"), 100.0)
        notional = pc.add(pc.multiply(bars.column("vwap"), bars.column("volume")), pc.multiply(close, 100.0))
        corrected = bars.set_column(bars.schema.get_field_index("volume"), "volume", volume)
        corrected = corrected.set_column(corrected.schema.get_field_index("vwap"), "vwap", pc.divide(notional, volume))
        corrected = corrected.set_column(corrected.schema.get_field_index("trade_count"), "trade_count",
                                         pc.add(bars.column("trade_count"), 1))
        self.server.corrections.append(corrected)
        return encode_bars(corrected, self.symbols, kind="u", sort_ts=np.full(corrected.num_rows, self.clock_ns, np.int64))

    async def _flush_faults(self) -> None:
        pending, self.pending_faults = self.pending_faults, []
        for name, kwargs in pending:
            if name == "malformed":
                await self._send_malformed(kwargs["what"])
            elif name == "inject":
                for frame in kwargs["frames"]:
                    await self._send_raw(frame)
                self.server.injected.append({"kind": "inject", "feed": self.kind, "at_ns": self.clock_ns,
                                             "frames": len(kwargs["frames"])})
            else:
                self.pending_faults.append((name, kwargs))

    async def _send_malformed(self, kind: str) -> None:
        now = msgpack.Timestamp.from_unix_nano(max(self.clock_ns, self.start_ns))
        symbol = self.symbols[0].as_py() if len(self.symbols) else ("BTC/USD" if self.crypto else "AAPL")
        quote = {"T": "q", "S": symbol, "bp": 10.0, "bs": 100, "ap": 10.01, "as": 100, "t": now}
        if not self.crypto:
            quote = {"T": "q", "S": symbol, "bx": "Q", "bp": 10.0, "bs": 100, "ax": "Q", "ap": 10.01, "as": 100,
                     "c": ["R"], "z": "C", "t": now}
        text: str | None = None
        if kind == "random_bytes":
            # Starts with 0xc1, the one byte msgpack never uses: undecodable whatever follows.
            frame: bytes = b"\xc1" + np.random.default_rng(len(self.server.injected)).bytes(63)
        elif kind == "text_frame":
            frame, text = b"", json.dumps([{"T": "q", "S": symbol, "bp": 10.0}])
        elif kind == "wrong_types":
            frame = msgpack.packb([{**quote, "bp": "ten dollars", "as": [100]}])
        elif kind == "nan_price":
            frame = msgpack.packb([{**quote, "bp": math.nan}])
        elif kind == "negative_price":
            trade = {"T": "t", "S": symbol, "i": 1, "x": "D", "p": -1.0, "s": 100, "c": ["@"], "z": "C", "t": now}
            if self.crypto:
                trade = {"T": "t", "S": symbol, "i": 1, "p": -1.0, "s": 0.5, "t": now}
            frame = msgpack.packb([trade])
        elif kind == "unknown_symbol":
            frame = msgpack.packb([{**quote, "S": "ZZZZ/ZZZ" if self.crypto else "ZZZZZ"}])
        elif kind == "not_a_map":
            # A valid array with a bad item: alpaca-py drops the rest of the frame after it.
            frame = msgpack.packb([42, {**quote, "bp": 9.99, "ap": 10.02}])
        else:
            raise InvalidInputError(f"unknown malformed kind {kind!r}: expected one of {', '.join(MALFORMED_KINDS)}")
        await self._send_raw(text if text is not None else frame)
        self.server.injected.append({"kind": kind, "feed": self.kind, "at_ns": self.clock_ns})

    async def _send_raw(self, frame: bytes | str) -> None:
        """One frame as it is to every subscribed connection that is not silenced."""
        for conn in list(self.connections):
            if not conn.subscribed() or time.time() < conn.silent_until:
                continue
            try:
                await conn.ws.send(frame)
            except ConnectionClosed:
                continue

    async def _broadcast(self, encoded: _Encoded) -> None:
        per_frame = self.server.frame_messages
        wall = time.time()
        for conn in list(self.connections):
            if not conn.subscribed():
                continue
            rows = self._rows_for(conn, encoded)
            if rows is None:
                chosen = encoded
            elif not len(rows):
                continue
            else:
                chosen = encoded.select(rows)
            if wall < conn.silent_until:
                continue
            try:
                for frame, span in chosen.frames(per_frame):
                    payload: bytes | str = frame if conn.msgpack else _json_frame(frame)
                    await conn.ws.send(payload)
                    if conn.duplicate_frames:
                        conn.duplicate_frames -= 1
                        await conn.ws.send(payload)
                    self._count(conn, chosen, span)
            except ConnectionClosed:
                continue

    def _rows_for(self, conn: _Connection, encoded: _Encoded) -> np.ndarray | None:
        """Rows `conn` subscribed to, or None for all of them."""
        if all(name in conn.wildcard for name in DATA_CHANNELS):
            return None
        keep = np.zeros(len(encoded), bool)
        for name in DATA_CHANNELS:
            code = _CHANNEL_CODE[name]
            in_channel = encoded.channel == code
            if name in conn.wildcard:
                keep |= in_channel
            elif name in conn.subs:
                keep |= in_channel & conn.subs[name][encoded.symbol]
        return None if keep.all() else np.flatnonzero(keep)

    def _count(self, conn: _Connection, encoded: _Encoded, span: slice) -> None:
        channel, symbol, ts = encoded.channel[span], encoded.symbol[span], encoded.ts[span]
        for name in DATA_CHANNELS:
            mask = channel == _CHANNEL_CODE[name]
            if mask.any():
                counts = np.bincount(symbol[mask], minlength=len(self.symbols))
                conn.sent[name] = conn.sent.get(name, np.zeros(len(self.symbols), np.int64)) + counts
                self.sent_total[name] += int(mask.sum())
        if len(ts):
            conn.first_ts = int(ts[0]) if conn.first_ts is None else conn.first_ts
            conn.last_ts = int(ts[-1])
            self.server._sent_log(self.kind, conn, encoded, span)


# ---------------------------------------------------------------------------------------------
# The server


class AlpacaStreamReplay:
    """Alpaca's market-data websocket on loopback, serving the simulated market (see the module
    docstring). Use as a context manager, or `start()` and `stop()`:

        with AlpacaStreamReplay(SimMarket(n_stocks=20), "2024-11-26", speed=600) as replay:
            stream = StockDataStream(replay.key, replay.secret, raw_data=True, url_override=replay.url("iex"))

    `start`/`end` bound the window served (default: the whole session from the pre-market open
    to the after-hours close; crypto: the UTC day `crypto_day`, default `day`). `symbols` limits
    the stock universe (default: the market's stocks and ETFs of the day); `crypto_symbols` the
    pairs. `feeds` are the stock feeds the key's plan includes (the other gets 409),
    `max_connections` the sessions a key may hold (406 beyond), `symbol_limit` the trades and
    quotes symbols a connection may subscribe to (405 beyond; None: unlimited).
    """

    def __init__(
        self,
        market: SimMarket,
        day: date | str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        crypto_day: date | str | None = None,
        speed: float | None = 60.0,
        symbols: Sequence[str] | None = None,
        crypto_symbols: Sequence[str] | None = None,
        key: str = DEFAULT_KEY,
        secret: str = DEFAULT_SECRET,
        feeds: Sequence[str] = STOCK_FEEDS,
        max_connections: int = 1,
        symbol_limit: int | None = None,
        frame_messages: int = 1000,
        compression: str | None = "deflate",
        host: str = "127.0.0.1",
        port: int = 0,
        auth_timeout: float = _AUTH_TIMEOUT,
        record_sent: bool = False,
    ) -> None:
        if speed is not None and not (isinstance(speed, (int, float)) and speed > 0):
            raise InvalidInputError(f"speed={speed!r}: expected a positive number (times real time) or None (maximum)")
        unknown = sorted(set(feeds) - set(STOCK_FEEDS))
        if unknown:
            raise InvalidInputError(f"feeds {unknown}: expected some of {', '.join(STOCK_FEEDS)}")
        if frame_messages < 1:
            raise InvalidInputError(f"frame_messages={frame_messages!r}: expected at least 1")
        self.market = market
        self.day = calendar.to_date(day)
        self.crypto_day = calendar.to_date(crypto_day) if crypto_day is not None else self.day
        self.window_start, self.window_end = start, end
        self.speed = float(speed) if speed is not None else None
        self._symbols = list(symbols) if symbols is not None else None
        self._crypto_symbols = list(crypto_symbols) if crypto_symbols is not None else None
        self.key, self.secret = key, secret
        self.feeds = tuple(feeds)
        self.max_connections = max_connections
        self.symbol_limit = symbol_limit
        self.frame_messages = frame_messages
        self.compression = compression
        self.host, self.port = host, port
        self.auth_timeout = auth_timeout
        self.record_sent = record_sent
        self.injected: list[dict] = []
        self.corrections: list[pa.Table] = []
        self.auth_failures: list[dict] = []
        self.connections_total = 0
        self._sent: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._feeds: dict[str, _Feed] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        for instant in (start, end):
            if instant is not None and instant.tzinfo is None:
                raise InvalidInputError(f"{instant.isoformat()} has no time zone: expected an aware datetime")
        if calendar.is_session(self.day):
            self._window_ns("stocks")  # a bad window fails here, not at the first connection

    # -- configuration ---------------------------------------------------------------------

    def symbols_for(self, kind: str) -> list[str]:
        if kind == "crypto":
            return self._crypto_symbols if self._crypto_symbols is not None else \
                self.market.symbols(self.crypto_day, category="crypto")
        return self._symbols if self._symbols is not None else self.market.stock_symbols(self.day)

    def window(self, kind: str = "stocks") -> tuple[datetime, datetime]:
        """The [start, end) of event time the feed of `kind` serves."""
        lo, hi = self._window_ns(kind)
        return datetime.fromtimestamp(lo // NS, UTC) + timedelta(microseconds=lo % NS // 1000), \
            datetime.fromtimestamp(hi // NS, UTC) + timedelta(microseconds=hi % NS // 1000)

    def _window_ns(self, kind: str) -> tuple[int, int]:
        """`start`/`end` clamped to the day of `kind` (the session, or the crypto UTC day)."""
        if kind == "crypto":
            lo = datetime.combine(self.crypto_day, datetime.min.time(), tzinfo=UTC)
            hi = lo + timedelta(days=1)
        else:
            session = calendar.session(self.day)  # NotASessionError on a weekend or holiday
            lo, hi = session.start, session.end
        start = min(max(self.window_start, lo), hi) if self.window_start is not None else lo
        end = max(min(self.window_end, hi), lo) if self.window_end is not None else hi
        if end <= start:
            raise InvalidInputError(
                f"replay window {self.window_start} .. {self.window_end} leaves nothing of the {kind} day {lo.isoformat()} .. "
                f"{hi.isoformat()}: expected start before end, overlapping the day"
            )
        return _to_ns(start), _to_ns(end)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def control_url(self) -> str:
        """HTTP base of the fault commands: GET <control_url>/drop, /silence?seconds=5, /status ..."""
        return f"http://{self.host}:{self.port}/control"

    def url(self, feed: str = "iex") -> str:
        """The URL for alpaca-py's `url_override`: a stock feed (iex, sip) or `crypto`."""
        if feed in ("crypto", "us"):
            return f"{self.base_url}/v1beta3/crypto/us"
        if feed not in STOCK_FEEDS:
            raise InvalidInputError(f"feed {feed!r}: expected iex, sip or crypto")
        return f"{self.base_url}/v2/{feed}"

    def start(self) -> "AlpacaStreamReplay":
        """Serve in a background thread; returns once the port is bound."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._thread_main, name="alpaca-stream-replay", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> "AlpacaStreamReplay":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve_forever())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def serve_forever(self) -> None:
        """Serve on the running event loop until `stop()` (the CLI and the thread run this)."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with serve(
            self._handle, self.host, self.port, process_request=self._process_request,
            compression=self.compression, max_size=2**20, ping_interval=None,
            # A client that stopped reading must not hold stop() for the default 10 s handshake.
            close_timeout=1,
        ) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopped.wait()
            for feed in self._feeds.values():
                if feed.task is not None:
                    feed.task.cancel()
            server.close()

    # -- feeds -----------------------------------------------------------------------------

    def _feed(self, kind: str) -> _Feed:
        feed = self._feeds.get(kind)
        if feed is None:
            feed = self._feeds[kind] = _Feed(self, kind)
            feed.task = asyncio.get_running_loop().create_task(feed.run())
        return feed

    def clock(self, kind: str = "stocks") -> datetime | None:
        """The market clock of `kind`'s feed (None until a client first subscribed)."""
        feed = self._feeds.get(kind)
        if feed is None or feed.wall0 is None:
            return None
        return _from_ns(feed.now_ns())

    def clock_anchor(self, kind: str = "stocks") -> tuple[int, float, float] | None:
        """(event ns, wall time, speed): the clock passes event ns at that wall time and runs at
        `speed` times real time. None before the first subscriber, and at maximum speed."""
        feed = self._feeds.get(kind)
        if feed is None or feed.wall0 is None or self.speed is None:
            return None
        return feed.start_ns, feed.wall0, self.speed

    def finished(self, kind: str = "stocks") -> bool:
        """Whether the feed of `kind` has sent its whole window (its last bars included)."""
        feed = self._feeds.get(kind)
        return feed is not None and feed.finished

    def wait_finished(self, kind: str = "stocks", timeout: float = 60.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.finished(kind):
                return True
            time.sleep(0.02)
        return False

    def sent_counts(self, kind: str = "stocks") -> dict[str, dict[str, int]]:
        """Data messages sent per channel and symbol over all connections (duplicates included once
        per send of a frame; the second send of a duplicated frame is not counted)."""
        feed = self._feeds.get(kind)
        out: dict[str, dict[str, int]] = {name: {} for name in DATA_CHANNELS}
        if feed is None:
            return out
        names = feed.symbols.to_pylist()
        totals: dict[str, np.ndarray] = {}
        for conn in feed.closed + feed.connections:
            for name, counts in conn.sent.items():
                totals[name] = totals.get(name, np.zeros(len(names), np.int64)) + counts
        for name, counts in totals.items():
            out[name] = {names[i]: int(c) for i, c in enumerate(counts) if c}
        return out

    def sent_windows(self, kind: str = "stocks") -> list[tuple[int, int]]:
        """Per connection so far: (first, last) event ns of the data it was sent."""
        feed = self._feeds.get(kind)
        conns = feed.closed + feed.connections if feed is not None else []
        return [(c.first_ts, c.last_ts) for c in conns if c.first_ts is not None]

    def _sent_log(self, kind: str, conn: _Connection, encoded: _Encoded, span: slice) -> None:
        if self.record_sent:
            self._sent.append((kind, encoded.channel[span].copy(), encoded.symbol[span].copy(), encoded.ts[span].copy()))

    def sent_messages(self, kind: str = "stocks") -> pa.Table:
        """With `record_sent=True`: every data message sent (channel, symbol, ts in ns), in order."""
        feed = self._feeds.get(kind)
        parts = [item for item in self._sent if item[0] == kind]
        if feed is None or not parts:
            return pa.table({"channel": pa.array([], pa.string()), "symbol": pa.array([], pa.string()),
                             "ts": pa.array([], pa.int64())})
        channel = np.concatenate([p[1] for p in parts])
        symbol = np.concatenate([p[2] for p in parts])
        ts = np.concatenate([p[3] for p in parts])
        return pa.table({
            "channel": pa.DictionaryArray.from_arrays(pa.array(channel.astype(np.int32)),
                                                      pa.array(DATA_CHANNELS)).cast(pa.string()),
            "symbol": feed.symbols.take(pa.array(symbol)),
            "ts": pa.array(ts),
        })

    # -- faults ----------------------------------------------------------------------------

    def drop(self, *, kind: str | None = None, code: int = 1011, abort: bool = False,
             at: datetime | None = None) -> None:
        """Close every data connection (of `kind`, or all) now, or when the clock reaches `at`."""
        self._fault("drop", kind, at, code=code, abort=abort)

    def silence(self, seconds: float, *, kind: str | None = None, at: datetime | None = None) -> None:
        """Keep the connections open but send them nothing for `seconds` of wall time."""
        self._fault("silence", kind, at, seconds=seconds)

    def malformed(self, malformed_kind: str, *, kind: str | None = None, at: datetime | None = None) -> None:
        """Send one bad frame (see MALFORMED_KINDS) to every subscriber, before the next data."""
        if malformed_kind not in MALFORMED_KINDS:
            raise InvalidInputError(f"unknown malformed kind {malformed_kind!r}: expected one of {', '.join(MALFORMED_KINDS)}")
        self._fault("malformed", kind, at, what=malformed_kind)

    def duplicate(self, frames: int = 1, *, kind: str | None = None, at: datetime | None = None) -> None:
        """Send each of the next `frames` data frames twice."""
        self._fault("duplicate", kind, at, frames=frames)

    def inject(self, frames: Sequence[bytes | str], *, kind: str | None = None, at: datetime | None = None) -> None:
        """Send `frames` as they are (see the module docstring), now or when the clock reaches `at`."""
        self._fault("inject", kind, at, frames=list(frames))

    def correct(self, count: int = 5, *, kind: str | None = None, at: datetime | None = None) -> None:
        """Send `u` corrections for up to `count` bars of the last closed minute (recorded in
        `corrections`): one more trade of 100 shares at the close."""
        self._fault("correct", kind, at, count=count)

    def stall(self, symbols: Sequence[str], minutes: float, *, kind: str | None = None,
              at: datetime | None = None) -> None:
        """A silent stall: send nothing for `symbols` for `minutes` of market time from now (or
        from `at`), connections open and the rest of the market flowing."""
        self._fault("stall", kind, at, symbols=list(symbols), minutes=minutes, from_ns=_to_ns(at) if at else None)

    def _fault(self, name: str, kind: str | None, at: datetime | None, **kwargs: Any) -> None:
        if self._loop is None:
            raise InvalidInputError("the replay server is not running: start() it first")
        done = threading.Event()
        errors: list[BaseException] = []

        def apply() -> None:
            try:
                # No kind: every running feed, or the stock feed (started here) when none runs yet.
                kinds = [kind] if kind else (list(self._feeds) or ["stocks"])
                for k in kinds:
                    feed = self._feeds.get(k) or self._feed(k)
                    if at is not None:
                        feed.scheduled.append((_to_ns(at), name, kwargs))
                    else:
                        self._apply_fault(feed, name, kwargs)
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        if threading.current_thread() is self._thread or _running_loop() is self._loop:
            apply()
        else:
            self._loop.call_soon_threadsafe(apply)
            done.wait(10)
        if errors:
            raise errors[0]

    def _apply_fault(self, feed: _Feed, name: str, kwargs: dict) -> None:
        if name == "drop":
            for conn in list(feed.connections):
                if kwargs.get("abort"):
                    conn.ws.transport.abort()
                else:
                    asyncio.get_running_loop().create_task(conn.ws.close(kwargs.get("code", 1011), "replay: dropped"))
            log.info("replay: dropped %d %s connections", len(feed.connections), feed.kind)
        elif name == "silence":
            until = time.time() + float(kwargs["seconds"])
            for conn in feed.connections:
                conn.silent_until = until
        elif name == "duplicate":
            for conn in feed.connections:
                conn.duplicate_frames += int(kwargs.get("frames", 1))
        elif name in ("malformed", "correct", "inject"):
            feed.pending_faults.append((name, kwargs))
        elif name == "stall":
            feed.stall(kwargs["symbols"], float(kwargs["minutes"]), kwargs.get("from_ns"))
        else:
            raise InvalidInputError(
                f"unknown fault {name!r}: expected drop, silence, malformed, duplicate, correct, inject or stall")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.base_url, "speed": self.speed, "feeds": {}}
        for kind, feed in self._feeds.items():
            out["feeds"][kind] = {
                "clock": _from_ns(feed.now_ns()).isoformat() if feed.wall0 is not None else None,
                "window": [_from_ns(feed.start_ns).isoformat(), _from_ns(feed.end_ns).isoformat()],
                "anchor": self.clock_anchor(kind),
                "finished": feed.finished,
                "connections": len(feed.connections),
                "sent": dict(feed.sent_total),
            }
        out["injected"] = len(self.injected)
        return out

    # -- HTTP control and routing -----------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path.startswith("/control/"):
            return self._control(connection, parts.path[len("/control/"):], parse_qs(parts.query))
        if parts.path not in ROUTES:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no stream at {parts.path}\n")
        return None

    def _control(self, connection: ServerConnection, name: str, query: dict[str, list[str]]) -> Response:
        args = {k: v[-1] for k, v in query.items()}
        try:
            at = datetime.fromisoformat(args.pop("at")) if "at" in args else None
            kind = args.pop("kind", None)
            if name == "status":
                body: Any = self.status()
            elif name == "drop":
                self.drop(kind=kind, code=int(args.get("code", 1011)), abort=args.get("abort") in ("1", "true"), at=at)
                body = {"ok": True}
            elif name == "silence":
                self.silence(float(args["seconds"]), kind=kind, at=at)
                body = {"ok": True}
            elif name == "malformed":
                self.malformed(args["what"], kind=kind, at=at)
                body = {"ok": True}
            elif name == "duplicate":
                self.duplicate(int(args.get("frames", 1)), kind=kind, at=at)
                body = {"ok": True}
            elif name == "correct":
                self.correct(int(args.get("count", 5)), kind=kind, at=at)
                body = {"ok": True}
            elif name == "stall":
                self.stall(args["symbols"].split(","), float(args["minutes"]), kind=kind, at=at)
                body = {"ok": True}
            else:
                return connection.respond(HTTPStatus.NOT_FOUND, json.dumps({"error": f"unknown command {name!r}"}))
        except (KeyError, ValueError) as exc:
            return connection.respond(HTTPStatus.BAD_REQUEST, json.dumps({"error": str(exc)}))
        response = connection.respond(HTTPStatus.OK, json.dumps(body, default=str))
        response.headers["Content-Type"] = "application/json"
        return response

    # -- the websocket session ---------------------------------------------------------------

    async def _send_control(self, conn: _Connection, message: dict) -> None:
        payload = [message]
        await conn.ws.send(msgpack.packb(payload) if conn.msgpack else json.dumps(payload))

    async def _send_error(self, conn: _Connection, code: int, msg: str) -> None:
        await self._send_control(conn, {"T": "error", "code": code, "msg": msg})

    async def _recv(self, conn: _Connection, timeout: float | None = None) -> Any:
        raw = await (asyncio.wait_for(conn.ws.recv(), timeout) if timeout else conn.ws.recv())
        try:
            return msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)
        except (ValueError, msgpack.UnpackException, TypeError):
            return None

    async def _handle(self, ws: ServerConnection) -> None:
        kind, feed_name = ROUTES[urlsplit(ws.request.path).path]
        content_type = ws.request.headers.get("Content-Type", "")
        conn = _Connection(ws=ws, kind=kind, feed=feed_name, key="", msgpack="msgpack" in content_type)
        self.connections_total += 1
        feed: _Feed | None = None
        try:
            await self._send_control(conn, {"T": "success", "msg": "connected"})
            if not await self._authenticate(conn):
                return
            feed = self._feed(kind)
            feed.connections.append(conn)
            while True:
                message = await self._recv(conn)
                await self._on_message(conn, feed, message)
        except (ConnectionClosed, asyncio.CancelledError):
            pass
        finally:
            if feed is not None and conn in feed.connections:
                feed.connections.remove(conn)
                feed.closed.append(conn)

    async def _authenticate(self, conn: _Connection) -> bool:
        while True:
            try:
                message = await self._recv(conn, self.auth_timeout)
            except asyncio.TimeoutError:
                await self._send_error(conn, 404, "auth timeout")
                await conn.ws.close()
                return False
            if not isinstance(message, dict) or "action" not in message:
                await self._send_error(conn, 400, "invalid syntax")
                continue
            action = message.get("action")
            if action in ("subscribe", "unsubscribe"):
                await self._send_error(conn, 401, "not authenticated")
                continue
            if action != "auth":
                await self._send_error(conn, 400, "invalid syntax")
                continue
            if message.get("key") != self.key or message.get("secret") != self.secret:
                self.auth_failures.append({"code": 402, "path": conn.ws.request.path})
                await self._send_error(conn, 402, "auth failed")
                await conn.ws.close()
                return False
            active = sum(1 for f in self._feeds.values() for c in f.connections if c.key == self.key)
            if active >= self.max_connections:
                self.auth_failures.append({"code": 406, "path": conn.ws.request.path})
                await self._send_error(conn, 406, "connection limit exceeded")
                await conn.ws.close()
                return False
            if conn.kind == "stocks" and conn.feed not in self.feeds:
                self.auth_failures.append({"code": 409, "path": conn.ws.request.path})
                await self._send_error(conn, 409, "insufficient subscription")
                await conn.ws.close()
                return False
            conn.key = self.key
            await self._send_control(conn, {"T": "success", "msg": "authenticated"})
            return True

    async def _on_message(self, conn: _Connection, feed: _Feed, message: Any) -> None:
        if not isinstance(message, dict) or "action" not in message:
            await self._send_error(conn, 400, "invalid syntax")
            return
        action = message["action"]
        if action == "auth":
            await self._send_error(conn, 403, "already authenticated")
            return
        if action not in ("subscribe", "unsubscribe"):
            await self._send_error(conn, 400, "invalid syntax")
            return
        requested: dict[str, list[str]] = {}
        for name, value in message.items():
            if name == "action":
                continue
            if name not in CHANNELS or not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                await self._send_error(conn, 400, "invalid syntax")
                return
            requested[name] = value
        if action == "subscribe" and self.symbol_limit is not None:
            for name in ("trades", "quotes"):
                wanted = set(self._symbols_of(conn, feed, name)) | set(requested.get(name, []))
                if "*" not in wanted and len(wanted) > self.symbol_limit:
                    await self._send_error(conn, 405, "symbol limit exceeded")
                    return
        for name, symbols in requested.items():
            mask = conn.subs.setdefault(name, np.zeros(len(feed.symbols), bool))
            extra = conn.extra.setdefault(name, set())
            for symbol in symbols:
                if symbol == "*":
                    (conn.wildcard.add if action == "subscribe" else conn.wildcard.discard)(name)
                    continue
                index = feed.index.get(symbol)
                if index is None:
                    (extra.add if action == "subscribe" else extra.discard)(symbol)
                else:
                    mask[index] = action == "subscribe"
        ack: dict[str, Any] = {"T": "subscription"}
        channels = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
        if conn.kind == "crypto":
            channels = ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars")
        for name in channels:
            ack[name] = self._symbols_of(conn, feed, name)
        if conn.kind == "stocks":
            ack["corrections"] = list(ack["trades"])
            ack["cancelErrors"] = list(ack["trades"])
        await self._send_control(conn, ack)
        if conn.subscribed():
            feed.subscribed.set()

    @staticmethod
    def _symbols_of(conn: _Connection, feed: _Feed, channel: str) -> list[str]:
        if channel in conn.wildcard:
            return ["*"]
        mask = conn.subs.get(channel)
        names = [feed.symbols[i].as_py() for i in np.flatnonzero(mask)] if mask is not None else []
        return names + sorted(conn.extra.get(channel, ()))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _to_ns(instant: datetime) -> int:
    if instant.tzinfo is None:
        raise InvalidInputError(f"{instant.isoformat()} has no time zone: expected an aware datetime")
    delta = instant.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1000


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // NS, UTC) + timedelta(microseconds=ns % NS // 1000)


# ---------------------------------------------------------------------------------------------
# Command line: a replay server in its own process


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until interrupted; print one JSON line with the URLs first."""
    parser = argparse.ArgumentParser(prog="python -m market_platform.replay.alpaca_stream", description=main.__doc__)
    parser.add_argument("--day", required=True, help="the stock session (YYYY-MM-DD); crypto uses the same UTC day")
    parser.add_argument("--start", help="first instant served (ISO, with offset); default the pre-market open")
    parser.add_argument("--end", help="end of the window (ISO, with offset); default the after-hours close")
    parser.add_argument("--speed", default="60", help="times real time, or 'max'")
    parser.add_argument("--stocks", type=int, default=3000, help="stocks and ETFs in the simulated market")
    parser.add_argument("--crypto", type=int, default=20, help="crypto pairs in the simulated market")
    parser.add_argument("--activity", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--frame-messages", type=int, default=1000)
    parser.add_argument("--compression", choices=("deflate", "none"), default="deflate")
    parser.add_argument("--max-connections", type=int, default=1)
    args = parser.parse_args(argv)
    market = SimMarket(args.seed, n_stocks=args.stocks, n_crypto=args.crypto, activity=args.activity)
    replay = AlpacaStreamReplay(
        market, args.day,
        start=datetime.fromisoformat(args.start) if args.start else None,
        end=datetime.fromisoformat(args.end) if args.end else None,
        speed=None if args.speed == "max" else float(args.speed),
        port=args.port, frame_messages=args.frame_messages,
        compression=None if args.compression == "none" else "deflate",
        max_connections=args.max_connections,
    )

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(replay.serve_forever())
        while not replay._ready.is_set():
            await asyncio.sleep(0.01)
        print(json.dumps({"url": replay.base_url, "iex": replay.url("iex"), "sip": replay.url("sip"),
                          "crypto": replay.url("crypto"), "key": replay.key, "secret": replay.secret}), flush=True)
        await task

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
