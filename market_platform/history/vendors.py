"""The market data vendors a backfill uses, chosen from the environment.

    vendors = Vendors.from_env(market=lambda: SimMarket(n_stocks=500))
    vendors.choose(date(2024, 3, 7))          # "polygon_flatfiles": older than 30 days, file published
    vendors.choose(date.today())              # "polygon_rest"
    vendors.universe("etf", date(2024, 3, 7), limit=100)

Which vendor does what:

- **Flat Files** (POLYGON_S3_ACCESS_KEY/SECRET_KEY) serve sessions older than `flatfiles_after_days`
  (30 by default) whose file is published; one GET per session for the whole market.
- **REST** serves the rest: Polygon when POLYGON_API_KEY is set, else Alpaca when ALPACA_API_KEY
  and ALPACA_SECRET_KEY are (`provider` picks one explicitly). Reference data (universes) come
  from the same provider.
- **No vendor key at all**: the platform's own replay servers (Polygon REST, Flat Files on S3,
  Alpaca REST, serving the simulated market `market`) start on loopback in this process on first
  use and stay up until it exits, so the real client libraries and every code path run as they do
  in production. A flat file of that replay is published on demand once the vendor would have
  published it (11:00 New York the next day).

A vendor whose keys are missing is simply not used; the replay never stands in for one vendor
while others are real, since that would mix simulated and real data.
"""

from __future__ import annotations

import atexit
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta, timezone

import pyarrow as pa

from market_platform import calendar, settings
from market_platform.errors import ConfigError, InvalidInputError, UnknownSymbolError, VendorNotFoundError
from market_platform.replay import ReplayServers
from market_platform.schemas import CATEGORIES, Source
from market_platform.sources.alpaca import ALPACA_CATEGORIES, AlpacaSource
from market_platform.sources.flatfiles import FlatFilesSource
from market_platform.sources.polygon import PolygonSource
from market_platform.sources.sim import SimMarket
from market_platform.sources.vendor import RetryPolicy, run_concurrently, symbol_list

UTC = timezone.utc
#: What a run may ask for: `auto` (the policy above), `rest` (the provider's REST), or one source.
SOURCE_CHOICES = ("auto", "rest", Source.POLYGON_FLATFILES.value, Source.POLYGON_REST.value,
                  Source.ALPACA_REST.value)
PROVIDERS = ("auto", "polygon", "alpaca")
#: Timeframes the Flat Files carry (minute_aggs_v1, day_aggs_v1).
FLATFILE_TIMEFRAMES = ("1m", "1d")
#: Polygon publishes a session's flat files around 11:00 New York the next day.
FLATFILES_PUBLISHED_AT = time(11, 0)
DEFAULT_FLATFILES_AFTER_DAYS = 30

#: Variables whose presence means a real vendor is configured.
KEY_VARS = (settings.POLYGON_API_KEY_VAR, settings.POLYGON_S3_ACCESS_KEY_VAR, settings.ALPACA_API_KEY_VAR)

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def published_at(day: date) -> datetime:
    """When the vendor's flat file of session `day` is expected (11:00 New York the next day), in UTC."""
    return datetime.combine(day + timedelta(days=1), FLATFILES_PUBLISHED_AT, tzinfo=calendar.NEW_YORK).astimezone(UTC)


def has_vendor_keys(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in KEY_VARS)


# --------------------------------------------------------------------------- the local replay

_LOCAL: dict[str, ReplayServers] = {}
_LOCAL_LOCK = threading.Lock()


def local_replay(market: SimMarket) -> ReplayServers:
    """The replay servers of `market` for this process: started on first call (127.0.0.1, any free
    ports, no rate limit, no flat files yet), shared by later calls, stopped when the process exits."""
    key = repr(market)
    with _LOCAL_LOCK:
        servers = _LOCAL.get(key)
        if servers is None:
            # moto's buckets are process-wide: a bucket of its own keeps it clear of other replays.
            servers = ReplayServers(sim=market, bucket=f"flatfiles-local-{uuid.uuid4().hex[:8]}")
            servers.start()
            if not _LOCAL:
                atexit.register(_stop_local_replays)
            _LOCAL[key] = servers
        return servers


def _stop_local_replays() -> None:
    with _LOCAL_LOCK:
        for servers in _LOCAL.values():
            servers.stop()
        _LOCAL.clear()


# --------------------------------------------------------------------------- vendors


class Vendors:
    """The sources a backfill or a discovery uses, and the policy that picks one per session.

    `provider` is the REST and reference-data vendor: "polygon", "alpaca", or "auto" (Polygon when
    configured, else Alpaca). `replay`, when set, is the local replay these sources talk to, whose
    flat files are published on demand. `clock` is "now" (tests move it).
    """

    def __init__(
        self,
        *,
        polygon: PolygonSource | None = None,
        flatfiles: FlatFilesSource | None = None,
        alpaca: AlpacaSource | None = None,
        provider: str = "auto",
        flatfiles_after_days: int = DEFAULT_FLATFILES_AFTER_DAYS,
        replay: ReplayServers | None = None,
        clock: Clock = system_clock,
    ) -> None:
        if provider not in PROVIDERS:
            raise ConfigError(f"provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
        if isinstance(flatfiles_after_days, bool) or not isinstance(flatfiles_after_days, int) \
                or flatfiles_after_days < 0:
            raise ConfigError(f"flatfiles_after_days={flatfiles_after_days!r}: expected a number of days >= 0")
        if provider == "auto":
            # Flat Files alone leave no REST provider: recent sessions then fail with a clear error.
            provider = "alpaca" if polygon is None and alpaca is not None else "polygon"
        elif provider == "polygon" and polygon is None:
            raise ConfigError(f"provider polygon: {settings.POLYGON_API_KEY_VAR} is not set")
        elif provider == "alpaca" and alpaca is None:
            raise ConfigError(f"provider alpaca: {settings.ALPACA_API_KEY_VAR} and "
                              f"{settings.ALPACA_SECRET_KEY_VAR} are not set")
        self.polygon, self.flatfiles, self.alpaca = polygon, flatfiles, alpaca
        self.provider, self.flatfiles_after_days = provider, flatfiles_after_days
        self.replay, self.clock = replay, clock
        self._publish_lock = threading.Lock()
        self._publishing: dict[date, threading.Lock] = {}

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        market: Callable[[], SimMarket] | None = None,
        provider: str = "auto",
        flatfiles_after_days: int = DEFAULT_FLATFILES_AFTER_DAYS,
        workers: int = 8,
        retry: RetryPolicy = RetryPolicy(),
        rate_period: float = 60.0,
        rate_margin: float | None = None,
        page_limit: int = 50_000,
        clock: Clock = system_clock,
    ) -> Vendors:
        """Sources from the vendors' variables (see `settings`; rate limits are calls per
        `rate_period` seconds, spaced by `rate_margin` more, see `RateLimiter`), or the local replay
        of `market()` (default: the 3,000-stock simulated market) when no vendor key is set."""
        env = os.environ if environ is None else environ
        common = {"provider": provider, "flatfiles_after_days": flatfiles_after_days, "clock": clock}
        polygon_options = {"workers": workers, "retry": retry, "check_unknown": False, "page_limit": page_limit}
        if not has_vendor_keys(env):
            servers = local_replay(market() if market is not None else SimMarket())
            return cls(polygon=servers.polygon_source(**polygon_options), flatfiles=servers.flatfiles_source(),
                       alpaca=servers.alpaca_source(retry=retry), replay=servers, **common)
        polygon = flatfiles = alpaca = None
        if env.get(settings.POLYGON_API_KEY_VAR):
            polygon = PolygonSource.from_env(env, rate_period=rate_period, rate_margin=rate_margin,
                                             **polygon_options)
        if env.get(settings.POLYGON_S3_ACCESS_KEY_VAR) or env.get(settings.POLYGON_S3_SECRET_KEY_VAR):
            flatfiles = FlatFilesSource.from_env(env)
        if env.get(settings.ALPACA_API_KEY_VAR) or env.get(settings.ALPACA_SECRET_KEY_VAR):
            alpaca = AlpacaSource.from_env(env, retry=retry, rate_period=rate_period, rate_margin=rate_margin)
        return cls(polygon=polygon, flatfiles=flatfiles, alpaca=alpaca, **common)

    def __repr__(self) -> str:
        return f"Vendors({self.describe()})"

    def describe(self) -> str:
        """Where data comes from, for logs (URLs, never keys)."""
        parts = []
        if self.replay is not None:
            parts.append("the local replay servers (no vendor keys set)")
        if self.polygon is not None:
            parts.append(f"Polygon REST {self.polygon.base_url}")
        if self.flatfiles is not None:
            parts.append(f"Flat Files {self.flatfiles.endpoint}/{self.flatfiles.bucket} "
                         f"(sessions older than {self.flatfiles_after_days} days)")
        if self.alpaca is not None:
            parts.append(f"Alpaca REST {self.alpaca.data_url}")
        return "; ".join(parts) + f"; provider {self.provider}"

    # ----------------------------------------------------------------------- time

    def now(self) -> datetime:
        return self.clock()

    def today(self) -> date:
        """Today in New York."""
        return self.clock().astimezone(calendar.NEW_YORK).date()

    # ----------------------------------------------------------------------- source selection

    @property
    def rest_source(self) -> str:
        """The provider's REST source name: polygon_rest or alpaca_rest."""
        return Source.POLYGON_REST.value if self.provider == "polygon" else Source.ALPACA_REST.value

    def choose(self, day: date, requested: str = "auto", *, timeframe: str = "1m") -> str:
        """The source to fetch session `day` from (a `Source` value).

        `auto`: Flat Files when the session is older than `flatfiles_after_days` and its file is
        published, else the provider's REST. `rest`: the provider's REST. A named source must be
        configured (and for Flat Files, published and of a timeframe they carry).
        """
        if requested not in SOURCE_CHOICES:
            raise InvalidInputError(f"source {requested!r}: expected one of {', '.join(SOURCE_CHOICES)}")
        flat = Source.POLYGON_FLATFILES.value
        if requested == "auto":
            old = (self.today() - day).days > self.flatfiles_after_days
            if self.flatfiles is not None and timeframe in FLATFILE_TIMEFRAMES and \
                    (old or self._rest() is None) and self.flatfile_etag(day, timeframe=timeframe) is not None:
                return flat
            requested = "rest"
        if requested == "rest":
            if self._rest() is None:
                raise ConfigError(f"no REST vendor for {day.isoformat()}: set {settings.POLYGON_API_KEY_VAR} or "
                                  f"{settings.ALPACA_API_KEY_VAR}/{settings.ALPACA_SECRET_KEY_VAR}")
            return self.rest_source
        if requested == flat:
            if self.flatfiles is None:
                raise ConfigError(f"Flat Files are not configured: set {settings.POLYGON_S3_ACCESS_KEY_VAR} and "
                                  f"{settings.POLYGON_S3_SECRET_KEY_VAR}")
            if timeframe not in FLATFILE_TIMEFRAMES:
                raise InvalidInputError(f"Flat Files carry 1m and 1d bars, not {timeframe!r}: use a REST source")
            if self.flatfile_etag(day, timeframe=timeframe) is None:
                raise VendorNotFoundError(f"the flat file of {day.isoformat()} is not published yet (files appear "
                                          "around 11:00 New York the next day): use a REST source")
            return flat
        if requested == Source.POLYGON_REST.value and self.polygon is None:
            raise ConfigError(f"Polygon REST is not configured: set {settings.POLYGON_API_KEY_VAR}")
        if requested == Source.ALPACA_REST.value and self.alpaca is None:
            raise ConfigError(f"Alpaca is not configured: set {settings.ALPACA_API_KEY_VAR} and "
                              f"{settings.ALPACA_SECRET_KEY_VAR}")
        return requested

    def _rest(self) -> PolygonSource | AlpacaSource | None:
        return self.polygon if self.provider == "polygon" else self.alpaca

    def rest(self, source: str) -> PolygonSource | AlpacaSource:
        """The REST adapter of `source` (polygon_rest or alpaca_rest)."""
        adapter = {Source.POLYGON_REST.value: self.polygon, Source.ALPACA_REST.value: self.alpaca}.get(source)
        if adapter is None:
            raise ConfigError(f"source {source!r} is not configured")
        return adapter

    # ----------------------------------------------------------------------- flat files

    def flatfile_etag(self, day: date, *, timeframe: str = "1m") -> str | None:
        """The ETag of session `day`'s flat file, or None while it is not published. The local
        replay publishes a session's files here once the vendor would have (11:00 the next day)."""
        if self.flatfiles is None:
            return None
        dataset = "day_aggs_v1" if timeframe == "1d" else "minute_aggs_v1"
        etag = self.flatfiles.etag(day, dataset=dataset)
        if etag is None and self.replay is not None and calendar.is_session(day) and published_at(day) <= self.now():
            # One day's files at a time, several days at once, and only what is asked for: a full
            # market's minute file costs seconds that a ranking on day files never needs (the day
            # file comes with the minute file, cheap once the minutes exist).
            with self._publish_lock:
                lock = self._publishing.setdefault(day, threading.Lock())
            with lock:
                etag = self.flatfiles.etag(day, dataset=dataset)
                if etag is None:
                    datasets = [dataset]
                    if dataset == "minute_aggs_v1" and self.flatfiles.etag(day, dataset="day_aggs_v1") is None:
                        datasets.append("day_aggs_v1")
                    self.replay.flatfiles.publish(day, markets=["stocks"], datasets=datasets)
                    etag = self.flatfiles.etag(day, dataset=dataset)
        return etag

    # ----------------------------------------------------------------------- reference data

    def check_universe(self, category: str, day: date) -> None:
        """Raise, naming the value, when the provider cannot list `category` on `day`: an unknown
        category, one Alpaca does not have, a past day from Alpaca (it lists only today's assets),
        or no reference data vendor at all. Asks the vendor nothing."""
        if category not in CATEGORIES:
            raise InvalidInputError(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)}")
        if self.provider == "alpaca":
            if category not in ALPACA_CATEGORIES:
                raise InvalidInputError(f"Alpaca has no {category!r} category: expected {', '.join(ALPACA_CATEGORIES)} "
                                        f"(set {settings.POLYGON_API_KEY_VAR} for Polygon reference data)")
            if day != self.today():
                raise InvalidInputError(f"Alpaca lists only today's assets: expected as_of {self.today().isoformat()}, "
                                        f"got {day.isoformat()} (use Polygon for a past day)")
        elif self.polygon is None:
            raise ConfigError(f"no reference data vendor: set {settings.POLYGON_API_KEY_VAR} or "
                              f"{settings.ALPACA_API_KEY_VAR}/{settings.ALPACA_SECRET_KEY_VAR}")

    def universe(self, category: str, day: date, *, limit: int | None = None) -> pa.Table:
        """schemas.UNIVERSE: the tickers of `category` listed on `day`, from the provider (see
        `check_universe` for what it refuses)."""
        self.check_universe(category, day)
        if self.provider == "alpaca":
            return self.alpaca.universe(category, day, limit=limit)
        return self.polygon.universe(category, day, limit=limit)

    def check_symbols(self, symbols: Sequence[str], first: date, last: date) -> None:
        """Raise UnknownSymbolError naming every symbol the provider does not know (Polygon: not
        listed on `last` nor on `first`)."""
        names = symbol_list(symbols)
        if self.provider == "alpaca":
            self.alpaca.check_symbols(names)
            return
        polygon = self.polygon
        if polygon is None:
            raise ConfigError(f"no reference data vendor to check tickers: set {settings.POLYGON_API_KEY_VAR}")

        def known(symbol: str) -> bool:
            for day in dict.fromkeys((last, first)):
                try:
                    polygon.check_symbols([symbol], day)
                    return True
                except UnknownSymbolError:
                    continue
            return False

        flags = run_concurrently(names, known, workers=polygon.workers)
        unknown = [s for s, ok in zip(names, flags, strict=True) if not ok]
        if unknown:
            span = first.isoformat() if first == last else f"{first.isoformat()} or {last.isoformat()}"
            raise UnknownSymbolError(f"Polygon does not list {', '.join(unknown)} on {span}: expected tickers "
                                     "listed in the range (see `market-platform discover`)")
