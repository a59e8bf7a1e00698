"""Adjusted reads against raw reads of the same lake in the same run (issue 14): five years of daily
bars for 3,000 tickers, and one year of 1-minute bars (04:00-20:00, 960 a session) for 100
tickers, with synthetic bars (storage.synthetic) and corporate actions: quarterly dividends for
40% of the tickers, a split for one in ten, a few renames. Prints one JSON object.

The raw read is `SELECT * FROM <dataset>` into Arrow through `query`; the adjusted one is the same
from `<dataset>_adjusted_all` (splits and dividends), which also builds the factors (`install`).
`adjustment_s` is the difference of the best of `--repeat` runs: the target is adjustment_s < raw_s.
Repeated reads in a process reuse the factors while the lake is unchanged (`adjust.install`);
`adjusted_all_cold` reads with them computed again (the dividends' closes read), as a process's first
read does, and `cold_adjustment_s` is its difference.

    python benchmarks/adjusted_reads.py [--tickers 3000] [--years 5] [--minute-tickers 100] [--repeat 3]

(--tickers 0 or --minute-tickers 0 skips that half.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb  # noqa: E402

from market_platform import calendar, schemas  # noqa: E402
from market_platform.analytics import query  # noqa: E402
from market_platform.analytics import adjust  # noqa: E402
from market_platform.analytics.adjust import bars_as_of  # noqa: E402
from market_platform.storage import synthetic  # noqa: E402
from market_platform.storage.lake import Lake  # noqa: E402

LAST = date(2024, 12, 31)


def actions(symbols: list[str], sessions: list[date], seed: int = 14) -> pa.Table:
    """Quarterly dividends for 40% of `symbols`, one split for 10%, a rename for 1%."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, symbol in enumerate(symbols):
        if rng.random() < 0.4:
            for ex in sessions[rng.integers(5, 63)::63]:
                rows.append({"action_id": schemas.action_id("dividend", symbol, ex, "CD"), "symbol": symbol,
                             "action_type": "dividend", "ex_date": ex, "announced_date": ex - timedelta(days=20),
                             "cash_amount": round(float(rng.uniform(0.05, 1.5)), 2), "dividend_type": "CD",
                             "source": "sim"})
        if rng.random() < 0.1:
            ex = sessions[int(rng.integers(1, len(sessions)))]
            frm, to = [(1, 2), (1, 3), (2, 3), (10, 1)][int(rng.integers(0, 4))]
            rows.append({"action_id": schemas.action_id("split", symbol, ex), "symbol": symbol,
                         "action_type": "split", "ex_date": ex, "announced_date": ex - timedelta(days=15),
                         "split_from": float(frm), "split_to": float(to), "source": "sim"})
        if i % 100 == 7:
            ex = sessions[len(sessions) // 2]
            rows.append({"action_id": schemas.action_id("rename", symbol, ex), "symbol": symbol,
                         "action_type": "rename", "ex_date": ex, "announced_date": ex - timedelta(days=10),
                         "new_symbol": f"N{symbol}", "source": "sim"})
    return schemas.conform(pa.Table.from_pylist(rows, schema=schemas.CORPORATE_ACTIONS.remove_metadata()),
                           schemas.CORPORATE_ACTIONS)


def fill(lake: Lake, dataset: str, sessions: list[date], tickers: int, minutes: int) -> int:
    rows = 0
    for n, day in enumerate(sessions):
        if minutes == 1:
            start = datetime.combine(day, datetime.min.time(), tzinfo=calendar.NEW_YORK)
        else:
            start = calendar.session(day).start
        table = synthetic.bars(minutes, symbols=tickers, start=start, seed=n)
        rows += lake.write_partition(dataset, day, table)
    return rows


def measure(lake: Lake, dataset: str, repeat: int) -> dict:
    """Best and median seconds of each read, interleaved run by run so that a busy machine slows
    them alike; `factors_s` is building the factors alone (a query of adjustment_factors)."""
    reads = {"raw": f"SELECT * FROM {dataset}", "adjusted_split": f"SELECT * FROM {dataset}_adjusted_split",
             "adjusted_all_cold": f"SELECT * FROM {dataset}_adjusted_all",
             "adjusted_all": f"SELECT * FROM {dataset}_adjusted_all", "factors": "SELECT count(*) FROM adjustment_factors"}
    times: dict[str, list[float]] = {name: [] for name in reads}
    rows = {}
    for _ in range(repeat):
        for name, sql in reads.items():
            if name == "adjusted_all_cold":
                adjust._CACHE.clear()  # computes the factors again, as a process's first read does
            t0 = time.perf_counter()
            rows[name] = query.query(sql, lake=lake).num_rows
            times[name].append(time.perf_counter() - t0)
    assert rows["raw"] == rows["adjusted_all"] == rows["adjusted_split"]
    best = {name: min(t) for name, t in times.items()}
    out = {"rows": rows["raw"]}
    for name in reads:
        out[f"{name}_s"] = round(best[name], 3)
        out[f"{name}_median_s"] = round(statistics.median(times[name]), 3)
    out["adjustment_s"] = round(best["adjusted_all"] - best["raw"], 3)
    out["adjustment_below_read"] = best["adjusted_all"] - best["raw"] < best["raw"]
    out["cold_adjustment_s"] = round(best["adjusted_all_cold"] - best["raw"], 3)
    out["cold_adjustment_below_read"] = best["adjusted_all_cold"] - best["raw"] < best["raw"]
    # A backtest's read: ten tickers over the whole range, raw by SQL vs market_platform.bars_as_of.
    few = [f"S{i:04d}" for i in range(0, 1000, 100)]
    dates = lake.dates(dataset)
    listed = ", ".join(f"'{s}'" for s in few)
    point = {"raw": [], "as_of": []}
    for _ in range(repeat):
        t0 = time.perf_counter()
        raw_rows = lake.query(f"SELECT * FROM {dataset} WHERE symbol IN ({listed})").num_rows
        point["raw"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        adjusted_rows = bars_as_of(few, dates[0], dates[-1], adjust="all",
                                   timeframe="1d" if dataset == "bars_1d" else "1m", lake=lake).num_rows
        point["as_of"].append(time.perf_counter() - t0)
    out["ten_tickers"] = {"rows": raw_rows, "adjusted_rows": adjusted_rows, "raw_s": round(min(point["raw"]), 3),
                          "bars_as_of_s": round(min(point["as_of"]), 3)}
    return out


def scenario(lake: Lake, dataset: str, sessions: list[date], tickers: int, minutes: int, repeat: int) -> dict:
    """Fill `lake` with `dataset` and actions, then `measure` it."""
    t0 = time.perf_counter()
    fill(lake, dataset, sessions, tickers, minutes)
    lake.write_partition("corporate_actions", {"source": "sim"}, actions([f"S{i:04d}" for i in range(tickers)], sessions))
    written = round(time.perf_counter() - t0, 1)
    return {"write_s": written, "actions": lake.count("corporate_actions"), **measure(lake, dataset, repeat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tickers", type=int, default=3000)
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--minute-tickers", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    daily_sessions = calendar.sessions(LAST.replace(year=LAST.year - args.years) + timedelta(days=1), LAST)
    minute_sessions = calendar.sessions(LAST.replace(year=LAST.year - 1) + timedelta(days=1), LAST)
    out: dict = {"tickers": args.tickers, "years": args.years, "minute_tickers": args.minute_tickers}
    with tempfile.TemporaryDirectory() as root:
        if args.tickers:
            out["daily"] = scenario(Lake(Path(root) / "daily"), "bars_1d", daily_sessions, args.tickers, 1,
                                    args.repeat)
        if args.minute_tickers:
            out["minute"] = scenario(Lake(Path(root) / "minute"), "minute_bars", minute_sessions, args.minute_tickers,
                                     960, args.repeat)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
