"""alpaca-py's stream clients, instrumented: the real connect, auth, subscribe, receive, decode and
reconnect logic, with hooks where the platform needs to see what happens.

alpaca-py hides what a stream needs to account for every message: an auth error only becomes
a retry (forever, for 402 and 406), a disconnect only a log line, an undecodable frame a logged
exception that drops the frame, a message for a symbol without a handler nothing at all. The
subclass reports each of these to a `StreamListener`:

- `_connect` keeps the last frame received, so a failure can name its code and keep its bytes;
- `_auth` reports the error code (402, 406, 409) before alpaca-py retries;
- `_consume` reports disconnects and frames alpaca-py could not handle;
- `_dispatch` (with `fast=True`) appends each data message straight to the listener's list for
  its type, instead of alpaca-py's per-message enum comparisons and handler lookup: the same
  routing by `T`, about half the cost per message (see benchmarks/stream_throughput.py).
  With `fast=False` alpaca-py's own dispatch runs, with handlers registered for every symbol
  and a fallback for symbols not subscribed (so unknown symbols reach validation too).
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Protocol

import msgpack
import websockets
from alpaca.data.enums import DataFeed
from alpaca.data.live import CryptoDataStream, StockDataStream

log = logging.getLogger(__name__)

#: Message types the platform stores, by the list they go to.
DATA_TYPES = {"q": "quotes", "t": "trades", "b": "bars", "u": "bars"}


class StreamListener(Protocol):
    def on_connecting(self) -> None: ...

    def on_connected(self) -> None: ...

    def on_auth_error(self, message: str, code: int | None) -> None: ...

    async def on_disconnect(self, reason: str) -> None: ...

    async def on_frame_error(self, exc: BaseException, frame: bytes | str | None) -> None: ...

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
        await super()._connect()  # type: ignore[misc]
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
        self._listener.on_connected()

    async def _consume(self) -> bool:
        try:
            return await super()._consume()  # type: ignore[misc]
        except websockets.WebSocketException as exc:
            await self._listener.on_disconnect(describe_close(exc))
            raise
        except Exception as exc:
            if self._ws is None or not self._running:
                await self._listener.on_disconnect(f"connection lost: {type(exc).__name__}")
            else:
                await self._listener.on_frame_error(exc, self._last_frame)
            raise

    async def _dispatch(self, msg: dict) -> None:
        if self._fast:
            sink = self._sinks.get(msg.get("T"))
            if sink is not None:
                sink.append(msg)
                if len(sink) >= self._flush_rows:
                    await self._listener.on_full()
                return
        if msg.get("T") == "error":  # after the handshake alpaca-py only logs these (405, 407, ...)
            self._listener.on_server_error(msg)
        await super()._dispatch(msg)  # type: ignore[misc]

    async def dispatch_item(self, msg: Any) -> None:
        """Dispatch one decoded item as alpaca-py would (items after a bad one in a frame)."""
        if isinstance(msg, dict) and msg.get("T") in DATA_TYPES and "S" in msg:
            try:
                hash(msg["S"])
            except TypeError:
                return
            await self._dispatch(msg)


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
    # alpaca-py's settings (replaced as a whole when any is given), with 128 frames queued
    # instead of 1,024: ~14 MB of frames rather than ~110 MB when the client falls behind.
    params = {"ping_interval": 10, "ping_timeout": 180, "max_queue": 128,
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
            sink = client._sinks[kind]
            sink.append(msg)
            if len(sink) >= client._flush_rows:
                await listener.on_full()

        return handle

    for channel, kind, subscribe in (
        ("quotes", "q", client.subscribe_quotes), ("trades", "t", client.subscribe_trades),
        ("bars", "b", client.subscribe_bars), ("updatedBars", "u", client.subscribe_updated_bars),
    ):
        handler = handler_for(kind)
        client._handlers[channel] = _AnySymbol(handler)
        subscribe(handler, *symbols)
    return client
