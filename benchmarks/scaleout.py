"""Scale-out on Celery workers: the same Flat Files backfill in process, on 1 worker and on 2 workers,
then a REST backfill on 2 workers under one plan limit. Prints one JSON object.

Setup (reported apart as `setup_s`): this process serves a full-scale simulated market (3,000 stocks
and ETFs) as Polygon Flat Files (loopback S3) and Polygon REST, publishes one file per session,
and writes each mode's universe snapshot. The database is a fresh one at 127.0.0.1:5432, the broker
a free database of the Redis at 127.0.0.1:6379. Everything runs on this one machine, so the lakes
are local paths in single-host mode (MARKET_CELERY_SINGLE_HOST=1); an S3 server in this process
would measure itself.

Each mode runs `market-platform backfill --from ... --to ... --source polygon_flatfiles` (minute
bars, the four rollups, the four checks; ten sessions per run) as a user would, with its own lake:

- `in_process`: no broker, the runs one after the other in the command's process;
- `workers_1`, `workers_2`: `market-platform worker` processes (one step at a time each) take the
  steps, the command orchestrating the runs (two at once: 20 sessions are two runs).

Reported per mode: the command's wall time and the lake's rows (identical across modes), and from
the runs' event logs the executor's cost per step: `pickup`, from the moment a step could start (its
inputs done and, on a worker, the worker free) to its STEP_START (in process: Dagster's own step
setup; on a worker also taking the message, loading the job and the run, initialising resources),
and, on workers, `handoff`, from a step's end to the launcher submitting the steps that waited for
it (dagster-celery polls results once a second); `overhead_per_step_s` is their sum. Then `rest`: a REST backfill of
1-minute and vendor 5-minute bars on the 2 workers (one REST step each, at once) with the plan at
`--rest-limit` calls per minute; the replay's log gives the aggregate calls per minute of both
workers and the most calls in any 60 s window.

    python benchmarks/scaleout.py [--stocks 3000] [--sessions 20] [--rest-limit 300] [--rest-tickers 150]

On a 2-core machine the workers, the launcher, PostgreSQL, Redis and the replay share the same two
cores: 2 workers cannot be faster than 1 here. The per-step overhead is what a larger deployment pays.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

CLI = str(Path(sys.executable).parent / "market-platform")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_redis_db(server: str = "redis://127.0.0.1:6379") -> str:
    import redis

    for db in random.sample(range(1, 16), 15):
        client = redis.Redis.from_url(f"{server}/{db}")
        if client.dbsize() == 0 and client.set("market_platform_bench:claimed_by", os.getpid(), nx=True, ex=7200):
            return f"{server}/{db}"
    raise SystemExit(f"no free database in the Redis at {server}")


def start_worker(env: dict[str, str], root: Path, name: str) -> subprocess.Popen:
    home = root / name
    home.mkdir(parents=True)
    log = open(root / f"{name}.log", "w")
    return subprocess.Popen([CLI, "worker"], cwd=home, env={**env, "MARKET_PLATFORM_HOME": str(home / "home")},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(broker: str, workers: list[subprocess.Popen]) -> None:
    import celery

    names = {f"market-platform-{w.pid}@{socket.gethostname()}" for w in workers}
    app = celery.Celery(broker=broker)
    deadline = time.monotonic() + 180
    while not names <= {n for reply in app.control.ping(timeout=1.0) for n in reply}:
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            raise SystemExit("workers did not come up")
    app.close()


def backfill(env: dict[str, str], cwd: Path, args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([CLI, "backfill", *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"backfill {args} failed:\n{out.stderr[-3000:]}")
    return wall, re.search(r"^backfill (\w+):", out.stdout, re.M).group(1)


def step_overheads(instance, backfill_id: str) -> dict[str, float]:
    """From the event logs of the backfill's runs, per step: `pickup`, from the moment the step could
    start (submitted, and its worker done with the step before) to STEP_START; and `handoff`, from
    a step's end to the submission of the steps that waited for it (worker modes only)."""
    import dagster as dg

    pickup: list[float] = []
    handoff: list[float] = []
    steps = 0
    for run in instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id})):
        submitted, started, ended, worker = {}, {}, {}, {}
        run_start = None
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.RUN_START:
                run_start = record.timestamp
            if event.step_key is None:
                continue
            if event.event_type == dg.DagsterEventType.ENGINE_EVENT:
                if event.message.startswith("Submitting celery"):
                    submitted[event.step_key] = record.timestamp
                elif "celery worker" in event.engine_event_data.metadata:
                    worker[event.step_key] = event.engine_event_data.metadata["celery worker"].value
            elif event.event_type == dg.DagsterEventType.STEP_START:
                started[event.step_key] = record.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                ended[event.step_key] = record.timestamp
        steps += len(ended)
        last_end: dict[str, float] = {}
        for key in sorted(started, key=started.get):
            where = worker.get(key, "in-process")
            ready = max(submitted.get(key, run_start), last_end.get(where, run_start))
            pickup.append(started[key] - ready)
            last_end[where] = ended.get(key, started[key])
        roots = min(submitted.values(), default=None)
        for key, at in submitted.items():
            before = [end for end in ended.values() if end <= at]
            if at > roots + 0.5 and before:
                handoff.append(at - max(before))
    out = {"steps": steps, "pickup_median_s": round(statistics.median(pickup), 2),
           "pickup_max_s": round(max(pickup), 2)}
    if handoff:
        out.update(handoff_median_s=round(statistics.median(handoff), 2),
                   overhead_per_step_s=round(statistics.median(pickup) + statistics.median(handoff), 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stocks", type=int, default=3000)
    parser.add_argument("--from", dest="start", default="2024-07-01")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rest-limit", type=int, default=300, help="the REST plan's calls per minute")
    parser.add_argument("--rest-tickers", type=int, default=150)
    parser.add_argument("--rest-sessions", type=int, default=2)
    args = parser.parse_args()

    import dagster as dg
    import redis

    from market_platform import calendar
    from market_platform.history import universe
    from market_platform.history.vendors import Vendors
    from market_platform.replay import ReplayServers
    from market_platform.sources.sim import SimMarket
    from market_platform.sources.vendor import run_concurrently
    from market_platform.storage.lake import Lake
    from market_platform.storage.timescale import create_database, drop_database

    first = date.fromisoformat(args.start)
    days = calendar.sessions(first, first.replace(year=first.year + 1))[: args.sessions]
    root = Path(tempfile.mkdtemp(prefix="scaleout-bench-"))
    database = f"mp_bench_{uuid.uuid4().hex[:10]}"
    create_database(PG_ADMIN, database)
    broker = free_redis_db()
    sim = SimMarket(n_stocks=args.stocks)
    servers = ReplayServers(sim=sim, rate_limit=args.rest_limit,
                            bucket=f"flatfiles-bench-{uuid.uuid4().hex[:8]}")
    workers: list[subprocess.Popen] = []
    results: dict[str, object] = {}
    try:
        with servers:
            start = time.perf_counter()
            run_concurrently(days, lambda d: servers.flatfiles.publish(d, markets=["stocks"]), workers=2)
            vendor_env = servers.env(rates=True)
            base = {k: v for k, v in os.environ.items() if not k.startswith(("POLYGON_", "ALPACA_", "MARKET_"))}
            base.update(vendor_env, MARKET_DB_URL=PG_ADMIN.rsplit("/", 1)[0] + "/" + database,
                        MARKET_CELERY_SINGLE_HOST="1", PYTHONUNBUFFERED="1")
            vendors = Vendors.from_env(vendor_env)
            modes = ("in_process", "workers_1", "workers_2")
            for mode in modes:
                lake = Lake(str(root / mode / "lake"))
                for category in universe.STOCK_CATEGORIES:
                    universe.discover(vendors, lake, category, days[0])
            results["setup_s"] = round(time.perf_counter() - start, 1)
            worker_env = {**base, "MARKET_CELERY_BROKER_URL": broker}
            flat = ["--from", days[0].isoformat(), "--to", days[-1].isoformat(), "--source", "polygon_flatfiles"]
            os.environ["MARKET_DB_URL"] = base["MARKET_DB_URL"]
            os.environ["MARKET_PLATFORM_HOME"] = str(root / "bench-home")
            instance = dg.DagsterInstance.from_config(str(Path(__file__).resolve().parent.parent))
            for mode in modes:
                n = {"in_process": 0, "workers_1": 1, "workers_2": 2}[mode]
                env = {**base, "MARKET_LAKE_URL": str(root / mode / "lake"),
                       "MARKET_PLATFORM_HOME": str(root / mode / "launcher")}
                if n:
                    env["MARKET_CELERY_BROKER_URL"] = broker
                    workers += [start_worker({**worker_env, "MARKET_LAKE_URL": env["MARKET_LAKE_URL"]}, root / mode,
                                             f"worker_{i}") for i in range(n)]
                    wait_for(broker, workers[-n:])
                wall, backfill_id = backfill(env, root / mode, flat)
                entry = {"wall_s": round(wall, 1), "rows": Lake(env["MARKET_LAKE_URL"]).count("minute_bars"),
                         **step_overheads(instance, backfill_id)}
                results[mode] = entry
                if mode != "workers_2":
                    for w in workers[-n:] if n else []:
                        os.killpg(w.pid, signal.SIGTERM)
                        w.wait()
            # REST on both workers at once (workers_2 still running), the plan's limit shared in Redis.
            rest_days = days[-args.rest_sessions:]
            tickers = sorted(set.intersection(*(set(sim.stock_symbols(d)) for d in rest_days)))
            tickers = tickers[: args.rest_tickers]
            servers.polygon.log.clear()
            env = {**base, "MARKET_CELERY_BROKER_URL": broker, "MARKET_LAKE_URL": str(root / "workers_2" / "lake"),
                   "MARKET_PLATFORM_HOME": str(root / "workers_2" / "launcher")}
            wall, _ = backfill(env, root / "workers_2", [
                "--from", rest_days[0].isoformat(), "--to", rest_days[-1].isoformat(), "--source", "polygon_rest",
                "--timeframes", "1m,5m", "--tickers", ",".join(tickers)])
            log = servers.polygon.log.entries()
            span = log[-1].at - log[0].at
            results["rest"] = {
                "plan_calls_per_min": args.rest_limit, "calls": len(log), "wall_s": round(wall, 1),
                "aggregate_calls_per_min": round(len(log) / span * 60, 1),
                "sustained_calls_per_min_after_first_window": round((len(log) - args.rest_limit) / span * 60, 1)
                if len(log) > args.rest_limit else None,
                "max_calls_in_any_60s": servers.polygon.log.max_in_window(60.0),
                "server_429s": servers.polygon.log.count(statuses={429}),
                "workers": 2, "tickers": len(tickers), "sessions": len(rest_days),
            }
            instance.dispose()
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait()
        drop_database(PG_ADMIN, database)
        shutil.rmtree(root, ignore_errors=True)
        redis.Redis.from_url(broker).flushdb()
    inproc, one, two = (results[m]["wall_s"] for m in ("in_process", "workers_1", "workers_2"))
    print(json.dumps({
        "benchmark": "scaleout", "sessions": len(days), "stocks": args.stocks,
        "first": days[0].isoformat(), "last": days[-1].isoformat(), **results,
        "workers_1_vs_in_process": round(one / inproc, 2), "workers_2_vs_workers_1": round(two / one, 2),
        "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
