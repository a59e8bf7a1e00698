"""One SQL over history and today: DuckDB with the lake's datasets as views and, when a tick store
is given (the CLI: the platform's, MARKET_DB_URL or the embedded server), its tables under the
schema `live`.

    SELECT symbol, avg(close) FROM minute_bars WHERE date = '2024-11-26' GROUP BY 1
    SELECT * FROM live.bars_1m WHERE symbol = 'AAPL' AND ts >= now() - INTERVAL 1 HOUR
    SELECT * FROM minute_bars WHERE symbol = 'AAPL'
    UNION ALL BY NAME SELECT * FROM live.bars_1m WHERE symbol = 'AAPL'

Live tables have the lake's column names (schemas.BARS, QUOTES, TRADES). They are moved into
DuckDB as Arrow (PostgreSQL COPY, parsed by Arrow; DuckDB's postgres extension is not
available offline), only those the SQL names, and only the rows it can need:

- a time-series table (bars_1m, quotes, trades) is fetched for the `ts` bounds found in the
  WHERE clauses that filter it directly (`ts >= X`, `ts > X`, `ts < X`, `ts <= X`,
  `ts BETWEEN X AND Y`, with X a constant expression such as a literal or now() - INTERVAL ...),
  and the symbols of `symbol = 'X'` or `symbol IN (...)`; without a lower bound, from the start
  of the latest session (`since` overrides that default). A table read twice with different
  filters gets the union of both ranges. DuckDB still applies the full query, so these bounds
  only decide what is copied, never the answer within them.
- the rollups (bars_5m, bars_15m, bars_1h, bars_1d: buckets of bars_1m, keyed by the bucket's
  start `ts`) are fetched the same way, from the bucket holding the default start, with their
  buckets in the window refreshed first where late minutes left them stale (`read_bars`).
- other tables (stream_stats, stream_gaps, dead_letters, universe, alerts) are fetched whole.

Read-only and sandboxed: one SELECT statement (DESCRIBE, SHOW and SUMMARIZE are SELECTs too),
run by a DuckDB connection that reaches nothing but the lake and the rows copied here. Before the
user's SQL runs, the connection forbids external access (`enable_external_access = false`) except
to the lake's own directory (`allowed_directories`; an S3 lake is read by pyarrow and scanned as
Arrow datasets, so nothing at all), installs and loads no extension (`autoinstall_known_extensions`,
`autoload_known_extensions`, `allow_community_extensions` off), and locks its configuration
(`lock_configuration`), so SQL cannot turn any of it back on. Files outside the lake (the
environment in /proc/self/environ, /etc/shadow, the home), http(s):// and s3:// URLs, COPY TO,
ATTACH and INSTALL are all refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import duckdb
import pyarrow as pa
import psycopg
from psycopg import sql

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.storage.lake import Lake
from market_platform.storage.refresh import ROLLUPS, bucket_start
from market_platform.storage.timescale import LIVE_TABLES, TABLES, TickStore

SCHEMA = "live"
#: The rollups of bars_1m by table name (bars_5m ...), and their timeframes ("5m" ...).
ROLLUP_TABLES: dict[str, str] = {name: timeframe for timeframe, (name, _) in ROLLUPS.items()}
#: The tables read by a window of `ts` (and symbols), not whole.
WINDOWED = (*LIVE_TABLES, *ROLLUP_TABLES)
LIVE_QUERYABLE = (*TABLES, *ROLLUP_TABLES, "alerts")

_LOWER = {"COMPARE_GREATERTHAN", "COMPARE_GREATERTHANOREQUALTO"}
_UPPER = {"COMPARE_LESSTHAN", "COMPARE_LESSTHANOREQUALTO"}
_FLIP = {"COMPARE_GREATERTHAN": "COMPARE_LESSTHAN", "COMPARE_GREATERTHANOREQUALTO": "COMPARE_LESSTHANOREQUALTO",
         "COMPARE_LESSTHAN": "COMPARE_GREATERTHAN", "COMPARE_LESSTHANOREQUALTO": "COMPARE_GREATERTHANOREQUALTO",
         "COMPARE_EQUAL": "COMPARE_EQUAL"}


@dataclass
class Bounds:
    """What one reference to a live table can need: a ts range and a symbol set (None: unbounded)."""

    start: datetime | None = None
    end: datetime | None = None  # inclusive: the fetch uses ts <= end
    symbols: set[str] | None = None


@dataclass
class Fetch:
    """What was copied from the tick store for one table."""

    table: str
    start: datetime | None
    end: datetime | None
    symbols: list[str] | None
    rows: int = 0
    references: list[Bounds] = field(default_factory=list)
    default_start: str | None = None  # where `start` came from when a reference had no lower bound on ts

    def describe(self) -> str:
        """What was read, in one line (New York times)."""
        def at(instant: datetime) -> str:
            return f"{instant.astimezone(calendar.NEW_YORK):%Y-%m-%d %H:%M} New York"

        window = (f"ts from {at(self.start)}" if self.start else "every row") + (
            f" to {at(self.end)}" if self.end else (" to now" if self.start else ""))
        if self.default_start:
            window += f" (no lower bound on ts in the SQL: {self.default_start})"
        symbols = f", symbols {', '.join(self.symbols)}" if self.symbols is not None else ""
        return f"{SCHEMA}.{self.table}: read {window}{symbols}: {self.rows:,} rows"


def sandbox(con: duckdb.DuckDBPyConnection, *, allowed: Sequence[str] = ()) -> duckdb.DuckDBPyConnection:
    """Lock `con` down for users' SQL (see the module docstring): files in `allowed` directories
    only, no network, no extension, and a configuration that cannot be changed back."""
    # DuckDB's progress bar writes to stdout, into the CSV or JSON a user pipes `query` to.
    for statement in ("SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
                      "SET allow_community_extensions = false", "SET enable_progress_bar = false"):
        con.execute(statement)
    if allowed:
        # Paths come from the lake's validated root (no quote: storage.lake._parse_local_url).
        con.execute("SET allowed_directories = [" + ", ".join(f"'{path}'" for path in allowed) + "]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_read_only(text: str) -> None:
    """InvalidInputError unless `text` is one SELECT statement: `query` reads, never writes."""
    con = sandbox(duckdb.connect())
    try:
        statements = con.extract_statements(text)
    except duckdb.Error as exc:
        raise InvalidInputError(f"cannot parse the SQL: {' '.join(str(exc).split())[:300]}") from None
    finally:
        con.close()
    if not statements:
        raise InvalidInputError("empty query: expected a SQL statement")
    kinds = [statement.type.name for statement in statements]
    if kinds != ["SELECT"]:
        other = next((kind for kind in kinds if kind != "SELECT"), None)
        raise InvalidInputError(
            f"query is read-only: expected one SELECT statement, got {other or f'{len(kinds)} statements'} "
            "(the lake is written by the platform's assets, the tick store by its streams)")


def parse(text: str) -> dict:
    """DuckDB's syntax tree of `text` (json_serialize_sql); InvalidInputError when it does not parse."""
    con = sandbox(duckdb.connect())
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql($1)", [text]).fetchone()[0])
    finally:
        con.close()
    if tree.get("error"):
        raise InvalidInputError(f"cannot parse the SQL: {tree.get('error_message')}")
    return tree


def live_tables(text: str) -> list[str]:
    """The `live.` tables that `text` (one SELECT, see `check_read_only`) reads."""
    check_read_only(text)
    return referenced_live_tables(parse(text))


def referenced_live_tables(tree: dict) -> list[str]:
    """Names of the `live.` tables a parsed SQL reads (InvalidInputError for one that does not exist)."""
    names = {node.get("table_name") for node in _walk(tree.get("statements", []))
             if node.get("type") == "BASE_TABLE" and node.get("schema_name") == SCHEMA}
    unknown = sorted(names - set(LIVE_QUERYABLE))
    if unknown:
        raise InvalidInputError(f"no live table {', '.join(unknown)}: expected one of {', '.join(LIVE_QUERYABLE)}")
    return sorted(names)


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _conjuncts(expr: dict | None) -> list[dict]:
    if not expr:
        return []
    if expr.get("class") == "CONJUNCTION" and expr.get("type") == "CONJUNCTION_AND":
        return [c for child in expr["children"] for c in _conjuncts(child)]
    return [expr]


def _column(expr: dict, name: str, aliases: set[str]) -> bool:
    if expr.get("class") != "COLUMN_REF":
        return False
    names = expr.get("column_names", [])
    return bool(names) and names[-1] == name and (len(names) == 1 or names[-2] in aliases)


def _constant_span(text: str, expr: dict) -> str | None:
    """The SQL text of a column-free, subquery-free expression, from its nodes' locations."""
    spans = []
    for node in _walk(expr):
        if node.get("class") in ("COLUMN_REF", "SUBQUERY", "PARAMETER", "WINDOW"):
            return None
        location, length = node.get("query_location"), node.get("query_location_length")
        if isinstance(location, int) and location < len(text) and length:
            spans.append((location, location + length))
    if not spans:
        return None
    return text[min(s for s, _ in spans):max(e for _, e in spans)]


class _Evaluator:
    def __init__(self) -> None:
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        sandbox(self.con)

    def instant(self, expression: str) -> datetime | None:
        # The user's own expression, evaluated alone in a scratch connection with no data.
        try:
            value = self.con.execute(f"SELECT CAST(({expression}) AS TIMESTAMPTZ)").fetchone()[0]  # noqa: S608
        except duckdb.Error:
            return None  # not a constant timestamp after all: no bound from it
        return value if isinstance(value, datetime) else None

    def strings(self, expressions: list[dict]) -> set[str] | None:
        out = set()
        for expr in expressions:
            literal = expr.get("literal") if expr.get("class") == "CONSTANT" else None
            if not literal or literal.get("kind") != "STRING":
                return None
            out.add(literal["text"])
        return out

    def close(self) -> None:
        self.con.close()


def pushdown(text: str, table: str, tree: dict | None = None) -> list[Bounds]:
    """For each SELECT that reads `live.<table>` directly, the bounds its WHERE puts on ts and symbol."""
    tree = tree or parse(text)
    found: list[Bounds] = []
    evaluator = _Evaluator()
    try:
        for node in _walk(tree.get("statements", [])):
            if node.get("type") != "SELECT_NODE":
                continue
            refs = [ref for ref in _walk(node.get("from_table")) if ref.get("type") == "BASE_TABLE"
                    and ref.get("schema_name") == SCHEMA and ref.get("table_name") == table]
            # Joins: a filter on another table's ts cannot bound this one, so only a direct FROM counts.
            direct = node.get("from_table", {}).get("type") == "BASE_TABLE"
            for ref in refs:
                bounds = Bounds()
                if direct:
                    aliases = {ref.get("alias") or table, table}
                    _bounds_from(node.get("where_clause"), aliases, text, evaluator, bounds)
                found.append(bounds)
    finally:
        evaluator.close()
    return found


def _bounds_from(where: dict | None, aliases: set[str], text: str, evaluator: _Evaluator, bounds: Bounds) -> None:
    for expr in _conjuncts(where):
        kind = expr.get("type")
        if expr.get("class") == "COMPARISON" and kind in _FLIP:
            left, right = expr["left"], expr["right"]
            if not _column(left, "ts", aliases) and not _column(left, "symbol", aliases):
                left, right, kind = right, left, _FLIP[kind]
            if _column(left, "ts", aliases):
                span = _constant_span(text, right)
                instant = evaluator.instant(span) if span else None
                if instant is None:
                    continue
                if kind in _LOWER or kind == "COMPARE_EQUAL":
                    bounds.start = max(bounds.start, instant) if bounds.start else instant
                if kind in _UPPER or kind == "COMPARE_EQUAL":
                    bounds.end = min(bounds.end, instant) if bounds.end else instant
            elif _column(left, "symbol", aliases) and kind == "COMPARE_EQUAL":
                symbols = evaluator.strings([right])
                if symbols is not None:
                    bounds.symbols = symbols if bounds.symbols is None else bounds.symbols & symbols
        elif expr.get("class") == "BETWEEN" and _column(expr.get("input", {}), "ts", aliases):
            for side, attr in ((expr.get("lower"), "start"), (expr.get("upper"), "end")):
                span = _constant_span(text, side or {})
                instant = evaluator.instant(span) if span else None
                if instant is not None:
                    setattr(bounds, attr, instant)
        elif expr.get("class") == "OPERATOR" and kind == "COMPARE_IN":
            children = expr.get("children", [])
            if children and _column(children[0], "symbol", aliases):
                symbols = evaluator.strings(children[1:])
                if symbols is not None:
                    bounds.symbols = symbols if bounds.symbols is None else bounds.symbols & symbols


def default_since(now: datetime | None = None) -> datetime:
    """The start (04:00 New York) of the session running at `now`, else of the last one."""
    now = now or datetime.now(timezone.utc)
    cal = calendar.default_calendar()
    running = cal.session_at(now)
    if running is not None:
        return running.start
    return cal.session(cal.last_completed_session(now)).start


def plan(text: str, table: str, *, since: datetime | None = None, tree: dict | None = None) -> Fetch:
    """What to copy of `live.<table>` for `text`: the hull of every reference's bounds."""
    references = pushdown(text, table, tree) if table in WINDOWED else []
    if table not in WINDOWED:
        return Fetch(table, None, None, None, references=references)
    fallback = since or default_since()
    if table in ROLLUP_TABLES:  # the bucket holding it (a day's bar starts at midnight New York)
        fallback = bucket_start(table, fallback)
    starts = [b.start or fallback for b in references] or [fallback]
    ends = [b.end for b in references]
    symbol_sets = [b.symbols for b in references]
    return Fetch(
        table,
        start=min(starts),
        end=None if not ends or any(e is None for e in ends) else max(ends),
        symbols=None if not symbol_sets or any(s is None for s in symbol_sets) else sorted(set().union(*symbol_sets)),
        references=references,
        default_start=(("--since" if since else "the latest session's start; a ts filter or --since reads more")
                       if min(starts) == fallback and (not references or any(b.start is None for b in references))
                       else None),
    )


def fetch(store: TickStore, plan_: Fetch) -> pa.Table:
    """The rows `plan_` asks for, from the tick store, as Arrow. A rollup is read through
    `read_bars`, which refreshes its buckets in the window that late minutes left stale."""
    if plan_.table in ROLLUP_TABLES:
        # read_bars' end is exclusive, the plan's inclusive; no end: every bucket started by now.
        # (An empty window still reads [start, start]: DuckDB applies the SQL's own filters.)
        end = plan_.end if plan_.end is not None else datetime.now(timezone.utc)
        end = max(end, plan_.start) + timedelta(microseconds=1)
        return store.read_bars(ROLLUP_TABLES[plan_.table], plan_.start, end, symbols=plan_.symbols)
    clauses, params = [], []
    if plan_.start is not None:
        clauses.append(sql.SQL("ts >= %s"))
        params.append(plan_.start)
    if plan_.end is not None:
        clauses.append(sql.SQL("ts <= %s"))
        params.append(plan_.end)
    if plan_.symbols is not None:
        clauses.append(sql.SQL("symbol = ANY(%s)"))
        params.append(plan_.symbols)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    try:
        return store.read_arrow(sql.SQL("SELECT * FROM {}{}").format(sql.Identifier(plan_.table), where),
                                params or None)
    except psycopg.errors.UndefinedTable:
        raise InvalidInputError(f"the tick store has no table {plan_.table} yet: `market-platform db init` creates "
                                "the schema (a stream fills it)") from None


def connect(
    lake: Lake, text: str, *, store: TickStore | None = None, since: datetime | None = None
) -> tuple[duckdb.DuckDBPyConnection, list[Fetch]]:
    """A DuckDB connection ready to run `text`: the lake's views, plus the live tables it names
    (copied from `store`). Returns the connection (the caller closes it) and what was copied."""
    check_read_only(text)
    tree = parse(text)
    tables = referenced_live_tables(tree)
    con = lake.connect()
    try:
        if tables and store is None:
            raise InvalidInputError(
                f"the query reads {', '.join(SCHEMA + '.' + t for t in tables)}, but no tick store was given"
            )
        fetched = []
        if tables:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        for table in tables:
            todo = plan(text, table, since=since, tree=tree)
            rows = fetch(store, todo)
            todo.rows = rows.num_rows
            con.register(f"__live_{table}", rows)
            # PostgreSQL keeps microseconds; as TIMESTAMPTZ (not _NS) ts compares with typed literals.
            replace = " REPLACE (CAST(ts AS TIMESTAMPTZ) AS ts)" if "ts" in rows.column_names else ""
            con.execute(f'CREATE VIEW {SCHEMA}."{table}" AS SELECT *{replace} FROM "__live_{table}"')
            fetched.append(todo)
        root = lake.local_root
        sandbox(con, allowed=[f"{root}/"] if root is not None else ())
    except BaseException:
        con.close()
        raise
    return con, fetched


def run(
    text: str, *, lake: Lake, store: TickStore | None = None, since: datetime | None = None
) -> tuple[pa.Table, list[Fetch]]:
    """Run `text` over the lake (and the live tables it names); the result as Arrow, and what was
    copied from the tick store.

    Raises InvalidInputError for SQL that is not one SELECT, or that DuckDB rejects (its message).
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("empty query: expected a SQL statement")
    try:
        con, fetched = connect(lake, text, store=store, since=since)
    except duckdb.Error as exc:
        raise InvalidInputError(f"query rejected: {str(exc).splitlines()[0]}") from None
    try:
        relation = con.sql(text)
        return (relation.to_arrow_table() if relation is not None else pa.table({})), fetched
    except duckdb.Error as exc:
        raise InvalidInputError(f"query failed: {' '.join(str(exc).split())[:500]}") from None
    finally:
        con.close()


def query(
    text: str, *, lake: Lake, store: TickStore | None = None, since: datetime | None = None
) -> pa.Table:
    """`run`'s result alone."""
    return run(text, lake=lake, store=store, since=since)[0]
