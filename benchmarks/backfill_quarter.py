"""A quarter of 1-minute bars for 3,000 tickers from the Flat Files, end to end: minutes, rows/s and
peak memory. Prints one JSON object.

Setup (reported apart as `publish_s`): the parent process serves a full-scale simulated market
(3,000 stocks and ETFs) as Polygon Flat Files on a loopback S3 server and publishes one file per
session of the quarter, plus Polygon REST for the universe. The measured work runs in a child
process, as the platform runs it: a universe snapshot (`ticker_universe`), then a Dagster backfill
(`market_platform.backfills.run_here`, ten sessions per run) of `minute_bars` — each session's file
streamed from S3, filtered to the universe, merged and written to the Parquet lake — and then of
the four DuckDB rollups. Dagster's instance is in memory, so no database is involved.

    python benchmarks/backfill_quarter.py [--stocks 3000] [--from 2024-07-01] [--sessions 63]

`--sessions 10` measures fewer sessions and extrapolates `quarter_minutes` to 63 (`extrapolated`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date

from _common import peak_rss_mb

QUARTER = 63


def child(days: list[str], as_of: str) -> None:
    import dagster as dg

    from market_platform import backfills
    from market_platform.defs.bars.assets import bars_1d, bars_1h, bars_5m, bars_15m, minute_bars
    from market_platform.defs.resources import LakeResource, default_resources
    from market_platform.history import universe
    from market_platform.history.vendors import Vendors

    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as root:
        lake = LakeResource(url=os.path.join(root, "lake"))
        definitions = dg.Definitions(assets=[minute_bars, bars_5m, bars_15m, bars_1h, bars_1d],
                                     resources={"vendors": default_resources()["vendors"], "lake": lake})
        instance = dg.DagsterInstance.ephemeral()
        quiet = {"console": {"config": {"log_level": "WARNING"}}}
        store = lake.lake()
        start = time.perf_counter()
        vendors = Vendors.from_env()
        for category in universe.STOCK_CATEGORIES:
            universe.discover(vendors, store, category, date.fromisoformat(as_of))
        timings = {"universe": time.perf_counter() - start}
        for name, keys in (("minute_bars", [minute_bars.key]),
                           ("rollups", [bars_5m.key, bars_15m.key, bars_1h.key, bars_1d.key])):
            start = time.perf_counter()
            outcome = backfills.run_here(instance, definitions, keys, [date.fromisoformat(d) for d in days],
                                         run_config={}, title=name, on_progress=lambda n: None, logging_config=quiet)
            if not outcome.success:
                raise SystemExit(f"{name} backfill failed: {outcome.reason}")
            timings[name] = time.perf_counter() - start
            timings[f"{name}_peak_rss_mb"] = peak_rss_mb()
        rows = store.count("minute_bars")
        sources = store.query("SELECT DISTINCT source FROM minute_bars")["source"].to_pylist()
        tickers = store.query("SELECT count(DISTINCT symbol) AS n FROM minute_bars")["n"][0].as_py()
    print(json.dumps({**{k if k.endswith("_mb") else f"{k}_s": v for k, v in timings.items()}, "rows": rows,
                      "sources": sources,
                      "tickers_with_bars": tickers, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stocks", type=int, default=3000)
    parser.add_argument("--from", dest="start", default="2024-07-01")
    parser.add_argument("--sessions", type=int, default=QUARTER)
    parser.add_argument("--child", nargs=2, metavar=("DAYS", "AS_OF"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0].split(","), args.child[1])
        return

    from market_platform import calendar
    from market_platform.replay import ReplayServers
    from market_platform.sources.sim import SimMarket
    from market_platform.sources.vendor import run_concurrently

    first = date.fromisoformat(args.start)
    days = calendar.sessions(first, first.replace(year=first.year + 1))[: args.sessions]
    servers = ReplayServers(sim=SimMarket(n_stocks=args.stocks), bucket=f"flatfiles-bench-{int(time.time())}")
    with servers:
        start = time.perf_counter()
        run_concurrently(days, lambda d: servers.flatfiles.publish(d, markets=["stocks"]), workers=2)
        publish_s = time.perf_counter() - start
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POLYGON_", "ALPACA_", "MARKET_"))}
        env.update(servers.env(rates=True))
        env["MARKET_PLATFORM_HOME"] = tempfile.mkdtemp(prefix="backfill-bench-home-")
        out = subprocess.run([sys.executable, __file__, "--child", ",".join(d.isoformat() for d in days),
                              days[0].isoformat()], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    backfill_s = result["minute_bars_s"] + result["rollups_s"]
    per_session = (result["universe_s"] + backfill_s) / len(days)
    print(json.dumps({
        "benchmark": "backfill_quarter",
        "sessions": len(days),
        "first": days[0].isoformat(), "last": days[-1].isoformat(),
        "tickers": result["tickers_with_bars"],
        "rows": result["rows"],
        "sources": result["sources"],
        "universe_s": round(result["universe_s"], 2),
        "minute_bars_s": round(result["minute_bars_s"], 1),
        "rollups_s": round(result["rollups_s"], 1),
        "end_to_end_minutes": round((result["universe_s"] + backfill_s) / 60, 2),
        "rows_per_s": round(result["rows"] / result["minute_bars_s"]),
        "seconds_per_session": round(per_session, 2),
        "quarter_minutes": round(per_session * QUARTER / 60, 2),
        "extrapolated": len(days) != QUARTER,
        "peak_rss_mb_minute_bars": round(result["minute_bars_peak_rss_mb"], 1),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "publish_s": round(publish_s, 1),
        "stocks": args.stocks,
    }))


if __name__ == "__main__":
    main()
