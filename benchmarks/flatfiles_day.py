"""A Polygon flat file of one session for 3,000+ tickers, streamed from S3 into Arrow and into the
lake: rows/s and peak memory. Prints one JSON object.

The parent process serves the file (a moto S3 server on loopback, filled from the simulated market
at full scale); a child process does the work the platform does — `FlatFilesSource.iter_batches`
(boto3 GET, gzip and CSV parsed by Arrow as the bytes arrive) into `Lake.write_partition` — so its
peak RSS is the reader's own, not the server's. `baseline_rss_mb` is the child's RSS after its
imports, before reading (boto3's client and the Parquet writer come on top of it);
`arrow_peak_mb` is the most Arrow memory held at once.

    python benchmarks/flatfiles_day.py [--stocks 3000] [--day 2024-11-26] [--block-mb 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date

from _common import peak_rss_mb

DAY = "2024-11-26"


def child(endpoint: str, bucket: str, day: str, block_mb: int) -> None:
    from market_platform.sources.flatfiles import FlatFilesSource
    from market_platform.storage.lake import Lake

    baseline = peak_rss_mb()
    source = FlatFilesSource("replay-flatfiles-key", "replay-flatfiles-secret", endpoint=endpoint, bucket=bucket,
                             block_size=block_mb << 20)
    with tempfile.TemporaryDirectory(prefix="flatfiles-bench-") as root:
        lake = Lake(root)
        start = time.perf_counter()
        rows = lake.write_partition("minute_bars", day, source.iter_batches(date.fromisoformat(day)))
        seconds = time.perf_counter() - start
    import pyarrow as pa

    print(json.dumps({"rows": rows, "seconds": seconds, "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(),
                      "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stocks", type=int, default=3000)
    parser.add_argument("--day", default=DAY)
    parser.add_argument("--block-mb", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("ENDPOINT", "BUCKET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.day, args.block_mb)
        return

    from market_platform.replay import ReplayData, SimProvider
    from market_platform.replay.flatfiles import FlatFilesReplay
    from market_platform.sources.flatfiles import flatfile_key
    from market_platform.sources.sim import SimMarket

    day = date.fromisoformat(args.day)
    data = ReplayData(SimProvider(SimMarket(n_stocks=args.stocks)))
    server = FlatFilesReplay(data, keys={"replay-flatfiles-key": "replay-flatfiles-secret"},
                             bucket=f"flatfiles-bench-{int(time.time())}")
    with server:
        start = time.perf_counter()
        server.publish(day, markets=["stocks"])
        publish_s = time.perf_counter() - start
        head = server._client.head_object(Bucket=server.bucket, Key=flatfile_key(day))
        tickers = len(data.listed("stocks", day))
        out = subprocess.run([sys.executable, __file__, "--day", args.day, "--block-mb", str(args.block_mb),
                              "--child", server.endpoint, server.bucket], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    print(json.dumps({
        "benchmark": "flatfiles_day",
        "day": args.day,
        "tickers": tickers,
        "rows": result["rows"],
        "file_mb_gzip": round(head["ContentLength"] / 2**20, 2),
        "flat_file_to_lake_s": round(result["seconds"], 3),
        "rows_per_s": round(result["rows"] / result["seconds"]),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "baseline_rss_mb": round(result["baseline_rss_mb"], 1),
        "arrow_peak_mb": round(result["arrow_peak_mb"], 1),
        "block_mb": args.block_mb,
        "replay_publish_s": round(publish_s, 3),
    }))


if __name__ == "__main__":
    main()
