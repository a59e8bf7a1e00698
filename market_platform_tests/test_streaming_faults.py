"""The stream against what a vendor (or a database) can throw at it: no single message can end,
stall or poison a run, and a run that cannot do its job fails loudly.

Real alpaca-py against the stream replay, into a real PostgreSQL; frames injected raw."""

from __future__ import annotations

import json
import math
import socket
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from market_platform.errors import StorageError, VendorUnavailableError
from market_platform.storage.timescale import TickStore
from market_platform.streaming import Streamer, sim_history
from market_platform_tests.fixtures.sim import SIM_DAY
from market_platform_tests.fixtures.stream import db_rows, stream_config, window

MINUTE = timedelta(minutes=1)
NS = 1_000_000_000


def _ts(ns: int) -> msgpack.Timestamp:
    return msgpack.Timestamp.from_unix_nano(ns)


def _frame(*items: Any) -> bytes:
    return msgpack.packb(list(items))


def fuzz_frames(symbol: str, at_ns: int) -> tuple[list[bytes | str], int, list[dict], list[dict]]:
    """Frames of every shape a vendor might send: (frames, dead letters they must give, the good
    quotes and trades among them as rows). `at_ns` is a time inside the window."""
    n = iter(range(1, 10_000))

    def quote(**changes: Any) -> dict:
        k = next(n)
        base = {"T": "q", "S": symbol, "bx": "Q", "bp": 100.0 + k / 100, "bs": 100, "ax": "P", "ap": 100.5 + k / 100,
                "as": 200, "c": ["R"], "z": "C", "t": _ts(at_ns + k)}
        return {key: value for key, value in {**base, **changes}.items() if value is not _DROP}

    def trade(**changes: Any) -> dict:
        k = next(n)
        base = {"T": "t", "S": symbol, "i": 9_000_000_000 + k, "x": "D", "p": 100.0 + k / 100, "s": 10,
                "c": ["@"], "z": "C", "t": _ts(at_ns + k)}
        return {key: value for key, value in {**base, **changes}.items() if value is not _DROP}

    def bar(**changes: Any) -> dict:
        base = {"T": "b", "S": symbol, "o": 100.0, "h": 101.0, "l": 99.0, "c": 100.5, "v": 1000, "t": _ts(at_ns),
                "n": 10, "vw": 100.2}
        return {**base, **changes}

    bad_utf8 = _frame(quote(bx="PLACEHOLDER")).replace(b"PLACEHOLDER", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5")
    bad: list[bytes | str] = [
        b"\xc1" + bytes(range(40)),                       # random bytes (0xc1: never msgpack)
        b"",                                              # an empty frame
        '[{"T": "q", "S": "AAPL", "bp": 10.0}]',          # a JSON text frame
        "not even json",                                  # a text frame of anything
        msgpack.packb(quote()),                           # a map, not an array
        msgpack.packb(42),                                # a number
        msgpack.packb("q"),                               # a string
        _frame(),                                         # [] : an array of nothing
        _frame(42), _frame(None), _frame([quote()]),      # items that are not maps
        _frame(quote(bp=math.nan)), _frame(quote(ap=math.inf)), _frame(quote(bp=-1.0)), _frame(quote(bs=-100)),
        _frame(quote(**{"as": math.nan})), _frame(quote(bp=1e308)), _frame(quote(bs=1e308)),
        _frame(trade(p=0.0)), _frame(trade(p=-5.0)), _frame(trade(s=math.inf)), _frame(trade(p=math.nan)),
        _frame(trade(s=1e308)), _frame(trade(i=-1)), _frame(trade(i=1.5)), _frame(quote(bs=2**64 - 1)),
        _frame(bar(h=98.0)), _frame(bar(o=102.0)), _frame(bar(v=-1)), _frame(bar(n=-1)), _frame(bar(c=math.nan)),
        _frame(bar(vw=-3.0)),
        _frame(quote(S="ZZZZZ")), _frame(quote(S="")), _frame(quote(S="A" * 300)),
        _frame(quote(S="AAPL';DROP TABLE quotes;--")), _frame(quote(S=42)), _frame(quote(S=None)),
        _frame(quote(S=["AAPL"])), _frame(quote(S={"AAPL": 1})),
        _frame(quote(t=_ts(0))),                          # 1970
        _frame(quote(t=msgpack.Timestamp(-86_400 * 365, 0))),  # before 1970
        _frame(quote(t=_ts(4_102_444_800 * NS))),         # 2100-01-01
        _frame(quote(t="2024-11-26T15:00:00Z")), _frame(quote(t=at_ns)),
        _frame(quote(bp="10.0")), _frame(quote(bp=True)), _frame(quote(bs=[100])), _frame(quote(bp={"x": 1})),
        _frame(quote(bp=_DROP)), _frame(quote(t=_DROP)), _frame(quote(S=_DROP)), _frame(trade(i=_DROP)),
        _frame({"T": "zz", "S": symbol}), _frame({"S": symbol, "bp": 1.0}), _frame({"T": 5}), _frame({"T": [1]}),
        _frame({"T": "d", "S": symbol}), _frame({"T": "s", "S": symbol, "sc": "H"}),
        _frame(quote(S="AA\x00PL")), _frame(quote(bx="Q\x00")), _frame(quote(c=["R\x00"])), _frame(trade(z="\x00")),
        _frame(trade(x="D\x00")), _frame(quote(c=[1, 2])),
        bad_utf8,
        _frame(quote(S="X" * (2 * 2**20))),               # a 2 MB frame
    ]
    good_quotes = [quote(c="RX"), quote(z=_DROP, c=_DROP, bx=_DROP), quote(extra="field"), quote(bp=101.0, ap=100.0)]
    good_trades = [trade(c="@"), trade(c=_DROP, z=_DROP)]
    mixed = [_frame(42, good_quotes[0], {"T": "zz"}, good_trades[0]), _frame(quote(bp=math.nan), good_quotes[1]),
             _frame(*good_quotes[2:], *good_trades[1:])]
    # The mixed frames hold 4 bad items; each other frame is one dead letter.
    return bad + mixed, len(bad) + 3, good_quotes, good_trades


class _Drop:
    pass


_DROP = _Drop()


def _quote_rows(messages: list[dict]) -> Counter:
    codes = [m.get("c") for m in messages]
    return Counter((m["S"], m["t"].to_unix_nano() // 1000, m["bp"], m["ap"], m.get("bx"), m.get("ax"),
                    ",".join(c) if isinstance(c, list) else c, m.get("z")) for m, c in zip(messages, codes))


def _stored_quote_rows(table: pa.Table) -> Counter:
    ts = [t // 1000 for t in table["ts"].cast(pa.int64()).to_pylist()]
    return Counter(zip(table["symbol"].to_pylist(), ts, table["bid_price"].to_pylist(), table["ask_price"].to_pylist(),
                       table["bid_exchange"].to_pylist(), table["ask_exchange"].to_pylist(),
                       table["conditions"].to_pylist(), table["tape"].to_pylist()))


def _read(url: str, query: str) -> pa.Table:
    with TickStore(url) as store:
        return store.read_arrow(query)


def test_fuzzed_frames_are_dead_letters_and_the_window_is_whole(stream_db, replay_factory, stream_sim, tmp_path) -> None:
    start, end = window("13:00", 5)
    replay = replay_factory(start=start, end=end)
    symbols = replay.symbols_for("stocks")
    at_ns = int((start + 2 * MINUTE).timestamp()) * NS + 123_000
    frames, letters, good_quotes, good_trades = fuzz_frames(symbols[0], at_ns)
    assert len(frames) >= 53
    half = len(frames) // 2
    replay.inject(frames[:half], at=start + MINUTE)  # between the window's own frames
    replay.inject(frames[half:], at=start + 3 * MINUTE)
    report = Streamer(stream_config(replay, start, end, tmp_path), store_url=stream_db,
                      history=sim_history(stream_sim)).run()

    dead = db_rows(stream_db, "SELECT reason, length(raw) AS raw FROM dead_letters")
    assert len(dead) == letters == report.dead_letters
    assert all(d["reason"] for d in dead)
    reasons = " | ".join(d["reason"] for d in dead)
    for expected in ("undecodable frame", "text frame", "not an array", "empty frame", "item is not a message",
                     "unknown message type", "message without a type T", "'d' (daily bar) is not stored",
                     "NUL byte", "invalid UTF-8", "timestamp outside the stream's window", "symbol not subscribed",
                     "high is below low", "a boolean where a number is expected", "missing field 'bp'",
                     "can't convert negative value to unsigned int"):
        assert expected in reasons, expected
    # Every good message stored (conditions as sent: "RX" stays "RX"), and the rest of the window
    # exactly what the market sent: no quote, trade or bar lost around the bad ones.
    quotes = _read(stream_db, "SELECT * FROM quotes")
    baseline = stream_sim.quotes(SIM_DAY, symbols, start=start, end=end)
    assert _stored_quote_rows(quotes) == _stored_quote_rows(baseline) + _quote_rows(good_quotes)
    assert "RX" in quotes["conditions"].to_pylist()
    trades = _read(stream_db, "SELECT symbol, trade_id FROM trades")
    expected_trades = stream_sim.trades(SIM_DAY, symbols, start=start, end=end)
    assert trades.num_rows == expected_trades.num_rows + len(good_trades)
    bars = stream_sim.minute_bars(SIM_DAY, symbols).to_pandas()
    assert db_rows(stream_db, "SELECT count(*) AS n FROM bars_1m")[0]["n"] == ((bars.ts >= start) & (bars.ts < end)).sum()
    # The clock never left the window: no statistics row or checkpoint beyond it, no gap.
    assert report.gaps == 0 and report.reconnects == 0
    last = db_rows(stream_db, "SELECT max(minute) AS m FROM stream_stats")[0]["m"]
    assert last <= end and report.last_event <= end
    checkpoint = json.loads((tmp_path / "spool" / "checkpoint.json").read_text())["committed_event_ns"]
    assert start.timestamp() * NS < checkpoint <= end.timestamp() * NS


def _refuse_quotes(url: str) -> None:
    """A trigger that makes the database refuse every write to quotes (not for a row's content)."""
    with TickStore(url) as store, store.connect() as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'quotes are read-only here'; END $$")
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON quotes FOR EACH STATEMENT EXECUTE FUNCTION refuse()")
        conn.commit()


def test_a_writer_that_stops_fails_the_run_and_keeps_what_it_did_not_write(stream_db, replay_factory, tmp_path) -> None:
    start, end = window("10:30", 3)
    replay = replay_factory(start=start, end=end)
    _refuse_quotes(stream_db)
    began = time.monotonic()
    with pytest.raises(StorageError, match="the tick store refused a write, so the stream stopped: .*read-only here"):
        Streamer(stream_config(replay, start, end, tmp_path), store_url=stream_db).run()
    assert time.monotonic() - began < 60  # not the drain timeout of a writer that died silently
    assert list((tmp_path / "spool").glob("*.entry"))  # kept for the next run


def test_a_database_that_refuses_one_row_stores_the_rest(stream_db, stream_sim, tmp_path) -> None:
    """Content the checks before the COPY miss is isolated after it: here a CHECK one price breaks."""
    from psycopg import sql

    from market_platform.replay.alpaca_stream import encode_quotes
    from market_platform.streaming.convert import Converter
    from market_platform.streaming.pipeline import Pipeline, Unit
    from market_platform.streaming.spool import Spool
    from market_platform.streaming.stats import StreamStats

    start, end = window("09:30", 1)
    quotes = stream_sim.quotes(SIM_DAY, None, start=start, end=end)
    refused = quotes["bid_price"][17].as_py()
    with TickStore(stream_db) as store, store.connect() as conn:
        conn.execute(sql.SQL("ALTER TABLE quotes ADD CONSTRAINT not_this_price CHECK (bid_price <> {})").format(
            sql.Literal(refused)))
        conn.commit()
    messages = msgpack.unpackb(next(encode_quotes(quotes, pa.array(sorted(set(quotes["symbol"].to_pylist()))),
                                                  crypto=False).frames(10**7))[0])
    pipeline = Pipeline(lambda: TickStore(stream_db), Converter("test"), StreamStats("test"), Spool(tmp_path))
    pipeline.start()
    assert pipeline.put(Unit(messages, [], [], arrived=time.time())) and pipeline.drain(30) and pipeline.close() == 0
    expected = quotes["bid_price"].to_pylist().count(refused)
    assert db_rows(stream_db, "SELECT count(*) AS n FROM quotes")[0]["n"] == quotes.num_rows - expected
    letters = db_rows(stream_db, "SELECT reason FROM dead_letters")
    assert len(letters) == expected and all("not_this_price" in r["reason"] for r in letters)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["stocks", "crypto"])
def test_a_stream_that_cannot_connect_fails_instead_of_retrying_forever(stream_db, tmp_path, kind) -> None:
    from market_platform.streaming import StreamConfig

    start, end = window("09:30", 5)
    path = "/v1beta3/crypto/us" if kind == "crypto" else "/v2/iex"
    config = StreamConfig(symbols=("BTC/USD",) if kind == "crypto" else ("AAPL",), start=start, end=end, kind=kind,
                          feed="us" if kind == "crypto" else "iex", api_key="k", secret_key="s",
                          url=f"ws://127.0.0.1:{_closed_port()}{path}", clock="events", connect_attempts=2,
                          spool_dir=tmp_path / "spool")
    with pytest.raises(VendorUnavailableError, match=r"cannot connect to ws://127.0.0.1:\d+.*: 2 attempts") as raised:
        Streamer(config, store_url=stream_db).run()
    assert "Traceback" not in str(raised.value)
    stats = db_rows(stream_db, "SELECT sum(errors) AS e, sum(received) AS r FROM stream_stats")[0]
    assert stats["e"] == 2 and stats["r"] == 0  # counted, not a quiet 0 errors
