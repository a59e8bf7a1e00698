"""Per-minute statistics of a stream: what arrived, what was stored, what failed, how late.

Counters are added per batch (never per message) from the event loop and the writer thread;
`roll()` closes a minute and returns its `stream_stats` row, which the streamer logs in the
seed system's one-line format and writes to the tick store.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

UTC = timezone.utc
_MINUTE = timedelta(minutes=1)

#: Lag histogram: log-spaced bucket edges in ms, from 0.01 ms to ~28 hours.
_EDGES = np.logspace(-2, 8, 401)
_COUNTERS = ("received", "quotes_inserted", "trades_inserted", "bars_inserted", "duplicates",
             "dead_letters", "errors", "reconnects")


class LagHistogram:
    """Counts of lags in log-spaced buckets; percentiles to within 6% of the value."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(_EDGES) + 1, np.int64)

    def add(self, lags_ms: np.ndarray) -> None:
        if len(lags_ms):
            self.counts += np.bincount(np.searchsorted(_EDGES, lags_ms), minlength=len(self.counts))

    def merge(self, other: "LagHistogram") -> None:
        self.counts += other.counts

    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float | None:
        total = self.total()
        if not total:
            return None
        bucket = int(np.searchsorted(np.cumsum(self.counts), q / 100.0 * total))
        bucket = min(max(bucket, 1), len(_EDGES) - 1)
        return float(np.sqrt(_EDGES[bucket - 1] * _EDGES[bucket]))  # the bucket's geometric middle


@dataclass
class MinuteStats:
    minute: datetime
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    lag: LagHistogram = field(default_factory=LagHistogram)


class StreamStats:
    """Counters of the current minute and totals since the stream started (thread-safe)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._current: MinuteStats | None = None
        self.totals: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.filtered = 0  # quotes the change filter left out
        self.outside_window = 0  # valid messages of the feed outside the run's window
        self.lag_total = LagHistogram()

    def add(self, **counts: int) -> None:
        with self._lock:
            current = self._minute()
            for name, value in counts.items():
                if name in ("filtered", "outside_window"):  # totals only: no column per minute
                    setattr(self, name, getattr(self, name) + value)
                    continue
                current.counts[name] += value
                self.totals[name] += value

    def add_lags(self, lags_ms: np.ndarray) -> None:
        with self._lock:
            self._minute().lag.add(lags_ms)
            self.lag_total.add(lags_ms)

    def _minute(self) -> MinuteStats:
        if self._current is None:
            self._current = MinuteStats(datetime.now(UTC).replace(second=0, microsecond=0))
        return self._current

    def start(self, minute: datetime) -> None:
        """Set the minute that counts go to (before anything is counted)."""
        with self._lock:
            if self._current is None:
                self._current = MinuteStats(minute)

    @property
    def minute(self) -> datetime | None:
        return self._current.minute if self._current is not None else None

    def roll(self, next_minute: datetime, queue_depth: int) -> list[dict[str, Any]]:
        """Close the current minute (if `next_minute` is later) and return its row, followed by
        a row for each minute the stream's clock went past without stopping (nothing counted
        in them), so every minute has its row; [] while the minute is not over."""
        with self._lock:
            current = self._minute()
            if next_minute <= current.minute:
                return []
            self._current = MinuteStats(next_minute)
            rows = [self._row(current, queue_depth)]
            skipped = current.minute + _MINUTE
            while skipped < next_minute:
                rows.append(self._row(MinuteStats(skipped), queue_depth))
                skipped += _MINUTE
            return rows

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        """The current minute's row so far (for the final write)."""
        with self._lock:
            return self._row(self._minute(), queue_depth)

    def _row(self, stats: MinuteStats, queue_depth: int) -> dict[str, Any]:
        p50, p99 = stats.lag.percentile(50), stats.lag.percentile(99)
        return {
            "stream": self.stream, "minute": stats.minute, **stats.counts,
            "quotes_total": self.totals["quotes_inserted"], "trades_total": self.totals["trades_inserted"],
            "bars_total": self.totals["bars_inserted"], "queue_depth": queue_depth,
            "lag_p50_ms": round(p50, 3) if p50 is not None else None,
            "lag_p99_ms": round(p99, 3) if p99 is not None else None,
        }


def log_line(row: dict[str, Any]) -> str:
    """The seed system's per-minute line: inserted in the minute and in total, and the health."""
    lag = (f"lag p50 {row['lag_p50_ms']:.0f} ms p99 {row['lag_p99_ms']:.0f} ms"
           if row.get("lag_p50_ms") is not None else "lag -")
    return (
        f"{row['stream']} {row['minute']:%Y-%m-%d %H:%M} UTC: "
        f"quotes +{row['quotes_inserted']:,} ({row['quotes_total']:,}), "
        f"trades +{row['trades_inserted']:,} ({row['trades_total']:,}), "
        f"bars +{row['bars_inserted']:,} ({row['bars_total']:,}); "
        f"received {row['received']:,}, duplicates {row['duplicates']:,}, dead letters {row['dead_letters']:,}, "
        f"errors {row['errors']}, reconnects {row['reconnects']}, queue {row['queue_depth']}, {lag}"
    )
