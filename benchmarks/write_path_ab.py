"""The tick store's write path of this checkout against another one, interleaved; prints JSON.

copy_throughput.py run twice, once per checkout, compares runs minutes apart on a shared
machine whose speed moves by 2-3x; this alternates the two checkouts run after run (each run a
subprocess on a fresh database of MARKET_DB_URL's server, default 127.0.0.1:5432) and reports
the medians and their ratio: write_bars (upsert) of 300k new bars, write_quotes of 300k new
quotes deduplicating and appending.

Usage: python benchmarks/write_path_ab.py [--baseline /path/to/other/checkout] [--runs 6]
(without --baseline, this checkout alone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

# Runs in a subprocess with the checkout to measure first on sys.path.
_RUN = r'''
import json, os, sys, time, uuid
sys.path.insert(0, sys.argv[1])
from market_platform.storage import synthetic
from market_platform.storage.timescale import TickStore, create_database, drop_database
admin = os.environ.get("MARKET_DB_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
head, sep, query = admin.partition("?")
name = "mp_ab_" + uuid.uuid4().hex[:8]
create_database(admin, name)
store = TickStore(head.rsplit("/", 1)[0] + "/" + name + sep + query)
try:
    store.init_schema()
    bars, quotes = synthetic.bars(600, symbols=500), synthetic.quotes(300_000, symbols=500)
    rates = {}
    def timed(key, write):
        start = time.perf_counter()
        rates[key] = write() / (time.perf_counter() - start)
    timed("bars_upsert_rows_per_s", lambda: store.write_bars(bars))
    timed("quotes_dedupe_rows_per_s", lambda: store.write_quotes(quotes))
    with store.connect() as conn:
        conn.execute("TRUNCATE quotes")
        conn.commit()
    timed("quotes_append_rows_per_s", lambda: store.write_quotes(quotes, dedupe=False))
    print(json.dumps(rates))
finally:
    store.close()
    drop_database(admin, name)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="the other checkout (its repository root)")
    parser.add_argument("--runs", type=int, default=6, help="runs of each checkout")
    args = parser.parse_args()
    checkouts = {"this": HERE, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    rates: dict[str, list[dict[str, float]]] = {label: [] for label in checkouts}
    for run in range(args.runs):
        for label in list(checkouts)[:: 1 if run % 2 == 0 else -1]:
            out = subprocess.run([sys.executable, "-c", _RUN, str(checkouts[label])],
                                 capture_output=True, text=True, check=True).stdout
            rates[label].append(json.loads(out))
    medians = {label: {key: round(statistics.median(r[key] for r in runs)) for key in runs[0]}
               for label, runs in rates.items()}
    ratio = ({"this_over_baseline": {key: round(medians["this"][key] / medians["baseline"][key], 3)
                                     for key in medians["this"]}} if args.baseline else {})
    print(json.dumps({"benchmark": "write_path_ab", "baseline_checkout": str(args.baseline or ""), "runs_each": args.runs,
                      **medians, **ratio}, indent=2))


if __name__ == "__main__":
    main()
