"""Deterministic synthetic quotes, trades and bars for tests and benchmarks of the storage layer.

Vectorised (numpy): a few hundred thousand rows take milliseconds. Values are plausible, not a
market model (that is `market_platform.sources.sim`).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from market_platform.schemas import BARS, QUOTES, TRADES, Source, quote_seq

#: 2024-03-01 14:30 UTC, 09:30 New York: the regular open of a session.
DEFAULT_START = datetime(2024, 3, 1, 14, 30, tzinfo=timezone.utc)


def _symbols(count: int) -> np.ndarray:
    return np.array([f"S{i:04d}" for i in range(count)], dtype=object)


def _start_ns(start: datetime) -> int:
    return int(start.timestamp() * 1_000_000) * 1_000


def quotes(rows: int, *, symbols: int = 50, start: datetime = DEFAULT_START, seed: int = 0,
           source: str = Source.SIM) -> pa.Table:
    """`rows` quotes spread over `symbols` symbols, one every ~millisecond with nanosecond stamps."""
    rng = np.random.default_rng(seed)
    ts = _start_ns(start) + np.sort(rng.integers(0, rows * 1_000_000, rows)) + rng.integers(0, 1_000, rows)
    bid = np.round(rng.uniform(10, 500, rows), 2)
    bid_size = rng.integers(1, 50, rows).astype(np.float64) * 100
    ask = bid + 0.01 * rng.integers(1, 5, rows)
    ask_size = rng.integers(1, 50, rows).astype(np.float64) * 100
    exchanges = np.array(["V", "Q", "N", "P", "Z"], dtype=object)
    ts_arr = pa.array(ts, pa.timestamp("ns", "UTC"))
    columns = {
        "symbol": _symbols(symbols)[rng.integers(0, symbols, rows)],
        "ts": ts_arr,
        "bid_price": bid, "bid_size": bid_size, "ask_price": ask, "ask_size": ask_size,
        "bid_exchange": exchanges[rng.integers(0, 5, rows)],
        "ask_exchange": pa.array(exchanges[rng.integers(0, 5, rows)], mask=rng.random(rows) < 0.1),
        "conditions": pa.array(np.full(rows, "R", dtype=object), mask=rng.random(rows) < 0.5),
        "tape": np.array(["A", "B", "C"], dtype=object)[rng.integers(0, 3, rows)],
        "seq": quote_seq(ts_arr, pa.array(bid), pa.array(bid_size), pa.array(ask), pa.array(ask_size)),
        "source": np.full(rows, str(source), dtype=object),
    }
    return pa.table({f.name: pa.array(columns[f.name], f.type) if not isinstance(columns[f.name], pa.Array)
                     else columns[f.name] for f in QUOTES}, schema=QUOTES)


def trades(rows: int, *, symbols: int = 50, start: datetime = DEFAULT_START, seed: int = 0,
           source: str = Source.SIM) -> pa.Table:
    """`rows` trades over `symbols` symbols with distinct trade ids per exchange."""
    rng = np.random.default_rng(seed)
    ts = _start_ns(start) + np.sort(rng.integers(0, rows * 1_000_000, rows))
    columns = {
        "symbol": _symbols(symbols)[rng.integers(0, symbols, rows)],
        "ts": ts,
        "price": np.round(rng.uniform(10, 500, rows), 4),
        "size": rng.integers(1, 1_000, rows).astype(np.float64),
        "exchange": np.array(["V", "Q", "N", ""], dtype=object)[rng.integers(0, 4, rows)],
        "trade_id": np.arange(rows, dtype=np.int64) + seed * 10_000_000,
        "conditions": pa.array(np.full(rows, "@,I", dtype=object), mask=rng.random(rows) < 0.3),
        "tape": np.array(["A", "B", "C"], dtype=object)[rng.integers(0, 3, rows)],
        "source": np.full(rows, str(source), dtype=object),
    }
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in TRADES}, schema=TRADES)


def bars(minutes: int, *, symbols: int = 50, start: datetime = DEFAULT_START, seed: int = 0,
         source: str = Source.SIM) -> pa.Table:
    """One bar per symbol and minute for `minutes` minutes from `start` (symbols × minutes rows)."""
    rng = np.random.default_rng(seed)
    rows = minutes * symbols
    minute = np.repeat(np.arange(minutes, dtype=np.int64), symbols)
    ts = _start_ns(start) + minute * 60_000_000_000
    open_ = np.round(rng.uniform(10, 500, rows), 2)
    close = np.round(open_ * rng.uniform(0.99, 1.01, rows), 2)
    high = np.maximum(open_, close) + np.round(rng.uniform(0, 0.5, rows), 2)
    low = np.minimum(open_, close) - np.round(rng.uniform(0, 0.5, rows), 2)
    # Some quiet minutes (no volume, no vwap) and some vendors' bars without a vwap.
    volume = np.where(rng.random(rows) < 0.02, 0, rng.integers(1, 10_000, rows)).astype(np.float64)
    vwap = pa.array((open_ + close) / 2, mask=(volume == 0) | (rng.random(rows) < 0.03))
    columns = {
        "symbol": np.tile(_symbols(symbols), minutes),
        "ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume,
        "vwap": vwap,
        "trade_count": pa.array(rng.integers(0, 100, rows), mask=rng.random(rows) < 0.05),
        "source": np.full(rows, str(source), dtype=object),
    }
    return pa.table({f.name: columns[f.name] if isinstance(columns[f.name], pa.Array)
                     else pa.array(columns[f.name], f.type) for f in BARS}, schema=BARS)
