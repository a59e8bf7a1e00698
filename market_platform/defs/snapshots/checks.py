"""`stream_not_silent`: by the snapshots, the live stream dropped no symbol silently, or what it
dropped is recorded and repaired."""


from datetime import datetime, timezone
from typing import Callable

import dagster as dg

from market_platform import calendar
from market_platform.defs.resources import TickStoreResource
from market_platform.defs.snapshots.assets import snapshots
from market_platform.defs.snapshots.jobs import feed_window
from market_platform.snapshots import feed_health

UTC = timezone.utc


def build_stream_not_silent(*, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> dg.AssetChecksDefinition:
    """The check (see the module docstring); `now` picks the session and exists for tests."""

    @dg.asset_check(asset=snapshots.key, name="stream_not_silent",
                    description="The open (else the last) session's silent stalls - symbols trading by the snapshots "
                                "with no live bar while the stream was connected - are all recorded and repaired")
    def stream_not_silent(context: dg.AssetCheckExecutionContext,
                          tick_store: TickStoreResource) -> dg.AssetCheckResult:
        store = tick_store.store()
        instant = now()
        cal = calendar.default_calendar()
        session = cal.session_at(instant)
        day = session.day if session is not None else cal.last_completed_session(instant)
        start, end = feed_window("stocks", day.isoformat(), instant)
        stream, stalls = feed_health.find_stalls(store, start, end)
        recorded = store.stalls(start, end)
        unrecorded = [s for s in stalls if not any(g["symbol"] == s.symbol and g["gap_start"] <= s.start
                                                   and g["gap_end"] >= s.end for g in recorded)]
        unrepaired = [g for g in recorded if g["repaired_at"] is None]
        report = feed_health.session_report(store, start, end)
        summary = (f"{day}: {len(stalls)} silent stalls by the snapshots ({len(unrecorded)} unrecorded, "
                   f"{len(unrepaired)} unrepaired)" if stream else f"{day}: no stream ran")
        return dg.AssetCheckResult(
            passed=not unrecorded and not unrepaired, severity=dg.AssetCheckSeverity.WARN, description=summary,
            metadata={"summary": dg.MetadataValue.text(summary),
                      "symbols_silent": dg.MetadataValue.text(", ".join(report["symbols_silent"])),
                      "silent_minutes": dg.MetadataValue.int(report["minutes"]),
                      "repaired": dg.MetadataValue.int(report["repaired"]),
                      "unrecorded": dg.MetadataValue.text(", ".join(f"{s.symbol} {s.start:%H:%M}" for s in unrecorded))})

    return stream_not_silent


stream_not_silent = build_stream_not_silent()

stream_not_silent_job = dg.define_asset_job(
    "stream_not_silent_job", selection=dg.AssetSelection.checks(stream_not_silent),
    description="Check the live stream against the minute snapshots.",
)
