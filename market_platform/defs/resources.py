"""Dagster resources: thin, configurable handles on the storage and source layers.

Values come from the environment through `dg.EnvVar` (see `default_resources`), so the UI shows
the variable's name, never its value. A resource builds its client lazily at run time.
"""

from __future__ import annotations

import os
from datetime import date
from functools import cached_property
from typing import Optional, Sequence

import dagster as dg
import pyarrow as pa
from pydantic import PrivateAttr

from market_platform import settings
from market_platform.defs.snapshots.resources import SnapshotQueueResource
from market_platform.defs.streaming.resources import AlpacaStreamResource
from market_platform.history.vendors import DEFAULT_FLATFILES_AFTER_DAYS, Vendors
from market_platform.sources.sim import SimMarket
from market_platform.sources.vendor import RetryPolicy
from market_platform.storage.lake import Lake
from market_platform.storage.timescale import Retention, TickStore


class TickStoreResource(dg.ConfigurableResource):
    """The tick store: PostgreSQL/TimescaleDB at `url`, or the embedded server when `url` is unset."""

    url: Optional[str] = None
    quotes_retention_days: int = 30
    trades_retention_days: int = 30
    bars_retention_days: int = 365

    _store: Optional[TickStore] = PrivateAttr(default=None)

    def store(self) -> TickStore:
        if self._store is None:
            retention = Retention(
                quotes_days=self.quotes_retention_days,
                trades_days=self.trades_retention_days,
                bars_days=self.bars_retention_days,
            )
            store = TickStore.from_settings(self.url, retention=retention)
            # Idempotent and cheap once applied: a fresh database works on first use. Kept only
            # once the schema is in, so a failed start is tried again by the next call.
            try:
                store.init_schema()
            except BaseException:
                store.close()
                raise
            self._store = store
        return self._store


class LakeResource(dg.ConfigurableResource):
    """The Parquet lake: a local path or `s3://bucket/prefix` (default `$MARKET_PLATFORM_HOME/lake`)."""

    url: Optional[str] = None
    s3_endpoint: Optional[str] = None
    s3_access_key: Optional[str] = None
    s3_secret_key: Optional[str] = None
    s3_region: Optional[str] = None

    _lake: Optional[Lake] = PrivateAttr(default=None)

    def lake(self) -> Lake:
        if self._lake is None:
            self._lake = Lake(
                self.url or settings.lake_url(),
                s3_endpoint=self.s3_endpoint,
                s3_key=self.s3_access_key,
                s3_secret=self.s3_secret_key,
                s3_region=self.s3_region,
            )
        return self._lake


class SimMarketResource(dg.ConfigurableResource):
    """The deterministic simulated market, as a source of universes and bars."""

    seed: int = 7
    n_stocks: int = 3000
    n_crypto: int = 20
    activity: float = 1.0

    name: str = "sim"

    @cached_property
    def market(self) -> SimMarket:
        return SimMarket(self.seed, n_stocks=self.n_stocks, n_crypto=self.n_crypto, activity=self.activity)

    def universe(self, category: str, day: date) -> pa.Table:
        return self.market.universe(category, day)

    def minute_bars(self, day: date, symbols: Sequence[str] | None = None) -> pa.Table:
        return self.market.minute_bars(day, symbols)


class AlertsResource(dg.ConfigurableResource):
    """Alert rules (a YAML file) and where alerts go: the log always, a JSON-lines file, a webhook.

    Defaults: rules in `$MARKET_PLATFORM_HOME/alerts.yaml` (no file: no alerts), alerts appended to
    `$MARKET_PLATFORM_HOME/alerts.jsonl`, no webhook. The webhook URL is a secret (Slack's carry a
    token): set it through MARKET_ALERTS_WEBHOOK_URL.
    """

    rules_file: Optional[str] = None
    json_file: Optional[str] = None
    webhook_url: Optional[str] = None

    def rules_path(self) -> str:
        return self.rules_file or str(settings.home() / "alerts.yaml")

    def alerter(self, store: TickStore, *, builtin: Sequence = ()):
        """An `analytics.alerts.Alerter` on `store` with the rules file's rules and the `builtin`
        ones (e.g. feed health's silent_stall), or None when there are none."""
        from pathlib import Path

        from market_platform.analytics.alerts import Alerter, load_rules

        rules = [*builtin, *(load_rules(self.rules_path()) if Path(self.rules_path()).exists() else [])]
        if not rules:
            return None
        return Alerter(
            store,
            rules,
            json_file=self.json_file or str(settings.home() / "alerts.jsonl"),
            webhook_url=self.webhook_url,
        )


class VendorsResource(dg.ConfigurableResource):
    """Market data vendors: Polygon REST and Flat Files, Alpaca REST, keys and URLs given through
    `dg.EnvVar`. With no key at all, the platform's replay servers of the simulated market `market`
    start on loopback in the run's process, so every client library runs as in production (see
    `market_platform.history.vendors`). Sessions older than `flatfiles_after_days` come from the
    Flat Files; `provider` picks the REST and reference-data vendor (auto, polygon, alpaca). Rate
    limits are calls per `rate_period_seconds` (a minute, as plans state them), spaced by
    `rate_margin_seconds` more (default 1% of the period) for the network's jitter; with
    `celery_broker_url` (the workers' Redis) they hold for all workers together."""

    polygon_api_key: Optional[str] = None
    polygon_base_url: Optional[str] = None
    polygon_rate_limit: Optional[int] = None
    polygon_s3_access_key: Optional[str] = None
    polygon_s3_secret_key: Optional[str] = None
    polygon_s3_endpoint: Optional[str] = None
    polygon_s3_bucket: Optional[str] = None
    alpaca_api_key: Optional[str] = None
    alpaca_secret_key: Optional[str] = None
    alpaca_feed: Optional[str] = None
    alpaca_data_url: Optional[str] = None
    alpaca_trading_url: Optional[str] = None
    alpaca_rate_limit: Optional[int] = None
    celery_broker_url: Optional[str] = None
    provider: str = "auto"
    flatfiles_after_days: int = DEFAULT_FLATFILES_AFTER_DAYS
    workers: int = 8
    retry_attempts: int = 5
    retry_backoff_seconds: float = 0.5
    rate_period_seconds: float = 60.0
    rate_margin_seconds: Optional[float] = None
    polygon_page_limit: int = 50_000
    market: Optional[SimMarketResource] = None

    _vendors: Optional[Vendors] = PrivateAttr(default=None)

    def vendors(self) -> Vendors:
        if self._vendors is None:
            values = {
                settings.POLYGON_API_KEY_VAR: self.polygon_api_key,
                settings.POLYGON_BASE_URL_VAR: self.polygon_base_url,
                settings.POLYGON_RATE_LIMIT_VAR: self.polygon_rate_limit,
                settings.POLYGON_S3_ACCESS_KEY_VAR: self.polygon_s3_access_key,
                settings.POLYGON_S3_SECRET_KEY_VAR: self.polygon_s3_secret_key,
                settings.POLYGON_S3_ENDPOINT_VAR: self.polygon_s3_endpoint,
                settings.POLYGON_S3_BUCKET_VAR: self.polygon_s3_bucket,
                settings.ALPACA_API_KEY_VAR: self.alpaca_api_key,
                settings.ALPACA_SECRET_KEY_VAR: self.alpaca_secret_key,
                settings.ALPACA_FEED_VAR: self.alpaca_feed,
                settings.ALPACA_DATA_URL_VAR: self.alpaca_data_url,
                settings.ALPACA_TRADING_URL_VAR: self.alpaca_trading_url,
                settings.ALPACA_RATE_LIMIT_VAR: self.alpaca_rate_limit,
                settings.CELERY_BROKER_URL_VAR: self.celery_broker_url,
            }
            market = self.market or SimMarketResource()
            self._vendors = Vendors.from_env(
                {name: str(value) for name, value in values.items() if value is not None},
                market=lambda: market.market, provider=self.provider,
                flatfiles_after_days=self.flatfiles_after_days, workers=self.workers,
                retry=RetryPolicy(attempts=self.retry_attempts, backoff=self.retry_backoff_seconds),
                rate_period=self.rate_period_seconds, rate_margin=self.rate_margin_seconds,
                page_limit=self.polygon_page_limit,
            )
        return self._vendors


#: VendorsResource field -> the variable it is read from.
VENDOR_FIELDS = {
    "polygon_api_key": settings.POLYGON_API_KEY_VAR,
    "polygon_base_url": settings.POLYGON_BASE_URL_VAR,
    "polygon_rate_limit": settings.POLYGON_RATE_LIMIT_VAR,
    "polygon_s3_access_key": settings.POLYGON_S3_ACCESS_KEY_VAR,
    "polygon_s3_secret_key": settings.POLYGON_S3_SECRET_KEY_VAR,
    "polygon_s3_endpoint": settings.POLYGON_S3_ENDPOINT_VAR,
    "polygon_s3_bucket": settings.POLYGON_S3_BUCKET_VAR,
    "alpaca_api_key": settings.ALPACA_API_KEY_VAR,
    "alpaca_secret_key": settings.ALPACA_SECRET_KEY_VAR,
    "alpaca_feed": settings.ALPACA_FEED_VAR,
    "alpaca_data_url": settings.ALPACA_DATA_URL_VAR,
    "alpaca_trading_url": settings.ALPACA_TRADING_URL_VAR,
    "alpaca_rate_limit": settings.ALPACA_RATE_LIMIT_VAR,
    "celery_broker_url": settings.CELERY_BROKER_URL_VAR,
}


def env_var(name: str) -> dg.EnvVar | None:
    """`dg.EnvVar(name)` when the variable is set, else None (the resource's own default).

    Called when definitions load, not at import; the value itself is resolved by Dagster at
    run time and never appears in the UI or logs.
    """
    return dg.EnvVar(name) if os.environ.get(name) else None


def vendors_resource(market: SimMarketResource | None = None) -> VendorsResource:
    """The vendors, every key and URL through `dg.EnvVar` (only for variables that are set)."""
    fields = {name: env_var(var) for name, var in VENDOR_FIELDS.items()}
    # Integer fields take an int: EnvVar.int resolves the variable at run time like EnvVar.
    for name in ("polygon_rate_limit", "alpaca_rate_limit"):
        if fields[name] is not None:
            fields[name] = dg.EnvVar.int(VENDOR_FIELDS[name])
    return VendorsResource(**{k: v for k, v in fields.items() if v is not None}, market=market)


def sim_market_resource() -> SimMarketResource:
    """The simulated market of `MARKET_SIM_STOCKS` stocks (default 3000) at `MARKET_SIM_ACTIVITY`
    (default 1.0: a full session of 3,000 stocks is about 80 million quotes)."""
    n_stocks, activity = settings.sim_market_size()
    return SimMarketResource(n_stocks=n_stocks, activity=activity)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources wired from the environment: vendor keys select real vendors, else the replay
    servers of the simulated market (`MARKET_SIM_STOCKS` stocks)."""
    market = sim_market_resource()
    return {
        "tick_store": TickStoreResource(url=env_var(settings.DB_URL_VAR)),
        "lake": LakeResource(
            url=env_var(settings.LAKE_URL_VAR),
            s3_endpoint=env_var("MARKET_LAKE_S3_ENDPOINT"),
            s3_access_key=env_var("AWS_ACCESS_KEY_ID"),
            s3_secret_key=env_var("AWS_SECRET_ACCESS_KEY"),
            s3_region=env_var("AWS_DEFAULT_REGION"),
        ),
        "bars_source": market,
        "vendors": vendors_resource(market),
        "alpaca_stream": AlpacaStreamResource(
            api_key=env_var("ALPACA_API_KEY"),
            secret_key=env_var("ALPACA_SECRET_KEY"),
            feed=env_var("ALPACA_FEED"),
            stream_url=env_var("ALPACA_STREAM_URL"),
            data_url=env_var("ALPACA_DATA_URL"),
        ),
        "snapshot_queue": SnapshotQueueResource(url=env_var("MARKET_SNAPSHOT_QUEUE_URL")),
        "alerts": AlertsResource(
            rules_file=env_var("MARKET_ALERTS_FILE"),
            json_file=env_var("MARKET_ALERTS_JSON"),
            webhook_url=env_var("MARKET_ALERTS_WEBHOOK_URL"),
        ),
    }
