"""Minute snapshots end to end: the poller against the replays (the real clients), the queue
(the tick store's table, and SQS on moto's server), the processor into a real PostgreSQL, and
feed health against the Alpaca stream replay with a silent stall."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from psycopg import sql

from market_platform.analytics.alerts import Alerter, recorded
from market_platform.replay import ReplayData, SimProvider
from market_platform.replay.alpaca import AlpacaReplay
from market_platform.snapshots import feed_health
from market_platform.snapshots.messages import SnapshotMessage
from market_platform.snapshots.poller import PollClock, SnapshotVendor, minute_marks, poll_snapshots, poll_window
from market_platform.snapshots.processor import drain, is_due, store_batch
from market_platform.snapshots.queue import QueueStats, TableQueue
from market_platform.sources.alpaca import AlpacaSource
from market_platform.sources.vendor import RetryPolicy
from market_platform.storage.timescale import TickStore
from market_platform.streaming import Streamer
from market_platform.streaming.repair import RepairWorker, alpaca_history
from market_platform_tests.fixtures.sim import SIM_DAY
from market_platform_tests.fixtures.stream import stream_config, window

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
START = datetime(2024, 11, 26, 15, 0, tzinfo=UTC)  # 10:00 New York


#: What a test leaves behind, emptied before the next one (one database per server for the module).
_TABLES = ("market_snapshots", "snapshot_queue", "snapshot_misses", "dead_letters", "stream_gaps", "stream_stats", "bars_1m",
           "quotes", "trades", "alerts")


@pytest.fixture(scope="module")
def databases(make_database) -> dict[str, str]:
    urls = {}
    for server in ("postgres", "embedded"):
        urls[server] = make_database(server)
        with TickStore(urls[server]) as store:
            store.init_schema()
    return urls


def _fresh(url: str) -> TickStore:
    store = TickStore(url)
    with store.connect() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, _TABLES))))
        conn.commit()
    return store


@pytest.fixture
def store(databases) -> TickStore:
    with _fresh(databases["postgres"]) as fresh:
        yield fresh


def _rows(store: TickStore, query: str, params=None) -> list[dict]:
    return store.read_arrow(query, params).to_pylist()


def _make_queue(backend: str, store: TickStore, sqs_queue: Callable):
    return TableQueue(store) if backend == "table" else sqs_queue(inline_limit=4_000)


class _Processor:
    """The processor in a thread of its own, with a store of its own, that can be stopped and started."""

    def __init__(self, queue, url: str) -> None:
        self.queue, self.store = queue, TickStore(url)
        self.running, self.done = threading.Event(), threading.Event()
        self._busy = threading.Lock()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.done.is_set():
            with self._busy:
                if self.running.is_set():
                    try:
                        drain(self.queue, self.store)
                    except BaseException as exc:  # surfaced by the test
                        self.error = exc
            time.sleep(0.01)

    def pause(self) -> None:
        self.running.clear()
        with self._busy:  # a batch in flight finishes first
            pass

    def close(self) -> None:
        self.done.set()
        self.thread.join(10)
        self.store.close()


def _emptied(queue, timeout: float = 60.0) -> None:
    """Wait for the processor thread to empty the queue."""
    deadline = time.monotonic() + timeout
    while queue.stats().depth and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("backend, server", [("table", "postgres"), ("table", "embedded"), ("sqs", "postgres")])
def test_processor_stopped_for_three_polled_minutes_then_started_stores_every_snapshot_once(
        backend, server, databases, replay, sim, sqs_queue):
    tick_store = _fresh(databases[server])
    queue = _make_queue(backend, tick_store, sqs_queue)
    clock = PollClock(START, speed=None)
    replay.clock = clock.now
    vendor = SnapshotVendor.polygon(replay.polygon_source())
    minutes = minute_marks(START, START + 6 * MINUTE)
    processor = _Processor(_make_queue(backend, tick_store, sqs_queue) if backend == "sqs" else queue, tick_store.url)
    processor.running.set()
    processor.thread.start()
    waiting = []

    def polled(minute: datetime, report) -> None:
        if minute == minutes[1]:
            _emptied(queue)
            processor.pause()  # stopped for minutes 2, 3 and 4
        if minute == minutes[4]:
            waiting.append(queue.stats().depth)
            processor.running.set()

    try:
        report = poll_window(queue, vendor, minutes, clock, store=tick_store, on_polled=polled)
        _emptied(queue)
        processor.pause()
    finally:
        processor.close()
    assert processor.error is None
    assert report.polled == minutes and not report.missed and report.messages == 7
    assert waiting == [3]  # the snapshots waited in the queue while the processor was stopped
    symbols = len(sim.stock_symbols(SIM_DAY))
    counts = _rows(tick_store, "SELECT minute, count(*) AS n, count(DISTINCT symbol) AS d FROM market_snapshots "
                               "GROUP BY minute ORDER BY minute")
    assert [(r["minute"], r["n"], r["d"]) for r in counts] == [(m, symbols, symbols) for m in minutes]
    assert queue.stats().depth == 0
    if backend == "sqs":
        assert queue.stats().in_flight == 0
    assert _rows(tick_store, "SELECT count(*) AS n FROM dead_letters")[0]["n"] == 0
    tick_store.close()


def test_sqs_redelivery_of_a_processed_message_stores_nothing_twice(store, replay, sqs_queue):
    tick_store = store
    queue = sqs_queue(inline_limit=100)  # every body through S3 (the extended-client pattern)
    replay.clock = lambda: START
    body = replay.polygon_source().snapshot_raw("stocks")
    queue.put(SnapshotMessage("polygon_rest", "stocks", START, START, body))
    [delivery] = queue.receive(10)
    with tick_store.connect() as conn, conn.transaction():
        first = store_batch(tick_store, conn, [delivery])
    # The processor dies after its commit, before the delete: the message becomes visible again.
    queue._sqs.change_message_visibility(QueueUrl=queue.queue_url, ReceiptHandle=delivery.handle[0],
                                         VisibilityTimeout=0)
    again = drain(queue, tick_store)
    assert first.rows == 20 and again.messages == 1 and again.rows == 0 and again.duplicates == 20
    assert _rows(tick_store, "SELECT count(*) AS n FROM market_snapshots")[0]["n"] == 20
    assert queue.stats() == QueueStats(0, None, 0)
    assert not queue._s3.list_objects_v2(Bucket=queue.payload_bucket).get("Contents")  # payload deleted after


@pytest.mark.parametrize("backend", ["table", "sqs"])
def test_malformed_payloads_reach_dead_letters_once(backend, store, replay, sqs_queue):
    tick_store = store
    queue = _make_queue(backend, tick_store, sqs_queue)
    replay.clock = lambda: START
    good = replay.polygon_source().snapshot_raw("stocks")
    bad = [b'{"status":"OK","tickers":[{"ticker":"AAPL","day":{"o":"ten"}}]}', b"\x00not json at all"]
    queue.put(SnapshotMessage("polygon_rest", "stocks", START, START, good))
    queue.put(SnapshotMessage("polygon_rest", "stocks", START + MINUTE, START, bad[0]))
    queue.put(SnapshotMessage("alpaca_rest", "stocks", START, START, bad[1]))
    if backend == "sqs":
        queue._sqs.send_message(QueueUrl=queue.queue_url, MessageBody="not an envelope")
    report = drain(queue, tick_store)
    expected = 3 if backend == "sqs" else 2
    assert report.rows == 20 and report.dead_letters == expected
    with tick_store.connect() as conn:
        cur = conn.execute("SELECT stream, reason, raw, detail FROM dead_letters ORDER BY id")
        letters = [dict(zip(("stream", "reason", "raw", "detail"), row)) for row in cur.fetchall()]
    by_key = {r["detail"]["key"]: r for r in letters}
    polygon = by_key["polygon_rest/stocks/2024-11-26T15:01Z/0"]
    assert polygon["stream"] == "snapshots_polygon_rest_stocks" and "not the documented JSON" in polygon["reason"]
    assert bytes(polygon["raw"]) == bad[0]  # as received
    alpaca = by_key["alpaca_rest/stocks/2024-11-26T15:00Z/0"]
    assert "not JSON" in alpaca["reason"] and bytes(alpaca["raw"]) == bad[1]
    if backend == "sqs":
        assert any(r["stream"] == "snapshots" and "undecodable" in r["reason"] for r in letters)
    # Written once per message, whatever happens to the queue afterwards.
    with tick_store.connect() as conn, conn.transaction():
        assert tick_store.dead_letter_snapshots(
            [{"stream": polygon["stream"], "reason": "again", "key": "polygon_rest/stocks/2024-11-26T15:01Z/0",
              "raw": bad[0]}], conn=conn) == 0
    assert queue.stats().depth == 0


def test_a_429_storm_is_retried_within_the_rate_limit_or_recorded_missed(store, replay):
    tick_store = store
    clock = PollClock(START, speed=None)
    replay.clock = clock.now
    replay.set_rate_limit(4, 1.0)
    replay.polygon.faults.fail("/v2/snapshot", 429, times=7)
    source = replay.polygon_source(rate_limit=4, rate_period=1.0, rate_margin=0.1,
                                   retry=RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05))
    minutes = minute_marks(START, START + 4 * MINUTE)
    queue = TableQueue(tick_store)
    report = poll_window(queue, SnapshotVendor.polygon(source), minutes, clock, store=tick_store)
    # 3 attempts per minute: the first two minutes use 6 of the 429s, the third retries past the last.
    assert [m for m, _ in report.missed] == minutes[:2] and report.polled == minutes[2:]
    assert all("VendorUnavailableError" in reason and "HTTP 429" in reason for _, reason in report.missed)
    misses = _rows(tick_store, "SELECT minute, requests, throttled, parts FROM snapshot_misses ORDER BY minute")
    assert [(r["minute"], r["requests"], r["throttled"], r["parts"]) for r in misses] == \
        [(m, 3, 3, "{0}") for m in minutes[:2]]
    assert report.requests == 6 + 2 + 2 and report.throttled == 7
    assert replay.polygon.log.max_in_window(1.0, "/v2/snapshot") <= 4  # never over the limit
    assert drain(queue, tick_store).minutes == {("polygon_rest", "stocks", m) for m in minutes[2:]}


def test_a_poller_that_falls_behind_records_the_minutes_it_missed(store, replay):
    tick_store = store
    clock = PollClock(START, speed=None)
    replay.clock = clock.now
    minutes = minute_marks(START, START + 2 * MINUTE)
    vendor = SnapshotVendor.polygon(replay.polygon_source())
    answer = vendor.fetch

    def slow():  # the first answer takes two minutes
        if clock.now() == minutes[0]:
            clock.wait_until(minutes[0] + 2 * MINUTE)
        yield from answer()

    vendor.fetch = slow
    report = poll_window(TableQueue(tick_store), vendor, minutes, clock, store=tick_store)
    assert report.polled == [minutes[0], minutes[2]] and [m for m, _ in report.missed] == [minutes[1]]
    assert "60 s late" in report.missed[0][1]
    assert _rows(tick_store, "SELECT minute FROM snapshot_misses") == [{"minute": minutes[1]}]


def test_crypto_is_polled_around_the_clock_from_both_vendors(store, sim):
    queue = TableQueue(store)
    for provider in ("polygon", "alpaca"):  # a Saturday: crypto trades, stocks do not
        report = poll_snapshots(store, queue, sim_market=sim, market="crypto", day="2024-11-30", start="03:00",
                                end="03:02", speed=None, provider=provider, environ={})
        assert len(report.polled) == 3 and not report.missed
    assert drain(queue, store).rows == 2 * 3 * 5
    rows = _rows(store, "SELECT source, symbol, last_price, min_ts FROM market_snapshots WHERE minute = %(m)s "
                        "ORDER BY symbol, source", {"m": datetime(2024, 11, 30, 3, 2, tzinfo=UTC)})
    pairs = sorted(sim.symbols("2024-11-30", category="crypto"))
    assert [r["symbol"] for r in rows] == [p for p in pairs for _ in range(2)]  # X:BTCUSD became BTC/USD
    btc = [r for r in rows if r["symbol"] == "BTC/USD"]
    assert btc[0]["last_price"] == btc[1]["last_price"] and btc[0]["min_ts"] == btc[1]["min_ts"]


def test_when_the_queue_is_due():
    now = START
    assert is_due(QueueStats(10, now), now) == "10 messages are waiting"
    assert is_due(QueueStats(3, now - 30 * timedelta(seconds=1)), now) is None
    assert "waited 61 s" in is_due(QueueStats(3, now - 61 * timedelta(seconds=1)), now)
    assert is_due(QueueStats(3, None), now, nonempty_since=now - 2 * MINUTE) is not None  # SQS: timed by the caller
    assert is_due(QueueStats(0, None), now, nonempty_since=now - 2 * MINUTE) is None


def test_a_silent_stall_is_detected_recorded_repaired_and_alerted(store, replay, replay_factory, stream_sim,
                                                                  tmp_path):
    start, end = window("10:00", 12)
    stream = replay_factory(start=start, end=end)
    stream.stall(["AAPL", "MSFT"], 5, at=start + 3 * MINUTE)  # they keep trading; the websocket stops sending them
    report = Streamer(stream_config(stream, start, end, tmp_path), store_url=store.url).run()
    assert report.gaps == 0  # the connection never dropped: the stream itself sees nothing wrong
    clock = PollClock(start, speed=None)
    replay.clock = clock.now
    queue = TableQueue(store)
    poll_window(queue, SnapshotVendor.polygon(replay.polygon_source()), minute_marks(start, end), clock, store=store)
    drain(queue, store)

    alerter = Alerter(store, [feed_health.silent_stall_rule()], json_file=tmp_path / "alerts.jsonl")
    with AlpacaReplay(ReplayData(SimProvider(stream_sim)), keys={"k": "s"}) as rest:  # repairs over REST
        history = alpaca_history(AlpacaSource("k", "s", data_url=rest.url, trading_url=rest.url, rate_limit=None,
                                              feed="sip"))
        found = feed_health.check_feed(store, start, end, history=history, alerter=alerter)
        again = feed_health.check_feed(store, start, end, history=history, alerter=alerter)
    stall_start, stall_end = start + 3 * MINUTE, start + 8 * MINUTE
    assert [(s.symbol, s.start, s.end, s.silent_minutes) for s in found.stalls] == \
        [("AAPL", stall_start, stall_end, 5), ("MSFT", stall_start, stall_end, 5)]
    assert found.stream == "alpaca_stocks_iex" and found.recorded == 2 and found.repaired_bars == 10
    gaps = _rows(store, "SELECT stream, kind, symbols, gap_start, gap_end, repaired_bars FROM stream_gaps ORDER BY id")
    assert [(g["kind"], g["symbols"], g["gap_start"], g["gap_end"], g["repaired_bars"]) for g in gaps] == \
        [("silent_stall", "{AAPL}", stall_start, stall_end, 5), ("silent_stall", "{MSFT}", stall_start, stall_end, 5)]
    bars = store.read_arrow("SELECT symbol, ts, close, source FROM bars_1m WHERE symbol IN ('AAPL', 'MSFT') "
                            "AND ts >= %(s)s AND ts < %(e)s ORDER BY symbol, ts", {"s": start, "e": end})
    expected = stream_sim.minute_bars(SIM_DAY, ["AAPL", "MSFT"])
    expected = expected.filter(pc.and_(pc.greater_equal(expected["ts"], pa.scalar(start, expected["ts"].type)),
                                       pc.less(expected["ts"], pa.scalar(end, expected["ts"].type))))
    assert bars["close"].to_pylist() == expected["close"].to_pylist()  # complete again, the same bars
    repaired = bars.filter(pc.equal(bars["source"], "alpaca_repair"))
    assert sorted(set(repaired["ts"].to_pylist())) == [stall_start + i * MINUTE for i in range(5)]
    assert [a["symbol"] for a in recorded(store, rule="silent_stall").to_pylist()] == ["AAPL", "MSFT"]
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 2
    # Checking the same minutes again records, repairs and alerts nothing new.
    assert (again.recorded, again.extended, again.repaired_gaps, len(again.alerts.fired)) == (0, 0, 0, 0)
    assert feed_health.session_report(store, start, end) == {
        "stalls": 2, "symbols_silent": ["AAPL", "MSFT"], "minutes": 10, "repaired": 2, "repaired_bars": 10,
        "unrepaired": []}


def test_the_snapshots_table_is_the_same_on_both_variants():
    from pglast import ast

    from market_platform.schemas import SNAPSHOTS
    from market_platform_tests.test_storage_sql import _calls, _columns, _create_table, _primary_key, _statements

    plain, hyper = (_create_table(_statements("_snapshots", variant)) for variant in ("postgres", "timescale"))
    assert _columns(plain) == _columns(hyper) and [c[0] for c in _columns(plain)] == SNAPSHOTS.names
    assert _primary_key(plain) == _primary_key(hyper) == ["symbol", "minute", "source"]
    assert plain.partspec is not None and hyper.partspec is None  # day partitions / a hypertable
    statements = _statements("_snapshots")
    assert set(_calls(statements)) == {"create_hypertable", "add_retention_policy"}
    [call] = [s.funccall for s in statements if isinstance(s, ast.CallStmt)]  # the columnstore, 2.18's names
    assert call.funcname[-1].sval == "add_columnstore_policy"


def _stalled_session(store, replay, replay_factory, tmp_path) -> tuple[datetime, datetime, tuple[str, ...]]:
    """A stream of 10:00-10:12 New York with AAPL and MSFT silent 10:03-10:08, and its snapshots;
    returns the window and the stream's symbols."""
    start, end = window("10:00", 12)
    stream = replay_factory(start=start, end=end)
    stream.stall(["AAPL", "MSFT"], 5, at=start + 3 * MINUTE)
    config = stream_config(stream, start, end, tmp_path)
    Streamer(config, store_url=store.url).run()
    clock = PollClock(start, speed=None)
    replay.clock = clock.now
    queue = TableQueue(store)
    poll_window(queue, SnapshotVendor.polygon(replay.polygon_source()), minute_marks(start, end), clock, store=store)
    drain(queue, store)
    return start, end, config.symbols


def _gaps(store: TickStore) -> list[tuple]:
    return [(g["kind"], g["symbols"], g["gap_start"], g["gap_end"], g["detected_by"], g["repaired_at"] is not None)
            for g in _rows(store, "SELECT * FROM stream_gaps ORDER BY id")]


def test_one_gap_row_per_silence_whoever_detects_it(store, replay, replay_factory, stream_sim, tmp_path):
    start, end, symbols = _stalled_session(store, replay, replay_factory, tmp_path)
    stall_start, stall_end = start + 3 * MINUTE, start + 8 * MINUTE
    found = feed_health.check_feed(store, start, end)  # recorded, not repaired yet
    assert found.recorded == 2
    with AlpacaReplay(ReplayData(SimProvider(stream_sim)), keys={"k": "s"}) as rest:
        history = alpaca_history(AlpacaSource("k", "s", data_url=rest.url, trading_url=rest.url, rate_limit=None,
                                              feed="sip"))
        # The stream's own minute check over the same minutes (as during a run, before its final
        # sweep) finds the same silence: it adds itself as a witness of the stalls, records no
        # second row, and the sweep repairs them.
        worker = RepairWorker(lambda: TickStore(store.url), "alpaca_stocks_iex", history,
                              symbols, (start, end), delay=0)
        worker.start()
        worker.watch(int((end + 2 * MINUTE).timestamp()) * 10**9)
        worker.close()
        worker.sweep(end)
        again = feed_health.check_feed(store, start, end, history=history)
    assert worker.gaps_found == 0 and not worker.failures
    assert _gaps(store) == [
        ("silent_stall", "{AAPL}", stall_start, stall_end, "{feed_health,minute_check}", True),
        ("silent_stall", "{MSFT}", stall_start, stall_end, "{feed_health,minute_check}", True)]
    assert (again.recorded, again.extended) == (0, 0)


def test_a_silence_the_minute_check_recorded_is_not_a_second_stall(store, replay, replay_factory, stream_sim,
                                                                   tmp_path):
    start, end, symbols = _stalled_session(store, replay, replay_factory, tmp_path)
    with AlpacaReplay(ReplayData(SimProvider(stream_sim)), keys={"k": "s"}) as rest:
        history = alpaca_history(AlpacaSource("k", "s", data_url=rest.url, trading_url=rest.url, rate_limit=None,
                                              feed="sip"))
        worker = RepairWorker(lambda: TickStore(store.url), "alpaca_stocks_iex", history,
                              symbols, (start, end), delay=0)
        worker.sweep(end)
        found = feed_health.check_feed(store, start, end, history=history)
    assert worker.gaps_found == 1 and found.stalls == [] and found.recorded == 0
    [gap] = _gaps(store)
    assert gap[0] == "disconnect" and gap[4] == "{minute_check,feed_health}" and gap[5]


def test_refilled_minutes_are_not_stalls(store, replay, replay_factory, stream_sim, tmp_path):
    start, end, symbols = _stalled_session(store, replay, replay_factory, tmp_path)
    bars = stream_sim.minute_bars(SIM_DAY, ["AAPL", "MSFT"])
    bars = bars.filter(pc.and_(pc.greater_equal(bars["ts"], pa.scalar(start + 3 * MINUTE, bars["ts"].type)),
                               pc.less(bars["ts"], pa.scalar(start + 8 * MINUTE, bars["ts"].type))))
    source = bars.schema.get_field_index("source")
    store.write_bars(bars.set_column(source, "source", pa.array(["alpaca_rest"] * bars.num_rows)))  # a REST refill
    found = feed_health.check_feed(store, start, end)
    assert found.stream == "alpaca_stocks_iex" and found.stalls == [] and _gaps(store) == []
