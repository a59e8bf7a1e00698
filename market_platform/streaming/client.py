"""alpaca-py's stream clients, instrumented: the real connect, auth, subscribe, decode and reconnect
logic, with the receive loop replaced so that every frame is accounted for.

alpaca-py hides what a stream needs to account for every message: a failed connection or an auth
error only becomes a retry (forever, for 402 and 406) and a logged traceback, a disconnect only a
log line, and its receive loop drops without a trace a frame it cannot decode (and the rest of a
frame after an item that is not a map), an empty frame, a map without `T` or with a type it does
not know, and data without a symbol. The subclass reports each of these to a `StreamListener`:

- `_connect` keeps the last frame received, so a failure can name its code and keep its bytes,
  and reports a connection that fails (refused, unreachable, a bad handshake);
- `_auth` reports the error code (402, 406, 409) before alpaca-py retries;
- `_consume`, the receive loop: each frame is decoded once; each data message (`q`, `t`, `b`,
  `u`) is appended straight to the listener's list for its type (`fast=True`: the same routing
  by `T` as alpaca-py's, without its per-message enum comparisons, handler lookup and coroutine
  call) or goes through alpaca-py's own dispatch (`fast=False`, with handlers registered for
  every symbol and a fallback for symbols not subscribed, so unknown symbols reach validation
  too); a frame that does not decode, is not an array, is empty, or an item that is not a
  message of a type the stream stores becomes a dead letter (`on_dead_letter`) and the items
  around it go on; disconnects are reported.

A frame may be up to `MAX_FRAME_BYTES` (websockets' default of 1 MiB would close the connection
on a larger one, losing it and everything queued behind it); a larger frame closes the
connection (1009) and is recorded as a dead letter without its bytes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol

import msgpack
import websockets
from alpaca.data.enums import DataFeed
from alpaca.data.live import CryptoDataStream, StockDataStream

log = logging.getLogger(__name__)

#: Message types the platform stores, by the list they go to.
DATA_TYPES = {"q": "quotes", "t": "trades", "b": "bars", "u": "bars"}
#: Control messages of the protocol (PROTOCOLS.md A3-A5).
CONTROL_TYPES = ("success", "subscription", "error")
#: Types Alpaca sends that the platform does not store (yet): dead letters, never dropped silently.
UNSTORED_TYPES = {"d": "daily bar", "s": "trading status", "l": "LULD band", "c": "trade correction",
                  "x": "trade cancel or error", "i": "order imbalance", "o": "order book", "n": "news"}
#: The largest frame taken (Alpaca batches messages; a full market's burst fits many times over).
MAX_FRAME_BYTES = 16 * 2**20
_RECEIVE_TIMEOUT = 5.0  # seconds a receive waits before looking at the stop queue again


class StreamListener(Protocol):
    def on_connecting(self) -> None: ...

    def on_connected(self) -> None: ...

    def on_connect_error(self, error: BaseException) -> None: ...

    def on_auth_error(self, message: str, code: int | None) -> None: ...

    async def on_disconnect(self, reason: str) -> None: ...

    def on_dead_letter(self, reason: str, item: Any = None, *, raw: bytes | None = None) -> None: ...

    async def on_full(self) -> None: ...

    def on_server_error(self, message: dict) -> None: ...


def error_code(frame: Any) -> int | None:
    """The `code` of an error frame (`[{"T": "error", "code": 402, ...}]`), if it is one."""
    try:
        message = msgpack.unpackb(frame)[0] if isinstance(frame, bytes) else None
        return int(message["code"]) if message.get("T") == "error" else None
    except Exception:  # anything undecodable simply has no code
        return None


def describe_close(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return f"connection closed by the server: {rcvd.code} {rcvd.reason}".strip()
    if code is not None:
        return f"connection closed: {code}"
    return f"connection lost: {' '.join(str(exc).split()) or type(exc).__name__}"


def describe_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class _Reported(logging.Filter):
    """Drops alpaca-py's own log records of what the listener reports itself in one line: its
    tracebacks of failed connections and its warning on every close, a normal one included."""

    PREFIXES = ("error during websocket communication", "data websocket error, restarting connection")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


_FILTER = _Reported()


class _AnySymbol(dict):
    """Handlers by symbol whose lookup falls back to one handler for any other symbol, so a
    message for a symbol not subscribed reaches validation instead of vanishing in alpaca-py's
    dispatch; iteration (what the subscribe message lists) stays the subscribed symbols."""

    def __init__(self, fallback: Callable[[Any], Awaitable[None]]) -> None:
        super().__init__()
        self._fallback = fallback

    def get(self, key: Any, default: Any = None) -> Any:
        handler = dict.get(self, key)
        return handler if handler is not None else (default or self._fallback)


class _Instrumented:
    """Mixin over alpaca-py's DataStream (see the module docstring)."""

    _listener: StreamListener
    _sinks: dict[str, list]
    _flush_rows: int
    _fast: bool
    _last_frame: bytes | str | None = None

    async def _connect(self) -> None:
        self._listener.on_connecting()
        try:
            await super()._connect()  # type: ignore[misc]
        except Exception as exc:
            self._listener.on_connect_error(exc)
            raise
        receive = self._ws.recv

        async def keep_last():
            frame = await receive()
            self._last_frame = frame
            return frame

        self._ws.recv = keep_last

    async def _auth(self) -> None:
        try:
            await super()._auth()  # type: ignore[misc]
        except ValueError as exc:
            self._listener.on_auth_error(str(exc), error_code(self._last_frame))
            raise
        except Exception as exc:  # the connection failed during the handshake
            self._listener.on_connect_error(exc)
            raise
        self._listener.on_connected()

    async def _consume(self) -> bool:
        """alpaca-py's receive loop (`DataStream._consume`), every frame accounted for."""
        while True:
            if not self._stop_stream_queue.empty():
                self._stop_stream_queue.get(timeout=1)
                await self.close()
                return False
            try:
                frame = await asyncio.wait_for(self._ws.recv(), _RECEIVE_TIMEOUT)
            except asyncio.TimeoutError:
                continue
            except websockets.WebSocketException as exc:
                if getattr(exc, "code", None) == 1009 or getattr(getattr(exc, "sent", None), "code", None) == 1009:
                    self._listener.on_dead_letter(
                        f"frame larger than {MAX_FRAME_BYTES} bytes: the connection was closed (1009) and the "
                        "frame lost")
                await self._listener.on_disconnect(describe_close(exc))
                raise
            except Exception as exc:
                await self._listener.on_disconnect(f"connection lost: {describe_error(exc)}")
                raise
            await self._frame(frame)

    async def _frame(self, frame: bytes | str) -> None:
        listener = self._listener
        if not isinstance(frame, bytes):
            listener.on_dead_letter("text frame: the stream speaks msgpack in binary frames",
                                    raw=str(frame).encode(errors="surrogateescape"))
            return
        try:
            items = msgpack.unpackb(frame)
        except Exception as exc:  # msgpack raises several types for bad input
            items = _salvage(frame)
            if items is None:
                listener.on_dead_letter(f"undecodable frame: {describe_error(exc)}"[:200], raw=frame)
                return
        if type(items) is not list:
            listener.on_dead_letter("frame is not an array of messages", raw=frame)
            return
        if not items:
            listener.on_dead_letter("empty frame: an array with no message", raw=frame)
            return
        self._data_received = True
        if self._fast:
            self._route_fast(items)
        else:
            await self._route_alpaca(items)
        if any(len(sink) >= self._flush_rows for sink in self._sinks.values()):
            await listener.on_full()

    def _route_fast(self, items: list) -> None:
        sinks = self._sinks
        rest = iter(items)
        item: Any = None
        while True:
            try:
                for item in rest:
                    sink = sinks.get(item["T"])  # raises for an item that is not a map with a hashable T
                    if sink is None:
                        self._other(item)
                    else:
                        sink.append(item)
                return
            except Exception as exc:
                self._bad_item(item, exc)  # and on with the items after it

    async def _route_alpaca(self, items: list) -> None:
        for item in items:
            try:
                if item["T"] in DATA_TYPES:
                    await super()._dispatch(item)  # type: ignore[misc]
                else:
                    self._other(item)
            except Exception as exc:
                self._bad_item(item, exc)

    def _bad_item(self, item: Any, exc: BaseException) -> None:
        if isinstance(item, _Undecodable):
            self._listener.on_dead_letter("invalid UTF-8 in a string of the message", raw=item.raw)
            return
        if not isinstance(item, dict):
            reason = "item is not a message (a map with a type T)"
        elif "T" not in item:
            reason = "message without a type T"
        else:
            reason = f"message could not be dispatched: {describe_error(exc)}"[:200]
        self._listener.on_dead_letter(reason, item)

    def _other(self, item: dict) -> None:
        kind = item["T"]
        if kind == "subscription":
            log.info("subscribed: %s", {k: len(v) for k, v in item.items() if isinstance(v, list)})
        elif kind == "error":
            self._listener.on_server_error(item)
        elif kind != "success":
            name = UNSTORED_TYPES.get(kind) if isinstance(kind, str) else None
            self._listener.on_dead_letter(
                f"message type {kind!r} ({name}) is not stored" if name else f"unknown message type {kind!r:.40}", item)


class _Undecodable:
    """An item of a salvaged frame whose strings are not valid UTF-8, as its bytes."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


def _salvage(frame: bytes) -> list | None:
    """A frame msgpack could not decode strictly, decoded with invalid UTF-8 kept as surrogates:
    the items whose strings are valid as they are, the others as `_Undecodable` (None: the frame
    is not msgpack at all)."""
    try:
        items = msgpack.unpackb(frame, unicode_errors="surrogateescape")
    except Exception:
        return None
    if type(items) is not list:
        return None
    out: list = []
    for item in items:
        try:
            msgpack.packb(item)  # strict UTF-8 again: fails on an item holding invalid text
            out.append(item)
        except Exception:
            try:
                out.append(_Undecodable(msgpack.packb(item, unicode_errors="surrogateescape")))
            except Exception:
                out.append(_Undecodable(repr(item).encode(errors="backslashreplace")))
    return out


class InstrumentedStockStream(_Instrumented, StockDataStream):
    pass


class InstrumentedCryptoStream(_Instrumented, CryptoDataStream):
    pass


def make_client(
    listener: StreamListener,
    *,
    crypto: bool,
    api_key: str,
    secret_key: str,
    feed: str,
    url: str | None,
    symbols: list[str],
    sinks: dict[str, list],
    flush_rows: int,
    fast: bool = True,
    compression: bool = False,
) -> StockDataStream | CryptoDataStream:
    """An alpaca-py stream with `raw_data=True`, subscribed to quotes, trades, bars and updated
    bars of `symbols`, handing each message to `sinks[T]`."""
    logging.getLogger("alpaca.data.live.websocket").addFilter(_FILTER)  # once: filters are a set
    # alpaca-py's settings (replaced as a whole when any is given), with 128 frames queued
    # instead of 1,024: ~14 MB of frames rather than ~110 MB when the client falls behind.
    params = {"ping_interval": 10, "ping_timeout": 180, "max_queue": 128, "max_size": MAX_FRAME_BYTES, "close_timeout": 2,
              "compression": "deflate" if compression else None}
    if crypto:
        client: Any = InstrumentedCryptoStream(api_key, secret_key, raw_data=True, url_override=url,
                                               websocket_params=params)
    else:
        client = InstrumentedStockStream(api_key, secret_key, raw_data=True, feed=DataFeed(feed), url_override=url,
                                         websocket_params=params)
    client._listener, client._sinks, client._flush_rows, client._fast = listener, sinks, flush_rows, fast

    def handler_for(kind: str) -> Callable[[Any], Awaitable[None]]:
        async def handle(msg: dict) -> None:
            client._sinks[kind].append(msg)

        return handle

    for channel, kind, subscribe in (
        ("quotes", "q", client.subscribe_quotes), ("trades", "t", client.subscribe_trades),
        ("bars", "b", client.subscribe_bars), ("updatedBars", "u", client.subscribe_updated_bars),
    ):
        handler = handler_for(kind)
        client._handlers[channel] = _AnySymbol(handler)
        subscribe(handler, *symbols)
    return client
