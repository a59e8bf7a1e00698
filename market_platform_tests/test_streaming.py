"""The streamer end to end: the real alpaca-py against the replay, into a real PostgreSQL."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from market_platform.errors import VendorAuthError, VendorError
from market_platform.replay.alpaca_stream import MALFORMED_KINDS
from market_platform.storage.timescale import TickStore, start_embedded, stop_embedded
from market_platform.streaming import Streamer, alpaca_history, sim_history
from market_platform_tests.fixtures.sim import SIM_DAY
from market_platform_tests.fixtures.stream import db_rows, stream_config, window

MINUTE = timedelta(minutes=1)


def _in_window(table: pa.Table, start, end) -> pa.Table:
    ts = table["ts"]
    return table.filter(pc.and_(pc.greater_equal(ts, pa.scalar(start, ts.type)), pc.less(ts, pa.scalar(end, ts.type))))


def _us(table: pa.Table) -> list:
    return pc.divide(pc.cast(table["ts"], pa.int64()), 1000).to_pylist()


def _quote_keys(table: pa.Table) -> Counter:
    return Counter(zip(table["symbol"].to_pylist(), _us(table), table["seq"].to_pylist()))


def _trade_keys(table: pa.Table) -> Counter:
    return Counter(zip(table["symbol"].to_pylist(), _us(table), table["exchange"].to_pylist(),
                       table["trade_id"].to_pylist()))


def _bars(table: pa.Table) -> dict:
    columns = ("open", "high", "low", "close", "volume", "vwap", "trade_count")
    rows = zip(table["symbol"].to_pylist(), _us(table), *(table[c].to_pylist() for c in columns))
    return {(row[0], row[1]): row[2:] for row in rows}


def _per_symbol(url: str, table: str) -> dict[str, int]:
    return {r["symbol"]: r["n"] for r in db_rows(url, f"SELECT symbol, count(*) AS n FROM {table} GROUP BY symbol")}


def _read(url: str, table: str) -> pa.Table:
    with TickStore(url) as store:
        return store.read_arrow(f"SELECT * FROM {table}")


def test_every_message_sent_is_stored_exactly_once(tick_store, replay_factory, stream_sim, tmp_path) -> None:
    start, end = window("09:30", 15)
    replay = replay_factory(start=start, end=end)
    replay.duplicate(frames=3, at=start + 2 * MINUTE)   # redeliveries
    replay.correct(count=4, at=start + 5 * MINUTE)      # late `u` corrections of 09:34's bars
    report = Streamer(stream_config(replay, start, end, tmp_path), store_url=tick_store.url).run()
    url = tick_store.url
    symbols = replay.symbols_for("stocks")

    sent = replay.sent_counts()
    assert _per_symbol(url, "quotes") == sent["quotes"]
    assert _per_symbol(url, "trades") == sent["trades"]
    assert _quote_keys(_read(url, "quotes")) == _quote_keys(stream_sim.quotes(SIM_DAY, symbols, start=start, end=end))
    assert _trade_keys(_read(url, "trades")) == _trade_keys(stream_sim.trades(SIM_DAY, symbols, start=start, end=end))

    expected = _bars(_in_window(stream_sim.minute_bars(SIM_DAY, symbols), start, end))
    corrected = _bars(pa.concat_tables(replay.corrections))
    assert len(corrected) == 4
    expected.update(corrected)  # a correction replaces its bar
    stored = _read(url, "bars_1m")
    assert set(stored["source"].to_pylist()) == {"alpaca_stream"}
    assert _bars(stored) == expected

    assert report.duplicates > 0 and report.gaps == 0 and report.dead_letters == 0
    # A correction counts as a write when it reaches the database after its bar, not in the same batch.
    assert report.quotes == sum(sent["quotes"].values()) and len(expected) <= report.bars <= len(expected) + 4
    stats = db_rows(url, "SELECT sum(quotes_inserted) AS q, sum(duplicates) AS d, max(quotes_total) AS t "
                         "FROM stream_stats WHERE stream = 'alpaca_stocks_iex'")[0]
    assert stats["q"] == stats["t"] == report.quotes and stats["d"] == report.duplicates
    assert db_rows(url, "SELECT count(*) AS n FROM stream_gaps")[0]["n"] == 0


def _rows(table: pa.Table) -> Counter:
    """Every column but `source`, times at PostgreSQL's microseconds: rows compared whole."""
    names = [n for n in table.column_names if n not in ("source", "ts")]
    return Counter(zip(table["symbol"].to_pylist(), _us(table), *(table[n].to_pylist() for n in names)))


def test_a_tcp_cut_and_a_short_silence_are_refilled_to_the_clean_baseline(
    stream_db, replay_factory, replay, stream_sim, tmp_path
) -> None:
    # Repairs come from the Alpaca REST replay through the real alpaca-py REST client.
    start, end = window("10:00", 10)
    stream = replay_factory(start=start, end=end, speed=120)
    stream.drop(abort=True, at=start + 2 * MINUTE)   # TCP cut: no close frame, what was in flight is lost
    stream.silence(2.0, at=start + 6 * MINUTE)        # 4 minutes of events, too short for the stale check
    config = stream_config(stream, start, end, tmp_path, stale_after=15.0)
    report = Streamer(config, store_url=stream_db, history=alpaca_history(replay.alpaca_source(feed="iex"))).run()
    symbols = list(config.symbols)
    sent = stream.sent_counts()
    assert sum(sent["quotes"].values()) < stream_sim.expected_quote_count(SIM_DAY, symbols)  # the faults lost data

    # After repair the window is whole: every quote, trade and bar, each once, equal to the market's.
    assert _rows(_read(stream_db, "quotes")) == _rows(stream_sim.quotes(SIM_DAY, symbols, start=start, end=end))
    assert _rows(_read(stream_db, "trades")) == _rows(stream_sim.trades(SIM_DAY, symbols, start=start, end=end))
    stored = _read(stream_db, "bars_1m")
    expected = _bars(_in_window(stream_sim.minute_bars(SIM_DAY, symbols), start, end))
    assert _bars(stored) == expected and stored.num_rows == len(expected)

    gaps = db_rows(stream_db, "SELECT * FROM stream_gaps ORDER BY gap_start")
    assert report.gaps == len(gaps) >= 2 and report.reconnects == 1
    assert "connection" in gaps[0]["reason"] and any("incomplete minutes" in g["reason"] for g in gaps[1:])
    for gap in gaps:
        assert gap["repaired_at"] is not None and gap["repair_error"] is None and gap["repair_calls"] >= 3
    for column in ("quotes", "trades", "bars"):
        assert sum(g[f"repaired_{column}"] for g in gaps) == getattr(report, f"repaired_{column}") > 0
    assert [r["quotes"] for r in report.repairs] == [g["repaired_quotes"] for g in gaps]
    assert replay.alpaca.log.count("/v2/stocks/quotes") >= 2 and replay.alpaca.log.count("/v2/stocks/trades") >= 2
    repaired = _read(stream_db, "quotes").filter(pc.equal(pc.field("source"), "alpaca_repair"))
    assert repaired.num_rows == report.repaired_quotes


@pytest.mark.parametrize("fast_dispatch", [True, False], ids=["fast-dispatch", "alpaca-dispatch"])
def test_malformed_frames_become_dead_letters_and_the_stream_goes_on(
    stream_db, replay_factory, tmp_path, fast_dispatch
) -> None:
    start, end = window("11:00", 10)
    replay = replay_factory(start=start, end=end)
    for minute, kind in enumerate(MALFORMED_KINDS, start=1):
        replay.malformed(kind, at=start + minute * MINUTE)
    report = Streamer(stream_config(replay, start, end, tmp_path, fast_dispatch=fast_dispatch),
                      store_url=stream_db).run()
    letters = db_rows(stream_db, "SELECT reason, raw, detail FROM dead_letters ORDER BY id")
    reasons = [r["reason"] for r in letters]
    assert len(letters) == len(MALFORMED_KINDS) == report.dead_letters
    assert all(r["raw"] for r in letters)
    for fragment in ("undecodable frame", "text frame", "Could not convert 'ten dollars'",
                     "price is negative or not a finite number", "price is not a positive finite number",
                     "symbol not subscribed", "item is not a message"):
        assert sum(fragment in reason for reason in reasons) == 1, (fragment, reasons)
    # The stream went on: all data stored, plus the valid quote that followed the bad item.
    sent = replay.sent_counts()
    assert sum(_per_symbol(stream_db, "quotes").values()) == sum(sent["quotes"].values()) + 1
    assert db_rows(stream_db, "SELECT count(*) AS n FROM quotes WHERE bid_price = 9.99 AND ask_price = 10.02")[0]["n"] == 1
    assert _per_symbol(stream_db, "trades") == sent["trades"]


def test_the_database_away_for_30_seconds_loses_nothing(replay_factory, stream_sim, tmp_path) -> None:
    # A server of our own, stopped and started with pg_ctl, never the shared one.
    root = Path(tempfile.mkdtemp(prefix="mp_stream_db_"))
    root.chmod(0o755)
    try:
        url = start_embedded(root, database="market")
        with TickStore(url) as store:
            store.init_schema()
        start, end = window("09:30", 40)
        replay = replay_factory(start=start, end=end, speed=60)
        streamer = Streamer(stream_config(replay, start, end, tmp_path, stale_after=30.0), store_url=url,
                            history=sim_history(stream_sim))
        result: dict = {}
        thread = threading.Thread(target=lambda: result.setdefault("report", streamer.run()), daemon=True)
        thread.start()
        time.sleep(5)
        assert stop_embedded(root)
        time.sleep(30)
        assert start_embedded(root, database="market") == url
        thread.join(120)
        report = result["report"]
        assert report.db_outages >= 1 and report.spooled > 0 and report.replayed == report.spooled
        assert report.spool_left == 0 and not list((tmp_path / "spool").glob("*.entry"))
        sent = replay.sent_counts()
        assert _per_symbol(url, "quotes") == sent["quotes"]
        assert _per_symbol(url, "trades") == sent["trades"]
        symbols = replay.symbols_for("stocks")
        assert _quote_keys(_read(url, "quotes")) == _quote_keys(stream_sim.quotes(SIM_DAY, symbols, start=start, end=end))
        assert _bars(_read(url, "bars_1m")) == _bars(_in_window(stream_sim.minute_bars(SIM_DAY, symbols), start, end))
        assert report.gaps == 0
        minutes = db_rows(url, "SELECT count(*) AS n FROM stream_stats")[0]["n"]
        assert minutes >= 40  # the statistics of the outage were spooled too
    finally:
        stop_embedded(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(("case", "error", "match"), [
    ("bad key", VendorAuthError, "402 auth failed"),
    ("feed not in plan", VendorAuthError, "409 insufficient subscription"),
    ("connection limit", VendorError, "406 connection limit exceeded"),
])
def test_refusals_stop_with_a_clear_error(stream_db, replay_factory, tmp_path, case, error, match) -> None:
    start, end = window("09:30", 5)
    if case == "bad key":
        replay = replay_factory(start=start, end=end)
        config = stream_config(replay, start, end, tmp_path, secret_key="not-the-secret")
    elif case == "feed not in plan":
        replay = replay_factory(start=start, end=end, feeds=("iex",))
        config = stream_config(replay, start, end, tmp_path, feed="sip", url=replay.url("sip"))
    else:
        replay = replay_factory(start=start, end=end, max_connections=0)
        config = stream_config(replay, start, end, tmp_path, connection_limit_retries=1)
    began = time.monotonic()
    with pytest.raises(error, match=match) as raised:
        Streamer(config, store_url=stream_db).run()
    assert time.monotonic() - began < 20  # alpaca-py alone would retry 402 and 406 forever
    assert "not-the-secret" not in str(raised.value) and replay.secret not in str(raised.value)
    assert db_rows(stream_db, "SELECT count(*) AS n FROM quotes")[0]["n"] == 0


def test_stop_before_run_ends_the_run_at_once(stream_db, replay_factory, tmp_path) -> None:
    start, end = window("09:30", 30)
    replay = replay_factory(start=start, end=end, speed=1)
    streamer = Streamer(stream_config(replay, start, end, tmp_path), store_url=stream_db)
    streamer.stop()  # alpaca-py's own stop() raises before run(); this one is remembered
    began = time.monotonic()
    report = streamer.run()
    assert time.monotonic() - began < 10 and report.quotes == 0 and report.gaps == 0


def test_a_subscription_over_the_symbol_limit_stops_with_a_clear_error(stream_db, replay_factory, tmp_path) -> None:
    start, end = window("09:30", 3)
    replay = replay_factory(start=start, end=end, symbol_limit=5)  # 405 after the subscribe
    with pytest.raises(VendorError, match="405 symbol limit exceeded"):
        Streamer(stream_config(replay, start, end, tmp_path), store_url=stream_db).run()


def test_a_shared_replay_of_a_wider_window_stores_the_runs_window_and_subscription_only(
        stream_db, replay_factory, stream_sim, tmp_path) -> None:
    # One replay serves 09:30-09:45 (as a replay-server shares a whole session); the run asks for
    # 09:35-09:38 of three symbols: it stores exactly those, and the messages of the feed before
    # and after its window are counted as outside it, neither stored nor dead letters.
    served_start, served_end = window("09:30", 15)
    start, end = window("09:35", 3)
    replay = replay_factory(start=served_start, end=served_end)
    symbols = replay.symbols_for("stocks")[:3]
    report = Streamer(stream_config(replay, start, end, tmp_path, symbols=tuple(symbols)), store_url=stream_db).run()
    quotes, trades, bars = (_read(stream_db, t) for t in ("quotes", "trades", "bars_1m"))
    assert _quote_keys(quotes) == _quote_keys(stream_sim.quotes(SIM_DAY, symbols, start=start, end=end))
    assert _trade_keys(trades) == _trade_keys(stream_sim.trades(SIM_DAY, symbols, start=start, end=end))
    assert _bars(bars) == _bars(_in_window(stream_sim.minute_bars(SIM_DAY, symbols), start, end))
    assert report.dead_letters == 0 and db_rows(stream_db, "SELECT count(*) AS n FROM dead_letters")[0]["n"] == 0
    assert report.outside_window > 0 and report.gaps == 0
    # The server sent nothing but the subscription.
    assert set(replay.sent_counts()["quotes"]) == set(symbols)


def test_a_run_stops_reading_a_feed_that_goes_on_past_its_window(stream_db, replay_factory, stream_sim,
                                                                 tmp_path) -> None:
    served_start, served_end = window("09:30", 120)
    start, end = window("09:35", 3)
    replay = replay_factory(start=served_start, end=served_end, speed=120.0)  # two hours in a minute
    symbols = replay.symbols_for("stocks")[:3]
    report = Streamer(stream_config(replay, start, end, tmp_path, symbols=tuple(symbols)), store_url=stream_db).run()
    assert _bars(_read(stream_db, "bars_1m")) == _bars(_in_window(stream_sim.minute_bars(SIM_DAY, symbols), start, end))
    # It ended once the feed was a minute past its end, not when the replay ran out two hours later.
    late = end + 10 * MINUTE
    within = sum(t.num_rows for t in (stream_sim.quotes(SIM_DAY, symbols, start=served_start, end=late),
                                      stream_sim.trades(SIM_DAY, symbols, start=served_start, end=late),
                                      _in_window(stream_sim.minute_bars(SIM_DAY, symbols), served_start, late)))
    assert 0 < report.outside_window + report.quotes + report.trades + report.bars <= within
