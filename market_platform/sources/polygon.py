"""Polygon (Massive) REST through the official client, polygon-api-client, into Arrow.

    source = PolygonSource.from_env()                      # POLYGON_API_KEY, POLYGON_BASE_URL, ...
    bars = source.minute_bars(date(2024, 11, 26), ["AAPL", "MSFT"], on_symbol_done=stage)
    five = source.aggregates(date(2024, 11, 26), ["AAPL"], timeframe="5m")
    universe = source.universe("etf", date(2024, 11, 26), limit=100)

The client is kept for its URL building, parameters, pagination and models, but its urllib3 pool
is replaced: the client stores `connect_timeout`/`read_timeout` and never applies them, and it
retries 429/5xx itself, out of sight of any rate limiter. Our pool applies the timeouts and sends
every request, continuation pages included, through a `VendorGate` (rate limit, backoff with
jitter, 401/403 -> VendorAuthError, exhaustion -> VendorUnavailableError).

Tickers are fetched concurrently (`workers` threads) while the shared limiter keeps the plan's
calls per minute; results come back as schemas.BARS with `source = polygon_rest`, sorted by
(symbol, ts), timestamps in ns. Polygon answers an unknown ticker like one that did not trade (no
results), so a ticker with no bars is looked up in the reference data, and one Polygon does not
list on the day raises UnknownSymbolError.
"""

from __future__ import annotations

import itertools
import os
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import certifi
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import urllib3
from polygon import RESTClient
from polygon.exceptions import BadResponse

from market_platform import calendar, settings
from market_platform.errors import ConfigError, InvalidInputError, UnknownSymbolError, VendorError
from market_platform.schemas import BARS, CATEGORIES, TS, UNIVERSE, Source, actions_table, conform
from market_platform.sources import symbols as sym
from market_platform.sources.vendor import (
    RetryPolicy,
    VendorGate,
    rate_from_env,
    rate_limiter,
    run_concurrently,
    symbol_list,
)

UTC = timezone.utc
DEFAULT_BASE_URL = "https://api.polygon.io"
#: Calls per minute of Polygon's free plan.
FREE_PLAN_RATE = 5

#: The platform's timeframes as Polygon (multiplier, timespan).
TIMEFRAMES: dict[str, tuple[int, str]] = {
    "1m": (1, "minute"), "5m": (5, "minute"), "15m": (15, "minute"), "1h": (1, "hour"), "1d": (1, "day"),
}
#: Category -> the (market, type) queries of /v3/reference/tickers that list it. Options come
#: from /v3/reference/options/contracts instead.
CATEGORY_QUERIES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "us_equities": (("stocks", "CS"), ("stocks", "ADRC")),
    "etf": (("stocks", "ETF"),),
    "otc": (("otc", None),),
    "crypto": (("crypto", None),),
    "fx": (("fx", None),),
    "indices": (("indices", None),),
}

#: Markets of the whole-market snapshot.
SNAPSHOT_MARKETS = ("stocks", "crypto")

SymbolCallback = Callable[[str, pa.Table], None]


class _GatedPool(urllib3.PoolManager):
    """The client's connection pool, with timeouts, and every request through the gate."""

    def __init__(self, gate: VendorGate, **options: Any) -> None:
        super().__init__(**options)
        self._gate = gate

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any):
        kw["retries"] = False  # ours, not urllib3's: the limiter must see every attempt
        return self._gate.call(
            lambda: super(_GatedPool, self).urlopen(method, url, redirect=redirect, **kw),
            what=f"{method} {urlsplit(url).path}",
            status=lambda response: response.status,
            body=lambda response: response.data.decode("utf-8", "replace"),
            network_errors=(urllib3.exceptions.HTTPError,),
        )


class PolygonSource:
    """Polygon REST: minute bars and vendor aggregates per session, reference tickers, snapshots.

    `rate_limit` calls per `rate_period` seconds (None: no limit; Polygon's free plan allows 5 per
    minute) are shared by all threads of this source, and with `shared_rate_url` (a Redis URL) by
    every process on every machine using the same key; `workers` tickers are fetched at once;
    `page_limit` is the aggregates' `limit` (base aggregates per page, at most 50,000). Bars are
    raw (`adjusted=false`): prices and volumes as traded, never split-adjusted.
    """

    name = Source.POLYGON_REST.value

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        rate_limit: int | None = FREE_PLAN_RATE,
        rate_period: float = 60.0,
        rate_margin: float | None = None,
        shared_rate_url: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        workers: int = 8,
        page_limit: int = 50_000,
        check_unknown: bool = True,
    ) -> None:
        if not api_key:
            raise ConfigError(f"no Polygon API key: set {settings.POLYGON_API_KEY_VAR}")
        if not 1 <= page_limit <= 50_000:
            raise ConfigError(f"page_limit={page_limit!r}: expected 1 to 50000")
        self.base_url = base_url.rstrip("/")
        self.workers, self.page_limit = workers, page_limit
        self.check_unknown = check_unknown
        limiter = rate_limiter(rate_limit, rate_period, margin=rate_margin, shared_url=shared_rate_url,
                               vendor="Polygon", api_key=api_key, origin=settings.CELERY_BROKER_URL_VAR)
        self.gate = VendorGate(
            "Polygon", limiter=limiter, retry=retry, secrets=[api_key],
            auth_hint=f"check {settings.POLYGON_API_KEY_VAR}",
            plan_hint="the plan of this API key does not include this data; upgrade it or ask for less",
        )
        self._client = RESTClient(api_key, base=self.base_url, retries=0, pagination=True)
        self._client.client = _GatedPool(
            self.gate, num_pools=10, maxsize=max(workers, 1), headers=self._client.headers,
            ca_certs=certifi.where(), cert_reqs="CERT_REQUIRED",
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> PolygonSource:
        """A source configured from POLYGON_API_KEY, POLYGON_BASE_URL and POLYGON_RATE_LIMIT, its
        limit shared through MARKET_CELERY_BROKER_URL's Redis when that is set."""
        env = os.environ if environ is None else environ
        key = env.get(settings.POLYGON_API_KEY_VAR)
        if not key:
            raise ConfigError(f"{settings.POLYGON_API_KEY_VAR} is not set: expected a Polygon API key "
                              "(or run without vendor keys to use the simulated market)")
        options.setdefault("base_url", env.get(settings.POLYGON_BASE_URL_VAR) or DEFAULT_BASE_URL)
        options.setdefault("rate_limit", rate_from_env(env, settings.POLYGON_RATE_LIMIT_VAR, FREE_PLAN_RATE))
        options.setdefault("shared_rate_url", env.get(settings.CELERY_BROKER_URL_VAR) or None)
        return cls(key, **options)

    def __repr__(self) -> str:
        return f"PolygonSource({self.base_url}, {self.gate.limiter!r}, workers={self.workers})"

    # ----------------------------------------------------------------------- bars

    def minute_bars(self, day: date | str, symbols: Sequence[str] | None = None, *,
                    on_symbol_done: SymbolCallback | None = None) -> pa.Table:
        """schemas.BARS 1-minute bars of `symbols` (None: the day's us_equities and etf tickers)
        on session `day` (a UTC day for crypto pairs). `on_symbol_done(symbol, table)` runs in
        the calling thread as each ticker completes, e.g. to stage it for resumability."""
        return self.aggregates(day, symbols, timeframe="1m", on_symbol_done=on_symbol_done)

    def aggregates(self, day: date | str, symbols: Sequence[str] | None = None, *, timeframe: str = "1m",
                   on_symbol_done: SymbolCallback | None = None) -> pa.Table:
        """Polygon's own bars at `timeframe` (1m, 5m, 15m, 1h, 1d) for session `day`, as minute_bars."""
        day = calendar.to_date(day)
        multiplier, timespan = _timeframe(timeframe)
        if symbols is None:
            symbols = sorted(set(self._symbols_of(("us_equities", "etf"), day)))
        names = symbol_list(symbols)
        if any(not sym.is_crypto(s) for s in names):
            calendar.session(day)  # NotASessionError on weekends and holidays

        def fetch(symbol: str) -> pa.Table:
            table = self._aggs(symbol, multiplier, timespan, day.isoformat(), day.isoformat())
            if not table.num_rows and self.check_unknown:
                self._check_listed(symbol, day)
            return table

        tables = run_concurrently(names, fetch, workers=self.workers, on_done=on_symbol_done)
        return _concat(tables)

    def bars(self, symbol: str, start: datetime, end: datetime, *, timeframe: str = "1m") -> pa.Table:
        """One symbol's bars with `ts` in [start, end), across days."""
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidInputError("start and end must be timezone-aware datetimes")
        if start >= end:
            raise InvalidInputError(f"start {start.isoformat()} is not before end {end.isoformat()}")
        multiplier, timespan = _timeframe(timeframe)
        table = self._aggs(symbol, multiplier, timespan, str(_ms(start)), str(_ms(end) - 1))
        ts = table.column("ts")
        return table.filter(pc.and_(pc.greater_equal(ts, pa.scalar(start, TS)), pc.less(ts, pa.scalar(end, TS))))

    def _aggs(self, symbol: str, multiplier: int, timespan: str, start: str, end: str) -> pa.Table:
        ticker = sym.to_polygon(symbol)
        with self._mapped(f"aggregates of {symbol}"):
            # Raw, as traded (Polygon's default is split-adjusted as of today): adjusting is done at
            # read time from `corporate_actions`, so the lake never mixes conventions.
            aggs = list(self._client.list_aggs(ticker, multiplier, timespan, start, end, adjusted=False,
                                               sort="asc", limit=self.page_limit))
        return _aggs_table(symbol, aggs)

    # ----------------------------------------------------------------------- corporate actions

    def corporate_actions(self, start: date | str, end: date | str, *,
                          symbols: Sequence[str] | None = None) -> pa.Table:
        """schemas.CORPORATE_ACTIONS (source `polygon`) with ex_date in [start, end]: splits
        (`list_splits`), cash dividends (`list_dividends`) and delistings (inactive stock tickers'
        `delisted_utc`; announced the day they happen, as Polygon says no more), of `symbols` (None:
        every ticker). Renames are not in Polygon's bulk reference data: take them from Alpaca."""
        start, end = calendar.to_date(start), calendar.to_date(end)
        if start > end:
            raise InvalidInputError(f"start {start.isoformat()} is after end {end.isoformat()}")
        wanted = None if symbols is None else set(symbol_list(symbols))
        # A few tickers are asked one by one; more, in bulk (pages of 1,000) and filtered here.
        tickers = [None] if wanted is None or len(wanted) > 20 else sorted(sym.to_polygon(s) for s in wanted)
        rows: list[dict[str, Any]] = []
        for ticker in tickers:
            rows.extend(self._splits_and_dividends(start, end, ticker))
        with self._mapped("delisted tickers"):
            for t in self._client.list_tickers(market="stocks", active=False, date=end.isoformat(), limit=1000):
                gone = _day(t.delisted_utc)
                if gone is not None and start <= gone <= end:
                    day = _session_on_or_after(gone)
                    rows.append({"symbol": sym.from_polygon(t.ticker), "action_type": "delisting", "ex_date": day,
                                 "announced_date": day})
        if wanted is not None:
            rows = [r for r in rows if r["symbol"] in wanted]
        return actions_table(rows, "polygon")

    def _splits_and_dividends(self, start: date, end: date, ticker: str | None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        with self._mapped("splits"):
            for s in self._client.list_splits(ticker=ticker, execution_date_gte=start.isoformat(),
                                              execution_date_lte=end.isoformat(), limit=1000,
                                              sort="execution_date", order="asc"):
                day = date.fromisoformat(s.execution_date)
                rows.append({"symbol": sym.from_polygon(s.ticker), "action_type": "split", "ex_date": day,
                             "announced_date": day, "split_from": float(s.split_from), "split_to": float(s.split_to)})
        with self._mapped("dividends"):
            for d in self._client.list_dividends(ticker=ticker, ex_dividend_date_gte=start.isoformat(),
                                                 ex_dividend_date_lte=end.isoformat(), limit=1000,
                                                 sort="ex_dividend_date", order="asc"):
                day = date.fromisoformat(d.ex_dividend_date)
                rows.append({"symbol": sym.from_polygon(d.ticker), "action_type": "dividend", "ex_date": day,
                             "announced_date": _day(d.declaration_date) or day, "cash_amount": d.cash_amount,
                             "dividend_type": d.dividend_type if d.dividend_type in ("CD", "SC") else "CD",
                             "record_date": _day(d.record_date), "pay_date": _day(d.pay_date)})
        return rows

    def check_symbols(self, symbols: Sequence[str], day: date | str) -> None:
        """Raise UnknownSymbolError naming every symbol Polygon does not list on `day`."""
        day = calendar.to_date(day)
        names = symbol_list(symbols)
        listed = run_concurrently(names, lambda s: self._listed(s, day), workers=self.workers)
        unknown = [s for s, ok in zip(names, listed, strict=True) if not ok]
        if unknown:
            raise UnknownSymbolError(f"Polygon does not list {', '.join(unknown)} on {day.isoformat()}: "
                                     "expected tickers listed that day (see the ticker universe)")

    def _check_listed(self, symbol: str, day: date) -> None:
        if not self._listed(symbol, day):
            raise UnknownSymbolError(f"Polygon does not list {symbol} on {day.isoformat()}: "
                                     "expected a ticker listed that day (see the ticker universe)")

    def _listed(self, symbol: str, day: date) -> bool:
        with self._mapped(f"reference data of {symbol}"):
            found = self._client.list_tickers(ticker=sym.to_polygon(symbol), date=day.isoformat(), active=True,
                                              limit=1)
            return next(iter(found), None) is not None

    # ----------------------------------------------------------------------- reference

    def universe(self, category: str, day: date | str, *, limit: int | None = None) -> pa.Table:
        """schemas.UNIVERSE: the tickers of `category` Polygon lists on `day` (the first `limit`
        by symbol). Categories map to markets and types: us_equities = stocks CS and ADRC,
        etf = stocks ETF, otc, crypto, fx, indices; options = the contracts as of `day`."""
        if category not in CATEGORIES:
            raise InvalidInputError(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidInputError(f"limit={limit!r}: expected a positive integer or None")
        day = calendar.to_date(day)
        page = min(limit or 1000, 1000)
        rows: list[dict[str, Any]] = []
        with self._mapped(f"the {category} universe"):
            if category == "options":
                contracts = self._client.list_options_contracts(as_of=day.isoformat(), limit=page,
                                                                sort="ticker", order="asc")
                rows = [_contract_row(c, day) for c in itertools.islice(contracts, limit)]
            else:
                for market, type_ in CATEGORY_QUERIES[category]:
                    tickers = self._client.list_tickers(market=market, type=type_, date=day.isoformat(),
                                                        active=True, limit=page)
                    rows.extend(_ticker_row(t, category, day) for t in itertools.islice(tickers, limit))
        rows.sort(key=lambda r: r["symbol"])
        table = pa.Table.from_pylist(rows[:limit] if limit else rows, schema=UNIVERSE)
        return conform(table, UNIVERSE)

    def _symbols_of(self, categories: Sequence[str], day: date) -> list[str]:
        return [s for c in categories for s in self.universe(c, day).column("symbol").to_pylist()]

    def snapshot(self, symbols: Sequence[str] | None = None, *, include_otc: bool = False) -> pa.Table:
        """The stocks snapshot as schemas.BARS daily bars: today's (so far) and the previous
        session's per ticker, stamped at midnight New York, e.g. to rank by dollar volume."""
        with self._mapped("the stocks snapshot"):
            snaps = self._client.get_snapshot_all("stocks", tickers=list(symbols) if symbols else None,
                                                  include_otc=include_otc)
        rows = []
        cal = calendar.default_calendar()
        for snap in snaps or []:
            if not snap.ticker or snap.updated is None:
                continue
            day = datetime.fromtimestamp(snap.updated / 1e9, UTC).astimezone(calendar.NEW_YORK).date()
            previous = cal.previous_session(day)
            for bar, when in ((snap.day, day), (snap.prev_day, previous)):
                if bar is None or not bar.volume:
                    continue
                rows.append({
                    "symbol": sym.from_polygon(snap.ticker), "ts": datetime.combine(when, datetime.min.time(),
                                                                                   tzinfo=calendar.NEW_YORK),
                    "open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close, "volume": bar.volume,
                    "vwap": bar.vwap, "trade_count": None, "source": self.name,
                })
        table = pa.Table.from_pylist(rows, schema=BARS) if rows else BARS.empty_table()
        return table.sort_by([("symbol", "ascending"), ("ts", "ascending")])

    def snapshot_raw(self, market: str = "stocks") -> bytes:
        """The body of Polygon's whole-market snapshot of `market` (stocks, crypto) exactly as
        it arrived: JSON with `tickers` (see PROTOCOLS.md C4), for the snapshot queue."""
        if market not in SNAPSHOT_MARKETS:
            raise InvalidInputError(f"snapshot market {market!r}: expected one of {', '.join(SNAPSHOT_MARKETS)}")
        with self._mapped(f"the {market} snapshot"):
            # A string, not SnapshotMarketType: the client builds a wrong path from the enum.
            return self._client.get_snapshot_all(market, raw=True).data

    def market_status(self) -> str:
        """"open", "extended-hours" or "closed", as Polygon reports the US market now."""
        with self._mapped("the market status"):
            return self._client.get_market_status().market

    # ----------------------------------------------------------------------- errors

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Turn the client's BadResponse (a 4xx other than 401/403/429) into a VendorError."""
        try:
            yield
        except BadResponse as exc:
            raise VendorError(f"Polygon rejected the request for {what}: {self.gate.scrub(str(exc))[:300]}") \
                from None


# --------------------------------------------------------------------------- helpers


def _timeframe(timeframe: str) -> tuple[int, str]:
    try:
        return TIMEFRAMES[timeframe]
    except KeyError:
        raise InvalidInputError(f"unknown timeframe {timeframe!r}: expected one of {', '.join(TIMEFRAMES)}") \
            from None


def _ms(instant: datetime) -> int:
    delta = instant - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _aggs_table(symbol: str, aggs: list) -> pa.Table:
    n = len(aggs)
    if not n:
        return BARS.empty_table()
    ts = np.fromiter((a.timestamp for a in aggs), np.int64, n) * 1_000_000
    return pa.Table.from_arrays([
        pa.array([symbol] * n, pa.string()),
        pa.array(ts, pa.int64()).cast(TS),
        pa.array([a.open for a in aggs], pa.float64()),
        pa.array([a.high for a in aggs], pa.float64()),
        pa.array([a.low for a in aggs], pa.float64()),
        pa.array([a.close for a in aggs], pa.float64()),
        pa.array([a.volume for a in aggs], pa.float64()),
        pa.array([a.vwap for a in aggs], pa.float64()),
        pa.array([a.transactions for a in aggs], pa.int64()),
        pa.array([Source.POLYGON_REST.value] * n, pa.string()),
    ], schema=BARS)


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return BARS.empty_table()
    return pa.concat_tables(tables).combine_chunks().sort_by([("symbol", "ascending"), ("ts", "ascending")])


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text[:10]) if text else None


def _session_on_or_after(day: date) -> date:
    return day if calendar.is_session(day) else calendar.default_calendar().next_session(day)


def _ticker_row(t, category: str, day: date) -> dict[str, Any]:
    currency = t.currency_symbol or t.currency_name
    return {
        "symbol": sym.from_polygon(t.ticker, base=t.base_currency_symbol, quote=t.currency_symbol),
        "name": t.name, "category": category, "type": t.type, "exchange": t.primary_exchange,
        "currency": currency.upper() if currency else None, "market_cap": None,
        "active": True if t.active is None else bool(t.active), "list_date": None,
        "delist_date": _day(t.delisted_utc), "snapshot_date": day, "source": Source.POLYGON_REST.value,
    }


def _contract_row(c, day: date) -> dict[str, Any]:
    expiry = date.fromisoformat(c.expiration_date)
    word = "Call" if c.contract_type == "call" else "Put"
    return {
        "symbol": sym.from_polygon(c.ticker), "name": f"{c.underlying_ticker} {expiry:%b %d %Y} {c.strike_price:g} {word}",
        "category": "options", "type": c.contract_type, "exchange": None, "currency": "USD", "market_cap": None,
        "active": True, "list_date": None, "delist_date": None, "snapshot_date": day,
        "source": Source.POLYGON_REST.value,
    }

