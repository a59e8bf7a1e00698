"""The migration files themselves, above all the TimescaleDB variant, which no server here runs.

TimescaleDB cannot be installed on this machine, so its files are checked three ways short of
executing them: every file parses with PostgreSQL's own parser (pglast, libpg_query) as the
statements it is meant to hold; the calls and options are the documented TimescaleDB ones
with the right arguments; and the continuous aggregates' SELECTs, run on plain PostgreSQL with
a stand-in for time_bucket (only where the real one is absent: on a TimescaleDB server they run
as they are), give the same rows as the plain variant's views, sources tied or not.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pytest
from pglast import ast, enums, parse_sql
from pglast.stream import RawStream

from market_platform import settings
from market_platform.storage import synthetic
from market_platform.storage.timescale import (
    LIVE_TABLES,
    MIN_BARS_DAYS_WITH_ROLLUPS,
    ROLLUP_REFRESH_WINDOWS,
    ROLLUPS,
    TickStore,
    migrations,
)

UTC = timezone.utc
#: The TimescaleDB migrations that replace an object of an earlier one, by what they replace.
TIE_BREAK = {view: f"{number}_{view}_tie_break" for number, (view, _) in zip(range(41, 45), ROLLUPS.values())}
COLUMNSTORE = {table: f"{number}_{table}_columnstore" for number, table in zip(range(46, 49), LIVE_TABLES)}
STORED_DAYS = "0045_rollup_dirty_stored_days"


def _statements(name: str, variant: str = "timescale") -> list[ast.Node]:
    [migration] = [m for m in migrations(variant) if m.name.endswith(name)]
    return [raw.stmt for raw in parse_sql(migration.text)]


def _rollup_statements(view: str) -> list[ast.Node]:
    """The statements of the migration that defines `view` now (the last one that creates it)."""
    defining = [m for m in migrations("timescale")
                if any(isinstance(raw.stmt, ast.CreateTableAsStmt) and raw.stmt.into.rel.relname == view
                       for raw in parse_sql(m.text))]
    assert defining[-1].name.endswith(TIE_BREAK[view])
    return [raw.stmt for raw in parse_sql(defining[-1].text)]


def _rollup_query(view: str) -> str:
    [create] = [s for s in _rollup_statements(view) if isinstance(s, ast.CreateTableAsStmt)]
    return RawStream()(create.query)


def _calls(statements: list[ast.Node]) -> dict[str, ast.FuncCall]:
    """The top-level `SELECT f(...)` calls of a file, by function name."""
    calls = {}
    for statement in statements:
        if isinstance(statement, ast.SelectStmt) and statement.fromClause is None:
            call = statement.targetList[0].val
            if isinstance(call, ast.FuncCall):
                calls[call.funcname[-1].sval] = call
    return calls


def _named_args(call: ast.FuncCall) -> dict[str, str]:
    return {arg.name: RawStream()(arg.arg) for arg in call.args if isinstance(arg, ast.NamedArgExpr)}


def _canonical(expression: str) -> str:
    """An SQL expression as pglast prints it (INTERVAL '1 day' becomes CAST('1 day' AS interval))."""
    return RawStream()(parse_sql(f"SELECT {expression}")[0].stmt.targetList[0].val)


def _create_table(statements: list[ast.Node]) -> ast.CreateStmt:
    return next(s for s in statements if isinstance(s, ast.CreateStmt))


def _columns(create: ast.CreateStmt) -> list[tuple[str, str, bool]]:
    out = []
    for element in create.tableElts:
        if isinstance(element, ast.ColumnDef):
            type_name = ".".join(n.sval for n in element.typeName.names)
            not_null = any(c.contype == enums.ConstrType.CONSTR_NOTNULL for c in element.constraints or ())
            out.append((element.colname, type_name, not_null))
    return out


def _primary_key(create: ast.CreateStmt) -> list[str]:
    [key] = [e for e in create.tableElts
             if isinstance(e, ast.Constraint) and e.contype == enums.ConstrType.CONSTR_PRIMARY]
    return [k.sval for k in key.keys]


@pytest.mark.parametrize("variant", ["postgres", "timescale"])
def test_every_migration_parses_and_is_not_empty(variant: str) -> None:
    found = migrations(variant)
    assert [m.version for m in found] == sorted({m.version for m in found})
    for migration in found:
        statements = parse_sql(migration.text)
        assert statements, f"{migration.path} holds no statement"
    assert parse_sql((settings.sql_dir() / "schema_migrations.sql").read_text())


def test_both_variants_define_the_same_objects() -> None:
    names = {v: {m.name for m in migrations(v)} for v in ("postgres", "timescale")}
    # Day partitions (and the fix of their creation under concurrency) are the plain variant's own.
    assert names["postgres"] - names["timescale"] == {"0002_day_partitions", "0006_bars_rollup",
                                                      "0051_day_partition_concurrent"}
    # The plain views already broke ties by source, and day partitions have no columnstore.
    assert names["timescale"] - names["postgres"] == {
        "0002_timescaledb", *(f"00{n}" for n in TIE_BREAK.values()), STORED_DAYS,
        *(f"00{n}" for n in COLUMNSTORE.values())}
    for table in (*LIVE_TABLES, "stream_stats"):
        plain, hyper = (_create_table(_statements(f"_{table}", v)) for v in ("postgres", "timescale"))
        assert _columns(plain) == _columns(hyper) and _primary_key(plain) == _primary_key(hyper)
        assert hyper.partspec is None  # a hypertable, never a partitioned table
        assert (plain.partspec is not None) == (table in LIVE_TABLES)  # day partitions


@pytest.mark.parametrize("table, key", [("quotes", "seq"), ("trades", "exchange, trade_id"), ("bars_1m", "source")])
def test_timescale_live_tables_are_compressed_hypertables_with_retention(table: str, key: str) -> None:
    statements = _statements(f"_{table}")
    assert "ts" in _primary_key(_create_table(statements))  # unique indexes must hold the time column
    calls = _calls(statements)
    assert set(calls) == {"create_hypertable", "add_compression_policy", "add_retention_policy"}

    hypertable = calls["create_hypertable"]
    assert RawStream()(hypertable.args[0]) == f"'{table}'"
    assert RawStream()(hypertable.args[1]) == _canonical("by_range('ts', INTERVAL '1 day')")

    [alter] = [s for s in statements if isinstance(s, ast.AlterTableStmt)]
    assert alter.relation.relname == table
    options = {(d.defnamespace, d.defname): (RawStream()(d.arg) if d.arg else None) for d in alter.cmds[0].def_}
    assert options == {
        ("timescaledb", "compress"): None,
        ("timescaledb", "compress_segmentby"): "'symbol'",
        ("timescaledb", "compress_orderby"): f"'ts DESC, {key}'",
    }
    assert RawStream()(calls["add_compression_policy"].args[0]) == f"'{table}'"
    assert _named_args(calls["add_compression_policy"]) == {"compress_after": _canonical("INTERVAL '1 day'")}
    # Retention comes from retention_settings (bound parameters at init), not from the SQL text.
    retention = _named_args(calls["add_retention_policy"])
    assert set(retention) == {"drop_after"} and "retention_settings" in retention["drop_after"]
    assert f"table_name = '{table}'" in retention["drop_after"]


@pytest.mark.parametrize("table, key", [("quotes", "seq"), ("trades", "exchange, trade_id"), ("bars_1m", "source")])
def test_timescale_live_tables_state_their_columnstore_in_the_current_names(table: str, key: str) -> None:
    # TimescaleDB 2.18 renamed compression to the columnstore (ALTER TABLE ... SET
    # (timescaledb.enable_columnstore, segmentby, orderby), add_columnstore_policy, a procedure).
    statements = _statements(COLUMNSTORE[table])
    [alter] = [s for s in statements if isinstance(s, ast.AlterTableStmt)]
    assert alter.relation.relname == table
    options = {(d.defnamespace, d.defname): RawStream()(d.arg) for d in alter.cmds[0].def_}
    assert options == {
        ("timescaledb", "enable_columnstore"): "'true'",
        ("timescaledb", "segmentby"): "'symbol'",
        ("timescaledb", "orderby"): f"'ts DESC, {key}'",
    }
    calls = [s.funccall for s in statements if isinstance(s, ast.CallStmt)]
    assert [(c.funcname[-1].sval, RawStream()(c.args[0]), _named_args(c)) for c in calls] == [
        ("remove_columnstore_policy", f"'{table}'", {"if_exists": "TRUE"}),
        ("add_columnstore_policy", f"'{table}'", {"after": _canonical("INTERVAL '1 day'")}),
    ]


@pytest.mark.parametrize("timeframe", list(ROLLUPS))
def test_timescale_rollups_are_continuous_aggregates_with_refresh_policies(timeframe: str) -> None:
    view, width = ROLLUPS[timeframe]
    statements = _rollup_statements(view)
    # Created again in place: the old aggregate (and its policy) is dropped first.
    assert isinstance(statements[0], ast.DropStmt) and statements[0].removeType == enums.ObjectType.OBJECT_MATVIEW
    assert [n.sval for n in statements[0].objects[0]] == [view]
    [create] = [s for s in statements if isinstance(s, ast.CreateTableAsStmt)]
    assert create.objtype == enums.ObjectType.OBJECT_MATVIEW and create.into.rel.relname == view
    assert create.into.skipData  # WITH NO DATA: creating it may run inside the migration's transaction
    options = {(o.defnamespace, o.defname): (RawStream()(o.arg) if o.arg else None) for o in create.into.options}
    assert options == {("timescaledb", "continuous"): None, ("timescaledb", "materialized_only"): "'false'"}

    select = RawStream()(create.query)
    assert [t.name or t.val.fields[-1].sval for t in create.query.targetList] == [
        "symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]
    bucket = RawStream()(create.query.targetList[1].val)
    zone = ", 'America/New_York'" if timeframe == "1d" else ""
    assert bucket == _canonical(f"time_bucket(INTERVAL '{_interval_text(width)}', ts{zone})")
    assert [RawStream()(g) for g in create.query.groupClause] == ["symbol", bucket]
    # Ties between sources are broken by source name, as in the plain view (ordered aggregates
    # need the finalized form, the only one TimescaleDB creates on PostgreSQL 15).
    targets = {target.name: RawStream()(target.val) for target in create.query.targetList}
    assert targets["open"] == _canonical("(array_agg(open ORDER BY ts, source))[1]")
    assert targets["close"] == _canonical("(array_agg(close ORDER BY ts DESC, source DESC))[1]")
    assert "first(" not in select and "last(" not in select and "FROM bars_1m" in select
    assert not any(o.defname == "finalized" for o in create.into.options)

    policy = _calls(statements)["add_continuous_aggregate_policy"]
    assert RawStream()(policy.args[0]) == f"'{view}'"
    args = _named_args(policy)
    assert set(args) == {"start_offset", "end_offset", "schedule_interval"}
    start, end = (pd.Timedelta(re.fullmatch(r"CAST\('(.+)' AS interval\)", args[k]).group(1))
                  for k in ("start_offset", "end_offset"))
    assert end == pd.Timedelta(width)  # the open bucket is left to real-time aggregation
    assert start - end >= 2 * pd.Timedelta(width)  # TimescaleDB refuses windows under two buckets
    # What Retention.check_rollups holds bars_1m's retention to.
    assert start == pd.Timedelta(ROLLUP_REFRESH_WINDOWS[view])
    assert start < pd.Timedelta(days=MIN_BARS_DAYS_WITH_ROLLUPS)

    # The minutes stored before the upgrade are queued for a refresh (see below), after it.
    assert [m.name for m in migrations("timescale")].index(STORED_DAYS) > [
        m.name for m in migrations("timescale")].index(f"00{TIE_BREAK[view]}")


def _interval_text(width) -> str:
    seconds = int(width.total_seconds())
    return {300: "5 minutes", 900: "15 minutes", 3600: "1 hour", 86400: "1 day"}[seconds]


def test_timescale_stream_stats_is_a_hypertable_on_minute() -> None:
    statements = _statements("_stream_stats")
    assert "minute" in _primary_key(_create_table(statements))
    assert RawStream()(_calls(statements)["create_hypertable"].args[1]) == _canonical(
        "by_range('minute', INTERVAL '7 days')")


# A plain-PostgreSQL stand-in with TimescaleDB's semantics for time_bucket, which the aggregates
# use: buckets count from 2000-01-03 (in the given zone when there is one). Created only in a
# database without the real one.
STAND_INS = {
    "time_bucket(interval, timestamptz)": """
CREATE FUNCTION time_bucket(width interval, ts timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$ SELECT date_bin(width, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') $$""",
    "time_bucket(interval, timestamptz, text)": """
CREATE FUNCTION time_bucket(width interval, ts timestamptz, zone text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$ SELECT date_bin(width, ts AT TIME ZONE zone, TIMESTAMP '2000-01-03') AT TIME ZONE zone $$""",
}


def test_timescale_aggregates_give_the_rows_of_the_plain_views(pg_server_url, make_database) -> None:
    store = TickStore(make_database("postgres"))
    store.init_schema()
    with store.connect() as conn:
        for signature, create in STAND_INS.items():
            if conn.execute("SELECT to_regprocedure(%s) IS NULL", (signature,)).fetchone()[0]:
                conn.execute(create)
        conn.commit()
    # Across New York midnight and the end of DST, with a second source tied with the first on
    # some minutes (its bars sort after "sim" by source name) and alone on others.
    store.write_bars(pa.concat_tables([
        synthetic.bars(600, symbols=3, start=datetime(2024, 3, 1, 21, 0, tzinfo=UTC), seed=1),
        synthetic.bars(240, symbols=2, start=datetime(2024, 11, 3, 4, 0, tzinfo=UTC), seed=2),
        synthetic.bars(12, symbols=2, start=datetime(2024, 3, 1, 20, 58, tzinfo=UTC), seed=3, source="vendor_b"),
        synthetic.bars(3, symbols=1, start=datetime(2024, 11, 3, 5, 59, tzinfo=UTC), seed=4, source="alpaca"),
    ]))
    store.refresh_rollups()  # on TimescaleDB the aggregates are then materialized, not real-time
    for view, _ in ROLLUPS.values():
        aggregate = store.read_arrow(f"SELECT * FROM ({_rollup_query(view)}) AS q ORDER BY symbol, ts")
        plain = store.read_arrow(f"SELECT * FROM {view} ORDER BY symbol, ts")
        assert plain.num_rows > 0
        pd.testing.assert_frame_equal(aggregate.to_pandas(), plain.to_pandas(), check_exact=False, rtol=1e-12)

    # The upgrade's queue of the days stored: every New York day from the first minute to the
    # last, for every rollup, whole (its SQL runs on either variant).
    with store.connect() as conn:
        conn.execute("DELETE FROM rollup_dirty")
        [migration] = [m for m in migrations("timescale") if m.name == STORED_DAYS]
        conn.execute(migration.text)
        queued = conn.execute("SELECT rollup, day, first_ts, last_ts FROM rollup_dirty ORDER BY day, rollup").fetchall()
        conn.commit()
    days = pd.date_range("2024-03-01", "2024-11-03").date.tolist()  # March 1 EST to November 3 EST
    assert [(rollup, day) for rollup, day, _, _ in queued] == [
        (rollup, day) for day in days for rollup in sorted(view for view, _ in ROLLUPS.values())]
    assert queued[0][2] == datetime(2024, 3, 1, 5, 0, tzinfo=UTC)  # New York midnight, EST
    assert queued[-1][3] == datetime(2024, 11, 4, 5, 0, tzinfo=UTC) - pd.Timedelta(microseconds=1)
    store.close()
