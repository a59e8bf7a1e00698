"""The snapshot jobs: poll the vendor's whole-market snapshot into the queue, process the queue
into `market_snapshots`, and check the live stream against the snapshots (feed health).

- `snapshot_poll_job`: one run per stock session (pre-market open to after-hours close) or UTC
  day of crypto, once a minute on the minute; launched by `snapshot_poll_schedule` and
  `crypto_snapshot_poll_schedule`.
- `snapshot_process_job`: drains the queue in batches of 10; launched by `snapshot_queue_sensor`
  when 10 messages wait or the oldest has waited a minute.
- `feed_health_job`: records, repairs and alerts the silent stalls of a session; launched by
  `feed_health_sensor` when it sees new ones.
"""


from datetime import datetime, timezone
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from market_platform import calendar
from market_platform.defs.resources import (
    VENDOR_FIELDS,
    AlertsResource,
    SimMarketResource,
    TickStoreResource,
    VendorsResource,
)
from market_platform.defs.snapshots.assets import snapshots
from market_platform.defs.snapshots.resources import SnapshotQueueResource
from market_platform.history.vendors import has_vendor_keys
from market_platform.snapshots import feed_health
from market_platform.snapshots.poller import PollReport, SnapshotVendor, choose_provider, poll_snapshots, window
from market_platform.snapshots.processor import BATCH_SIZE, drain

UTC = timezone.utc
MARKET_TAG = "market_platform/snapshot_market"
DAY_TAG = "market_platform/day"


class SnapshotPollConfig(dg.Config):
    """What a poll run covers. Defaults: today's whole window, the vendor the keys name, real time."""

    day: Optional[str] = Field(default=None, description="Session (stocks) or UTC day (crypto), YYYY-MM-DD; default today")
    start: Optional[str] = Field(default=None, description="HH:MM to start at, New York (stocks) or UTC (crypto)")
    end: Optional[str] = Field(default=None, description="HH:MM to end at, New York (stocks) or UTC (crypto)")
    market: str = Field(default="stocks", description="stocks or crypto")
    provider: str = Field(default="auto", description="auto (Polygon if its key is set, else Alpaca), polygon or alpaca")
    speed: float = Field(default=1.0, description="Replay only: times real time; 0 polls as fast as possible")
    symbols: Optional[list[str]] = Field(default=None, description="Alpaca: symbols to poll (default the universe)")
    report_every_minutes: int = Field(default=15, description="Report on `snapshots` every N polled minutes")


def vendor_env(vendors: VendorsResource) -> dict[str, str]:
    """The vendor variables the `vendors` resource resolved (keys and URLs), as an environment."""
    return {var: str(getattr(vendors, name)) for name, var in VENDOR_FIELDS.items() if getattr(vendors, name) is not None}


def _observe(context: dg.OpExecutionContext, report: PollReport, day: str) -> None:
    context.log_event(dg.AssetObservation(asset_key=snapshots.key, metadata={
        "minutes_polled": dg.MetadataValue.int(len(report.polled)),
        "minutes_missed": dg.MetadataValue.int(len(report.missed)),
        "messages_enqueued": dg.MetadataValue.int(report.messages),
        "bytes_enqueued": dg.MetadataValue.int(report.bytes),
        "requests": dg.MetadataValue.int(report.requests),
        "throttled": dg.MetadataValue.int(report.throttled),
        "last_minute": dg.MetadataValue.text(report.polled[-1].isoformat() if report.polled else ""),
        "source": dg.MetadataValue.text(report.source), "market": dg.MetadataValue.text(report.market),
        "day": dg.MetadataValue.text(day),
    }))


@dg.op
def poll_snapshots_op(context: dg.OpExecutionContext, config: SnapshotPollConfig, tick_store: TickStoreResource,
                      snapshot_queue: SnapshotQueueResource, vendors: VendorsResource,
                      bars_source: SimMarketResource) -> None:
    """Poll the snapshot once a minute over the window and enqueue every raw response; missed
    minutes go to snapshot_misses. Fails if no minute yielded anything."""
    store = tick_store.store()
    queue = snapshot_queue.queue(store)
    env = vendor_env(vendors)
    zone = UTC if config.market == "crypto" else calendar.NEW_YORK
    day = config.day or datetime.now(UTC).astimezone(zone).date().isoformat()
    symbols = config.symbols
    if symbols is None and config.market == "stocks" and has_vendor_keys(env) and choose_provider(config.provider, env) == "alpaca":
        symbols = store.universe_symbols(day) or None

    def started(vendor: SnapshotVendor, minutes: list) -> None:
        context.log.info(f"polling {vendor.describe or vendor.source} ({config.market}) at {len(minutes)} minutes, "
                         f"{minutes[0]:%Y-%m-%d %H:%M} .. {minutes[-1]:%H:%M} UTC, into {queue.describe()}")

    def polled(minute: datetime, report: PollReport) -> None:
        if (len(report.polled) + len(report.missed)) % max(1, config.report_every_minutes) == 0:
            _observe(context, report, day)

    report = poll_snapshots(store, queue, sim_market=bars_source.market, market=config.market, day=day,
                            start=config.start, end=config.end, speed=config.speed or None, provider=config.provider,
                            symbols=symbols, environ=env, on_start=started, on_polled=polled)
    _observe(context, report, day)
    context.log.info(report.summary())
    if not report.messages:
        raise dg.Failure(f"no snapshot was enqueued: {len(report.missed)} minutes missed "
                         f"({report.missed[0][1] if report.missed else 'no minute to poll'})")


class SnapshotProcessConfig(dg.Config):
    batch_size: int = Field(default=BATCH_SIZE, description="Messages per batch (SQS hands out at most 10)")
    max_batches: Optional[int] = Field(default=None, description="Stop after this many batches (default: drain)")


@dg.op
def process_snapshots_op(context: dg.OpExecutionContext, config: SnapshotProcessConfig, tick_store: TickStoreResource,
                         snapshot_queue: SnapshotQueueResource) -> None:
    """Drain the queue into `market_snapshots` in batches, malformed responses to dead_letters; drop
    snapshot day partitions past retention (plain PostgreSQL)."""
    store = tick_store.store()
    queue = snapshot_queue.queue(store)
    report = drain(queue, store, batch_size=config.batch_size, max_batches=config.max_batches)
    dropped = store.maintain_snapshots()
    left = queue.stats()
    context.log.info(f"{report.summary()}; {left.depth} left in {queue.describe()}"
                     + (f"; dropped {', '.join(dropped)}" if dropped else ""))
    context.log_event(dg.AssetMaterialization(asset_key=snapshots.key, metadata={
        "rows_inserted": dg.MetadataValue.int(report.rows),
        "duplicates": dg.MetadataValue.int(report.duplicates),
        "messages": dg.MetadataValue.int(report.messages),
        "batches": dg.MetadataValue.int(report.batches),
        "minutes": dg.MetadataValue.int(len(report.minutes)),
        "dead_letters": dg.MetadataValue.int(report.dead_letters),
        "last_minute": dg.MetadataValue.text(report.last_minute.isoformat() if report.last_minute else ""),
        "queue_depth_after": dg.MetadataValue.int(left.depth),
    }))


class FeedHealthConfig(dg.Config):
    day: Optional[str] = Field(default=None, description="Session (stocks) or UTC day (crypto); default today")
    kind: str = Field(default="stocks", description="stocks or crypto")
    min_silent_minutes: int = Field(default=feed_health.MIN_SILENT_MINUTES,
                                    description="Traded minutes with no live bar that make a stall")
    repair: bool = Field(default=True, description="Repair the stalls' bars from REST")


def feed_window(kind: str, day: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The session (or UTC day) of `day` (default: today's), up to `now`."""
    zone = UTC if kind == "crypto" else calendar.NEW_YORK
    day = day or now.astimezone(zone).date().isoformat()
    start, end = window(kind, day)
    return start, min(end, max(now, start + feed_health.MINUTE))


@dg.op
def check_feed_health_op(context: dg.OpExecutionContext, config: FeedHealthConfig, tick_store: TickStoreResource,
                         vendors: VendorsResource, alerts: AlertsResource) -> None:
    """Record the session's silent stalls as stream_gaps, repair them from REST, raise their
    alerts, and report symbols silent, minutes and what was repaired."""
    store = tick_store.store()
    start, end = feed_window(config.kind, config.day, datetime.now(UTC))
    history = None
    if config.repair:
        chosen = vendors.vendors()
        history = feed_health.rest_history(alpaca=chosen.alpaca, polygon=chosen.polygon)
    alerter = alerts.alerter(store, builtin=[feed_health.silent_stall_rule(config.min_silent_minutes)])
    report = feed_health.check_feed(store, start, end, kind=config.kind, history=history, alerter=alerter,
                                    min_minutes=config.min_silent_minutes)
    session = feed_health.session_report(store, start, end)
    context.log.info(report.summary())
    context.log_event(dg.AssetObservation(asset_key=snapshots.key, metadata=_feed_metadata(report, session)))
    if report.repair_failures:
        raise dg.Failure(f"{len(report.repair_failures)} silent stalls not repaired: {report.repair_failures[0]}")


def _feed_metadata(report: feed_health.FeedHealthReport, session: dict[str, Any]) -> dict[str, dg.MetadataValue]:
    return {
        "stream": dg.MetadataValue.text(report.stream or ""),
        "window": dg.MetadataValue.text(f"{report.start.isoformat()} .. {report.end.isoformat()}"),
        "stalls_found": dg.MetadataValue.int(len(report.stalls)),
        "stalls_recorded": dg.MetadataValue.int(report.recorded),
        "symbols_silent": dg.MetadataValue.text(", ".join(session["symbols_silent"])),
        "silent_minutes": dg.MetadataValue.int(session["minutes"]),
        "repaired": dg.MetadataValue.int(session["repaired"]),
        "repaired_bars": dg.MetadataValue.int(session["repaired_bars"]),
        "alerts": dg.MetadataValue.int(len(report.alerts.fired) if report.alerts else 0),
    }


@dg.job(description="Poll the whole-market snapshot once a minute over a session (or a UTC day of crypto) into the queue.")
def snapshot_poll_job() -> None:
    poll_snapshots_op()


@dg.job(description="Process queued snapshots into the tick store's `market_snapshots`, a batch of 10 at a time.")
def snapshot_process_job() -> None:
    process_snapshots_op()


@dg.job(description="Record, repair and alert the live stream's silent stalls the snapshots reveal.")
def feed_health_job() -> None:
    check_feed_health_op()


def poll_run_config(market: str, day: str, **overrides: Any) -> dict[str, Any]:
    return {"ops": {"poll_snapshots_op": {"config": {"market": market, "day": day, **overrides}}}}


def feed_run_config(kind: str, day: str, **overrides: Any) -> dict[str, Any]:
    return {"ops": {"check_feed_health_op": {"config": {"kind": kind, "day": day, **overrides}}}}
