"""Simulated market at full scale (3,000 stocks and ETFs, activity 1.0): how fast, how big.

Prints one JSON object: seconds to generate a full session's one-minute bars, the exact
message counts of that session, and quotes (and trades) per second streamed over the busiest
hour (09:30-10:30 New York) with the process's peak RSS. Each measurement runs in a fresh
process, so one's peak memory does not hide in another's.

    python benchmarks/sim_generate.py [--day 2024-11-26]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from datetime import date, datetime, time as wall

from _common import peak_rss_mb

DEFAULT_DAY = "2024-11-26"


def _minute_bars(day: str) -> dict:
    from market_platform.sources.sim import SimMarket

    sim = SimMarket()
    started = time.perf_counter()
    bars = sim.minute_bars(day)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "rows": bars.num_rows,
            "trades_aggregated": int(sum(bars.column("trade_count").to_numpy())), "peak_rss_mb": peak_rss_mb()}


def _counts(day: str) -> dict:
    from market_platform.sources.sim import SimMarket

    sim = SimMarket()
    started = time.perf_counter()
    quotes = sim.expected_quote_count(day)
    seconds = time.perf_counter() - started
    return {"quotes": quotes, "bars": sim.expected_bar_count(day), "trades": sim.expected_trade_count(day),
            "quote_count_seconds": round(seconds, 2)}


def _stream(day: str, kind: str) -> dict:
    from market_platform import calendar
    from market_platform.sources.sim import SimMarket

    sim = SimMarket()
    baseline = peak_rss_mb()
    d = date.fromisoformat(day)
    start = datetime.combine(d, wall(9, 30), tzinfo=calendar.NEW_YORK)
    end = datetime.combine(d, wall(10, 30), tzinfo=calendar.NEW_YORK)
    stream = sim.iter_quotes if kind == "quotes" else sim.iter_trades
    rows = batches = 0
    started = time.perf_counter()
    for batch in stream(d, start=start, end=end):
        rows += batch.num_rows
        batches += 1
    seconds = time.perf_counter() - started
    return {"window": "09:30-10:30 New York", kind: rows, "batches": batches, "seconds": round(seconds, 2),
            f"{kind}_per_s": round(rows / seconds), "peak_rss_mb": peak_rss_mb(),
            "rss_before_stream_mb": baseline}


def _isolated(function, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--day", default=DEFAULT_DAY, help="a full trading session, YYYY-MM-DD")
    day = parser.parse_args().day
    print(json.dumps({
        "benchmark": "sim_generate",
        "day": day,
        "n_stocks": 3000,
        "activity": 1.0,
        "minute_bars": _isolated(_minute_bars, day),
        "session_counts": _isolated(_counts, day),
        "quote_stream": _isolated(_stream, day, "quotes"),
        "trade_stream": _isolated(_stream, day, "trades"),
    }, indent=2))


if __name__ == "__main__":
    main()
