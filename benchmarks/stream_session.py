"""A whole simulated session through the streamer: peak memory, and the full-scale session's wall time.

1. `session`: the whole session (04:00-20:00 New York) of 3,000 stocks and ETFs at a tenth of
   full activity (~8M quotes) at maximum replay speed: wall time, rate and the streamer
   process's peak resident memory (the replay server is a process of its own, not counted).
2. `full_scale_slice`: the busiest hour (09:30-10:30) at full activity; the full session's
   wall time (~80M quotes) is extrapolated from its quotes per second: the open is the
   densest part of the day, so this errs on the long side. `--full` streams the real thing.

Each part runs in a fresh process so one's peak memory does not hide in another's.

    python benchmarks/stream_session.py [--full]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb  # noqa: E402
from _stream_common import DAY, fresh_database, ny, replay_process, spool_dir, window  # noqa: E402

FULL_SESSION_QUOTES = 80_000_000


def _stream(start_hhmm: str, minutes: float, activity: float) -> dict:
    from market_platform.sources.sim import SimMarket
    from market_platform.streaming import StreamConfig, Streamer

    logging.basicConfig(level=logging.ERROR)
    start, end = window(start_hhmm, minutes)
    market = SimMarket(activity=activity)
    symbols = market.stock_symbols(DAY)
    with fresh_database() as url, spool_dir() as spool, replay_process(start, end, activity=activity) as info:
        config = StreamConfig(symbols=tuple(symbols), start=start, end=end, api_key=info["key"],
                              secret_key=info["secret"], url=info["iex"], clock="events", stale_after=300,
                              spool_dir=spool)
        report = Streamer(config, store_url=url).run()
        phases = _phase_rates(url)
    messages = report.quotes + report.trades + report.bars
    return {
        "window": f"{DAY} {start_hhmm} New York + {minutes:g} min, 3,000 stocks and ETFs, activity {activity:g}",
        "quotes": report.quotes, "trades": report.trades, "bars": report.bars,
        "stream_seconds": report.stream_seconds, "quotes_per_s": round(report.quotes / report.stream_seconds),
        "messages_per_s": round(messages / report.stream_seconds),
        "spooled_batches": report.spooled, "gaps": report.gaps,
        "peak_rss_mb": peak_rss_mb(),
        "phases": phases,
    }


def _phase_rates(url: str) -> dict:
    """Quotes stored per wall second in each phase, from stream_stats (a minute's row is recorded
    when the stream moves past it): where the whole-session rate comes from."""
    from market_platform.storage.timescale import TickStore

    bounds = {"premarket": ("04:00", "09:30"), "regular": ("09:30", "16:00"), "after_hours": ("16:00", "20:00")}
    out = {}
    with TickStore(url) as store, store.connect() as conn:
        first = conn.execute("SELECT min(recorded_at) FROM stream_stats").fetchone()[0]
        for phase, (lo, hi) in bounds.items():
            quotes, done, began = conn.execute(
                "SELECT coalesce(sum(quotes_inserted) FILTER (WHERE minute >= %(lo)s AND minute < %(hi)s), 0)::bigint,"
                " max(recorded_at) FILTER (WHERE minute < %(hi)s), max(recorded_at) FILTER (WHERE minute < %(lo)s)"
                " FROM stream_stats", {"lo": ny(DAY, lo), "hi": ny(DAY, hi)}).fetchone()
            seconds = ((done - (began or first)).total_seconds()) if done else 0.0
            out[phase] = {"quotes": quotes, "wall_seconds": round(seconds, 1),
                          "quotes_per_s": round(quotes / seconds) if seconds else None}
    return out


def _in_child(args: tuple) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_stream, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="stream the whole full-scale session (~15 min and more)")
    args = parser.parse_args()
    results = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()}
    results["session"] = _in_child(("04:00", 960, 0.1))
    if args.full:
        results["full_scale_session"] = _in_child(("04:00", 960, 1.0))
    else:
        hour = results["full_scale_slice"] = _in_child(("09:30", 60, 1.0))
        results["full_scale_session_extrapolated_seconds"] = round(FULL_SESSION_QUOTES / hour["quotes_per_s"])
        results["extrapolation"] = (f"{FULL_SESSION_QUOTES:,} quotes at the busiest hour's rate; measured on the "
                                    "slice, not a full run (use --full)")
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
