"""Reads from the tick store as Arrow tables: any SELECT (`read_arrow`), and bars of every
timeframe (`read_bars`: bars_1m and its four rollups, refreshed first where minutes written
behind their watermark are pending: see storage/refresh.py)."""

from __future__ import annotations

import io
from datetime import date, datetime
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from market_platform.errors import InvalidInputError
from market_platform.schemas import SCHEMAS, STOCK_CATEGORIES
from market_platform.storage.maintenance import aware
from market_platform.storage.migrations import Schema
from market_platform.storage.refresh import ROLLUPS, Refresher
from market_platform.storage.server import StoreConnection

#: Arrow type of every column name the schemas define (they agree where names repeat).
_SCHEMA_TYPES: dict[str, pa.DataType] = {f.name: f.type for s in SCHEMAS.values() for f in s}
#: The relations whose columns are the schemas' (bars of every timeframe, quotes, trades, the
#: universe, the snapshots). A column read straight from another table (stream_stats.minute)
#: keeps its PostgreSQL type though its name is a schema's; a computed column (no table) is
#: typed by its name.
SCHEMA_RELATIONS = frozenset({"quotes", "trades", "bars_1m", "bars_5m", "bars_15m", "bars_1h", "bars_1d",
                              "universe", "market_snapshots"})
#: The CSV parser's block; a block must hold the longest row, so a read with longer values
#: (a 2 MB message in dead_letters) is parsed again as one block.
_BLOCK_BYTES = 1 << 20

_OID_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    700: pa.float32(),
    701: pa.float64(),
    1700: pa.float64(),  # numeric: sums of bigints and the like
    1082: pa.date32(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", "UTC"),
}


def _parse_csv(data: bytes, names: list[str], types: dict[str, pa.DataType], block: int) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names, block_size=block),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=types, null_values=[""], strings_can_be_null=True,
            quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"],
        ),
    )


def _csv_to_arrow(data: bytes, description: Sequence[Any], by_schema: Sequence[bool] | None = None) -> pa.Table:
    """`data` (COPY CSV) as a table of the columns `description` names; `by_schema[i]` whether
    column i takes the schemas' type of its name (default: every column)."""
    names = [column.name for column in description]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"query returns duplicate column names {names}: alias them apart")
    types = {column.name: _OID_TYPES.get(column.type_code, pa.string()) for column in description}
    if data:
        try:
            table = _parse_csv(data, names, types, _BLOCK_BYTES)
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc):
                raise
            table = _parse_csv(data, names, types, len(data) + 1)
    else:
        table = pa.table({name: pa.array([], types[name]) for name in names})
    for index, name in enumerate(names):
        wanted = _SCHEMA_TYPES.get(name) if by_schema is None or by_schema[index] else None
        if wanted is not None and table.schema.field(index).type != wanted:
            try:
                table = table.set_column(index, name, table.column(index).cast(wanted))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # a same-named column of another kind: keep what PostgreSQL returned
    return table



#: Per category, the active symbols of the snapshot in force on the day: the latest on or before
#: it, never a later one, which would list tickers not listed yet (the rule backfills follow too:
#: `history.universe.session_symbols`).
_UNIVERSE_SQL = """
SELECT DISTINCT u.symbol FROM universe u
WHERE u.category = ANY(%(categories)s) AND u.active
  AND u.snapshot_date = (SELECT max(snapshot_date) FROM universe
                         WHERE category = u.category AND snapshot_date <= %(day)s)
ORDER BY u.symbol
"""


class Reads:
    """The readers of the database behind `connection`."""

    def __init__(self, connection: StoreConnection, schema: Schema, refresher: Refresher) -> None:
        self._connection = connection
        self._schema = schema
        self._refresher = refresher
        self._relations: dict[int, str] = {}  # pg_class oid -> name, of the relations read so far

    def read_arrow(self, query: sql.Composable | str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pa.Table:
        """The rows of a SELECT as an Arrow table, moved with COPY (CSV) and parsed by Arrow.

        Columns named as in `market_platform.schemas` get that schema's type (ts becomes
        timestamp[ns, UTC]) unless they are read from a table the schemas do not describe
        (`SCHEMA_RELATIONS`); others get the Arrow type of their PostgreSQL type (timestamptz
        as timestamp[us, UTC]; text, arrays, bytea as hex, json and the like as strings).
        """
        statement = sql.SQL(query) if isinstance(query, str) else query
        with self._connection.session() as conn:
            with conn.transaction():
                conn.execute("SET LOCAL TimeZone = 'UTC'")
                cur = conn.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(statement), params)
                description = cur.description
                by_schema = self._by_schema(conn, [cur.pgresult.ftable(i) for i in range(len(description))])
                buffer = io.BytesIO()
                with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(statement), params) as copy:
                    for block in copy:
                        buffer.write(block)
        return _csv_to_arrow(buffer.getvalue(), description, by_schema)

    def _by_schema(self, conn, relations: list[int]) -> list[bool]:
        """Per column, from the oid of the relation it is read from (0: computed), whether the
        schemas' type of its name applies (see `SCHEMA_RELATIONS`)."""
        unknown = sorted({oid for oid in relations if oid and oid not in self._relations})
        if unknown:
            self._relations.update(conn.execute(
                "SELECT oid::bigint, relname::text FROM pg_class WHERE oid = ANY(%s::oid[])", (unknown,)).fetchall())
        return [not oid or self._relations.get(oid) in SCHEMA_RELATIONS for oid in relations]

    def universe_symbols(self, day: date | str, *, categories: Sequence[str] = STOCK_CATEGORIES) -> list[str]:
        """The symbols of `categories` in the universe `ticker_universe` discovered, as in force
        on `day` (the latest snapshot on or before it), sorted; empty when there is none."""
        return self.read_arrow(_UNIVERSE_SQL, {"day": str(day), "categories": list(categories)}) \
            .column("symbol").to_pylist()

    def read_bars(
        self,
        timeframe: str,
        start: datetime,
        end: datetime,
        *,
        symbols: Sequence[str] | None = None,
    ) -> pa.Table:
        """Bars of `timeframe` ("1m", "5m", "15m", "1h", "1d") whose start is in [start, end),
        ordered by symbol and ts: a bucket that began before `start` is left out though it overlaps
        the window (from 09:30 New York, the hours from 10:00 and no day), on plain PostgreSQL
        and TimescaleDB alike. Rollups have no source column (they span all sources).

        A rollup's buckets in the window that minutes written behind its watermark left stale
        are refreshed first (`refresh_rollups`, storage/refresh.py)."""
        aware(start, "start"), aware(end, "end")
        if end <= start:
            raise InvalidInputError(f"end={end} is not after start={start}")
        symbol_filter = sql.SQL(" AND symbol = ANY(%(symbols)s)") if symbols is not None else sql.SQL("")
        params = {"start": start, "end": end, "symbols": list(symbols or [])}
        if timeframe == "1m":
            query = sql.SQL(
                "SELECT * FROM bars_1m WHERE ts >= %(start)s AND ts < %(end)s{} ORDER BY symbol, ts, source"
            ).format(symbol_filter)
        elif timeframe in ROLLUPS:
            name, width = ROLLUPS[timeframe]
            self._refresher.refresh(rollups=[name], start=start, end=end)
            if self._schema.variant() == "postgres":  # the function prunes bars_1m's partitions; the view cannot
                params["width"] = width
                query = sql.SQL(
                    "SELECT * FROM bars_rollup(%(width)s, %(start)s, %(end)s) WHERE true{} ORDER BY symbol, ts"
                ).format(symbol_filter)
            else:
                query = sql.SQL(
                    "SELECT * FROM {} WHERE ts >= %(start)s AND ts < %(end)s{} ORDER BY symbol, ts"
                ).format(sql.Identifier(name), symbol_filter)
        else:
            raise InvalidInputError(f"unknown timeframe {timeframe!r}: expected 1m, {', '.join(ROLLUPS)}")
        return self.read_arrow(query, params)
