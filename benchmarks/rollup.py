"""DuckDB rollup of one full-scale simulated session (3,000 stocks, ~700k minute bars) to
5m, 15m, 1h and 1d, from the lake back into the lake. Prints one JSON object.

    python benchmarks/rollup.py [--stocks 3000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date

from market_platform.sources.sim import SimMarket
from market_platform.storage import rollups
from market_platform.storage.lake import Lake

DAY = date(2024, 11, 26)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stocks", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    sim = SimMarket(7, n_stocks=args.stocks)
    t0 = time.perf_counter()
    bars = sim.minute_bars(DAY)
    generate_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as root:
        lake = Lake(root)
        t0 = time.perf_counter()
        lake.write_partition("minute_bars", DAY.isoformat(), bars)
        write_s = time.perf_counter() - t0
        compute, compute_and_write, rows = [], [], {}
        for _ in range(args.repeat):
            t_all = time.perf_counter()
            t_compute = 0.0
            for timeframe in ("5m", "15m", "1h", "1d"):
                t0 = time.perf_counter()
                table = rollups.rollup(lake, DAY, timeframe)
                t_compute += time.perf_counter() - t0
                rows[timeframe] = lake.write_partition(rollups.dataset_for(timeframe), DAY.isoformat(), table)
            compute.append(t_compute)
            compute_and_write.append(time.perf_counter() - t_all)
    print(json.dumps({
        "day": DAY.isoformat(),
        "stocks": args.stocks,
        "minute_bars": bars.num_rows,
        "sim_minute_bars_s": round(generate_s, 3),
        "lake_write_minute_bars_s": round(write_s, 3),
        "lake_write_rows_per_s": round(bars.num_rows / write_s),
        "rollup_all_four_compute_s": round(statistics.median(compute), 3),
        "rollup_all_four_compute_and_write_s": round(statistics.median(compute_and_write), 3),
        "rollup_rows": rows,
    }))


if __name__ == "__main__":
    main()
