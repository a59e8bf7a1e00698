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
from market_platform.defs.streaming.resources import AlpacaStreamResource
from market_platform.sources.sim import SimMarket
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
            self._store = TickStore.from_settings(self.url, retention=retention)
            # Idempotent and cheap once applied: a fresh database works on first use.
            self._store.init_schema()
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

    def alerter(self, store: TickStore):
        """An `analytics.alerts.Alerter` on `store`, or None when the rules file does not exist."""
        from pathlib import Path

        from market_platform.analytics.alerts import Alerter, load_rules

        if not Path(self.rules_path()).exists():
            return None
        return Alerter(
            store,
            load_rules(self.rules_path()),
            json_file=self.json_file or str(settings.home() / "alerts.jsonl"),
            webhook_url=self.webhook_url,
        )


def env_var(name: str) -> dg.EnvVar | None:
    """`dg.EnvVar(name)` when the variable is set, else None (the resource's own default).

    Called when definitions load, not at import; the value itself is resolved by Dagster at
    run time and never appears in the UI or logs.
    """
    return dg.EnvVar(name) if os.environ.get(name) else None


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources wired from the environment: vendor keys select real vendors, else the simulator."""
    return {
        "tick_store": TickStoreResource(url=env_var(settings.DB_URL_VAR)),
        "lake": LakeResource(
            url=env_var(settings.LAKE_URL_VAR),
            s3_endpoint=env_var("MARKET_LAKE_S3_ENDPOINT"),
            s3_access_key=env_var("AWS_ACCESS_KEY_ID"),
            s3_secret_key=env_var("AWS_SECRET_ACCESS_KEY"),
            s3_region=env_var("AWS_DEFAULT_REGION"),
        ),
        "bars_source": SimMarketResource(
            n_stocks=int(os.environ.get("MARKET_SIM_STOCKS", "3000")),
            activity=float(os.environ.get("MARKET_SIM_ACTIVITY", "1.0")),
        ),
        "alpaca_stream": AlpacaStreamResource(
            api_key=env_var("ALPACA_API_KEY"),
            secret_key=env_var("ALPACA_SECRET_KEY"),
            feed=env_var("ALPACA_FEED"),
            stream_url=env_var("ALPACA_STREAM_URL"),
            data_url=env_var("ALPACA_DATA_URL"),
        ),
        "alerts": AlertsResource(
            rules_file=env_var("MARKET_ALERTS_FILE"),
            json_file=env_var("MARKET_ALERTS_JSON"),
            webhook_url=env_var("MARKET_ALERTS_WEBHOOK_URL"),
        ),
    }
