"""Refilling a 60-second stream gap of the full-scale market from Alpaca's REST history.

The Alpaca REST replay of the full-scale simulated market (3,000 stocks and ETFs, full activity)
runs in its own process; the platform's repair (`streaming.repair_gaps`, through AlpacaSource and
the real alpaca-py REST client) refills one gap of every symbol into a fresh database on
127.0.0.1:5432. Measured, in this order:

    empty       the gap's quotes, trades and bars into a tick store that has none of them (the
                stream delivered nothing for a minute)
    half        the same gap where the stream had delivered the first half of its ticks and bars:
                the refill fetches the whole gap and the delivered rows collapse on their keys
    again       the same gap refilled once more: everything collapses, nothing is written
    check       the minute check of the gap's minute (vendor bars vs the store), which finds
                the gap in the first place

Each with seconds (and the client's CPU seconds: the rest is the replay's JSON and the database),
REST calls and rows written. Prints one JSON object.

    python benchmarks/gap_repair.py [--start 09:45] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb  # noqa: E402
from _stream_common import DAY, fresh_database, ny  # noqa: E402

from market_platform.schemas import Source  # noqa: E402
from market_platform.sources.alpaca import AlpacaSource  # noqa: E402
from market_platform.sources.sim import SimMarket  # noqa: E402
from market_platform.storage.timescale import TickStore  # noqa: E402
from market_platform.streaming import Gap, alpaca_history, repair_gaps  # noqa: E402
from market_platform.streaming.repair import incomplete_minutes  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret"


def serve() -> None:
    """The child process: the Alpaca REST replay of the full-scale market until stdin closes."""
    from market_platform.replay import ReplayData, SimProvider
    from market_platform.replay.alpaca import AlpacaReplay

    replay = AlpacaReplay(ReplayData(SimProvider(SimMarket())), keys={KEY: SECRET})
    replay.start()
    print(json.dumps({"url": replay.url}), flush=True)
    sys.stdin.read()
    replay.stop()


@contextmanager
def rest_replay() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        yield json.loads(proc.stdout.readline())["url"]
    finally:
        proc.stdin.close()
        proc.wait(30)


def measured(store: TickStore, source: AlpacaSource, gap: Gap) -> dict:
    calls = source.requests
    began, cpu = time.perf_counter(), time.process_time()
    (result,) = repair_gaps(store, alpaca_history(source), [gap])
    assert result.error is None, result.error
    return {"seconds": round(time.perf_counter() - began, 2), "client_cpu_seconds": round(time.process_time() - cpu, 2),
            "rest_calls": source.requests - calls,
            "quotes_written": result.quotes, "trades_written": result.trades, "bars_written": result.bars}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", default="09:45")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    start = ny(DAY, args.start)
    end = start + timedelta(seconds=args.seconds)
    market = SimMarket()
    symbols = tuple(market.stock_symbols(DAY))
    gap = Gap(start, end, symbols)
    results: dict = {
        "gap": f"{DAY} {args.start} New York + {args.seconds:g} s, {len(symbols):,} stocks and ETFs, full activity",
        "cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
        "in_gap": {"quotes": market.quotes(DAY, list(symbols), start=start, end=end).num_rows,
                   "trades": market.trades(DAY, list(symbols), start=start, end=end).num_rows},
    }
    with rest_replay() as url, fresh_database() as db:
        source = AlpacaSource(KEY, SECRET, data_url=url, trading_url=url, rate_limit=None, feed="sip")
        with TickStore(db) as store:
            results["empty"] = measured(store, source, gap)
            assert results["empty"]["quotes_written"] == results["in_gap"]["quotes"]
        with fresh_database() as half_db, TickStore(half_db) as store:
            middle = start + (end - start) / 2
            for what, write in (("quotes", store.write_quotes), ("trades", store.write_trades)):
                delivered = getattr(source, what)(list(symbols), start, middle, source=Source.ALPACA_STREAM)
                write(delivered, dedupe=True)
            results["half"] = measured(store, source, gap)
            results["again"] = measured(store, source, gap)
            calls = source.requests
            began = time.perf_counter()
            minute = start.replace(second=0, microsecond=0)
            runs = incomplete_minutes(store, alpaca_history(source), symbols, minute, minute + timedelta(minutes=1))
            results["check"] = {"seconds": round(time.perf_counter() - began, 2), "rest_calls": source.requests - calls,
                                "incomplete_minutes": len(runs)}
    results["load_average_after"] = os.getloadavg()
    results["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
