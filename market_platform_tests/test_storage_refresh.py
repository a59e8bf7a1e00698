"""Rollups after late writes (storage/refresh.py), writes that skip what is stored, and the
retention the rollups need: on both servers, and on TimescaleDB where MARKET_TEST_PG_URL has it."""

from __future__ import annotations

import shutil
from datetime import date, datetime, timezone

import pandas as pd
import pyarrow as pa
import pytest

from market_platform import settings
from market_platform.errors import ConfigError
from market_platform.schemas import BARS
from market_platform.storage import synthetic
from market_platform.storage.migrations import MIN_BARS_DAYS_WITH_ROLLUPS, Schema
from market_platform.storage.refresh import DirtyRange, Refresher, plan
from market_platform.storage.server import StoreConnection
from market_platform.storage.timescale import Retention, TickStore, migrations
from market_platform_tests.test_storage_timescale import RULES, _expected_rollup, _rollup_frame

UTC = timezone.utc
ROLLUP_NAMES = ("bars_5m", "bars_15m", "bars_1h", "bars_1d")


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 11, day, hour, minute, tzinfo=UTC)


def _with_close(bars: pa.Table, row: int, close: float) -> pa.Table:
    one = bars.slice(row, 1)
    return one.set_column(BARS.get_field_index("close"), BARS.field("close"), pa.array([close], pa.float64()))


def _pending(store: TickStore) -> set[tuple]:
    return {(d.rollup, d.day, d.first_ts, d.last_ts) for d in store.pending_rollups()}


# -- what to refresh ------------------------------------------------------------------------


def test_the_plan_refreshes_closed_buckets_and_leaves_the_open_one() -> None:
    first, last = _at(26, 14, 31), _at(26, 14, 52)  # 09:31-09:52 New York
    steps = {s.range.rollup: s for s in plan([DirtyRange(name, date(2024, 11, 26), first, last, 3)
                                              for name in ROLLUP_NAMES], now=_at(26, 14, 53))}
    # bars_5m: the buckets 14:30 .. 14:50 hold the minutes; 14:50 is still open at 14:53.
    assert (steps["bars_5m"].action, steps["bars_5m"].start, steps["bars_5m"].end) == ("refresh", _at(26, 14, 30), _at(26, 14, 50))
    assert steps["bars_5m"].keep_from == _at(26, 14, 50)  # the open bucket stays pending
    assert (steps["bars_15m"].start, steps["bars_15m"].end, steps["bars_15m"].keep_from) == (
        _at(26, 14, 30), _at(26, 14, 45), _at(26, 14, 45))
    assert steps["bars_1h"].action == steps["bars_1d"].action == "defer"  # only open buckets
    # A day later everything is closed: whole buckets, the New York day for bars_1d.
    later = {s.range.rollup: s for s in plan([DirtyRange(n, date(2024, 11, 26), first, last) for n in ROLLUP_NAMES],
                                             now=_at(27, 12))}
    assert {n: (s.action, s.start, s.end, s.keep_from) for n, s in later.items()} == {
        "bars_5m": ("refresh", _at(26, 14, 30), _at(26, 14, 55), None),
        "bars_15m": ("refresh", _at(26, 14, 30), _at(26, 15), None),
        "bars_1h": ("refresh", _at(26, 14), _at(26, 15), None),
        "bars_1d": ("refresh", _at(26, 5), _at(27, 5), None),
    }
    # The New York day DST ends on has 25 hours; old minutes are refreshed like new ones.
    [fall_back] = plan([DirtyRange("bars_1d", date(2024, 11, 3), _at(3, 4), _at(3, 4))], now=datetime(2026, 1, 1, tzinfo=UTC))
    assert (fall_back.start, fall_back.end) == (_at(3, 4), _at(4, 5))


def test_late_writes_reach_every_rollup_before_a_read(tick_store: TickStore) -> None:
    session = synthetic.bars(60, symbols=3, start=_at(26, 14, 30), seed=1)  # 09:30-10:29 New York
    assert tick_store.write_bars(session) == 180
    first = tick_store.refresh_rollups()
    assert {(r["rollup"], r["start"], r["end"]) for r in first["refreshed"]} == {
        ("bars_5m", "2024-11-26T14:30:00+00:00", "2024-11-26T15:30:00+00:00"),
        ("bars_15m", "2024-11-26T14:30:00+00:00", "2024-11-26T15:30:00+00:00"),
        ("bars_1h", "2024-11-26T14:00:00+00:00", "2024-11-26T16:00:00+00:00"),
        ("bars_1d", "2024-11-26T05:00:00+00:00", "2024-11-27T05:00:00+00:00"),
    }
    assert first["deferred"] == [] and tick_store.pending_rollups() == []

    # Behind the watermark now: the session before, replayed; a late correction inside the
    # refreshed session; another source's bars tied with the first's on two minutes.
    past = synthetic.bars(30, symbols=3, start=_at(25, 15), seed=2)
    corrected = _with_close(session, 51, 999.5)  # S0000 at 14:47
    tied = synthetic.bars(2, symbols=1, start=_at(26, 14, 50), seed=3, source="alpaca")
    assert tick_store.write_bars(pa.concat_tables([past, corrected, tied])) == 90 + 1 + 2
    assert _pending(tick_store) == {
        *((name, date(2024, 11, 25), _at(25, 15), _at(25, 15, 29)) for name in ROLLUP_NAMES),
        *((name, date(2024, 11, 26), _at(26, 14, 47), _at(26, 14, 51)) for name in ROLLUP_NAMES),
    }
    # Rows already stored unchanged queue nothing.
    versions = {(d.rollup, d.day): d.version for d in tick_store.pending_rollups()}
    assert tick_store.write_bars(past) == 0
    assert {(d.rollup, d.day): d.version for d in tick_store.pending_rollups()} == versions

    stored = tick_store.read_bars("1m", _at(25, 0), _at(27, 0))
    assert stored.num_rows == 90 + 180 + 2
    # A read refreshes the ranges it reads first, and only those.
    hourly = tick_store.read_bars("1h", _at(25, 5), _at(26, 5))
    expected = _expected_rollup(stored, RULES["1h"])
    in_window = expected[(expected.ts >= _at(25, 5)) & (expected.ts < _at(26, 5))].reset_index(drop=True)
    pd.testing.assert_frame_equal(_rollup_frame(hourly), in_window, check_dtype=False)
    assert {(d.rollup, d.day) for d in tick_store.pending_rollups()} == {
        (name, day) for name in ROLLUP_NAMES for day in (date(2024, 11, 25), date(2024, 11, 26))
    } - {("bars_1h", date(2024, 11, 25))}

    done = tick_store.refresh_rollups()
    assert len(done["refreshed"]) == 7 and tick_store.pending_rollups() == []
    for timeframe, rule in RULES.items():  # every rollup is the resample of bars_1m, ties included
        view = tick_store.read_arrow(f"SELECT * FROM bars_{timeframe}")
        pd.testing.assert_frame_equal(_rollup_frame(view), _expected_rollup(stored, rule), check_dtype=False)


def test_a_refresh_trims_what_stays_open(tick_store: TickStore) -> None:
    tick_store.write_bars(synthetic.bars(30, symbols=2, start=_at(26, 14, 30)))
    done = tick_store.refresh_rollups(now=_at(26, 14, 52))
    assert {(r["rollup"], r["end"]) for r in done["refreshed"]} == {
        ("bars_5m", "2024-11-26T14:50:00+00:00"), ("bars_15m", "2024-11-26T14:45:00+00:00")}
    assert {r["rollup"] for r in done["deferred"]} == {"bars_1h", "bars_1d"}
    day = date(2024, 11, 26)
    assert _pending(tick_store) == {
        ("bars_5m", day, _at(26, 14, 50), _at(26, 14, 59)), ("bars_15m", day, _at(26, 14, 45), _at(26, 14, 59)),
        ("bars_1h", day, _at(26, 14, 30), _at(26, 14, 59)), ("bars_1d", day, _at(26, 14, 30), _at(26, 14, 59)),
    }
    assert tick_store.refresh_rollups(timeframes=["5m"], now=_at(26, 15))["refreshed"][0]["start"] == (
        "2024-11-26T14:50:00+00:00")
    assert {d.rollup for d in tick_store.pending_rollups()} == {"bars_15m", "bars_1h", "bars_1d"}


# The CALL a TimescaleDB refresh makes, recorded by a stand-in procedure on plain PostgreSQL (the
# embedded server, plain on every machine); it also plays a writer that lands on bars_1h's rows
# while their refresh runs.
STAND_IN_REFRESH = """
CREATE TABLE refresh_calls (n serial, view text, window_start timestamptz, window_end timestamptz);
CREATE PROCEDURE refresh_continuous_aggregate(view regclass, window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO refresh_calls (view, window_start, window_end) VALUES (view::text, window_start, window_end);
    IF view::text = 'bars_1h' THEN
        UPDATE rollup_dirty SET version = version + 1
        WHERE rollup = 'bars_1h' AND first_ts >= window_start AND first_ts < window_end;
    END IF;
END $$;
"""


def test_a_timescaledb_refresh_calls_each_range_and_keeps_what_changed_meanwhile(make_database) -> None:
    url = make_database("embedded")
    with TickStore(url) as store:
        store.init_schema()
        with store.connect() as conn:
            conn.execute(STAND_IN_REFRESH)
            conn.commit()
        store.write_bars(pa.concat_tables([synthetic.bars(3, symbols=2, start=_at(25, 20, 58)),
                                           synthetic.bars(2, symbols=2, start=_at(26, 14, 30))]))
        connection = StoreConnection(url)
        done = Refresher(connection, Schema(connection), materialized=True).refresh(now=_at(27, 12))
        connection.close()
        calls = store.read_arrow("SELECT view, window_start, window_end FROM refresh_calls ORDER BY n").to_pylist()
        assert [(c["view"], c["window_start"], c["window_end"]) for c in calls] == [
            ("bars_15m", _at(25, 20, 45), _at(25, 21, 15)), ("bars_15m", _at(26, 14, 30), _at(26, 14, 45)),
            ("bars_1d", _at(25, 5), _at(26, 5)), ("bars_1d", _at(26, 5), _at(27, 5)),
            ("bars_1h", _at(25, 20), _at(25, 22)), ("bars_1h", _at(26, 14), _at(26, 15)),
            ("bars_5m", _at(25, 20, 55), _at(25, 21, 5)), ("bars_5m", _at(26, 14, 30), _at(26, 14, 35)),
        ]
        assert len(done.refreshed) == 8
        # bars_1h's rows changed while they were refreshed: they stay, for the next refresh.
        assert {(d.rollup, d.version) for d in store.pending_rollups()} == {("bars_1h", 2)}


# -- writes that skip what is stored ---------------------------------------------------------


def test_redelivered_rows_are_dropped_before_the_insert(tick_store: TickStore) -> None:
    # skip_stored="always" takes the path a write into compressed chunks takes on TimescaleDB.
    with TickStore(tick_store.url, skip_stored="always") as store:
        quotes = synthetic.quotes(5_000, symbols=5, start=_at(26, 14, 30))
        assert store.write_quotes(quotes) == 5_000
        assert store.write_quotes(quotes) == 0
        more = synthetic.quotes(1_000, symbols=5, seed=1, start=_at(26, 15))
        assert store.write_quotes(pa.concat_tables([quotes.slice(0, 2_000), more, more])) == 1_000
        trades = synthetic.trades(2_000, symbols=5, start=_at(26, 14, 30))
        assert store.write_trades(trades) == 2_000 and store.write_trades(trades) == 0

        bars = synthetic.bars(20, symbols=3, start=_at(26, 14, 30))
        assert store.write_bars(bars) == 60
        store.refresh_rollups()
        xmin = store.read_arrow("SELECT symbol, ts, xmin::text AS x FROM bars_1m").to_pylist()
        assert store.write_bars(bars) == 0 and store.pending_rollups() == []
        assert store.write_bars(pa.concat_tables([bars, _with_close(bars, 7, 1.5)])) == 1  # the last of a key wins
        changed = [row for row in store.read_arrow("SELECT symbol, ts, xmin::text AS x FROM bars_1m").to_pylist()
                   if row not in xmin]
        assert [(row["symbol"], row["ts"]) for row in changed] == [("S0001", _at(26, 14, 32))]
        assert {(d.first_ts, d.last_ts) for d in store.pending_rollups()} == {(_at(26, 14, 32), _at(26, 14, 32))}
    counts = tick_store.read_arrow("SELECT (SELECT count(*) FROM quotes) AS q, (SELECT count(*) FROM trades) AS t")
    assert counts.to_pylist() == [{"q": 6_000, "t": 2_000}]


def _columnstore(store: TickStore, table: str) -> dict[str, int]:
    """Each chunk of `table` moved to the columnstore; returns the size of its row store part."""
    with store.connect(autocommit=True) as conn:
        chunks = [name for (name,) in conn.execute(
            "SELECT format('%%I.%%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = %s", (table,)).fetchall()]
        for chunk in chunks:
            conn.execute("CALL convert_to_columnstore(%s::regclass)", (chunk,))
        return _row_store_bytes(conn, chunks)


def _row_store_bytes(conn, chunks: list[str]) -> dict[str, int]:
    return {chunk: conn.execute("SELECT pg_relation_size(%s::regclass)", (chunk,)).fetchone()[0] for chunk in chunks}


def test_redelivery_into_the_columnstore_moves_nothing(tick_store: TickStore) -> None:
    if tick_store.variant() != "timescale":
        pytest.skip("the columnstore is TimescaleDB's; the skip itself is tested on plain PostgreSQL above")
    quotes = synthetic.quotes(20_000, symbols=10, start=_at(26, 14, 30))
    bars = synthetic.bars(60, symbols=10, start=_at(26, 14, 30))
    tick_store.write_quotes(quotes)
    tick_store.write_bars(bars)
    tick_store.refresh_rollups()
    compressed = {table: _columnstore(tick_store, table) for table in ("quotes", "bars_1m")}
    # Redelivered quotes and an unchanged bar window: compared in memory, nothing decompressed.
    assert tick_store.write_quotes(quotes.slice(5_000, 5_000)) == 0
    assert tick_store.write_bars(bars) == 0 and tick_store.pending_rollups() == []
    with tick_store.connect() as conn:
        assert {table: _row_store_bytes(conn, list(chunks)) for table, chunks in compressed.items()} == compressed
    # A correction still lands, and reaches the rollups: the close of S0003's last minute of the hour.
    assert tick_store.write_bars(_with_close(bars, 29 * 10 + 3, 7.25)) == 1
    hourly = tick_store.read_bars("1h", _at(26, 14), _at(26, 15), symbols=["S0003"])
    assert hourly.column("close").to_pylist() == [7.25]


# -- retention ---------------------------------------------------------------------------------


def test_retention_shorter_than_a_rollup_refresh_window_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"Retention.bars_days=31 .* refresh of bars_1d \(30 days back\).* "
                                          r"expected at least 32 days"):
        Retention(bars_days=MIN_BARS_DAYS_WITH_ROLLUPS - 1).check_rollups()
    Retention(bars_days=MIN_BARS_DAYS_WITH_ROLLUPS).check_rollups()


def test_the_tick_store_resource_refuses_it_where_rollups_are_materialized(tick_store: TickStore) -> None:
    from market_platform.defs.resources import TickStoreResource

    resource = TickStoreResource(url=tick_store.url, bars_retention_days=10)
    if tick_store.variant() == "postgres":  # views of bars_1m: any retention is theirs too
        assert resource.store().retention == Retention(bars_days=10)
        return
    with pytest.raises(ConfigError, match="Retention.bars_days=10"):
        resource.store()
    assert tick_store.status()["retention_days"]["bars_1m"] == 365  # nothing written


# -- the upgrade -------------------------------------------------------------------------------


def test_an_existing_database_is_upgraded_in_place(pg_server_url, make_database, tmp_path) -> None:
    # A database made before the 004x migrations, holding bars of two sources tied on a minute.
    sql_root = tmp_path / "sql"
    shutil.copytree(settings.sql_dir(), sql_root)
    new = sorted(path for path in sql_root.glob("*/004*.sql"))
    for path in new:
        path.rename(tmp_path / path.name)
    url = make_database("postgres")
    bars = pa.concat_tables([synthetic.bars(45, symbols=2, start=_at(25, 14, 30), seed=1),
                             synthetic.bars(2, symbols=1, start=_at(25, 14, 40), seed=2, source="alpaca")])
    with TickStore(url, sql_root=sql_root) as old:
        before = old.init_schema()
        old.maintain(now=_at(25, 12))  # the day's partition on plain PostgreSQL
        with old.connect() as conn:  # what the writer of that version did: no rollup_dirty yet
            conn.execute("CREATE TEMP TABLE b (LIKE bars_1m)")
            with conn.cursor().copy("COPY b FROM STDIN") as copy:
                for row in bars.to_pylist():
                    copy.write_row(tuple(row.values()))
            conn.execute("INSERT INTO bars_1m SELECT * FROM b")
            conn.commit()
    for path in new:
        (tmp_path / path.name).rename(sql_root / path.parent.name / path.name)

    with TickStore(url, sql_root=sql_root) as store:
        applied = store.init_schema()
        variant = store.variant()
        # Exactly the files that were missing, in order, though migrations numbered after them
        # (from branches merged later) were applied first: a gap is filled, never skipped.
        moved = {path.stem for path in new}
        assert applied == [m.name for m in migrations(variant, sql_root) if m.name in moved]
        assert applied and max(int(name[:4]) for name in before) > max(int(name[:4]) for name in applied)
        assert store.init_schema() == []
        store.maintain(now=_at(26, 12))  # what `db init` runs next
        assert store.pending_rollups() == []
        stored = store.read_bars("1m", _at(25, 0), _at(26, 0))
        for timeframe, rule in RULES.items():
            view = store.read_arrow(f"SELECT * FROM bars_{timeframe}")
            pd.testing.assert_frame_equal(_rollup_frame(view), _expected_rollup(stored, rule), check_dtype=False)
