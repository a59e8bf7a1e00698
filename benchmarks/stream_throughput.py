"""End-to-end stream throughput: replay server -> websocket -> alpaca-py -> COPY -> committed.

The replay (its own process) serves a window of the full-scale simulated market (3,000 stocks
and ETFs, 09:40-09:43 New York: ~1.2M quotes, 83k trades, 6.5k bars) as fast as the client
reads. Measured, each against a fresh database on 127.0.0.1:5432, in this order:

    platform            the streamer as configured by default (raw dicts handed over by type,
                        no websocket compression, binary COPY)
    platform_alpaca_dispatch   the same with alpaca-py's own per-message dispatch to handlers
    platform_deflate    the same with permessage-deflate (alpaca-py's default) negotiated
    seed_executemany    the seed systems' approach: alpaca-py's pydantic models, rows batched
                        1,000 at a time into psycopg2 `executemany` INSERTs, in the handler
    seed_execute_values the same with psycopg2's `execute_values` (one multi-row INSERT)
    isolation           the cost of validating each message (isolating any bad one, bounds, NUL
                        checks, every frame accounted for): `platform` with the code of
                        `--before-ref` (default main; git archive of its market_platform/ and sql/)
                        and with this checkout, each in a process of its own, alternated
                        `--rounds` times; the loss is 1 - after/before of the best rates

Rates are rows committed over the time from the first message received to the last commit;
the seed runs are cut at `--seed-seconds`. Prints one JSON object.

    python benchmarks/stream_throughput.py [--start 09:40] [--minutes 3] [--seed-seconds 30]
        [--before-ref main] [--rounds 2] [--only-isolation]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb  # noqa: E402
from _stream_common import DAY, fresh_database, replay_process, spool_dir, window  # noqa: E402

from market_platform.sources.sim import SimMarket  # noqa: E402
from market_platform.storage.timescale import TickStore  # noqa: E402
from market_platform.streaming import StreamConfig, Streamer  # noqa: E402


def platform(start, end, symbols, **options) -> dict:
    with fresh_database() as url, spool_dir() as spool, replay_process(start, end, compression="deflate") as info:
        config = StreamConfig(symbols=tuple(symbols), start=start, end=end, api_key=info["key"],
                              secret_key=info["secret"], url=info["iex"], clock="events", stale_after=120,
                              spool_dir=spool, **options)
        report = Streamer(config, store_url=url).run()
    seconds = report.stream_seconds
    return {
        "quotes": report.quotes, "trades": report.trades, "bars": report.bars, "seconds": seconds,
        "quotes_per_s": round(report.quotes / seconds), "messages_per_s": round((report.quotes + report.trades + report.bars) / seconds),
        "spooled_batches": report.spooled, "dead_letters": report.dead_letters,
    }


_SEED_QUOTES = ("INSERT INTO quotes (symbol, ts, bid_price, bid_size, ask_price, ask_size, bid_exchange, ask_exchange, "
                "conditions, tape, seq, source) VALUES %s ON CONFLICT DO NOTHING")
_SEED_TRADES = ("INSERT INTO trades (symbol, ts, price, size, exchange, trade_id, conditions, tape, source) "
                "VALUES %s ON CONFLICT DO NOTHING")
_SEED_BARS = ("INSERT INTO bars_1m (symbol, ts, open, high, low, close, volume, vwap, trade_count, source) VALUES %s "
              "ON CONFLICT (symbol, ts, source) DO UPDATE SET close = EXCLUDED.close")


def seed(start, end, symbols, seconds: float, method: str) -> dict:
    """alpaca-py models + psycopg2 batched INSERTs, as the seed systems stream."""
    import psycopg2
    import psycopg2.extras
    from alpaca.data.live import StockDataStream

    with fresh_database() as url, replay_process(start, end, compression="deflate") as info:
        with TickStore(url) as store:
            store.maintain(now=start)  # the day's partitions, which the platform's writer makes itself
        conn = psycopg2.connect(url)
        cur = conn.cursor()
        stream = StockDataStream(info["key"], info["secret"], url_override=info["iex"])  # pydantic models
        pending = {"q": [], "t": [], "b": []}
        counts = {"q": 0, "t": 0, "b": 0}
        clock: dict[str, float] = {}
        statements = {"q": _SEED_QUOTES, "t": _SEED_TRADES, "b": _SEED_BARS}

        def flush(kind: str) -> None:
            rows, pending[kind] = pending[kind], []
            if method == "execute_values":
                psycopg2.extras.execute_values(cur, statements[kind], rows, page_size=1000)
            else:
                placeholders = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
                cur.executemany(statements[kind].replace("%s", placeholders, 1), rows)
            conn.commit()
            counts[kind] += len(rows)
            clock["last"] = time.time()

        async def on_quote(q) -> None:
            clock.setdefault("first", time.time())
            # The seeds' sequence: the quote's own fields hashed, as a stand-in for a vendor id.
            pending["q"].append((q.symbol, q.timestamp, q.bid_price, q.bid_size, q.ask_price, q.ask_size,
                                 q.bid_exchange, q.ask_exchange, ",".join(q.conditions or []), q.tape,
                                 hash((q.timestamp, q.bid_price, q.bid_size, q.ask_price, q.ask_size)), "seed"))
            if len(pending["q"]) >= 1000:
                flush("q")

        async def on_trade(t) -> None:
            clock.setdefault("first", time.time())
            pending["t"].append((t.symbol, t.timestamp, t.price, t.size, t.exchange or "", t.id,
                                 ",".join(t.conditions or []), t.tape, "seed"))
            if len(pending["t"]) >= 1000:
                flush("t")

        async def on_bar(b) -> None:
            pending["b"].append((b.symbol, b.timestamp, b.open, b.high, b.low, b.close, b.volume, b.vwap,
                                 b.trade_count, "seed"))
            if len(pending["b"]) >= 1000:
                flush("b")

        stream.subscribe_quotes(on_quote, *symbols)
        stream.subscribe_trades(on_trade, *symbols)
        stream.subscribe_bars(on_bar, *symbols)
        thread = threading.Thread(target=stream.run, daemon=True)
        thread.start()
        while "first" not in clock:
            time.sleep(0.05)
        time.sleep(seconds)
        stream.stop()
        thread.join(30)
        conn.close()
    elapsed = clock["last"] - clock["first"]
    return {
        "method": f"psycopg2 {method}, 1,000 rows per batch, commit per batch",
        "quotes": counts["q"], "trades": counts["t"], "bars": counts["b"], "seconds": round(elapsed, 3),
        "quotes_per_s": round(counts["q"] / elapsed),
        "messages_per_s": round(sum(counts.values()) / elapsed),
    }


ROOT = Path(__file__).resolve().parent.parent


def checkout(ref: str) -> Path:
    """A temporary directory holding `market_platform/` and `sql/` as they are at git `ref`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "market_platform", "sql"],
                             capture_output=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="mp_bench_ref_"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(path, filter="data")
    return path


def platform_in_process(code: Path, args: argparse.Namespace) -> dict:
    """`platform` run by a fresh interpreter importing market_platform from `code`."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, __file__, "--platform-only", "--start", args.start,
                           "--minutes", str(args.minutes)], env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    imported = result.pop("code")
    assert imported.startswith(str(code)), (imported, code)  # the code meant, not the installed one
    return result


def isolation(args: argparse.Namespace) -> dict:
    """`platform` with the code of `args.before_ref` and of this checkout, alternated."""
    before_code = checkout(args.before_ref)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        runs["before"].append(platform_in_process(before_code, args))
        runs["after"].append(platform_in_process(ROOT, args))
    best = {k: max(r["quotes_per_s"] for r in v) for k, v in runs.items()}
    return {
        "before_ref": args.before_ref,
        "before_quotes_per_s": [r["quotes_per_s"] for r in runs["before"]],
        "after_quotes_per_s": [r["quotes_per_s"] for r in runs["after"]],
        "before_messages_per_s": [r["messages_per_s"] for r in runs["before"]],
        "after_messages_per_s": [r["messages_per_s"] for r in runs["after"]],
        "after_dead_letters": [r["dead_letters"] for r in runs["after"]],
        "loss_pct_best": round(100 * (1 - best["after"] / best["before"]), 1),
        "loss_pct_median": round(100 * (1 - sorted(r["quotes_per_s"] for r in runs["after"])[args.rounds // 2]
                                        / sorted(r["quotes_per_s"] for r in runs["before"])[args.rounds // 2]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", default="09:40")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed-seconds", type=float, default=30.0)
    parser.add_argument("--before-ref", default="main", help="git ref of the code `isolation` compares with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only-isolation", action="store_true", help="measure the before/after pair only")
    parser.add_argument("--platform-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    start, end = window(args.start, args.minutes)
    symbols = SimMarket().stock_symbols(DAY)
    if args.platform_only:
        import market_platform

        print(json.dumps({**platform(start, end, symbols), "code": market_platform.__file__}))
        return
    results = {
        "window": f"{DAY} {args.start} New York + {args.minutes:g} min, 3,000 stocks and ETFs, full activity",
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
    }
    results["isolation"] = isolation(args)
    if args.only_isolation:
        results["load_average_after"] = os.getloadavg()
        print(json.dumps(results, indent=2))
        return
    results["platform"] = platform(start, end, symbols)
    results["platform_alpaca_dispatch"] = platform(start, end, symbols, fast_dispatch=False)
    results["platform_deflate"] = platform(start, end, symbols, compression=True)
    results["seed_executemany"] = seed(start, end, symbols, args.seed_seconds, "executemany")
    results["seed_execute_values"] = seed(start, end, symbols, args.seed_seconds, "execute_values")
    best = results["platform"]["quotes_per_s"]
    results["ratio_vs_seed_executemany"] = round(best / results["seed_executemany"]["quotes_per_s"], 1)
    results["ratio_vs_seed_execute_values"] = round(best / results["seed_execute_values"]["quotes_per_s"], 1)
    results["load_average_after"] = os.getloadavg()
    results["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
