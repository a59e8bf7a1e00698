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

Rates are rows committed over the time from the first message received to the last commit;
the seed runs are cut at `--seed-seconds`. Prints one JSON object.

    python benchmarks/stream_throughput.py [--start 09:40] [--minutes 3] [--seed-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", default="09:40")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed-seconds", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    start, end = window(args.start, args.minutes)
    symbols = SimMarket().stock_symbols(DAY)
    results = {
        "window": f"{DAY} {args.start} New York + {args.minutes:g} min, 3,000 stocks and ETFs, full activity",
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
    }
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
