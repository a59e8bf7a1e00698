"""A year of daily_metrics for the full simulated universe (3,000 stocks and ETFs).

Generates every session of `--year` (252 in 2024) of one-minute bars with the simulator into a
temporary lake (~0.7M rows a session, ~176M in all; this part takes minutes and is reported
apart), then times daily_metrics over every session as a backfill runs it: one DuckDB query per
partition, each reading that session and the previous one's regular close. Prints one JSON object.

    python benchmarks/metrics_year.py [--year 2024] [--sessions N] [--lake DIR]

`--lake DIR` keeps (and reuses) the generated lake instead of a temporary one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from datetime import date


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--year", type=int, default=2024)
    parser.add_argument("--sessions", type=int, default=None, help="Only the first N sessions of the year.")
    parser.add_argument("--lake", default=None)
    args = parser.parse_args()

    from market_platform import calendar
    from market_platform.analytics import metrics
    from market_platform.sources.sim import SimMarket
    from market_platform.storage.lake import Lake

    days = calendar.sessions(date(args.year, 1, 1), date(args.year, 12, 31))[: args.sessions]
    sim = SimMarket()
    with (nullcontext(args.lake) if args.lake else tempfile.TemporaryDirectory()) as root:
        lake = Lake(root)
        started = time.perf_counter()
        rows = 0
        for day in days:
            if not lake.has_partition("minute_bars", day):
                lake.write_partition("minute_bars", day, sim.minute_bars(day))
            rows += lake.count("minute_bars", day)
        generate = time.perf_counter() - started

        started = time.perf_counter()
        out_rows = 0
        for day in days:
            table = metrics.daily_metrics(lake, day)
            out_rows += lake.write_partition(metrics.DAILY_METRICS, day, table)
        seconds = time.perf_counter() - started

        started = time.perf_counter()
        computed = sum(metrics.daily_metrics(lake, day).num_rows for day in days)
        compute_only = time.perf_counter() - started
    print(json.dumps({
        "year": args.year, "sessions": len(days), "minute_bars": rows, "symbols_last_session": table.num_rows,
        "generate_and_write_seconds": round(generate, 1),
        "daily_metrics_seconds": round(seconds, 1),
        "daily_metrics_compute_only_seconds": round(compute_only, 1),
        "seconds_per_session": round(seconds / len(days), 3),
        "daily_metrics_rows": out_rows, "computed_rows": computed,
    }))


if __name__ == "__main__":
    main()
