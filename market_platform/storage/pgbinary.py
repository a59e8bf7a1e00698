"""PostgreSQL's binary COPY format built from Arrow columns, with no Python object per row.

A COPY BINARY stream is a header, then per row an int16 field count and per field an int32
length (-1 for null) followed by the value in network byte order, then an int16 -1 trailer.
Here every column becomes one or two Arrow binary arrays holding each row's bytes for that
field (fixed-width values through big-endian numpy arrays, strings straight from Arrow's
buffers), and `binary_join_element_wise` concatenates them row by row in C++: the joined
array's data buffer is the COPY payload.

Non-null fixed-width columns go first, packed together in one numpy structured array per row
(with the field count), so `encode` returns the column order the COPY statement must name.

Conversions: timestamps become microseconds since 2000-01-01 UTC (nanoseconds are truncated
toward minus infinity: PostgreSQL keeps microseconds; a timestamp without a zone is taken as
UTC); date32 becomes days since 2000-01-01; float64, int64, int32, int16 and bool map to
double precision, bigint, integer, smallint and boolean; string and binary to text and bytea.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = b"\xff\xff"

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
_PG_EPOCH_DAYS = 10_957  # 2000-01-01 in Unix days
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}

#: Rows per encoded chunk: bounds memory and keeps Arrow's 32-bit binary offsets far from 2 GiB.
CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class Encoded:
    """A table as COPY BINARY chunks; `columns` is the order the COPY column list must use."""

    columns: list[str]
    chunks: Iterator[bytes | memoryview]


def _fixed_dtype(arrow_type: pa.DataType) -> np.dtype | None:
    """The big-endian numpy dtype of a fixed-width Arrow type, None for variable-width types."""
    if pa.types.is_timestamp(arrow_type):
        return np.dtype(">i8")
    if pa.types.is_date32(arrow_type):
        return np.dtype(">i4")
    if pa.types.is_boolean(arrow_type):
        return np.dtype("u1")
    if arrow_type in (pa.float64(), pa.float32(), pa.int64(), pa.int32(), pa.int16()):
        return np.dtype(arrow_type.to_pandas_dtype()).newbyteorder(">")
    return None


def _is_variable(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or (
        pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
    )


def _values(column: pa.Array) -> np.ndarray:
    """The column's values as PostgreSQL's binary representation wants them (nulls as 0)."""
    arrow_type = column.type
    if column.null_count:
        column = pc.fill_null(column, pa.scalar(0, arrow_type) if not pa.types.is_boolean(arrow_type)
                              else pa.scalar(False))
    if pa.types.is_timestamp(arrow_type):
        raw = column.cast(pa.int64()).to_numpy(zero_copy_only=False)
        if arrow_type.unit == "ns":
            micros = raw // 1_000  # floor: truncation toward minus infinity
        else:
            micros = raw * _US_PER_UNIT[arrow_type.unit]
        return micros - _PG_EPOCH_US
    if pa.types.is_date32(arrow_type):
        return column.cast(pa.int32()).to_numpy(zero_copy_only=False) - _PG_EPOCH_DAYS
    if pa.types.is_boolean(arrow_type):
        return column.to_numpy(zero_copy_only=False).astype("u1")
    return column.to_numpy(zero_copy_only=False)


def _binary(n: int, offsets: np.ndarray, data: bytes | pa.Buffer) -> pa.Array:
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    )


def _fixed_pieces(n: int, width: int, data: bytes) -> pa.Array:
    """n values of `width` bytes each, as a binary array (zero copy of `data`)."""
    return _binary(n, np.arange(n + 1, dtype=np.int64) * width, data)


def _length_prefixes(lengths: np.ndarray) -> pa.Array:
    return _fixed_pieces(len(lengths), 4, lengths.astype(">i4").tobytes())


def _nullable_fixed(column: pa.Array, dtype: np.dtype) -> list[pa.Array]:
    """Length prefix (width or -1) and value bytes (none for nulls) of a fixed-width column."""
    n = len(column)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    width = dtype.itemsize
    lengths = np.where(valid, width, -1)
    data = _values(column).astype(dtype)[valid].tobytes()
    offsets = np.concatenate([[0], np.cumsum(valid.astype(np.int64) * width)])
    return [_length_prefixes(lengths), _binary(n, offsets, data)]


def _variable(column: pa.Array) -> list[pa.Array]:
    """Length prefix (byte length or -1) and bytes of a string/binary column."""
    lengths = pc.binary_length(column).fill_null(-1).to_numpy(zero_copy_only=False)
    return [_length_prefixes(lengths), pc.cast(column, pa.binary()).fill_null(b"")]


def _encode_batch(batch: pa.RecordBatch, fixed: list[str], rest: list[str]) -> pa.Buffer:
    n = batch.num_rows
    record = np.dtype(
        [("count", ">i2")]
        + [item for name in fixed for item in ((f"{name}_len", ">i4"),
                                                (name, _fixed_dtype(batch.schema.field(name).type)))]
    )
    rows = np.empty(n, dtype=record)
    rows["count"] = len(fixed) + len(rest)
    for name in fixed:
        rows[f"{name}_len"] = record[name].itemsize
        rows[name] = _values(batch.column(name))
    pieces = [_fixed_pieces(n, record.itemsize, rows.tobytes())]
    for name in rest:
        column = batch.column(name)
        dtype = _fixed_dtype(column.type)
        pieces.extend(_nullable_fixed(column, dtype) if dtype is not None else _variable(column))
    joined = pc.binary_join_element_wise(*pieces, b"")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=n + 1, offset=joined.offset * 4)
    return joined.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def encode(table: pa.Table, *, chunk_rows: int = CHUNK_ROWS) -> Encoded:
    """`table` as COPY BINARY payload chunks (header first, trailer last) and their column order.

    Raises TypeError for a column type with no mapping here (the message names the column).
    """
    fixed: list[str] = []
    rest: list[str] = []
    for field in table.schema:
        dtype = _fixed_dtype(field.type)
        if dtype is None and not _is_variable(field.type):
            raise TypeError(f"column {field.name!r} has type {field.type}, which COPY BINARY here cannot encode")
        (fixed if dtype is not None and table.column(field.name).null_count == 0 else rest).append(field.name)

    def chunks() -> Iterator[bytes | memoryview]:
        yield HEADER
        for batch in table.to_batches(max_chunksize=chunk_rows):
            if batch.num_rows:
                yield memoryview(_encode_batch(batch, fixed, rest))
        yield TRAILER

    return Encoded(columns=fixed + rest, chunks=chunks())
