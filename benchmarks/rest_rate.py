"""REST backfill against a plan's rate limit: the calls per window PolygonSource achieves with a
configured limit, as the vendor (the replay server) counts them. Prints one JSON object.

The server enforces the same limit (it would answer 429 to any excess), and the client fetches one
session of 1-minute bars for `2 * limit` tickers with `--workers` threads, so the run spans about
one window: a burst of `limit` calls, then the next `limit` when the window has passed. Reported:
the configured limit, the most calls the server saw in any window (never above the limit; at the
limit when the client uses its whole allowance), the 429s it had to send, and the sustained rate:
the calls after the first window's burst (which an empty window allows at once) divided by the
time from the first call to the last, per minute.

    python benchmarks/rest_rate.py [--limit 300] [--period 60] [--stocks 600] [--workers 8]

`--period 6` scales the window down tenfold for a quick run (300 calls per 6 s).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date

DAY = date(2024, 11, 26)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="calls per period (client and server)")
    parser.add_argument("--period", type=float, default=60.0, help="the window in seconds")
    parser.add_argument("--stocks", type=int, default=600, help="tickers to fetch (2 * limit by default)")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    from market_platform.replay import ReplayData, SimProvider
    from market_platform.replay.polygon import PolygonReplay
    from market_platform.sources.polygon import PolygonSource
    from market_platform.sources.sim import SimMarket

    sim = SimMarket(n_stocks=args.stocks, activity=0.05)
    symbols = sim.stock_symbols(DAY)
    server = PolygonReplay(ReplayData(SimProvider(sim)), api_keys=["bench"], rate_limit=args.limit,
                           rate_window=args.period)
    with server:
        source = PolygonSource("bench", base_url=server.url, rate_limit=args.limit, rate_period=args.period,
                               workers=args.workers, check_unknown=False)
        start = time.perf_counter()
        bars = source.minute_bars(DAY, symbols)
        seconds = time.perf_counter() - start
        entries = server.log.entries("/v2/aggs")
        max_in_window = server.log.max_in_window(args.period, "/v2/aggs")
        throttled = server.log.count("/v2/aggs", statuses={429})
    span = entries[-1].at - entries[0].at
    per_minute = 60.0 / args.period
    print(json.dumps({
        "benchmark": "rest_rate",
        "configured_calls_per_window": args.limit,
        "window_s": args.period,
        "configured_calls_per_min": round(args.limit * per_minute, 1),
        "calls": len(entries),
        "max_calls_in_any_window": max_in_window,
        "server_429s": throttled,
        "peak_window_calls_per_min": round(max_in_window * per_minute, 1),
        "sustained_calls_per_min": round((len(entries) - args.limit) / span * 60.0, 1)
        if span and len(entries) > args.limit else None,
        "peak_vs_limit": round(max_in_window / args.limit, 3),
        "tickers": len(symbols),
        "bars": bars.num_rows,
        "wall_s": round(seconds, 2),
        "workers": args.workers,
    }))


if __name__ == "__main__":
    main()
