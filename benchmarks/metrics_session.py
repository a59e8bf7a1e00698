"""Metrics of one full-scale session (3,000 simulated stocks and ETFs, ~700k one-minute bars).

Prints one JSON object: seconds for daily_metrics, intraday_metrics, return_features and the bar
checks of one session computed by DuckDB from a temporary lake (the previous session is stored
too, for the previous close); and, when a PostgreSQL is reachable (MARKET_TEST_PG_URL, default
127.0.0.1:5432), the live intraday metrics computed by PostgreSQL from bars_1m.

    python benchmarks/metrics_session.py [--day 2024-11-26] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from datetime import date


def _timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--day", default="2024-11-26")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from market_platform import calendar
    from market_platform.analytics import forecast, metrics, quality
    from market_platform.sources.sim import SimMarket
    from market_platform.storage.lake import Lake

    day = date.fromisoformat(args.day)
    previous = calendar.default_calendar().previous_session(day)
    sim = SimMarket()
    out: dict = {"day": day.isoformat(), "symbols": len(sim.stock_symbols(day)), "repeat": args.repeat}
    with tempfile.TemporaryDirectory() as root:
        lake = Lake(root)
        started = time.perf_counter()
        bars = sim.minute_bars(day)
        lake.write_partition("minute_bars", previous, sim.minute_bars(previous))
        lake.write_partition("minute_bars", day, bars)
        out["minute_bars"] = bars.num_rows
        out["setup_seconds"] = round(time.perf_counter() - started, 2)

        out["daily_metrics_seconds"], daily = _timed(lambda: metrics.daily_metrics(lake, day), args.repeat)
        out["daily_metrics_rows"] = daily.num_rows
        out["intraday_metrics_seconds"], intraday = _timed(lambda: metrics.intraday_metrics(lake, day), args.repeat)
        out["intraday_metrics_rows"] = intraday.num_rows
        lake.write_partition(metrics.INTRADAY_METRICS, day, intraday)
        out["return_features_seconds"], features = _timed(lambda: forecast.return_features(lake, day), args.repeat)
        out["return_features_rows"] = features.num_rows
        out["write_daily_metrics_seconds"], _ = _timed(lambda: lake.write_partition(metrics.DAILY_METRICS, day, daily), 1)
        stored = lake.read_partition("minute_bars", day)
        for name, check in (("ohlc_consistent", quality.ohlc_consistent), ("no_duplicate_bars", quality.no_duplicate_bars),
                            ("session_complete", lambda b: quality.session_complete(b, day))):
            seconds, outcome = _timed(lambda: check(stored), args.repeat)
            out[f"check_{name}_seconds"] = seconds
            out[f"check_{name}_passed"] = outcome.passed
            if name == "session_complete":
                out["session_completeness"] = {k: round(v, 4) for k, v in outcome.metrics.items()
                                               if k.startswith("completeness") and v is not None}
        out["live_intraday_metrics"] = _live(bars, day, args.repeat)
    print(json.dumps(out))


def _live(bars, day, repeat: int) -> dict:
    """intraday metrics by PostgreSQL over a session in bars_1m, in a throwaway database."""
    import os

    import psycopg

    from market_platform.analytics import metrics
    from market_platform.storage.timescale import TickStore, create_database, drop_database

    admin = os.environ.get("MARKET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except psycopg.OperationalError:
        return {"skipped": "no PostgreSQL reachable"}
    name = f"mp_bench_{uuid.uuid4().hex[:10]}"
    create_database(admin, name)
    try:
        with TickStore(admin.rsplit("/", 1)[0] + "/" + name) as store:
            store.init_schema()
            started = time.perf_counter()
            store.write_bars(bars)
            loaded = round(time.perf_counter() - started, 2)
            with store.connect() as conn:
                conn.execute("ANALYZE bars_1m")
                conn.commit()
            seconds, table = _timed(lambda: metrics.live_intraday_metrics(store, day), repeat)
            return {"load_seconds": loaded, "seconds": seconds, "rows": table.num_rows, "variant": store.variant()}
    finally:
        drop_database(admin, name)


if __name__ == "__main__":
    main()
