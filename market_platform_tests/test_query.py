"""The query helper: lake views, live tables copied from the tick store with filters pushed down."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from market_platform import calendar
from market_platform.analytics import query as q
from market_platform.cli import main
from market_platform.errors import InvalidInputError

DAY = date(2024, 11, 26)


def test_lake_views(metrics_lake):
    table = q.query("SELECT date, count(*) AS n FROM minute_bars GROUP BY date ORDER BY date", lake=metrics_lake)
    assert [d.isoformat() for d in table["date"].to_pylist()] == ["2024-11-25", "2024-11-26", "2024-11-27", "2024-11-29"]
    assert table["n"].to_pylist() == [metrics_lake.count("minute_bars", d) for d in table["date"].to_pylist()]


def test_errors_name_the_problem(metrics_lake):
    with pytest.raises(InvalidInputError, match="set MARKET_DB_URL"):
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
    bad = CliRunner().invoke(main, ["query", "SELECT * FROM live.quotes"])
    assert bad.exit_code == 2 and "MARKET_DB_URL" in bad.output
