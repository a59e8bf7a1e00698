"""Binary COPY into bars_1m and quotes against batched executemany, in the same run; prints JSON.

Every method starts from the same Arrow table and writes into empty tables of a fresh database
(created on MARKET_DB_URL's server, default the PostgreSQL at 127.0.0.1:5432, and dropped at
the end); the figure is the median of --repeat runs.

    copy_*          TickStore.write_bars / write_quotes: Arrow -> COPY BINARY buffer -> staging
                    table -> INSERT ... ON CONFLICT (upsert for bars, DO NOTHING for quotes)
    copy_append     write_quotes(dedupe=False): COPY BINARY straight into the table
    executemany     psycopg 3 executemany of INSERT ... ON CONFLICT, the rows already Python
                    tuples (their conversion from Arrow is not timed: generous to executemany)
    encoder_*       COPY into a temporary table only, to compare the buffer built from Arrow
                    columns with psycopg's write_row (binary, set_types) over Python tuples

Usage: python benchmarks/copy_throughput.py [--rows 300000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
from psycopg import sql  # noqa: E402

from market_platform.storage import pgbinary, synthetic  # noqa: E402
from market_platform.storage.timescale import (  # noqa: E402
    KEYS,
    TickStore,
    create_database,
    drop_database,
)

PG_TYPES = {pa.string(): "text", pa.float64(): "float8", pa.int64(): "int8",
            pa.timestamp("ns", "UTC"): "timestamptz"}


def _median_rate(rows: int, repeat: int, prepare: Callable[[], None], run: Callable[[], int]) -> float:
    rates = []
    for _ in range(repeat):
        prepare()
        start = time.perf_counter()
        written = run()
        elapsed = time.perf_counter() - start
        assert written == rows, f"wrote {written} rows, expected {rows}"
        rates.append(rows / elapsed)
    return round(statistics.median(rates))


def _executemany(store: TickStore, target: str, table: pa.Table, conflict: sql.Composable) -> Callable[[], int]:
    columns = [sql.Identifier(name) for name in table.column_names]
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ").format(
        sql.Identifier(target), sql.SQL(", ").join(columns), sql.SQL(", ").join(sql.Placeholder() * len(columns))
    ) + conflict
    rows = [tuple(row.values()) for row in table.to_pylist()]

    def run() -> int:
        with store.connect() as conn:
            conn.cursor().executemany(statement, rows)
            conn.commit()
        return len(rows)

    return run


def _encoders(store: TickStore, table: pa.Table, repeat: int) -> dict[str, int]:
    """COPY into a temp table: buffer from Arrow columns vs write_row over Python tuples."""
    names = table.column_names
    types = [PG_TYPES[table.schema.field(name).type] for name in names]
    rows = [tuple(row.values()) for row in table.to_pylist()]
    conn = store.connect()
    conn.execute(sql.SQL("CREATE TEMP TABLE enc ({})").format(sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in zip(names, types))))
    conn.commit()

    def clear() -> None:
        conn.execute("TRUNCATE enc")
        conn.commit()

    def copy_statement(order: list[str]) -> sql.Composed:
        return sql.SQL("COPY enc ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.SQL(", ").join(map(sql.Identifier, order)))

    def from_arrow() -> int:
        encoded = pgbinary.encode(table)
        cur = conn.cursor()
        with cur.copy(copy_statement(encoded.columns)) as copy:
            for chunk in encoded.chunks:
                copy.write(chunk)
        conn.commit()
        return cur.rowcount

    def from_arrow_with_tuples() -> int:  # write_row needs Python rows: count building them too
        cur = conn.cursor()
        with cur.copy(copy_statement(names)) as copy:
            copy.set_types(types)
            for row in table.to_pylist():
                copy.write_row(tuple(row.values()))
        conn.commit()
        return cur.rowcount

    def from_tuples() -> int:
        cur = conn.cursor()
        with cur.copy(copy_statement(names)) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return cur.rowcount

    try:
        return {
            "encoder_arrow_buffer_rows_per_s": _median_rate(table.num_rows, repeat, clear, from_arrow),
            "encoder_write_row_set_types_rows_per_s": _median_rate(table.num_rows, repeat, clear, from_tuples),
            "encoder_write_row_incl_to_pylist_rows_per_s": _median_rate(
                table.num_rows, repeat, clear, from_arrow_with_tuples),
        }
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    admin = os.environ.get("MARKET_DB_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"mp_bench_{uuid.uuid4().hex[:8]}"
    create_database(admin, name)
    head, sep, query = admin.partition("?")
    store = TickStore(head.rsplit("/", 1)[0] + "/" + name + sep + query)
    try:
        store.init_schema()
        symbols = 500
        bars = synthetic.bars(args.rows // symbols, symbols=symbols)
        quotes = synthetic.quotes(args.rows, symbols=symbols)

        def truncate(table: str) -> Callable[[], None]:
            def run() -> None:
                with store.connect() as conn:
                    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
                    conn.commit()
            return run

        bar_keys = sql.SQL(", ").join(map(sql.Identifier, KEYS["bars"]))
        bar_values = [sql.Identifier(n) for n in bars.column_names if n not in KEYS["bars"]]
        bar_upsert = sql.SQL("ON CONFLICT ({}) DO UPDATE SET {}").format(
            bar_keys, sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(v, v) for v in bar_values))
        result_bars = {
            "rows": bars.num_rows,
            "copy_upsert_rows_per_s": _median_rate(bars.num_rows, args.repeat, truncate("bars_1m"),
                                                   lambda: store.write_bars(bars)),
            "executemany_rows_per_s": _median_rate(bars.num_rows, args.repeat, truncate("bars_1m"),
                                                   _executemany(store, "bars_1m", bars, bar_upsert)),
        }
        result_bars["ratio"] = round(result_bars["copy_upsert_rows_per_s"] / result_bars["executemany_rows_per_s"], 2)

        result_quotes = {
            "rows": quotes.num_rows,
            "copy_dedupe_rows_per_s": _median_rate(quotes.num_rows, args.repeat, truncate("quotes"),
                                                   lambda: store.write_quotes(quotes)),
            "copy_append_rows_per_s": _median_rate(quotes.num_rows, args.repeat, truncate("quotes"),
                                                   lambda: store.write_quotes(quotes, dedupe=False)),
            "executemany_rows_per_s": _median_rate(quotes.num_rows, args.repeat, truncate("quotes"),
                                                   _executemany(store, "quotes", quotes,
                                                                sql.SQL("ON CONFLICT DO NOTHING"))),
        }
        result_quotes["ratio"] = round(result_quotes["copy_dedupe_rows_per_s"] / result_quotes["executemany_rows_per_s"], 2)
        result_quotes["ratio_append"] = round(
            result_quotes["copy_append_rows_per_s"] / result_quotes["executemany_rows_per_s"], 2)
        with store.connect() as conn:
            version = conn.info.server_version
        print(json.dumps({
            "benchmark": "copy_throughput",
            "server_version": version,
            "variant": store.variant(),
            "repeat": args.repeat,
            "bars_1m": result_bars,
            "quotes": result_quotes,
            "quotes_encoder": _encoders(store, quotes, args.repeat),
        }, indent=2))
    finally:
        store.close()
        drop_database(admin, name)


if __name__ == "__main__":
    main()
