"""The streamer's parts on their own: converter, spool, statistics, pipeline."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from market_platform.errors import StorageError
from market_platform.replay.alpaca_stream import encode_bars, encode_quotes, encode_trades
from market_platform.schemas import BARS, QUOTES, TRADES
from market_platform.storage.timescale import TickStore
from market_platform.streaming.convert import Bounds, Converter, event_ns
from market_platform.streaming.pipeline import Batch, Op, Pipeline, Unit
from market_platform.streaming.spool import Spool, SpoolEntry
from market_platform.streaming.stats import LagHistogram, StreamStats, log_line
from market_platform_tests.fixtures.sim import SIM_DAY
from market_platform_tests.fixtures.stream import db_rows, window

UTC = timezone.utc


def _wire(encoded) -> list[dict]:
    """Messages as alpaca-py hands them over with raw_data=True: msgpack decoded, untouched."""
    return msgpack.unpackb(next(encoded.frames(10**7))[0])


def _without_source(table: pa.Table) -> pa.Table:
    return table.drop_columns(["source"])


@pytest.mark.parametrize("crypto", [False, True], ids=["stocks", "crypto"])
def test_wire_messages_convert_back_to_the_simulated_rows(stream_sim, crypto) -> None:
    start, end = window("09:30", 3)
    symbols = stream_sim.symbols(SIM_DAY, category="crypto") if crypto else stream_sim.stock_symbols(SIM_DAY)
    names = pa.array(symbols)
    converter = Converter("test", crypto=crypto, symbols=symbols)
    quotes = stream_sim.quotes(SIM_DAY, symbols, start=start, end=end)
    trades = stream_sim.trades(SIM_DAY, symbols, start=start, end=end)
    bars = stream_sim.minute_bars(SIM_DAY, symbols).slice(0, 200)
    for kind, table, encode, schema in (
        ("quotes", quotes, lambda t: encode_quotes(t, names, crypto=crypto), QUOTES),
        ("trades", trades, lambda t: encode_trades(t, names, crypto=crypto), TRADES),
        ("bars", bars, lambda t: encode_bars(t, names), BARS),
    ):
        result = converter.convert(kind, _wire(encode(table)))
        assert result.dead == [] and result.table.schema == schema
        assert set(result.table["source"].to_pylist()) == {"alpaca_stream"}
        assert _without_source(result.table).equals(_without_source(table)), kind


def _quote(symbol="AAPL", bp=10.0, ap=10.01, ns=1_732_631_400_000_000_000, **extra) -> dict:
    return {"T": "q", "S": symbol, "bx": "Q", "bp": bp, "bs": 100, "ax": "P", "ap": ap, "as": 200, "c": ["R"],
            "z": "C", "t": msgpack.Timestamp.from_unix_nano(ns), **extra}


def test_bad_messages_become_dead_letters_and_the_rest_converts() -> None:
    start = datetime(2024, 11, 26, 14, 0, tzinfo=UTC)
    converter = Converter("test", symbols=["AAPL", "MSFT"], window=(start, start + timedelta(hours=2)))
    good = [_quote(ns=1_732_631_400_000_000_000 + i) for i in range(1000)]
    bad = {
        10: _quote(bp="10.0"),                      # a number as a string
        20: _quote(bs=[100]),
        30: {k: v for k, v in _quote().items() if k != "ap"},
        40: _quote(t="2024-11-26T14:30:00Z"),       # a JSON time where msgpack has a Timestamp
        50: _quote(bp=math.nan),
        60: _quote(ap=-1.0),
        70: _quote(symbol="ZZZZ"),
        80: _quote(ns=0),
        90: _quote(symbol=None),
    }
    messages = [bad.get(i, m) for i, m in enumerate(good)]
    result = converter.convert("quotes", messages)
    assert result.table.num_rows == 1000 - len(bad)
    reasons = [d["reason"] for d in result.dead]
    assert len(reasons) == len(bad)
    for expected in ("Could not convert '10.0'", "malformed message", "missing field 'ap'", "has no attribute 'seconds'",
                     "price is negative or not a finite number", "symbol not subscribed",
                     "timestamp outside the stream's window"):
        assert any(expected in r for r in reasons), (expected, reasons)
    assert all(isinstance(d["raw"], bytes) and d["stream"] == "test" for d in result.dead)
    assert msgpack.unpackb(result.dead[0]["raw"])["bp"] == "10.0"  # the payload as it came
    kept = pc.cast(result.table["ts"], pa.int64()).to_numpy() - 1_732_631_400_000_000_000
    assert (np.diff(kept) > 0).all()  # order kept


def test_optional_fields_may_be_missing() -> None:
    message = {k: v for k, v in _quote().items() if k not in ("z", "c", "bx")}
    table = Converter("test").convert("quotes", [message, _quote()]).table
    assert table["tape"].to_pylist() == [None, "C"] and table["conditions"].to_pylist() == [None, "R"]


def test_change_filter_keeps_quotes_whose_prices_moved() -> None:
    converter = Converter("test", change_filter=True)
    prices = [(10.0, 10.01), (10.0, 10.01), (10.0, 10.02), (10.0, 10.02), (9.99, 10.02)]
    first = converter.convert("quotes", [_quote(bp=b, ap=a, ns=i) for i, (b, a) in enumerate(prices)]
                              + [_quote("MSFT", ns=9)])
    assert first.table["bid_price"].to_pylist() == [10.0, 10.0, 9.99, 10.0] and first.filtered == 2
    # The next batch compares with each symbol's last quote of the previous one.
    second = converter.convert("quotes", [_quote(bp=9.99, ap=10.02, ns=20), _quote("MSFT", bp=10.5, ns=21)])
    assert second.table["symbol"].to_pylist() == ["MSFT"] and second.filtered == 1
    assert Converter("test").convert("quotes", [_quote(ns=1), _quote(ns=2)]).filtered == 0  # off by default


def test_event_time_of_bars_is_their_close() -> None:
    ts = msgpack.Timestamp.from_unix_nano(60 * 10**9)
    assert event_ns({"T": "q", "t": ts}) == 60 * 10**9
    assert event_ns({"T": "b", "t": ts}) == event_ns({"T": "u", "t": ts}) == 120 * 10**9
    assert event_ns({"T": "q"}) is None and event_ns(42) is None


def _entry(n: int, kind: str = "batch") -> SpoolEntry:
    return SpoolEntry({"type": kind, "n": n}, {"quotes": pa.table({"x": [n] * 3})} if kind == "batch" else {})


def test_spool_keeps_entries_in_order_across_processes(tmp_path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.empty() and spool.oldest() is None
    seqs = [spool.append(_entry(i)) for i in range(3)]
    spool.prepend([_entry(-2), _entry(-1)])  # older than everything there
    (tmp_path / "spool" / "999.tmp").write_bytes(b"half")  # a write cut short
    again = Spool(tmp_path / "spool")
    assert not list((tmp_path / "spool").glob("*.tmp")) and len(again) == 5
    assert again.append(_entry(3)) > seqs[-1]
    order = []
    while (entry := again.oldest()) is not None:
        order.append(entry.header["n"])
        assert entry.tables["quotes"]["x"].to_pylist() == [entry.header["n"]] * 3
        again.remove(entry.seq)
    assert order == [-2, -1, 0, 1, 2, 3]


def test_spool_merges_runs_of_batches_up_to_an_op(tmp_path) -> None:
    spool = Spool(tmp_path, fsync=False)
    for n in range(3):
        spool.append(_entry(n))
    spool.append(_entry(99, "op"))
    spool.append(_entry(3))
    mergeable = lambda e: e.header["type"] == "batch"  # noqa: E731
    assert [e.header["n"] for e in spool.oldest_run(10**6, mergeable)] == [0, 1, 2]
    assert [e.header["n"] for e in spool.oldest_run(4, mergeable)] == [0, 1]
    (tmp_path / f"{spool.oldest().seq:012d}.entry").write_bytes(b"garbage")
    with pytest.raises(StorageError, match="not a spool entry"):
        spool.oldest()


def test_lag_percentiles_and_minute_rows() -> None:
    histogram = LagHistogram()
    histogram.add(np.r_[np.full(990, 10.0), np.full(10, 5000.0)])
    assert histogram.percentile(50) == pytest.approx(10.0, rel=0.06)
    assert histogram.percentile(99.5) == pytest.approx(5000.0, rel=0.06)
    assert LagHistogram().percentile(50) is None
    stats = StreamStats("s")
    minute = datetime(2024, 11, 26, 14, 30, tzinfo=UTC)
    stats.start(minute)
    stats.add(received=10, quotes_inserted=7, duplicates=3)
    assert stats.roll(minute, 0) == []
    row, = stats.roll(minute + timedelta(minutes=1), queue_depth=2)
    assert (row["minute"], row["quotes_inserted"], row["quotes_total"], row["queue_depth"]) == (minute, 7, 7, 2)
    # A clock that jumps three minutes closes the current one and gives the two it passed a row each.
    rows = stats.roll(minute + timedelta(minutes=4), queue_depth=0)
    assert [r["minute"] - minute for r in rows] == [timedelta(minutes=m) for m in (1, 2, 3)]
    assert [r["received"] for r in rows] == [0, 0, 0] and rows[-1]["quotes_total"] == 7
    stats.add(quotes_inserted=5)
    assert stats.snapshot(0)["quotes_total"] == 12 and stats.snapshot(0)["quotes_inserted"] == 5
    assert "quotes +7 (7)" in log_line(row)


def _unit(sim_quotes: pa.Table) -> Unit:
    names = pa.array(sorted(set(sim_quotes["symbol"].to_pylist())))
    messages = _wire(encode_quotes(sim_quotes, names, crypto=False))
    return Unit(messages, [], [], arrived=time.time())


def test_pipeline_spools_in_order_while_the_database_is_away_and_replays_later(
    stream_db, stream_sim, tmp_path
) -> None:
    start, end = window("09:30", 2)
    quotes = stream_sim.quotes(SIM_DAY, None, start=start, end=end)
    parts = [quotes.slice(i, 500) for i in range(0, quotes.num_rows, 500)]
    away = stream_db.rsplit("/", 1)[0] + "/mp_test_no_such_database"

    def pipeline(url: str) -> Pipeline:
        return Pipeline(lambda: TickStore(url), Converter("test"), StreamStats("test"), Spool(tmp_path / "spool"),
                        queue_units=2, queue_batches=1)

    down = pipeline(away)
    down.start()
    for item in [_unit(part) for part in parts] + [Op("stats", {"stream": "test", "minute": start, "received": 1})]:
        while not down.put(item):  # a full queue refuses; the caller waits (backpressure)
            time.sleep(0.01)
    assert not down.drain(1.0)
    assert down.close() == len(parts) + 1  # everything kept on disk
    up = pipeline(stream_db)
    assert up.depth() == len(parts) + 1
    up.start()
    assert up.drain(30)
    assert up.close() == 0 and up.replayed == len(parts) + 1
    assert db_rows(stream_db, "SELECT count(*) AS n FROM quotes")[0]["n"] == quotes.num_rows
    assert db_rows(stream_db, "SELECT received FROM stream_stats")[0]["received"] == 1


def test_conditions_as_sent_bounds_and_whole_ids() -> None:
    start = datetime(2024, 11, 26, 14, 0, tzinfo=UTC)
    converter = Converter("test", window=(start, start + timedelta(hours=2)),
                          bounds=Bounds(max_price=50.0, max_size=1e6))
    quotes = [_quote(ns=1_732_631_400_000_000_000 + i) for i in range(6)]
    quotes[1]["c"] = "RX"        # a string: stored as it came, not "R,X"
    quotes[2]["bp"] = True        # a boolean is no price
    quotes[3]["ap"] = 60.0        # above this stream's bound
    quotes[4]["as"] = 2e6
    result = converter.convert("quotes", quotes)
    assert result.table["conditions"].to_pylist() == ["R", "RX", "R"]
    assert [d["reason"].split(":")[0].split(",")[0] for d in result.dead] == [
        "malformed message", "price is negative or not a finite number", "size is negative or not a finite number"]
    assert "above 50" in result.dead[1]["reason"] and "above 1e+06" in result.dead[2]["reason"]
    trade = {"T": "t", "S": "AAPL", "i": 1.5, "x": "D", "p": 10.0, "s": 5, "t": quotes[0]["t"]}
    assert "whole number" in Converter("test").convert("trades", [trade]).dead[0]["reason"]
    # The clock may move only to a valid event inside the window.
    late = _quote(ns=4_102_444_800 * 10**9)
    assert converter.convert("quotes", [late, quotes[0]]).max_event_ns == 1_732_631_400_000_000_000


def test_a_spool_entry_that_cannot_be_written_is_set_aside_and_others_streams_stay(stream_db, stream_sim,
                                                                                     tmp_path) -> None:
    from market_platform.streaming.pipeline import _to_entry
    from market_platform.streaming.spool import SpoolEntry

    start, end = window("09:30", 1)
    quotes = stream_sim.quotes(SIM_DAY, None, start=start, end=end)
    spool = Spool(tmp_path / "spool")
    spool.append(SpoolEntry({"type": "batch", "stream": "mine"}, {"quotes": pa.table({"wrong": [1, 2]})}))
    spool.append(SpoolEntry({"type": "op", "stream": "theirs", "name": "stats", "args": {}}))
    garbage = spool.append(SpoolEntry({"type": "batch", "stream": "mine"}, {}))
    spool.path(garbage).write_bytes(b"MPSPOOL1\n{not json")
    converter = Converter("mine")
    good = converter.convert("quotes", _wire(encode_quotes(quotes, pa.array(sorted(set(quotes["symbol"].to_pylist()))),
                                                           crypto=False)))
    spool.append(_to_entry(Batch({"quotes": good.table}, time.time(), 0), "mine"))
    pipeline = Pipeline(lambda: TickStore(stream_db), converter, StreamStats("mine"), spool)
    assert pipeline.depth() == 3  # the other stream's entry is not this stream's to replay
    pipeline.start()
    assert pipeline.drain(30)
    assert pipeline.close() == 0 and pipeline.set_aside == 2 and pipeline.replayed == 1
    assert db_rows(stream_db, "SELECT count(*) AS n FROM quotes")[0]["n"] == quotes.num_rows
    letters = db_rows(stream_db, "SELECT reason, raw FROM dead_letters ORDER BY id")
    assert len(letters) == 2 and all(r["reason"].startswith("spool entry ") for r in letters)
    assert any("failed 3 times" in r["reason"] for r in letters) and any("no readable header" in r["reason"]
                                                                         for r in letters)
    assert all(r["raw"] for r in letters)  # the entry's bytes, whole
    assert [spool.header(s)["stream"] for s in spool._seqs()] == ["theirs"]


def test_messages_of_the_feed_outside_the_window_are_counted_not_stored() -> None:
    start = datetime(2024, 11, 26, 14, 0, tzinfo=UTC)
    start_ns = int(start.timestamp()) * 1_000_000_000
    converter = Converter("test", symbols=["AAPL"], window=(start, start + timedelta(minutes=5)))
    minute = 60 * 1_000_000_000
    messages = [_quote(ns=start_ns - 3 * 3600 * 1_000_000_000),  # the same session, hours before: outside
                _quote(ns=start_ns - 1), _quote(ns=start_ns), _quote(ns=start_ns + 5 * minute - 1),
                _quote(ns=start_ns + 5 * minute),  # the window's end: the next run's
                _quote(ns=0)]  # 1970: no feed sends that, a dead letter
    result = converter.convert("quotes", messages)
    assert pc.cast(result.table["ts"], pa.int64()).to_pylist() == [start_ns, start_ns + 5 * minute - 1]
    assert result.outside == 3 and [d["reason"] for d in result.dead] == ["timestamp outside the stream's window"]
