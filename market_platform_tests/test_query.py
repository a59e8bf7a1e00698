"""The query helper: lake views, live tables copied from the tick store with filters pushed down."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import duckdb
import pytest
from click.testing import CliRunner

from market_platform import calendar
from market_platform.analytics import query as q
from market_platform.cli import main
from market_platform.errors import InvalidInputError
from market_platform.storage.timescale import TickStore

DAY = date(2024, 11, 26)


def test_lake_views(metrics_lake):
    table = q.query("SELECT date, count(*) AS n FROM minute_bars GROUP BY date ORDER BY date", lake=metrics_lake)
    assert [d.isoformat() for d in table["date"].to_pylist()] == ["2024-11-25", "2024-11-26", "2024-11-27", "2024-11-29"]
    assert table["n"].to_pylist() == [metrics_lake.count("minute_bars", d) for d in table["date"].to_pylist()]


def test_errors_name_the_problem(metrics_lake):
    with pytest.raises(InvalidInputError, match="reads live.bars_1m, but no tick store was given"):
        q.query("SELECT * FROM live.bars_1m", lake=metrics_lake)
    with pytest.raises(InvalidInputError, match="no live table nope"):
        q.query("SELECT * FROM live.nope", lake=metrics_lake)
    with pytest.raises(InvalidInputError, match="cannot parse the SQL"):
        q.query("SELEC 1", lake=metrics_lake)
    with pytest.raises(InvalidInputError, match="query failed.*no_such_table"):
        q.query("SELECT * FROM no_such_table", lake=metrics_lake)


def test_pushdown_finds_bounds():
    text = ("SELECT * FROM live.bars_1m b WHERE b.ts >= TIMESTAMPTZ '2024-11-26 15:00:00+00' "
            "AND ts < '2024-11-26 16:00:00+00'::TIMESTAMPTZ AND symbol IN ('AAPL', 'NVDA') "
            "UNION ALL SELECT * FROM live.bars_1m WHERE ts BETWEEN '2024-11-26 14:00+00' AND '2024-11-26 14:30+00' "
            "AND symbol = 'SPY'")
    plan = q.plan(text, "bars_1m")
    assert plan.start == datetime(2024, 11, 26, 14, tzinfo=timezone.utc)
    assert plan.end == datetime(2024, 11, 26, 16, tzinfo=timezone.utc)
    assert plan.symbols == ["AAPL", "NVDA", "SPY"]
    # A reference without a filter widens the fetch to the default window, all symbols.
    since = datetime(2024, 11, 26, 9, tzinfo=timezone.utc)
    wide = q.plan(text + " UNION ALL SELECT * FROM live.bars_1m", "bars_1m", since=since)
    assert wide.start == since and wide.end is None and wide.symbols is None
    relative = q.plan("SELECT * FROM live.quotes WHERE ts > now() - INTERVAL 1 HOUR", "quotes")
    assert abs(relative.start - (datetime.now(timezone.utc) - timedelta(hours=1))) < timedelta(minutes=1)
    # An OR cannot bound the fetch.
    loose = q.plan("SELECT * FROM live.trades WHERE ts > '2024-11-26 15:00+00' OR symbol = 'A'", "trades", since=since)
    assert loose.start == since and loose.symbols is None


def test_live_tables_beside_the_lake(tick_store, metrics_lake, sim):
    session = calendar.session(DAY)
    tick_store.write_bars(sim.minute_bars(DAY))
    text = ("SELECT symbol, count(*) AS n FROM live.bars_1m WHERE symbol = 'AAPL' "
            f"AND ts >= TIMESTAMPTZ '{session.regular_open.isoformat()}' GROUP BY symbol")
    con, fetched = q.connect(metrics_lake, text, store=tick_store)
    con.close()
    (plan,) = fetched
    expected = sum(1 for r in sim.minute_bars(DAY, ["AAPL"])["ts"].to_pylist() if r >= session.regular_open)
    assert plan.symbols == ["AAPL"] and plan.start == session.regular_open and plan.rows == expected
    table = q.query(text, lake=metrics_lake, store=tick_store)
    assert table.to_pylist() == [{"symbol": "AAPL", "n": expected}]

    # History and today under the same column names, in one statement.
    both = q.query(
        "SELECT source, count(*) AS n FROM (SELECT * FROM minute_bars WHERE date = DATE '2024-11-25' "
        "UNION ALL BY NAME SELECT * FROM live.bars_1m) GROUP BY source",
        lake=metrics_lake, store=tick_store, since=session.start)
    assert both["n"].to_pylist() == [metrics_lake.count("minute_bars", "2024-11-25") + sim.minute_bars(DAY).num_rows]


def test_query_cli(metrics_lake, monkeypatch):
    monkeypatch.setenv("MARKET_LAKE_URL", str(metrics_lake.url))
    monkeypatch.delenv("MARKET_DB_URL", raising=False)
    result = CliRunner().invoke(main, ["query", "SELECT count(DISTINCT symbol) AS symbols FROM minute_bars"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["symbols", "20"]
    csv = CliRunner().invoke(main, ["query", "--format", "csv", "SELECT 1 AS a, 'x' AS b"])
    assert csv.output == '"a","b"\n1,"x"\n'
    # Volumes and prices as a person reads them, never in scientific notation.
    volumes = CliRunner().invoke(main, ["query", "SELECT sum(volume) AS total, 739591805.125::DOUBLE AS shares, "
                                                 "242.92::DOUBLE AS close, 1e-7 AS tiny, NULL::DOUBLE AS none FROM minute_bars"])
    assert volumes.exit_code == 0, volumes.output
    total = q.query("SELECT sum(volume) AS v FROM minute_bars", lake=metrics_lake)["v"][0].as_py()
    assert volumes.output.splitlines()[1].split() == [f"{total:,.3f}".rstrip("0").rstrip("."), "739,591,805.125", "242.92", "1.000e-07", "NaN"]
    assert "e+" not in volumes.output


# -- read-only and sandboxed (issue 9, item 7; issue 11, items 6 and 8) -------------------------


def test_sql_reaches_the_lake_and_nothing_else(metrics_lake, s3_lake, sim, tmp_path, monkeypatch):
    """Every read the issue found open is refused: the process environment, /etc/shadow, a file
    outside the lake, http(s) and s3 URLs (which would download an extension into the home)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # where DuckDB would install extensions (~/.duckdb/extensions)
    monkeypatch.setenv("ALPACA_SECRET_KEY", "sekrit-from-the-environment")
    outside = tmp_path / "outside.csv"
    outside.write_text("secret\nsekrit-outside-the-lake\n")
    inside = f"{metrics_lake.url}/minute_bars/date=2024-11-26/data.parquet"
    refused = [
        "SELECT content FROM read_text('/proc/self/environ')",
        "SELECT * FROM read_text('/etc/shadow')",
        f"SELECT * FROM read_csv('{outside}')",
        f"SELECT * FROM read_text('{metrics_lake.url}/../outside.csv')",
        "SELECT * FROM read_parquet('https://example.com/data.parquet')",
        "SELECT * FROM read_parquet('s3://market-data/minute_bars/data.parquet')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM read_blob('/proc/self/environ')",
    ]
    for text in refused:
        with pytest.raises(InvalidInputError) as caught:
            q.query(text, lake=metrics_lake)
        assert "sekrit" not in str(caught.value) and "root:" not in str(caught.value), text
    for text in ("INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true", "SET lock_configuration = false",
                 f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'", f"ATTACH '{tmp_path / 'other.db'}'"):
        with pytest.raises(InvalidInputError, match="query is read-only"):
            q.query(text, lake=metrics_lake)
    # Past the read-only check, the connection itself refuses to be reconfigured or to install.
    con, _ = q.connect(metrics_lake, "SELECT 1")
    try:
        assert con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0] is False  # not into stdout
        for statement in ("SET enable_external_access = true", "SET allowed_directories = ['/']", "INSTALL httpfs",
                          "SET autoinstall_known_extensions = true", f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'"):
            with pytest.raises(duckdb.Error):
                con.execute(statement)
    finally:
        con.close()
    assert not (home / ".duckdb").exists() and not (tmp_path / "out.csv").exists()
    # The lake itself stays readable, by view or by path, and an S3 lake (Arrow datasets) too.
    assert q.query(f"SELECT count(*) AS n FROM read_parquet('{inside}')", lake=metrics_lake)["n"][0].as_py() == \
        metrics_lake.count("minute_bars", "2024-11-26")
    s3_lake.write_partition("minute_bars", "2024-11-26", sim.minute_bars(date(2024, 11, 26), ["AAPL"]))
    assert q.query("SELECT count(*) AS n FROM minute_bars", lake=s3_lake)["n"][0].as_py() == \
        sim.minute_bars(date(2024, 11, 26), ["AAPL"]).num_rows


def test_query_is_read_only_and_checks_max_rows(metrics_lake, monkeypatch):
    monkeypatch.setenv("MARKET_LAKE_URL", str(metrics_lake.url))
    for args, fragments in (
        (["query", "CREATE TABLE t AS SELECT 1"], ["query is read-only", "CREATE"]),
        (["query", "SELECT 1; SELECT 2"], ["query is read-only", "2 statements"]),
        (["query", "--max-rows", "99999999999999999999", "SELECT 1"], ["--max-rows '99999999999999999999'",
                                                                         "from 1 to 1,000,000"]),
        (["query", "--max-rows", "-5", "SELECT 1"], ["--max-rows '-5'", "from 1 to 1,000,000"]),
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == "" and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert all(fragment in result.stderr for fragment in fragments), result.stderr


def test_live_tables_say_the_window_they_read(make_database, metrics_lake, sim, monkeypatch):
    bars = sim.minute_bars(DAY, ["AAPL"])
    with TickStore(make_database("postgres")) as store:
        store.init_schema()
        store.write_bars(bars)
    monkeypatch.setenv("MARKET_LAKE_URL", str(metrics_lake.url))
    monkeypatch.setenv("MARKET_DB_URL", store.url)
    session, latest = calendar.session(DAY), q.default_since().astimezone(calendar.NEW_YORK)
    result = CliRunner().invoke(main, ["query", "SELECT count(*) AS n FROM live.bars_1m"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["n", "0"]  # 2024-11-26 is long before the latest session
    assert result.stderr == (f"live.bars_1m: read ts from {latest:%Y-%m-%d %H:%M} New York to now (no lower bound on "
                             "ts in the SQL: the latest session's start; a ts filter or --since reads more): 0 rows\n")
    since = CliRunner().invoke(main, ["query", "--since", session.start.isoformat(), "SELECT count(*) FROM live.bars_1m"])
    assert since.exit_code == 0 and since.stdout.split()[-1] == str(bars.num_rows), since.output
    assert since.stderr == (f"live.bars_1m: read ts from {DAY} 04:00 New York to now (no lower bound on ts in the SQL: "
                            f"--since): {bars.num_rows:,} rows\n")
    bounded = CliRunner().invoke(main, ["query", "SELECT count(*) FROM live.bars_1m WHERE symbol = 'AAPL' AND ts "
                                                 f"BETWEEN '{session.regular_open.isoformat()}' AND "
                                                 f"'{session.regular_close.isoformat()}'"])
    assert bounded.exit_code == 0, bounded.output
    assert bounded.stderr.startswith(f"live.bars_1m: read ts from {DAY} 09:30 New York to {DAY} 16:00 New York, "
                                     "symbols AAPL: ")


def test_live_rollups_are_read_like_the_other_live_tables(make_database, metrics_lake, sim, monkeypatch):
    bars = sim.minute_bars(DAY, ["AAPL", "MSFT"])
    with TickStore(make_database("postgres")) as store:
        store.init_schema()
        store.write_bars(bars)  # the rollups of these minutes are pending: the read refreshes them first
        session = calendar.session(DAY)
        start = session.regular_open - timedelta(minutes=30)  # 09:00 New York, an hour's start
        hourly = store.read_bars("1h", start, session.regular_close, symbols=["AAPL"])
        text = ("SELECT ts, close FROM live.bars_1h WHERE symbol = 'AAPL' AND ts >= "
                f"TIMESTAMPTZ '{start.isoformat()}' AND ts < TIMESTAMPTZ "
                f"'{session.regular_close.isoformat()}' ORDER BY ts")
        table, (fetched,) = q.run(text, lake=metrics_lake, store=store)
        assert table["close"].to_pylist() == hourly["close"].to_pylist() and table.num_rows == 7
        assert fetched.symbols == ["AAPL"] and fetched.start == start
        daily = store.read_bars("1d", session.start - timedelta(hours=4), session.end)
    # Without a lower bound on ts, from the bucket that holds the latest session's start (a day's
    # bar starts at midnight New York, before the 04:00 session start), and said so on stderr.
    monkeypatch.setenv("MARKET_LAKE_URL", str(metrics_lake.url))
    monkeypatch.setenv("MARKET_DB_URL", store.url)
    since = CliRunner().invoke(main, ["query", "--since", session.start.isoformat(),
                                      "SELECT symbol, close FROM live.bars_1d ORDER BY symbol"])
    assert since.exit_code == 0, since.output
    assert since.stdout.split()[2:] == [v for r in daily.to_pylist() for v in (r["symbol"], str(r["close"]))]
    assert since.stderr == (f"live.bars_1d: read ts from {DAY} 00:00 New York to now (no lower bound on ts in the "
                            "SQL: --since): 2 rows\n")
    for name in ("bars_5m", "bars_15m"):
        result = CliRunner().invoke(main, ["query", "--since", session.start.isoformat(),
                                           f"SELECT count(*) AS n FROM live.{name}"])
        assert result.exit_code == 0 and result.stderr.startswith(f"live.{name}: read ts from {DAY} 04:00 New York")
