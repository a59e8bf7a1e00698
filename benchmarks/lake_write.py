"""Lake write and read-back speed for one day of 1-minute bars (~700k rows). Prints one JSON object.

The bars are generated with numpy in arrival order (minute by minute, every symbol), so each write
also pays for the sort by (symbol, ts). Figures are the median of `--repeat` runs on a local lake
in a temp dir.

    python benchmarks/lake_write.py [--symbols 3000] [--minutes 234] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from market_platform import schemas
from market_platform.storage.lake import DEFAULT_ROW_GROUP_ROWS, Lake

DAY = "2024-11-29"


def day_of_bars(symbols: int, minutes: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = symbols * minutes
    start = np.datetime64(f"{DAY}T14:30", "ns").astype(np.int64)
    walk = 50 + 100 * rng.random(symbols)  # one price level per symbol, then a random walk
    close = np.repeat(walk[None, :], minutes, axis=0) * np.exp(
        rng.standard_normal((minutes, symbols)).cumsum(axis=0) * 1e-3
    )
    close = np.round(close.ravel(), 2)  # vendors send cents
    spread = np.round(np.abs(rng.standard_normal(n)) * close * 1e-3, 2)
    names = np.array([f"T{i:04d}" for i in range(symbols)], dtype=object)
    return pa.table(
        {
            "symbol": pa.array(np.tile(names, minutes), pa.string()),
            "ts": pa.array(
                start + np.repeat(np.arange(minutes, dtype=np.int64), symbols) * 60_000_000_000, schemas.TS
            ),
            "open": close - spread / 2,
            "high": close + spread,
            "low": close - spread,
            "close": close,
            "volume": rng.integers(100, 50_000, n).astype(np.float64),
            "vwap": np.round(close + spread / 3, 4),
            "trade_count": rng.integers(1, 500, n),
            "source": pa.array(np.full(n, "sim", dtype=object), pa.string()),
        }
    )


def timed(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=3000)
    parser.add_argument("--minutes", type=int, default=234)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    table = day_of_bars(args.symbols, args.minutes)
    rows = table.num_rows
    with tempfile.TemporaryDirectory(prefix="lake-bench-") as root:
        lake = Lake(root)
        write_s = timed(args.repeat, lambda: lake.write_partition("minute_bars", DAY, table))
        presorted = table.sort_by([("symbol", "ascending"), ("ts", "ascending")]).to_batches(
            max_chunksize=65_536
        )
        stream_s = timed(args.repeat, lambda: lake.write_partition("minute_bars", DAY, iter(presorted)))
        file_bytes = (Path(root) / "minute_bars" / f"date={DAY}" / "data.parquet").stat().st_size

        with lake.connect() as con:
            read_s = timed(args.repeat, lambda: con.sql("SELECT * FROM minute_bars").to_arrow_table())
            count = con.sql("SELECT count(*) FROM minute_bars").fetchall()[0][0]
            rollup_sql = """
                SELECT symbol, date, arg_min(open, ts) AS open, max(high) AS high, min(low) AS low,
                       arg_max(close, ts) AS close, sum(volume) AS volume
                FROM minute_bars GROUP BY symbol, date"""
            rollup_s = timed(
                args.repeat, lambda: con.execute(f"CREATE OR REPLACE TEMP TABLE daily AS {rollup_sql}")
            )
            point_s = timed(
                args.repeat,
                lambda: con.sql("SELECT * FROM minute_bars WHERE symbol = 'T1234'").to_arrow_table(),
            )
        assert count == rows, (count, rows)
        read_partition_s = timed(args.repeat, lambda: lake.read_partition("minute_bars", DAY))

    print(
        json.dumps(
            {
                "benchmark": "lake_write",
                "rows": rows,
                "symbols": args.symbols,
                "row_group_rows": DEFAULT_ROW_GROUP_ROWS,
                "repeat": args.repeat,
                "write_table_rows_per_s": round(rows / write_s),
                "write_table_s": round(write_s, 3),
                "write_stream_presorted_rows_per_s": round(rows / stream_s),
                "file_mb": round(file_bytes / 2**20, 2),
                "bytes_per_row": round(file_bytes / rows, 1),
                "duckdb_read_all_rows_per_s": round(rows / read_s),
                "duckdb_read_all_s": round(read_s, 3),
                "duckdb_daily_rollup_s": round(rollup_s, 3),
                "duckdb_one_symbol_s": round(point_s, 4),
                "read_partition_rows_per_s": round(rows / read_partition_s),
            }
        )
    )


if __name__ == "__main__":
    main()
