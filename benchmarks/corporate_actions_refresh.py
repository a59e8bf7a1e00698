"""Corporate actions of the full simulated market (3,000 stocks and ETFs): how long they take.

Prints one JSON object: seconds to build the simulated market's schedule of actions (2004-2027,
every name, once per process), rows and seconds of a first `corporate_actions` refresh (all
history, from the Polygon and Alpaca replays through polygon-api-client and alpaca-py, into a
lake) and of the daily refresh after it (the last 30 days and the year ahead).

    python benchmarks/corporate_actions_refresh.py
"""

from __future__ import annotations

import json
import tempfile
import time

from _common import peak_rss_mb


def main() -> None:
    from market_platform.history import actions
    from market_platform.history.vendors import Vendors
    from market_platform.sources.sim import SimMarket, _schedule
    from market_platform.storage.lake import Lake

    sim = SimMarket()
    started = time.perf_counter()
    schedule = _schedule(sim.seed)
    build = time.perf_counter() - started
    vendors = Vendors.from_env({}, market=lambda: sim)
    lake = Lake(tempfile.mkdtemp(prefix="corp-actions-bench-"))
    started = time.perf_counter()
    first = actions.refresh(vendors, lake, None)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    daily = actions.refresh(vendors, lake, None)
    daily_seconds = time.perf_counter() - started
    print(json.dumps({
        "schedule_actions": len(schedule.row),
        "schedule_build_seconds": round(build, 2),
        "first_refresh_seconds": round(first_seconds, 2),
        "first_refresh_rows": {r.source: r.fetched for r in first},
        "daily_refresh_seconds": round(daily_seconds, 2),
        "daily_refresh_rows": {r.source: r.fetched for r in daily},
        "peak_rss_mb": peak_rss_mb(),
    }))


if __name__ == "__main__":
    main()
