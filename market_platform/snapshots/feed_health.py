"""Feed health: the minute snapshots as an independent witness of the live stream.

Each snapshot carries the symbol's last completed minute bar, so the snapshots say which minutes
each symbol traded in. A symbol that the stream carries (it has live bars in the window) and
that traded, by the snapshots, in several minutes for which `bars_1m` has no live bar while the
stream was connected was silently dropped by the feed: a *silent stall*. The websocket stays
up, so the stream's own reconnect logic never sees it. Connected means within the span of the
stream's per-minute statistics and outside every disconnect gap it recorded (a run that died and
was relaunched records the gap between them too).

A minute that has a bar from another source by the time of the check (refilled from REST or
the simulated history) is not a stall, and neither is one inside a gap another detector has
recorded already (a disconnect, the stream's own minute check): that gap gets `feed_health`
among its detectors instead, so a silence is one row whoever sees it first.

Each stall becomes a `stream_gaps` row of kind `silent_stall` (one per symbol and stretch of
minutes; a stall that goes on extends its row), its quotes, trades and bars are refilled from
the vendor's history through the stream's repair (`streaming.repair_gaps`), and it raises the
built-in `silent_stall`
alert (alert rules on the `stream_stalls` dataset can add others). Everything is idempotent: a
check over the same minutes again records, repairs and alerts nothing new.

Only minutes up to the stream's newest live bar are judged, so a minute whose bars are still
on their way is never taken for silence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from market_platform.analytics.alerts import Alerter, Report, Rule
from market_platform.errors import ConfigError, InvalidInputError
from market_platform.schemas import QUOTES, STREAM_STALLS, TRADES, Source
from market_platform.storage.timescale import TickStore
from market_platform.streaming.repair import Gap, History, alpaca_history, floor_minute, repair_gaps

log = logging.getLogger(__name__)

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
#: Traded minutes without a live bar that make a stall ("several minutes").
MIN_SILENT_MINUTES = 3
STALL_DATASET = "stream_stalls"

#: Each traded minute of a carried symbol that the stream sent no live bar for, while connected
#: (see the module docstring), with the gap of another detector that already holds it
#: (`covered_by`: a disconnect, the stream's minute check) and whether it is still silent: no bar
#: of any source (a minute refilled since, from REST or the simulated history, is not a stall),
#: or one inside the symbol's own stall row (refilled by that stall's repair).
_UNLIVE_MINUTES = """
WITH spans AS (
    SELECT stream, min(minute) AS lo, max(minute) AS hi FROM stream_stats
    WHERE stream LIKE %(pattern)s AND minute >= %(start)s AND minute < %(end)s
    GROUP BY stream
),
live AS (
    SELECT symbol, ts FROM bars_1m
    WHERE source = %(live_source)s AND ts >= %(start)s AND ts < %(end)s AND (strpos(symbol, '/') > 0) = %(crypto)s
),
carried AS (SELECT DISTINCT symbol FROM live),
horizon AS (SELECT max(ts) AS last FROM live),
traded AS (
    SELECT DISTINCT symbol, min_ts AS ts FROM market_snapshots
    WHERE minute > %(start)s AND minute <= %(end)s + INTERVAL '1 minute'
      AND min_ts >= %(start)s AND min_ts < %(end)s AND min_volume > 0
),
judged AS (
    -- covered_by is looked up only for a minute with no live bar (the only ones it decides).
    SELECT t.symbol, t.ts, l.ts IS NULL AS unlive,
           CASE WHEN l.ts IS NULL THEN
           (SELECT min(g.id) FROM stream_gaps g JOIN spans s USING (stream)
            WHERE g.kind <> 'silent_stall' AND t.ts BETWEEN s.lo AND s.hi
              AND g.gap_start < t.ts + INTERVAL '1 minute' AND coalesce(g.gap_end, 'infinity') > t.ts
              AND (cardinality(g.symbols) = 0 OR t.symbol = ANY(g.symbols))) END AS covered_by
    FROM traded t
    JOIN carried USING (symbol)
    CROSS JOIN horizon h
    LEFT JOIN live l ON l.symbol = t.symbol AND l.ts = t.ts
    WHERE t.ts <= h.last AND EXISTS (SELECT FROM spans s WHERE t.ts BETWEEN s.lo AND s.hi)
),
marked AS (
    SELECT j.symbol, j.ts, j.covered_by, j.unlive AND j.covered_by IS NULL AND (
        NOT EXISTS (SELECT FROM bars_1m b WHERE b.symbol = j.symbol AND b.ts = j.ts)
        OR EXISTS (SELECT FROM stream_gaps g JOIN spans s USING (stream)
                   WHERE g.kind = 'silent_stall' AND g.symbols = ARRAY[j.symbol]
                     AND g.gap_start <= j.ts AND g.gap_end > j.ts)) AS silent
    FROM judged j
)
"""

#: One row per symbol and stretch of silent minutes. The islands are runs of a symbol's traded
#: minutes, broken by a minute that is not silent.
FIND_STALLS_SQL = _UNLIVE_MINUTES + """,
islands AS (
    SELECT symbol, ts, silent,
           sum(CASE WHEN silent THEN 0 ELSE 1 END) OVER (PARTITION BY symbol ORDER BY ts) AS island
    FROM marked
)
SELECT symbol, min(ts) AS gap_start, max(ts) + INTERVAL '1 minute' AS gap_end, count(*) AS silent_minutes
FROM islands WHERE silent
GROUP BY symbol, island
HAVING count(*) >= %(min_minutes)s
ORDER BY symbol, gap_start
"""

#: The gaps other detectors recorded that hold minutes the snapshots saw traded with no live bar.
WITNESSED_SQL = _UNLIVE_MINUTES + """
SELECT DISTINCT covered_by AS gap_id FROM judged WHERE unlive AND covered_by IS NOT NULL ORDER BY 1
"""

#: The stream of `kind` that ran most in the window (the one a stall is filed under).
STREAM_SQL = """
SELECT stream FROM stream_stats WHERE stream LIKE %(pattern)s AND minute >= %(start)s AND minute < %(end)s
GROUP BY stream ORDER BY count(*) DESC, stream LIMIT 1
"""


def silent_stall_rule(min_minutes: int = MIN_SILENT_MINUTES) -> Rule:
    """The built-in alert of every stall: `silent_minutes >= min_minutes` on `stream_stalls`."""
    return Rule(name="silent_stall", dataset=STALL_DATASET, metric="silent_minutes", op=">=",
                threshold=float(min_minutes))


@dataclass(frozen=True)
class Stall:
    symbol: str
    start: datetime  # the first silent minute
    end: datetime  # the minute after the last
    silent_minutes: int  # traded minutes with no live bar


@dataclass
class FeedHealthReport:
    """What one check found and did."""

    stream: str | None
    start: datetime
    end: datetime
    stalls: list[Stall] = field(default_factory=list)
    recorded: int = 0  # new stream_gaps rows
    extended: int = 0  # rows of stalls that went on
    repaired_gaps: int = 0
    repaired_bars: int = 0
    repair_failures: list[str] = field(default_factory=list)
    alerts: Report | None = None

    def summary(self) -> str:
        symbols = sorted({s.symbol for s in self.stalls})
        alerts = len(self.alerts.fired) if self.alerts is not None else 0
        return (f"{len(self.stalls)} silent stalls ({len(symbols)} symbols{': ' + ', '.join(symbols[:10]) if symbols else ''}"
                f"{'...' if len(symbols) > 10 else ''}), {self.recorded} recorded, {self.extended} extended, "
                f"{self.repaired_gaps} repaired with {self.repaired_bars} bars, {alerts} alerts"
                + (f", {len(self.repair_failures)} repairs failed" if self.repair_failures else ""))


def _params(kind: str, start: datetime, end: datetime) -> dict[str, Any]:
    if kind not in ("stocks", "crypto"):
        raise InvalidInputError(f"kind={kind!r}: expected stocks or crypto")
    if end <= start:
        raise InvalidInputError(f"end {end.isoformat()} is not after start {start.isoformat()}")
    return {"pattern": f"alpaca_{kind}_%", "start": start, "end": end, "crypto": kind == "crypto",
            "live_source": Source.ALPACA_STREAM.value}


def find_stalls(store: TickStore, start: datetime, end: datetime, *, kind: str = "stocks",
                min_minutes: int = MIN_SILENT_MINUTES) -> tuple[str | None, list[Stall]]:
    """The stream of `kind` that ran in [start, end) and its silent stalls there (read only)."""
    params = _params(kind, start, end)
    streams = store.read_arrow(STREAM_SQL, params).column("stream").to_pylist()
    if not streams:
        return None, []
    rows = store.read_arrow(FIND_STALLS_SQL, {**params, "min_minutes": min_minutes}).to_pylist()
    return streams[0], [Stall(r["symbol"], r["gap_start"], r["gap_end"], int(r["silent_minutes"])) for r in rows]


def witnessed_gaps(store: TickStore, start: datetime, end: datetime, *, kind: str = "stocks") -> list[int]:
    """The ids of gaps recorded by other detectors (a disconnect, the stream's minute check) in
    [start, end) that hold minutes the snapshots saw traded without a live bar (read only)."""
    return store.read_arrow(WITNESSED_SQL, _params(kind, start, end)).column("gap_id").to_pylist()


def check_feed(store: TickStore, start: datetime, end: datetime, *, kind: str = "stocks",
               history: History | None = None, alerter: Alerter | None = None,
               min_minutes: int = MIN_SILENT_MINUTES) -> FeedHealthReport:
    """Find the stalls of [start, end), record them as stream_gaps (kind silent_stall), repair
    every unrepaired stall of the window from `history` (None: record only), and raise an alert
    through `alerter` for each new one."""
    stream, stalls = find_stalls(store, start, end, kind=kind, min_minutes=min_minutes)
    report = FeedHealthReport(stream, start, end, stalls)
    if stream is None:
        return report
    store.witness_gaps(witnessed_gaps(store, start, end, kind=kind), "feed_health")  # one row per silence
    alert_rows = []
    for stall in stalls:
        reason = (f"silent stall: {stall.symbol} traded in {stall.silent_minutes} minutes by the snapshots "
                  "with no live bar while the stream was connected")
        gap_id, outcome = store.record_stall(stream, stall.symbol, stall.start, stall.end, reason=reason)
        report.recorded += outcome == "new"
        report.extended += outcome == "extended"
        new = outcome == "new"
        alert_rows.append({"symbol": stall.symbol, "ts": stall.start, "end_ts": stall.end, "stream": stream,
                           "gap_id": gap_id, "silent_minutes": stall.silent_minutes})
        if new:
            log.warning("%s: %s (gap %d)", stream, reason, gap_id)
    if history is not None:
        repair(store, history, start, end, report, stream=stream)
    if alerter is not None and alert_rows:
        report.alerts = alerter.evaluate(STALL_DATASET, pa.Table.from_pylist(alert_rows, schema=STREAM_STALLS))
    return report


def repair(store: TickStore, history: History, start: datetime, end: datetime,
           report: FeedHealthReport, *, stream: str | None = None) -> None:
    """Refill each unrepaired silent stall overlapping [start, end) from the vendor's history, like
    a disconnect's gap: the symbol's quotes and trades of the stall, and the bars of its minutes."""
    gaps = [Gap(g["gap_start"], g["gap_end"], (g["symbol"],), g["id"], g.get("reason") or "")
            for g in store.stalls(start, end, stream=stream) if g["repaired_at"] is None]
    for result in repair_gaps(store, history, gaps, bars_until=lambda gap: floor_minute(gap.end)):
        gap = result.gap
        if result.error is not None:
            report.repair_failures.append(
                f"gap {gap.id} ({gap.symbols[0]} {gap.start:%H:%M}-{gap.end:%H:%M} UTC): {result.error}")
            log.warning("stall repair failed: %s", report.repair_failures[-1])
            continue
        report.repaired_gaps += 1
        report.repaired_bars += result.bars


class _PolygonBars:
    """Polygon's aggregates as a repair history: bars only (the platform reads no Polygon ticks)."""

    def __init__(self, polygon) -> None:
        self.polygon = polygon

    @property
    def calls(self) -> int:
        return self.polygon.gate.stats.requests

    def bars(self, symbols, start: datetime, end: datetime) -> pa.Table:
        return pa.concat_tables([self.polygon.bars(symbol, start, end) for symbol in symbols])

    def quotes(self, symbols, start: datetime, end: datetime) -> pa.Table:
        return QUOTES.empty_table()

    def trades(self, symbols, start: datetime, end: datetime) -> pa.Table:
        return TRADES.empty_table()


def rest_history(*, alpaca=None, polygon=None) -> History:
    """The stream's repair source: Alpaca's REST history (`AlpacaSource`: bars, quotes and
    trades), as for disconnects, or Polygon's aggregates (`PolygonSource`: bars only) when Alpaca
    is not configured."""
    if alpaca is not None:
        return alpaca_history(alpaca)
    if polygon is None:
        raise ConfigError("no REST vendor to repair silent stalls from: set ALPACA_API_KEY/ALPACA_SECRET_KEY "
                          "or POLYGON_API_KEY")
    return _PolygonBars(polygon)


def session_report(store: TickStore, start: datetime, end: datetime) -> dict[str, Any]:
    """Per session (any window): symbols silent, silent minutes, and what was repaired."""
    gaps = store.stalls(start, end)
    minutes = sum(int((g["gap_end"] - g["gap_start"]) / MINUTE) for g in gaps)
    repaired = [g for g in gaps if g["repaired_at"] is not None]
    return {
        "stalls": len(gaps),
        "symbols_silent": sorted({g["symbol"] for g in gaps}),
        "minutes": minutes,
        "repaired": len(repaired),
        "repaired_bars": int(np.sum([g["repaired_bars"] or 0 for g in repaired])) if repaired else 0,
        "unrepaired": [g["id"] for g in gaps if g["repaired_at"] is None],
    }
