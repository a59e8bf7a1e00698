"""All three replay servers together: Polygon REST, Alpaca REST and Polygon Flat Files (S3),
on loopback, serving one market, with the keys to use and the environment a user would export.

    with ReplayServers(sim=SimMarket(n_stocks=50), flatfile_days=(date(2024, 11, 25), date(2024, 11, 29))) as rs:
        bars = rs.polygon_source().minute_bars(date(2024, 11, 26), ["AAPL", "MSFT"])
        rs.polygon.faults.fail("/v2/aggs", 503, times=2)      # inject failures
        rs.polygon.log.max_in_window(60.0)                    # achieved calls per minute

`market-platform replay-server` runs them until Ctrl-C (`serve`).
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from market_platform import calendar, settings
from market_platform.replay.alpaca import AlpacaReplay
from market_platform.replay.alpaca_stream import AlpacaStreamReplay
from market_platform.replay.data import MarketProvider, ReplayData, SimProvider
from market_platform.replay.flatfiles import FlatFilesReplay
from market_platform.replay.http import Clock, system_clock
from market_platform.replay.polygon import PolygonReplay
from market_platform.sources.sim import SimMarket


#: Calls per minute `env()` gives clients of a replay without a rate limit.
UNLIMITED_RATE = 1_000_000


@dataclass(frozen=True)
class ReplayKeys:
    """Credentials the replay servers accept. None is secret: `market-platform replay-server`
    prints them. The `*_free*` ones authenticate but lack the data, as a free plan does."""

    polygon_api_key: str = "replay-polygon-key"
    polygon_free_key: str = "replay-polygon-free-plan"        # 403 on aggregates and snapshots
    alpaca_key_id: str = "replay-alpaca-key"
    alpaca_secret: str = "replay-alpaca-secret"
    alpaca_free_key_id: str = "replay-alpaca-free-plan"       # 403 on feed=sip
    alpaca_free_secret: str = "replay-alpaca-free-secret"
    s3_access_key: str = "replay-flatfiles-key"
    s3_secret: str = "replay-flatfiles-secret"
    s3_free_access_key: str = "replay-flatfiles-free-plan"    # 403 on every file
    s3_free_secret: str = "replay-flatfiles-free-secret"


class ReplayServers:
    """Polygon REST, Alpaca REST and Flat Files on 127.0.0.1, started together (port 0: any free port).

    `provider` (default: a SimMarket, `sim` or one of 500 stocks) feeds all three through one
    `ReplayData`. Flat files are written for `flatfile_days` (inclusive) at start; REST serves any
    day. `rate_limit` is the REST servers' calls per `rate_window` seconds per key (None: none).
    `clock` is the servers' "now" (market status, snapshot, clock, default "today").
    """

    def __init__(
        self,
        provider: MarketProvider | None = None,
        *,
        sim: SimMarket | None = None,
        host: str = "127.0.0.1",
        polygon_port: int = 0,
        alpaca_port: int = 0,
        s3_port: int = 0,
        flatfile_days: tuple[date, date] | None = None,
        rate_limit: int | None = None,
        rate_window: float = 60.0,
        keys: ReplayKeys = ReplayKeys(),
        clock: Clock = system_clock,
        bucket: str = "flatfiles",
        alpaca_page_cap: int = 10_000,
        cache_rows: int = 2_000_000,
    ) -> None:
        if provider is None:
            provider = SimProvider(sim if sim is not None else SimMarket(n_stocks=500))
        self.keys = keys
        self.flatfile_days = flatfile_days
        self.data = ReplayData(provider, cache_rows=cache_rows)
        common: dict[str, Any] = {"host": host, "clock": clock, "rate_limit": rate_limit, "rate_window": rate_window}
        self.polygon = PolygonReplay(self.data, port=polygon_port, api_keys=[keys.polygon_api_key],
                                     unentitled_keys=[keys.polygon_free_key], **common)
        self.alpaca = AlpacaReplay(
            self.data, port=alpaca_port, page_cap=alpaca_page_cap, sip_denied=[keys.alpaca_free_key_id],
            keys={keys.alpaca_key_id: keys.alpaca_secret, keys.alpaca_free_key_id: keys.alpaca_free_secret},
            **common)
        self.flatfiles = FlatFilesReplay(
            self.data, host=host, port=s3_port, bucket=bucket, unentitled_keys=[keys.s3_free_access_key],
            keys={keys.s3_access_key: keys.s3_secret, keys.s3_free_access_key: keys.s3_free_secret})

    def __repr__(self) -> str:
        return f"ReplayServers({self.data.provider!r})"

    def start(self) -> ReplayServers:
        try:
            self.polygon.start()
            self.alpaca.start()
            self.flatfiles.start()
            if self.flatfile_days is not None:
                self.flatfiles.populate(*self.flatfile_days)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in (self.flatfiles, self.alpaca, self.polygon):
            server.stop()

    def __enter__(self) -> ReplayServers:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------- test controls

    def reset(self) -> None:
        """Clear injected faults, request logs and rate-limit windows of all three servers."""
        for server in (self.polygon, self.alpaca, self.flatfiles):
            server.reset()

    def set_rate_limit(self, calls: int | None, window: float = 60.0) -> None:
        """The REST servers' limit: `calls` per `window` seconds per key (None: unlimited)."""
        self.polygon.rate_limit.configure(calls, window)
        self.alpaca.rate_limit.configure(calls, window)

    @property
    def clock(self) -> Clock:
        return self.polygon.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self.polygon.clock = self.alpaca.clock = clock

    # ----------------------------------------------------------------------- clients

    @property
    def polygon_url(self) -> str:
        return self.polygon.url

    @property
    def alpaca_url(self) -> str:
        return self.alpaca.url

    @property
    def s3_endpoint(self) -> str:
        return self.flatfiles.endpoint

    def env(self, *, rates: bool = False) -> dict[str, str]:
        """The environment that points the platform's adapters at these servers. With `rates`, also
        the REST servers' rate limit as the clients' (calls per minute; a very high one when they
        have none), so that clients do not wait at a vendor plan's default rate."""
        env = {
            settings.POLYGON_API_KEY_VAR: self.keys.polygon_api_key,
            settings.POLYGON_BASE_URL_VAR: self.polygon_url,
            settings.POLYGON_S3_ACCESS_KEY_VAR: self.keys.s3_access_key,
            settings.POLYGON_S3_SECRET_KEY_VAR: self.keys.s3_secret,
            settings.POLYGON_S3_ENDPOINT_VAR: self.s3_endpoint,
            settings.POLYGON_S3_BUCKET_VAR: self.flatfiles.bucket,
            settings.ALPACA_API_KEY_VAR: self.keys.alpaca_key_id,
            settings.ALPACA_SECRET_KEY_VAR: self.keys.alpaca_secret,
            settings.ALPACA_DATA_URL_VAR: self.alpaca_url,
            settings.ALPACA_TRADING_URL_VAR: self.alpaca_url,
            settings.ALPACA_FEED_VAR: "sip",
        }
        if rates:
            limit = self.polygon.rate_limit
            per_minute = str(math.ceil(limit.calls * 60 / limit.window) if limit.calls else UNLIMITED_RATE)
            env.update({settings.POLYGON_RATE_LIMIT_VAR: per_minute, settings.ALPACA_RATE_LIMIT_VAR: per_minute})
        return env

    def polygon_source(self, **options: Any):
        """A PolygonSource on this server (no client-side rate limit unless given)."""
        from market_platform.sources.polygon import PolygonSource

        return PolygonSource(options.pop("api_key", self.keys.polygon_api_key), base_url=self.polygon_url,
                             **{"rate_limit": None, **options})

    def alpaca_source(self, **options: Any):
        """An AlpacaSource on this server (data and trading API; no client-side rate limit unless given)."""
        from market_platform.sources.alpaca import AlpacaSource

        return AlpacaSource(options.pop("key_id", self.keys.alpaca_key_id),
                            options.pop("secret", self.keys.alpaca_secret),
                            data_url=self.alpaca_url, trading_url=self.alpaca_url,
                            **{"rate_limit": None, "feed": "sip", **options})

    def flatfiles_source(self, **options: Any):
        """A FlatFilesSource on this S3 server."""
        from market_platform.sources.flatfiles import FlatFilesSource

        return FlatFilesSource(options.pop("access_key", self.keys.s3_access_key),
                               options.pop("secret_key", self.keys.s3_secret),
                               endpoint=self.s3_endpoint, bucket=self.flatfiles.bucket, **options)


def serve(servers: ReplayServers, *, stream: AlpacaStreamReplay | None = None,
          echo: Callable[[str], None] = print, stop: threading.Event | None = None) -> None:
    """Start `servers` (and the Alpaca stream replay `stream`), print where they listen and what to
    export, and run until SIGINT/SIGTERM (or `stop` is set).

    The exports point every vendor variable the platform reads at the replay, the stream's
    ALPACA_STREAM_URL included, so that a shell that follows them never sends the replay's keys to
    a real vendor."""
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        servers.start()
        env = servers.env(rates=True)
        days = servers.flatfile_days
        echo(f"polygon REST   {servers.polygon_url}")
        echo(f"alpaca REST    {servers.alpaca_url}   (data and trading API)")
        echo(f"flat files     {servers.s3_endpoint}   bucket {servers.flatfiles.bucket}"
             + (f", {days[0].isoformat()} to {days[1].isoformat()}" if days else ", empty"))
        if stream is not None:
            stream.start()
            env[settings.ALPACA_STREAM_URL_VAR] = stream.url(env[settings.ALPACA_FEED_VAR])
            lo, hi = (t.astimezone(calendar.NEW_YORK).strftime("%H:%M") for t in stream.window())
            echo(f"alpaca stream  {env[settings.ALPACA_STREAM_URL_VAR]}   ({stream.day.isoformat()} {lo}-{hi} New York, "
                 f"as fast as clients read: market-platform stream --day {stream.day.isoformat()} "
                 f"--start {lo} --end {hi})")
        limit = servers.polygon.rate_limit
        echo(f"rate limit     {f'{limit.calls} calls per {limit.window:g}s per key' if limit.calls else 'none'}")
        echo("\nto point the platform at the replay:")
        for name, value in env.items():
            echo(f"export {name}={value}")
        echo("\nCtrl-C to stop")
        while not stop.wait(0.5):
            pass
    finally:
        if stream is not None:
            stream.stop()
        servers.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
