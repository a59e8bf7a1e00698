"""Redelivered quotes into a range already stored: rows/s of TickStore.write_quotes; prints JSON.

A stream that reconnects, or a replay, redelivers quotes the tick store holds already; the
writer ignores them by key. The figure is how fast it does so (all_stored), how fast a batch half
old, half new goes in (half_new), and, for reference, new quotes after the stored ones
(all_new), in a fresh database on MARKET_DB_URL's server (default the PostgreSQL at
127.0.0.1:5432), dropped at the end; median of --repeat runs, each on a fresh copy of the day.

    default          the writer as configured by default (skip_stored="compressed"): on plain
                     PostgreSQL and uncompressed chunks, INSERT ... ON CONFLICT DO NOTHING from
                     the staging table
    skip_stored      skip_stored="always": the staged rows already stored are deleted first by
                     one anti-join over the batch's time range, then the rest is inserted (the
                     path a write into compressed chunks takes on TimescaleDB)

On TimescaleDB (when the server has it) each is measured into uncompressed chunks and into the
same chunks moved to the columnstore (CALL convert_to_columnstore), plus "compressed_on_conflict"
(skip_stored="never": ON CONFLICT against compressed chunks, which decompresses what it meets),
and the bytes the columnstore chunks' row store gained (0 when nothing was decompressed).

Usage: python benchmarks/redelivered_quotes.py [--rows 400000] [--batch 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from market_platform.storage import synthetic  # noqa: E402
from market_platform.storage.timescale import TickStore, create_database, drop_database  # noqa: E402

DAY = datetime(2024, 11, 26, 14, 30, tzinfo=timezone.utc)


def _redeliver(url: str, skip_stored: str, batches: list[pa.Table], expected: int) -> float:
    with TickStore(url, skip_stored=skip_stored) as store:
        store.variant()  # connect outside the timing
        start = time.perf_counter()
        inserted = sum(store.write_quotes(batch) for batch in batches)
        elapsed = time.perf_counter() - start
    assert inserted == expected, f"inserted {inserted} rows, expected {expected}"
    return sum(b.num_rows for b in batches) / elapsed


def _chunks(store: TickStore) -> list[str]:
    return store.read_arrow(
        "SELECT format('%I.%I', chunk_schema, chunk_name) AS c FROM timescaledb_information.chunks "
        "WHERE hypertable_name = 'quotes'").column("c").to_pylist()


def _to_columnstore(store: TickStore) -> None:
    with store.connect(autocommit=True) as conn:
        for chunk in _chunks(store):
            conn.execute("CALL convert_to_columnstore(%s::regclass)", (chunk,))


def _row_store_bytes(store: TickStore) -> int:
    with store.connect() as conn:
        return sum(conn.execute("SELECT pg_relation_size(%s::regclass)", (c,)).fetchone()[0] for c in _chunks(store))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400_000, help="quotes stored before the redelivery")
    parser.add_argument("--batch", type=int, default=20_000, help="rows per write, as the streamer batches")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    admin = os.environ.get("MARKET_DB_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    head, sep, query = admin.partition("?")
    stored = synthetic.quotes(args.rows, symbols=500, start=DAY)
    redelivered = stored.slice(args.rows // 4, args.rows // 2)  # the middle of the day, all stored
    fresh = synthetic.quotes(args.rows // 4, symbols=500, start=DAY, seed=1)  # same range, new keys
    half = pa.concat_tables([redelivered.slice(0, args.rows // 4), fresh])
    later = synthetic.quotes(args.rows // 2, symbols=500, start=DAY + timedelta(hours=1), seed=2)  # nothing stored there

    def batches(table: pa.Table) -> list[pa.Table]:
        return [table.slice(i, args.batch) for i in range(0, table.num_rows, args.batch)]

    results: dict[str, list[float]] = {}
    row_store_growth: dict[str, int] = {}
    variant = None
    for _ in range(args.repeat):
        for case, table, new in [("all_stored", redelivered, 0), ("half_new", half, fresh.num_rows),
                                 ("all_new", later, later.num_rows)]:
            for skip in ("compressed", "always"):
                name = f"mp_bench_{uuid.uuid4().hex[:8]}"
                create_database(admin, name)
                url = head.rsplit("/", 1)[0] + "/" + name + sep + query
                try:
                    with TickStore(url) as store:
                        store.init_schema()
                        store.write_quotes(stored, dedupe=False)
                        variant = store.variant()
                        with store.connect(autocommit=True) as conn:
                            conn.execute("VACUUM ANALYZE quotes")
                    label = case if skip == "compressed" else f"{case}_skip_stored"
                    results.setdefault(f"{label}_rows_per_s", []).append(_redeliver(url, skip, batches(table), new))
                    if variant == "timescale" and case == "all_stored" and skip == "compressed":
                        with TickStore(url) as store:
                            _to_columnstore(store)
                            before = _row_store_bytes(store)
                            # The default first (it skips what is stored), then ON CONFLICT alone.
                            for mode, label in (("compressed", "compressed"), ("never", "compressed_on_conflict")):
                                rate = _redeliver(url, mode, batches(table), 0)
                                results.setdefault(f"all_stored_{label}_rows_per_s", []).append(rate)
                                row_store_growth[label] = _row_store_bytes(store) - before
                finally:
                    drop_database(admin, name)

    print(json.dumps({
        "benchmark": "redelivered_quotes",
        "variant": variant,
        "stored_rows": args.rows,
        "redelivered_rows": redelivered.num_rows,
        "batch": args.batch,
        "repeat": args.repeat,
        **{key: round(statistics.median(values)) for key, values in results.items()},
        **({"row_store_bytes_gained": row_store_growth} if row_store_growth else {}),
    }, indent=2))


if __name__ == "__main__":
    main()
