"""The COPY BINARY encoder against a real server: every supported type, nulls, slices, chunks."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from psycopg import sql

from market_platform.storage import pgbinary

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

COLUMNS = {
    "s": ("text", pa.array(["a", None, "", "héllo ✓", "x" * 1000, "tab\tnew\nline"])),
    "b": ("bytea", pa.array([b"\x00\xff", None, b"", b"ok", b"\n", b"z"], pa.binary())),
    "ts": ("timestamptz", pa.array([0, 1_999, -1_999, 1_709_303_400_123_456_789, None, 2**62],
                                   pa.timestamp("ns", "UTC"))),
    "ts_us": ("timestamptz", pa.array([0, 1, -1, 1_709_303_400_123_456, 5, 6], pa.timestamp("us", "UTC"))),
    "ts_s": ("timestamptz", pa.array([0, 1, -1, 1_709_303_400, 5, 6], pa.timestamp("s"))),
    "f8": ("double precision", pa.array([1.5, None, -0.0, 1e300, float("inf"), 5e-324])),
    "f4": ("real", pa.array([1.5, 2.5, -3.25, 0.0, None, 1e30], pa.float32())),
    "i8": ("bigint", pa.array([1, -(2**63), 2**63 - 1, 0, 7, None], pa.int64())),
    "i4": ("integer", pa.array([1, -(2**31), 2**31 - 1, 0, 7, 8], pa.int32())),
    "i2": ("smallint", pa.array([1, -(2**15), 2**15 - 1, None, 7, 8], pa.int16())),
    "d": ("date", pa.array([date(2000, 1, 1), date(1970, 1, 1), None, date(2024, 2, 29), date(1900, 3, 1),
                            date(2100, 12, 31)])),
    "ok": ("boolean", pa.array([True, False, None, True, False, True])),
}


@pytest.mark.parametrize("chunk_rows", [1, 4, 65_536])
def test_every_type_round_trips(pg_server_url: str, chunk_rows: int) -> None:
    table = pa.table({name: array for name, (_, array) in COLUMNS.items()})
    # A sliced, multi-chunk table: offsets into Arrow buffers must be honoured.
    table = pa.concat_tables([table.slice(0, 2), table.slice(2)]).slice(1)
    encoded = pgbinary.encode(table, chunk_rows=chunk_rows)
    assert sorted(encoded.columns) == sorted(COLUMNS)
    with psycopg.connect(pg_server_url) as conn:
        conn.execute(sql.SQL("CREATE TEMP TABLE t ({})").format(sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type)) for name, (pg_type, _) in COLUMNS.items()
        )))
        with conn.cursor().copy(sql.SQL("COPY t ({}) FROM STDIN (FORMAT BINARY)").format(
                sql.SQL(", ").join(map(sql.Identifier, encoded.columns)))) as copy:
            for chunk in encoded.chunks:
                copy.write(chunk)
        rows = conn.execute(sql.SQL("SELECT {} FROM t").format(
            sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))).fetchall()
    assert len(rows) == 5
    for index, name in enumerate(COLUMNS):
        assert [row[index] for row in rows] == _expected(table.column(name)), name


def _expected(column: pa.ChunkedArray) -> list:
    """The values PostgreSQL should hold: microseconds (floored) for timestamps, UTC where no zone."""
    if pa.types.is_timestamp(column.type):
        micros = pc.cast(column, pa.timestamp(column.type.unit)).cast(pa.int64()).to_pylist()
        per_unit = {"s": 1_000_000, "us": 1, "ns": None}[column.type.unit]
        return [None if v is None else EPOCH + timedelta(microseconds=v // 1000 if per_unit is None else v * per_unit)
                for v in micros]
    if column.type == pa.float32():  # psycopg reads real as the shortest decimal of the float32
        return [None if v is None else float(str(np.float32(v))) for v in column.to_pylist()]
    return column.to_pylist()


def test_unsupported_types_are_named() -> None:
    with pytest.raises(TypeError, match="column 'tags' has type list<item: string>"):
        pgbinary.encode(pa.table({"tags": pa.array([["a"]])}))


def test_empty_table_is_header_and_trailer() -> None:
    encoded = pgbinary.encode(pa.table({"s": pa.array([], pa.string())}))
    assert b"".join(bytes(c) for c in encoded.chunks) == pgbinary.HEADER + pgbinary.TRAILER
