"""The Alpaca stream replay speaks the protocol alpaca-py expects (PROTOCOLS.md, section A)."""

from __future__ import annotations

import json
import threading
import urllib.request

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from alpaca.data.live import CryptoDataStream, StockDataStream
from alpaca.data.models import Bar, Quote, Trade
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from market_platform.errors import InvalidInputError
from market_platform.replay.alpaca_stream import AlpacaStreamReplay, _Rows, encode_bars, encode_quotes
from market_platform_tests.fixtures.sim import SIM_DAY
from market_platform_tests.fixtures.stream import window

MSGPACK = {"Content-Type": "application/msgpack"}


def _recv(ws) -> list:
    return msgpack.unpackb(ws.recv(timeout=10))


def _login(ws, replay) -> None:
    assert _recv(ws) == [{"T": "success", "msg": "connected"}]
    ws.send(msgpack.packb({"action": "auth", "key": replay.key, "secret": replay.secret}))
    assert _recv(ws) == [{"T": "success", "msg": "authenticated"}]


def test_handshake_errors_and_subscription_ack(replay_factory) -> None:
    start, end = window("09:30", 2)
    replay = replay_factory(start=start, end=end, symbol_limit=3)
    with connect(replay.url("iex"), additional_headers=MSGPACK) as ws:
        assert _recv(ws) == [{"T": "success", "msg": "connected"}]  # a frame of its own
        ws.send(msgpack.packb({"trades": ["AAPL"], "action": "subscribe"}))
        assert _recv(ws) == [{"T": "error", "code": 401, "msg": "not authenticated"}]
        ws.send(msgpack.packb({"action": "auth", "key": replay.key, "secret": replay.secret}))
        assert _recv(ws) == [{"T": "success", "msg": "authenticated"}]
        ws.send(msgpack.packb({"action": "auth", "key": replay.key, "secret": replay.secret}))
        assert _recv(ws) == [{"T": "error", "code": 403, "msg": "already authenticated"}]
        ws.send(msgpack.packb({"action": "dance"}))
        assert _recv(ws) == [{"T": "error", "code": 400, "msg": "invalid syntax"}]
        ws.send(msgpack.packb({"quotes": ["AAPL", "MSFT", "NVDA", "AMZN"], "action": "subscribe"}))
        assert _recv(ws) == [{"T": "error", "code": 405, "msg": "symbol limit exceeded"}]
        ws.send(msgpack.packb({"trades": ["AAPL"], "quotes": ["AAPL", "MSFT"], "bars": ["*"], "action": "subscribe"}))
        ack = _recv(ws)[0]
        assert ack["T"] == "subscription"
        assert (ack["trades"], ack["quotes"], ack["bars"]) == (["AAPL"], ["AAPL", "MSFT"], ["*"])
        assert ack["corrections"] == ack["cancelErrors"] == ["AAPL"]  # mirrored from trades
        seen = set()
        while len(seen) < 3:
            for item in msgpack.unpackb(ws.recv(timeout=10), object_pairs_hook=list):
                keys = [k for k, _ in item]
                message = dict(item)
                assert keys[0] == "T"  # the Go SDK insists on it
                assert isinstance(message["t"], msgpack.Timestamp)
                seen.add(message["T"])
                if message["T"] == "b":
                    assert {"o", "h", "l", "c", "v", "n", "vw"} <= set(message)
                else:
                    assert message["S"] in ("AAPL", "MSFT") and (message["T"] == "q" or message["S"] == "AAPL")


@pytest.mark.parametrize(("path_feed", "feeds", "key", "code", "msg"), [
    ("iex", ("iex", "sip"), "wrong", 402, "auth failed"),
    ("sip", ("iex",), None, 409, "insufficient subscription"),
])
def test_auth_refusals_close_the_connection(replay_factory, path_feed, feeds, key, code, msg) -> None:
    replay = replay_factory(feeds=feeds)
    with connect(replay.url(path_feed), additional_headers=MSGPACK) as ws:
        _recv(ws)
        ws.send(msgpack.packb({"action": "auth", "key": key or replay.key, "secret": replay.secret}))
        assert _recv(ws) == [{"T": "error", "code": code, "msg": msg}]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def test_connection_limit_auth_timeout_json_and_paths(replay_factory) -> None:
    replay = replay_factory(auth_timeout=0.3)
    with connect(replay.url("iex"), additional_headers=MSGPACK) as first:
        _login(first, replay)
        with connect(replay.url("iex"), additional_headers=MSGPACK) as second:
            _recv(second)
            second.send(msgpack.packb({"action": "auth", "key": replay.key, "secret": replay.secret}))
            assert _recv(second) == [{"T": "error", "code": 406, "msg": "connection limit exceeded"}]
    with connect(replay.url("iex"), additional_headers=MSGPACK) as ws:
        _recv(ws)
        assert _recv(ws) == [{"T": "error", "code": 404, "msg": "auth timeout"}]
    with connect(replay.url("iex")) as ws:  # no msgpack asked for: JSON text frames
        assert json.loads(ws.recv(timeout=5)) == [{"T": "success", "msg": "connected"}]
    with pytest.raises(InvalidStatus):
        connect(replay.base_url + "/v2/delayed_nope")
    status = json.loads(urllib.request.urlopen(replay.control_url + "/status", timeout=5).read())
    assert status["speed"] is None and status["url"] == replay.base_url


def test_alpaca_py_parses_the_replay_into_its_models(replay_factory, stream_sim) -> None:
    start, end = window("09:30", 3)
    replay = replay_factory(start=start, end=end, speed=300)
    stream = StockDataStream(replay.key, replay.secret, url_override=replay.url("iex"))  # pydantic models
    got: dict[str, list] = {"q": [], "t": [], "b": []}
    for kind, subscribe in (("q", stream.subscribe_quotes), ("t", stream.subscribe_trades), ("b", stream.subscribe_bars)):
        async def handler(message, kind=kind):
            got[kind].append(message)
        subscribe(handler, "AAPL", "SPY")
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        assert replay.wait_finished(timeout=30)
    finally:
        stream.stop()
        replay.drop()  # alpaca-py notices the stop at its next frame or after 5 s of silence
        thread.join(10)
    assert got["q"] and got["t"] and got["b"]
    assert all(isinstance(m, Quote) for m in got["q"]) and all(isinstance(m, Trade) for m in got["t"])
    bars = stream_sim.minute_bars(SIM_DAY, ["AAPL", "SPY"])
    bars = bars.filter(pc.and_(pc.greater_equal(bars["ts"], pa.scalar(start, bars["ts"].type)),
                               pc.less(bars["ts"], pa.scalar(end, bars["ts"].type))))
    assert len(got["b"]) == bars.num_rows
    first = got["b"][0]
    assert isinstance(first, Bar) and first.trade_count == bars["trade_count"][0].as_py()
    assert first.vwap == bars["vwap"][0].as_py() and first.volume == bars["volume"][0].as_py()


def test_crypto_stream_serves_pairs_with_float_sizes(replay_factory, stream_sim) -> None:
    replay = replay_factory(speed=None, crypto_day=SIM_DAY)
    pairs = stream_sim.symbols(SIM_DAY, category="crypto")
    stream = CryptoDataStream(replay.key, replay.secret, raw_data=True, url_override=replay.url("crypto"))
    got: list = []
    done = threading.Event()

    async def handler(message) -> None:
        got.append(message)
        if len(got) >= 200:
            done.set()

    stream.subscribe_quotes(handler, *pairs)
    stream.subscribe_trades(handler, *pairs)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        assert done.wait(20)
    finally:
        stream.stop()
        replay.drop()
        thread.join(10)
    quotes = [m for m in got if m["T"] == "q"]
    assert quotes and all("/" in m["S"] and "bx" not in m for m in quotes)
    assert {type(m["bs"]) for m in quotes} == {float}


def test_encoder_writes_valid_msgpack_of_every_width() -> None:
    values = np.array([0.0, 1.0, 2.5, 4294967295.0, 4294967296.0, 1e-8])
    rows = _Rows(len(values), 2)
    rows.key("T"), rows.const(b"\xa1q")
    rows.number("v", values)
    data, offsets = rows.build()
    decoded = [msgpack.unpackb(data[offsets[i]:offsets[i + 1]].tobytes()) for i in range(len(values))]
    assert [d["v"] for d in decoded] == [0, 1, 2.5, 4294967295, 4294967296.0, 1e-8]
    assert [type(d["v"]) for d in decoded] == [int, int, float, int, float, float]


def test_encoded_quotes_and_bars_round_trip(stream_sim) -> None:
    start, end = window("09:30", 1)
    quotes = stream_sim.quotes(SIM_DAY, None, start=start, end=end)
    symbols = pa.array(sorted(set(quotes["symbol"].to_pylist())))
    encoded = encode_quotes(quotes, symbols, crypto=False)
    frame = next(encoded.frames(10**6))[0]
    messages = msgpack.unpackb(frame)
    assert len(messages) == quotes.num_rows
    for message, row in zip(messages[:50], quotes.slice(0, 50).to_pylist()):
        assert message["S"] == row["symbol"] and message["bp"] == row["bid_price"] and message["as"] == row["ask_size"]
        assert message["c"] == row["conditions"].split(",")
    ts_ns = pc.cast(quotes["ts"], pa.int64()).to_pylist()
    assert [m["t"].to_unix_nano() for m in messages] == ts_ns
    bars = stream_sim.minute_bars(SIM_DAY, ["AAPL"]).slice(0, 5)
    decoded = msgpack.unpackb(next(encode_bars(bars, pa.array(["AAPL"])).frames(100))[0])
    assert [(m["o"], m["c"], m["vw"], m["n"]) for m in decoded] == list(zip(
        bars["open"].to_pylist(), bars["close"].to_pylist(), bars["vwap"].to_pylist(), bars["trade_count"].to_pylist()))


def test_bad_replay_settings_are_refused(stream_sim) -> None:
    with pytest.raises(InvalidInputError, match="speed"):
        AlpacaStreamReplay(stream_sim, SIM_DAY, speed=0)
    with pytest.raises(InvalidInputError, match="feeds"):
        AlpacaStreamReplay(stream_sim, SIM_DAY, feeds=("delayed",))
    start, _ = window("09:30", 1)
    with pytest.raises(InvalidInputError, match="empty|leaves nothing"):
        AlpacaStreamReplay(stream_sim, SIM_DAY, start=start, end=start)
    with pytest.raises(InvalidInputError, match="not a trading session"):
        AlpacaStreamReplay(stream_sim, "2024-07-04")._window_ns("stocks")
