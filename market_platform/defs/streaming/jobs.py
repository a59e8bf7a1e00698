"""The stream jobs: one run streams one stock session, or one UTC day of crypto, into the tick store.

A run subscribes to quotes, trades and one-minute bars of the universe, streams until the
window closes, then drains everything to the database, repairs the gaps its disconnects left
from REST history and reports on the live tables. Launched by `premarket_stream_schedule`
(stocks, 04:00 New York on sessions), `crypto_stream_schedule` (00:00 UTC) and
`stream_watchdog_sensor` (a stream that died while its window is open).
"""


from datetime import datetime, timezone
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from market_platform.defs.resources import SimMarketResource, TickStoreResource
from market_platform.defs.streaming.assets import LIVE_TABLES, live_bars_1m, live_quotes, live_trades
from market_platform.defs.streaming.resources import AlpacaStreamResource
from market_platform.errors import InvalidInputError
from market_platform.storage.timescale import TickStore
from market_platform.streaming import StreamReport
from market_platform.streaming.convert import Bounds
from market_platform.streaming.runs import is_loopback, stream_window, today

UTC = timezone.utc

#: Run tags: which stream, and which session (stocks) or UTC day (crypto).
STREAM_TAG = "market_platform/stream"
DAY_TAG = "market_platform/day"


class StreamRunConfig(dg.Config):
    """What a stream run covers. Defaults: today's whole window, the universe, real time."""

    day: Optional[str] = Field(default=None, description="Session (stocks) or UTC day (crypto), YYYY-MM-DD; default today")
    start: Optional[str] = Field(default=None, description="Stocks: HH:MM New York to start at (default the pre-market open)")
    end: Optional[str] = Field(default=None, description="Stocks: HH:MM New York to end at (default the after-hours close)")
    speed: float = Field(default=1.0, description="Replay only: times real time; 0 streams as fast as possible")
    symbols: Optional[list[str]] = Field(default=None, description="Symbols to subscribe to; default the universe")
    clock: str = Field(default="auto", description="auto, wall (live) or events (a replay of a past session)")
    stale_after_seconds: float = Field(default=15.0, description="Reconnect after this long connected but silent")
    repair_delay_seconds: float = Field(default=60.0, description="Wait this long after a reconnect to repair its gap")
    change_filter: bool = Field(default=False, description="Store a quote only when its bid or ask price changed")
    connect_attempts: int = Field(default=5, description="Failed connections in a row, before any succeeds, that fail the run")
    max_price: float = Field(default=Bounds.max_price, description="A price above this is implausible: a dead letter")
    max_size: float = Field(default=Bounds.max_size, description="A quote or trade size above this is implausible: a dead letter")
    report_every_minutes: int = Field(default=5, description="Report on the live tables every N stream minutes")


def _today(kind: str) -> str:
    return today(kind).isoformat()


def _stock_symbols(context: dg.OpExecutionContext, store: TickStore, day: str, live: bool) -> list[str] | None:
    """What a stock run subscribes to without `symbols`: the universe in force on `day`; with
    none, the replay's own listing of that day (None), and from a live feed, a clear error."""
    symbols = store.universe_symbols(day)
    if symbols:
        return symbols
    if live:
        raise InvalidInputError(
            f"no us_equities or etf universe snapshot on or before {day} in the tick store: discover one "
            f"(`market-platform discover us_equities --as-of {day}`) or give symbols")
    context.log.info(f"no stock universe snapshot on or before {day}: streaming the replay's listing of that day")
    return None


def run_stream(context: dg.OpExecutionContext, kind: str, config: StreamRunConfig, tick_store: TickStoreResource,
               alpaca_stream: AlpacaStreamResource, bars_source: SimMarketResource) -> StreamReport:
    """Stream one window (see the module docstring); returns the streamer's report."""
    day = config.day or _today(kind)
    store = tick_store.store()
    live = alpaca_stream.live and not is_loopback(alpaca_stream.stream_url)
    symbols = config.symbols or (_stock_symbols(context, store, day, live) if kind == "stocks" else None)
    reporter = _Reporter(context, kind, day, config.report_every_minutes)

    def started(ep, stream_config) -> None:
        source = "Alpaca" if live else "a replay"
        context.log.info(
            f"streaming {len(stream_config.symbols)} {kind} symbols from {source} ({ep.url or 'Alpaca'}), "
            f"{stream_config.start:%Y-%m-%d %H:%M} .. {stream_config.end:%H:%M} UTC, {ep.clock} clock")

    report = stream_window(
        kind, day, market=bars_source.market, symbols=symbols, start=config.start, end=config.end,
        speed=config.speed or None, api_key=alpaca_stream.api_key, secret_key=alpaca_stream.secret_key,
        feed=alpaca_stream.stock_feed, stream_url=alpaca_stream.stream_url, data_url=alpaca_stream.data_url,
        store_url=store.url,
        clock=config.clock,
        # A live feed, or a replay in real time of today, starts from now; a replay of the past from the start.
        from_now=(live or config.speed == 1.0) and day == _today(kind),
        on_minute=reporter, on_start=started, stale_after=config.stale_after_seconds,
        repair_delay=config.repair_delay_seconds, change_filter=config.change_filter,
        connect_attempts=config.connect_attempts,
        bounds=Bounds(max_price=config.max_price, max_size=config.max_size),
    )
    reporter.final(report)
    context.log.info(f"{report.stream}: {report.summary()}")
    return report


class _Reporter:
    """Reports on the live tables every few stream minutes, and at the end."""

    def __init__(self, context: dg.OpExecutionContext, kind: str, day: str, every: int) -> None:
        self.context, self.kind, self.day, self.every = context, kind, day, max(1, every)
        self.minutes = 0

    def __call__(self, row: dict[str, Any]) -> None:
        self.minutes += 1
        if self.minutes % self.every == 0:
            self._report({"quotes": row["quotes_total"], "trades": row["trades_total"], "bars": row["bars_total"]},
                         row["minute"])

    def final(self, report: StreamReport) -> None:
        self._report({"quotes": report.quotes + report.repaired_quotes, "trades": report.trades + report.repaired_trades,
                      "bars": report.bars + report.repaired_bars}, report.last_event,
                     extra={"gaps": report.gaps, "repaired_bars": report.repaired_bars,
                            "repaired_quotes": report.repaired_quotes, "repaired_trades": report.repaired_trades,
                            "dead_letters": report.dead_letters, "errors": report.errors,
                            "reconnects": report.reconnects})

    def _report(self, rows: dict[str, int], last_event: datetime | None, extra: dict[str, int] | None = None) -> None:
        for spec, name in ((live_quotes, "quotes"), (live_trades, "trades"), (live_bars_1m, "bars")):
            metadata: dict[str, Any] = {
                "rows_this_run": dg.MetadataValue.int(rows[name]),
                "last_event_time": dg.MetadataValue.text(last_event.isoformat() if last_event else ""),
                "stream": dg.MetadataValue.text(self.kind),
                "day": dg.MetadataValue.text(self.day),
            }
            for key, value in (extra or {}).items():
                metadata[key] = dg.MetadataValue.int(value)
            self.context.log_event(dg.AssetMaterialization(asset_key=spec.key, metadata=metadata))


@dg.op(tags={STREAM_TAG: "stocks"})
def stream_stocks(context: dg.OpExecutionContext, config: StreamRunConfig, tick_store: TickStoreResource,
                  alpaca_stream: AlpacaStreamResource, bars_source: SimMarketResource) -> None:
    """Stream one stock session into the tick store, then drain, repair gaps and report."""
    run_stream(context, "stocks", config, tick_store, alpaca_stream, bars_source)


@dg.op(tags={STREAM_TAG: "crypto"})
def stream_crypto(context: dg.OpExecutionContext, config: StreamRunConfig, tick_store: TickStoreResource,
                  alpaca_stream: AlpacaStreamResource, bars_source: SimMarketResource) -> None:
    """Stream one UTC day of crypto pairs into the tick store, then drain, repair gaps and report."""
    run_stream(context, "crypto", config, tick_store, alpaca_stream, bars_source)


#: Streams keep Dagster's default executor even when the platform's steps go to Celery workers
#: (MARKET_CELERY_BROKER_URL): one websocket per account, held by one process.
STREAM_EXECUTOR = dg.multi_or_in_process_executor


@dg.job(tags={STREAM_TAG: "stocks"}, executor_def=STREAM_EXECUTOR,
        description="One stock session streamed into the tick store, in one process (never on Celery workers).")
def stock_stream_job() -> None:
    stream_stocks()


@dg.job(tags={STREAM_TAG: "crypto"}, executor_def=STREAM_EXECUTOR,
        description="One UTC day of crypto streamed into the tick store, in one process (never on Celery workers).")
def crypto_stream_job() -> None:
    stream_crypto()


quotes_daily_job = dg.define_asset_job(
    "quotes_daily_job", selection=["quotes_daily"],
    description="Archive a session's quotes from the tick store into the lake.",
)

STREAM_JOBS = {"stocks": stock_stream_job, "crypto": crypto_stream_job}
OP_NAMES = {"stocks": "stream_stocks", "crypto": "stream_crypto"}


def run_config(kind: str, day: str, **overrides: Any) -> dict[str, Any]:
    """The run config of a stream run for `day` (what the schedule and the sensor request)."""
    return {"ops": {OP_NAMES[kind]: {"config": {"day": day, **overrides}}}}


__all__ = ["LIVE_TABLES", "crypto_stream_job", "quotes_daily_job", "stock_stream_job"]
