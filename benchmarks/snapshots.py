"""Minute snapshots of a full-scale market (3,000 stocks and ETFs) from poll to committed rows, and
the processor draining a backlog of 60 queued minutes, for each queue backend; prints JSON.

    poll_to_commit_ms   per sampled minute of a session: the Polygon snapshot request through
                        polygon-api-client (the replay answering as of that minute), the raw
                        response enqueued, then claimed or received, parsed to Arrow, COPYed into
                        `snapshots` and committed; p50/p99/max over the sample, with the parts
                        (fetch, enqueue, process). The replay builds each minute's state (the
                        simulator's last trade and quote of 3,000 symbols) before the clock
                        starts: that is the fake vendor's work, not the platform's
                        (replay_build_ms reports it).
    backlog             60 minutes enqueued while the processor is stopped, then drained: rows/s
                        and messages/s from the first claim to the last commit.

Backends: the tick store's snapshot_queue table (PostgreSQL at 127.0.0.1:5432, or MARKET_DB_URL's
server; a fresh database dropped at the end) and Amazon SQS on moto's server on loopback, where a
body that does not fit a message (256 KB) goes through S3 with a pointer in the message.

Usage: python benchmarks/snapshots.py [--stocks 3000] [--every 15] [--backlog 60]
       --every N samples one minute in N of the session's 960 (default 15: 64 minutes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from market_platform import calendar  # noqa: E402
from market_platform.replay import ReplayData, SimProvider  # noqa: E402
from market_platform.replay.polygon import PolygonReplay  # noqa: E402
from market_platform.snapshots.messages import SnapshotMessage, compress  # noqa: E402
from market_platform.snapshots.parse import parse  # noqa: E402
from market_platform.snapshots.poller import PollClock, SnapshotVendor  # noqa: E402
from market_platform.snapshots.processor import drain  # noqa: E402
from market_platform.snapshots.queue import SqsQueue, TableQueue  # noqa: E402
from market_platform.sources.polygon import PolygonSource  # noqa: E402
from market_platform.sources.sim import SimMarket  # noqa: E402
from market_platform.storage.timescale import TickStore, create_database, drop_database  # noqa: E402

DAY = "2024-11-26"
MINUTE = timedelta(minutes=1)
KEY = "bench-polygon-key"


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": _pct(values, 50), "p99": _pct(values, 99), "max": round(max(values), 1), "n": len(values)}


def _queues(store: TickStore, endpoint: str) -> dict:
    import boto3

    name = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("sqs", endpoint_url=endpoint).create_queue(QueueName=name)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    sqs = SqsQueue.from_url(f"sqs://{name}?payloads=s3://{name}/payloads&endpoint={endpoint}", wait_seconds=0)
    return {"table": TableQueue(store), "sqs": sqs}


def _truncate(store: TickStore) -> None:
    with store.connect() as conn:
        conn.execute("TRUNCATE market_snapshots, snapshot_queue, dead_letters")
        conn.commit()


def poll_to_commit(store, queue, server: PolygonReplay, vendor: SnapshotVendor, clock: PollClock,
                   minutes: list[datetime]) -> dict:
    total, fetch, enqueue, process, build, rows = [], [], [], [], [], []
    for minute in minutes:
        clock.wait_until(minute)
        t = time.perf_counter()
        server.book.state("stocks", minute)  # the fake vendor's work, cached for the request
        build.append((time.perf_counter() - t) * 1000)
        t0 = time.perf_counter()
        [(part, parts, body)] = list(vendor.fetch())
        t1 = time.perf_counter()
        queue.put(SnapshotMessage(vendor.source, vendor.market, minute, clock.now(), body, part, parts))
        t2 = time.perf_counter()
        report = drain(queue, store)
        t3 = time.perf_counter()
        assert report.messages == 1 and report.dead_letters == 0, report.summary()
        total.append((t3 - t0) * 1000)
        fetch.append((t1 - t0) * 1000)
        enqueue.append((t2 - t1) * 1000)
        process.append((t3 - t2) * 1000)
        rows.append(report.rows)
    return {"poll_to_commit_ms": _summary(total), "fetch_ms": _summary(fetch), "enqueue_ms": _summary(enqueue),
            "process_ms": _summary(process), "rows_per_minute": int(statistics.median(rows)),
            "replay_build_ms": _summary(build)}


def backlog(store, queue, bodies: list[tuple[datetime, bytes]]) -> dict:
    for minute, body in bodies:
        queue.put(SnapshotMessage("polygon_rest", "stocks", minute, minute, body))
    t0 = time.perf_counter()
    report = drain(queue, store)
    elapsed = time.perf_counter() - t0
    assert report.messages == len(bodies) and report.dead_letters == 0, report.summary()
    return {"messages": report.messages, "batches": report.batches, "rows": report.rows,
            "seconds": round(elapsed, 2), "rows_per_s": round(report.rows / elapsed),
            "messages_per_s": round(report.messages / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stocks", type=int, default=3000)
    parser.add_argument("--every", type=int, default=15)
    parser.add_argument("--backlog", type=int, default=60)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from moto.server import ThreadedMotoServer

    session = calendar.session(DAY)
    admin = os.environ.get("MARKET_DB_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"mp_bench_{uuid.uuid4().hex[:8]}"
    create_database(admin, name)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    market = SimMarket(n_stocks=args.stocks)
    clock = PollClock(session.start, speed=None)
    server = PolygonReplay(ReplayData(SimProvider(market)), api_keys=[KEY], clock=clock.now)
    server.start()
    out: dict = {"stocks": args.stocks, "day": DAY}
    try:
        store = TickStore(admin.rsplit("/", 1)[0] + "/" + name)
        store.init_schema()
        queues = _queues(store, f"http://{host}:{port}")
        vendor = SnapshotVendor.polygon(PolygonSource(KEY, base_url=server.url, rate_limit=None))
        minutes = [session.start + i * MINUTE for i in range(args.every, session.expected_minutes() + 1, args.every)]
        t = time.perf_counter()
        server.book.state("stocks", minutes[0])
        out["replay_first_build_s"] = round(time.perf_counter() - t, 1)  # indexes the day's 700k bars once
        clock.wait_until(minutes[0])
        body = next(vendor.fetch())[2]
        message = SnapshotMessage("polygon_rest", "stocks", minutes[0], minutes[0], body)
        t = time.perf_counter()
        rows = parse(message)
        out["body"] = {"tickers": rows.num_rows, "json_bytes": len(body), "zstd_bytes": len(compress(body)),
                       "parse_ms": round((time.perf_counter() - t) * 1000, 1)}
        out["sample"] = f"{len(minutes)} minutes, one in {args.every} of the session's {session.expected_minutes()}"
        later = [session.regular_open + (i + 1) * MINUTE for i in range(args.backlog)]
        bodies = []
        for minute in later:  # the backlog's responses, polled once for both backends
            clock.wait_until(minute)
            bodies.append((minute, next(vendor.fetch())[2]))
        for backend, queue in queues.items():
            _truncate(store)
            run_clock = PollClock(session.start, speed=None)
            server.clock = run_clock.now
            result = poll_to_commit(store, queue, server, vendor, run_clock, minutes)
            _truncate(store)
            result["backlog"] = backlog(store, queue, bodies)
            out[backend] = result
        store.close()
    finally:
        server.stop()
        moto.stop()
        drop_database(admin, name)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
