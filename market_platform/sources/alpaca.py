"""Alpaca REST through alpaca-py: historical bars, quotes and trades, assets and the calendar, into Arrow.

    source = AlpacaSource.from_env()          # ALPACA_API_KEY, ALPACA_SECRET_KEY, ALPACA_FEED, ...
    bars = source.minute_bars(date(2024, 11, 26), ["AAPL", "BTC/USD"])
    repair = source.bars(["AAPL"], start, end, source=Source.ALPACA_REPAIR)   # any window
    quotes = source.quotes(["AAPL"], start, end)      # the ticks the stream sends, same keys
    trades = source.trades(["AAPL"], start, end)
    assets = source.universe("us_equities", date.today())

alpaca-py's requests session has no timeout and sleeps 3 s three times on 429/504 with no rate
limit of its own. Each client's session gets an HTTP adapter that applies the timeouts and sends
every request, pages included, through a `VendorGate` (the plan's calls per minute, backoff with
jitter, 401/403 -> VendorAuthError, exhaustion -> VendorUnavailableError); the client's own retry
loop is switched off. Clients run with `raw_data=True`: dictionaries, not pydantic models, so a
new exchange code at Alpaca cannot fail a whole asset list, and bars convert straight to columns.

Stocks and crypto pairs (`BTC/USD`) may be mixed; requests are split by kind and batched up to
`symbols_per_request` symbols. Alpaca answers an unknown symbol with no bars, so for session
requests a symbol with no bars is looked up in the assets (404 -> UnknownSymbolError).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterator
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import requests
from requests.adapters import HTTPAdapter

from market_platform import calendar, settings
from market_platform.errors import ConfigError, InvalidInputError, UnknownSymbolError, VendorError
from market_platform.schemas import (
    BARS,
    CATEGORIES,
    QUOTES,
    TRADES,
    TS,
    UNIVERSE,
    Source,
    actions_table,
    conform,
    quote_seq,
)
from market_platform.sources import symbols as sym
from market_platform.sources.vendor import RetryPolicy, VendorGate, rate_from_env, rate_limiter, symbol_list

UTC = timezone.utc
DEFAULT_DATA_URL = "https://data.alpaca.markets"
DEFAULT_TRADING_URL = "https://paper-api.alpaca.markets"
#: Calls per minute of Alpaca's free (basic) plan.
BASIC_PLAN_RATE = 200
FEEDS = ("iex", "sip")
TIMEFRAMES = ("1m", "5m", "15m", "1h", "1d")
#: Alpaca's symbol syntax: stocks (AAPL, BRK.B, a share class or a warrant suffix after . or -)
#: and crypto pairs (BTC/USD). Anything else gets 400 "invalid syntax" from its stream.
STOCK_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,20}$")
CRYPTO_SYMBOL = re.compile(r"^[A-Z0-9]{1,15}/[A-Z0-9]{1,15}$")
#: The universe categories Alpaca's assets tell apart (it has no ETF flag).
ALPACA_CATEGORIES = ("us_equities", "otc", "crypto")
#: Alpaca exchange names -> listing MICs.
MICS = {"NYSE": "XNYS", "NASDAQ": "XNAS", "AMEX": "XASE", "ARCA": "ARCX", "NYSEARCA": "ARCX", "BATS": "BATS",
        "OTC": "OTCM"}


def check_symbol_syntax(symbols: Sequence[str], *, crypto: bool) -> None:
    """Raise InvalidInputError naming the first symbols that are not Alpaca stock symbols (or
    crypto pairs, with `crypto`), or when there is none."""
    names = list(symbols)
    if not names:
        raise InvalidInputError("no symbols: expected at least one" + (" pair like BTC/USD" if crypto else
                                                                       " ticker like AAPL"))
    pattern = CRYPTO_SYMBOL if crypto else STOCK_SYMBOL
    bad = [s for s in names if not isinstance(s, str) or not pattern.match(s)]
    if bad:
        shown = ", ".join(repr(s)[:40] for s in bad[:5])
        expected = ("crypto pairs like BTC/USD (letters and digits, one slash)" if crypto else
                    "tickers like AAPL or BRK.B (capital letters, digits, '.' or '-', up to 21 characters)")
        raise InvalidInputError(f"symbols {shown}{' ...' if len(bad) > 5 else ''}: expected {expected}")


class _GatedAdapter(HTTPAdapter):
    """requests' adapter with timeouts, and every request through the gate."""

    def __init__(self, gate: VendorGate, timeout: tuple[float, float]) -> None:
        super().__init__(max_retries=0)
        self._gate, self._timeout = gate, timeout

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        kw["timeout"] = self._timeout
        return self._gate.call(
            lambda: super(_GatedAdapter, self).send(request, **kw),
            what=f"{request.method} {urlsplit(request.url or '').path}",
            status=lambda response: response.status_code,
            body=lambda response: response.text,
            network_errors=(requests.exceptions.RequestException,),
        )


class AlpacaSource:
    """Alpaca historical bars (1m and coarser, any window, raw: `adjustment=raw`), assets by
    class, corporate actions, and the calendar.

    `data_url`/`trading_url` override Alpaca's market data and trading API hosts; `feed` is the
    stock feed (iex on the free plan, sip on paid ones). `rate_limit` calls per `rate_period`
    seconds (None: no limit) are shared by every request of this source, and with
    `shared_rate_url` (a Redis URL) by every process on every machine using the same key.
    """

    name = Source.ALPACA_REST.value

    def __init__(
        self,
        key_id: str,
        secret: str,
        *,
        data_url: str | None = None,
        trading_url: str | None = None,
        feed: str = "iex",
        rate_limit: int | None = BASIC_PLAN_RATE,
        rate_period: float = 60.0,
        rate_margin: float | None = None,
        shared_rate_url: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        symbols_per_request: int = 200,
    ) -> None:
        from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
        from alpaca.trading.client import TradingClient

        if not key_id or not secret:
            raise ConfigError(f"no Alpaca keys: set {settings.ALPACA_API_KEY_VAR} and {settings.ALPACA_SECRET_KEY_VAR}")
        if feed not in FEEDS:
            raise ConfigError(f"Alpaca feed {feed!r}: expected one of {', '.join(FEEDS)}")
        self.feed, self.symbols_per_request = feed, symbols_per_request
        self.data_url = (data_url or DEFAULT_DATA_URL).rstrip("/")
        self.trading_url = (trading_url or DEFAULT_TRADING_URL).rstrip("/")
        limiter = rate_limiter(rate_limit, rate_period, margin=rate_margin, shared_url=shared_rate_url,
                               vendor="Alpaca", api_key=key_id, origin=settings.CELERY_BROKER_URL_VAR)
        self.gate = VendorGate(
            "Alpaca", limiter=limiter, retry=retry, secrets=[secret],
            auth_hint=f"check {settings.ALPACA_API_KEY_VAR} and {settings.ALPACA_SECRET_KEY_VAR}",
            plan_hint=f"the plan does not include this data (the free plan has no recent SIP data: set "
                      f"{settings.ALPACA_FEED_VAR}=iex)",
        )
        self._stocks = StockHistoricalDataClient(key_id, secret, raw_data=True, url_override=self.data_url)
        self._crypto = CryptoHistoricalDataClient(key_id, secret, raw_data=True, url_override=self.data_url)
        self._trading = TradingClient(key_id, secret, paper=True, raw_data=True, url_override=self.trading_url)
        from alpaca.data.historical.corporate_actions import CorporateActionsClient

        self._actions = CorporateActionsClient(key_id, secret, raw_data=True, url_override=self.data_url)
        adapter = _GatedAdapter(self.gate, (connect_timeout, read_timeout))
        for client in (self._stocks, self._crypto, self._trading, self._actions):
            client._retry = 0  # the gate retries; alpaca-py's loop would sleep 3 s per 429
            client._session.mount("http://", adapter)
            client._session.mount("https://", adapter)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AlpacaSource:
        """A source from ALPACA_API_KEY, ALPACA_SECRET_KEY, ALPACA_FEED, ALPACA_DATA_URL,
        ALPACA_TRADING_URL and ALPACA_RATE_LIMIT (shared through MARKET_CELERY_BROKER_URL's Redis
        when that is set)."""
        env = os.environ if environ is None else environ
        options.setdefault("feed", env.get(settings.ALPACA_FEED_VAR) or "iex")
        options.setdefault("data_url", env.get(settings.ALPACA_DATA_URL_VAR) or None)
        options.setdefault("trading_url", env.get(settings.ALPACA_TRADING_URL_VAR) or None)
        options.setdefault("rate_limit", rate_from_env(env, settings.ALPACA_RATE_LIMIT_VAR, BASIC_PLAN_RATE))
        options.setdefault("shared_rate_url", env.get(settings.CELERY_BROKER_URL_VAR) or None)
        return cls(env.get(settings.ALPACA_API_KEY_VAR, ""), env.get(settings.ALPACA_SECRET_KEY_VAR, ""), **options)

    def __repr__(self) -> str:
        return f"AlpacaSource({self.data_url}, feed={self.feed}, {self.gate.limiter!r})"

    # ----------------------------------------------------------------------- bars

    def minute_bars(self, day: date | str, symbols: Sequence[str] | None = None, *,
                    check_unknown: bool = True) -> pa.Table:
        """1-minute bars (schemas.BARS, source alpaca_rest) of session `day` for `symbols` (None:
        every active us_equity asset); crypto pairs get their UTC day."""
        return self.aggregates(day, symbols, timeframe="1m", check_unknown=check_unknown)

    def aggregates(self, day: date | str, symbols: Sequence[str] | None = None, *, timeframe: str = "1m",
                   check_unknown: bool = True) -> pa.Table:
        """Alpaca's own bars at `timeframe` (1m, 5m, 15m, 1h, 1d) for the day, as minute_bars."""
        day = calendar.to_date(day)
        names = symbol_list(symbols) if symbols is not None else \
            self.universe("us_equities", day).column("symbol").to_pylist()
        stocks = [s for s in names if not sym.is_crypto(s)]
        crypto = [s for s in names if sym.is_crypto(s)]
        tables = []
        if stocks:
            session = calendar.session(day)  # NotASessionError on weekends and holidays
            tables.append(self.bars(stocks, session.start, session.end, timeframe=timeframe))
        if crypto:
            start = datetime.combine(day, time(), tzinfo=UTC)
            tables.append(self.bars(crypto, start, start + timedelta(days=1), timeframe=timeframe))
        table = _sorted(pa.concat_tables(tables)) if tables else BARS.empty_table()
        if check_unknown:
            traded = set(table.column("symbol").to_pylist())
            self.check_symbols([s for s in names if s not in traded])
        return table

    def bars(self, symbols: Sequence[str], start: datetime, end: datetime, *, timeframe: str = "1m",
             source: Source | str = Source.ALPACA_REST) -> pa.Table:
        """Bars of `symbols` with `ts` in [start, end), across days (e.g. a stream gap to repair).
        Daily bars are stamped at midnight New York (crypto: UTC), so a 1d window should start
        at that midnight."""
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidInputError("start and end must be timezone-aware datetimes")
        if start >= end:
            raise InvalidInputError(f"start {start.isoformat()} is not before end {end.isoformat()}")
        frame = _timeframe(timeframe)
        names = symbol_list(symbols)
        parts = []
        last = end - timedelta(microseconds=1)  # Alpaca's end is inclusive
        for kind in ("stocks", "crypto"):
            wanted = [s for s in names if sym.is_crypto(s) == (kind == "crypto")]
            for i in range(0, len(wanted), self.symbols_per_request):
                chunk = wanted[i:i + self.symbols_per_request]
                parts.append(self._request_bars(kind, chunk, start, last, frame, str(source)))
        tables = [t for t in parts if t.num_rows]
        if not tables:
            return BARS.empty_table()
        table = pa.concat_tables(tables)
        ts = table.column("ts")
        return _sorted(table.filter(pc.and_(pc.greater_equal(ts, pa.scalar(start, TS)),
                                            pc.less(ts, pa.scalar(end, TS)))))

    def _request_bars(self, kind: str, symbols: list[str], start: datetime, end: datetime, frame,
                      source: str) -> pa.Table:
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest

        with self._mapped(f"bars of {', '.join(symbols[:5])}{'...' if len(symbols) > 5 else ''}"):
            if kind == "crypto":
                raw = self._crypto.get_crypto_bars(CryptoBarsRequest(
                    symbol_or_symbols=symbols, timeframe=frame, start=start, end=end))
            else:
                raw = self._stocks.get_stock_bars(StockBarsRequest(
                    symbol_or_symbols=symbols, timeframe=frame, start=start, end=end,
                    feed=DataFeed(self.feed), adjustment=Adjustment.RAW))
        return _bars_table(raw, source)

    # ----------------------------------------------------------------------- quotes and trades

    def quotes(self, symbols: Sequence[str], start: datetime, end: datetime, *,
               source: Source | str = Source.ALPACA_REST) -> pa.Table:
        """Quotes (schemas.QUOTES) of `symbols` with `ts` in [start, end), sorted by (symbol, ts):
        the same fields the stream sends, so a quote has the same key (symbol, ts, seq) whether
        it came from the stream or from here (e.g. refilling a stream gap)."""
        return self._ticks("quotes", symbols, start, end, str(source))

    def trades(self, symbols: Sequence[str], start: datetime, end: datetime, *,
               source: Source | str = Source.ALPACA_REST) -> pa.Table:
        """Trades (schemas.TRADES) of `symbols` with `ts` in [start, end), as `quotes`."""
        return self._ticks("trades", symbols, start, end, str(source))

    def _ticks(self, what: str, symbols: Sequence[str], start: datetime, end: datetime, source: str) -> pa.Table:
        from alpaca.data.enums import DataFeed
        from alpaca.data.requests import (
            CryptoQuoteRequest,
            CryptoTradesRequest,
            StockQuotesRequest,
            StockTradesRequest,
        )

        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidInputError("start and end must be timezone-aware datetimes")
        if start >= end:
            raise InvalidInputError(f"start {start.isoformat()} is not before end {end.isoformat()}")
        names = symbol_list(symbols)
        schema = QUOTES if what == "quotes" else TRADES
        tables = []
        for crypto in (False, True):
            wanted = [s for s in names if sym.is_crypto(s) == crypto]
            for i in range(0, len(wanted), self.symbols_per_request):
                chunk = wanted[i:i + self.symbols_per_request]
                with self._mapped(f"{what} of {', '.join(chunk[:5])}{'...' if len(chunk) > 5 else ''}"):
                    # `end` is inclusive at Alpaca: ticks at `end` itself are dropped below.
                    if crypto:
                        request = (CryptoQuoteRequest if what == "quotes" else CryptoTradesRequest)(
                            symbol_or_symbols=chunk, start=start, end=end)
                        fetch = self._crypto.get_crypto_quotes if what == "quotes" else self._crypto.get_crypto_trades
                    else:
                        request = (StockQuotesRequest if what == "quotes" else StockTradesRequest)(
                            symbol_or_symbols=chunk, start=start, end=end, feed=DataFeed(self.feed))
                        fetch = self._stocks.get_stock_quotes if what == "quotes" else self._stocks.get_stock_trades
                    raw = fetch(request)
                table = (_quotes_table if what == "quotes" else _trades_table)(raw, source, crypto)
                if table.num_rows:
                    tables.append(table)
        if not tables:
            return schema.empty_table()
        table = pa.concat_tables(tables)
        ts = table.column("ts")
        keep = pc.and_(pc.greater_equal(ts, pa.scalar(start, TS)), pc.less(ts, pa.scalar(end, TS)))
        return table.filter(keep).sort_by([("symbol", "ascending"), ("ts", "ascending")])

    @property
    def requests(self) -> int:
        """REST requests sent so far (pages and retries included)."""
        return self.gate.stats.requests

    def check_symbols(self, symbols: Sequence[str]) -> None:
        """Raise UnknownSymbolError naming every symbol Alpaca has no asset for."""
        unknown = []
        for s in symbol_list(symbols) if symbols else []:
            try:
                with self._mapped(f"asset {s}"):
                    self._trading.get_asset(s)
            except _NotFound:
                unknown.append(s)
        if unknown:
            raise UnknownSymbolError(f"Alpaca has no asset {', '.join(unknown)}: expected symbols Alpaca lists "
                                     "(stocks like AAPL, crypto pairs like BTC/USD)")

    def snapshot_raw(self, symbols: Sequence[str]) -> Iterator[tuple[list[str], bytes]]:
        """Alpaca's snapshots of `symbols` (stocks and crypto pairs), `symbols_per_request` at a
        time: per request, its symbols and the response as JSON (the map alpaca-py returns with
        raw_data, symbol -> latestTrade, latestQuote, minuteBar, dailyBar, prevDailyBar), each
        yielded as soon as it arrives."""
        from alpaca.data.enums import DataFeed
        from alpaca.data.requests import CryptoSnapshotRequest, StockSnapshotRequest

        names = symbol_list(symbols)
        for kind in ("stocks", "crypto"):
            wanted = [s for s in names if sym.is_crypto(s) == (kind == "crypto")]
            for i in range(0, len(wanted), self.symbols_per_request):
                chunk = wanted[i:i + self.symbols_per_request]
                with self._mapped(f"snapshots of {', '.join(chunk[:5])}{'...' if len(chunk) > 5 else ''}"):
                    if kind == "crypto":
                        raw = self._crypto.get_crypto_snapshot(CryptoSnapshotRequest(symbol_or_symbols=chunk))
                    else:
                        raw = self._stocks.get_stock_snapshot(StockSnapshotRequest(
                            symbol_or_symbols=chunk, feed=DataFeed(self.feed)))
                yield chunk, json.dumps(raw, separators=(",", ":")).encode()

    # ----------------------------------------------------------------------- reference

    def assets(self, asset_class: str = "us_equity", *, status: str | None = "active") -> list[dict[str, Any]]:
        """Alpaca's assets of `asset_class` (us_equity, crypto) as its raw dictionaries."""
        from alpaca.trading.enums import AssetClass, AssetStatus
        from alpaca.trading.requests import GetAssetsRequest

        try:
            request = GetAssetsRequest(asset_class=AssetClass(asset_class),
                                       status=AssetStatus(status) if status else None)
        except ValueError:
            raise InvalidInputError(f"asset class {asset_class!r} / status {status!r}: expected us_equity or "
                                    "crypto, and active or inactive") from None
        with self._mapped(f"{asset_class} assets"):
            return list(self._trading.get_all_assets(request))

    def universe(self, category: str, day: date | str, *, limit: int | None = None) -> pa.Table:
        """schemas.UNIVERSE of `category` from Alpaca's assets: us_equities (listed, non-OTC;
        Alpaca does not tell ETFs apart), otc, crypto. Alpaca lists only today's assets: the
        rows describe today, stamped `day`."""
        if category not in CATEGORIES:
            raise InvalidInputError(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)}")
        if category not in ALPACA_CATEGORIES:
            raise InvalidInputError(f"Alpaca has no {category!r} category: expected {', '.join(ALPACA_CATEGORIES)} "
                                    "(use Polygon reference data for the others)")
        day = calendar.to_date(day)
        assets = self.assets("crypto" if category == "crypto" else "us_equity")
        if category != "crypto":
            otc = category == "otc"
            assets = [a for a in assets if (a.get("exchange") == "OTC") == otc]
        rows = [{
            "symbol": a["symbol"], "name": a.get("name"), "category": category, "type": None,
            "exchange": MICS.get(a.get("exchange") or ""), "currency": "USD", "market_cap": None,
            "active": a.get("status") == "active", "list_date": None, "delist_date": None,
            "snapshot_date": day, "source": Source.ALPACA_REST.value,
        } for a in sorted(assets, key=lambda a: a["symbol"])]
        return conform(pa.Table.from_pylist(rows[:limit] if limit else rows, schema=UNIVERSE), UNIVERSE)

    def corporate_actions(self, start: date | str, end: date | str, *,
                          symbols: Sequence[str] | None = None) -> pa.Table:
        """schemas.CORPORATE_ACTIONS (source `alpaca`) with ex-dates in [start, end], from
        `CorporateActionsClient`: forward and reverse splits, cash dividends, name changes
        (renames) and worthless removals and cash mergers (delistings), of `symbols` (None: all).
        Alpaca gives no declaration dates: an action is taken as announced on its ex-date."""
        from alpaca.data.requests import CorporateActionsRequest

        start, end = calendar.to_date(start), calendar.to_date(end)
        if start > end:
            raise InvalidInputError(f"start {start.isoformat()} is after end {end.isoformat()}")
        request = CorporateActionsRequest(
            symbols=symbol_list(symbols) if symbols is not None else None, start=start, end=end, limit=None,
            types=["forward_split", "reverse_split", "cash_dividend", "name_change", "worthless_removal",
                   "cash_merger"])
        with self._mapped("corporate actions"):
            raw = self._actions.get_corporate_actions(request) or {}
        rows: list[dict[str, Any]] = []
        for kind, entries in raw.items():
            for a in entries:
                rows.extend(_action_rows(kind, a))
        return actions_table(rows, "alpaca")

    def calendar(self, start: date | str, end: date | str) -> list[calendar.Session]:
        """Alpaca's trading days in [start, end] as sessions (regular hours from Alpaca, extended
        hours from its session_open/session_close when given, else 04:00-20:00 New York)."""
        from alpaca.trading.requests import GetCalendarRequest

        start, end = calendar.to_date(start), calendar.to_date(end)
        if start > end:
            raise InvalidInputError(f"start {start.isoformat()} is after end {end.isoformat()}")
        with self._mapped("the calendar"):
            days = self._trading.get_calendar(GetCalendarRequest(start=start, end=end))
        return [_session(d) for d in days]

    def clock(self) -> dict[str, Any]:
        """Alpaca's market clock: timestamp, is_open, next_open, next_close (raw)."""
        with self._mapped("the clock"):
            return self._trading.get_clock()

    # ----------------------------------------------------------------------- errors

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        from alpaca.common.exceptions import APIError

        try:
            yield
        except APIError as exc:
            status = getattr(exc, "status_code", None)
            text = self.gate.scrub(str(exc))[:300]
            if status == 404:
                raise _NotFound(f"Alpaca has no {what}: {text}") from None
            if status in (400, 422) and "symbol" in text:
                raise UnknownSymbolError(f"Alpaca rejected {what}: {text}") from None
            raise VendorError(f"Alpaca rejected the request for {what} (HTTP {status}): {text}") from None
        except ValueError as exc:  # alpaca-py's own checks (e.g. a reply without a data key)
            raise VendorError(f"Alpaca's reply for {what} was not understood: {self.gate.scrub(str(exc))[:300]}") \
                from None


class _NotFound(VendorError):
    """An Alpaca 404 (an asset it does not have)."""


# --------------------------------------------------------------------------- helpers


def _action_rows(kind: str, a: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The platform's action rows of one Alpaca corporate action (none for kinds it does not keep)."""
    def day(key: str) -> date | None:
        return date.fromisoformat(a[key][:10]) if a.get(key) else None

    if kind in ("forward_splits", "reverse_splits"):
        ex = day("ex_date")
        return [{"symbol": a["symbol"], "action_type": "split", "ex_date": ex, "announced_date": ex,
                 "split_from": float(a["old_rate"]), "split_to": float(a["new_rate"])}]
    if kind == "cash_dividends":
        ex = day("ex_date")
        return [{"symbol": a["symbol"], "action_type": "dividend", "ex_date": ex, "announced_date": ex,
                 "cash_amount": float(a["rate"]), "dividend_type": "SC" if a.get("special") else "CD",
                 "record_date": day("record_date"), "pay_date": day("payable_date")}]
    if kind == "name_changes":
        ex = day("process_date")
        return [{"symbol": a["old_symbol"], "action_type": "rename", "ex_date": ex, "announced_date": ex,
                 "new_symbol": a["new_symbol"]}]
    if kind in ("worthless_removals", "cash_mergers"):
        ex = day("process_date") or day("effective_date")
        symbol = a.get("symbol") or a.get("acquiree_symbol")
        return [{"symbol": symbol, "action_type": "delisting", "ex_date": ex, "announced_date": ex}]
    return []


def _timeframe(timeframe: str):
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

    frames = {"1m": (1, TimeFrameUnit.Minute), "5m": (5, TimeFrameUnit.Minute), "15m": (15, TimeFrameUnit.Minute),
              "1h": (1, TimeFrameUnit.Hour), "1d": (1, TimeFrameUnit.Day)}
    if timeframe not in frames:
        raise InvalidInputError(f"unknown timeframe {timeframe!r}: expected one of {', '.join(TIMEFRAMES)}")
    return TimeFrame(*frames[timeframe])


def _bars_table(raw: Mapping[str, list[dict[str, Any]]], source: str) -> pa.Table:
    symbols, rows = [], []
    for symbol, bars in raw.items():
        symbols.extend([symbol] * len(bars))
        rows.extend(bars)
    n = len(rows)
    if not n:
        return BARS.empty_table()
    return pa.Table.from_arrays([
        pa.array(symbols, pa.string()),
        pc.cast(pa.array([b["t"] for b in rows], pa.string()), TS),
        pa.array([b["o"] for b in rows], pa.float64()),
        pa.array([b["h"] for b in rows], pa.float64()),
        pa.array([b["l"] for b in rows], pa.float64()),
        pa.array([b["c"] for b in rows], pa.float64()),
        pa.array([b["v"] for b in rows], pa.float64()),
        pa.array([b.get("vw") for b in rows], pa.float64()),
        pa.array([b.get("n") for b in rows], pa.int64()),
        pa.repeat(pa.scalar(source, pa.string()), n),
    ], schema=BARS)


def _flatten(raw: Mapping[str, list[dict[str, Any]]]) -> tuple[list[str], list[dict[str, Any]]]:
    symbols, rows = [], []
    for symbol, items in raw.items():
        symbols.extend([symbol] * len(items))
        rows.extend(items)
    return symbols, rows


def _codes(value: Any) -> str | None:
    """Conditions as the vendor sent them: a list of codes comma-joined, a string as it is (as
    the stream's converter stores them)."""
    return ",".join(value) if isinstance(value, list) else value


def _tick_times(rows: list[dict[str, Any]]) -> pa.Array:
    return pc.cast(pa.array([r["t"] for r in rows], pa.string()), TS)


def _quotes_table(raw: Mapping[str, list[dict[str, Any]]], source: str, crypto: bool) -> pa.Table:
    symbols, rows = _flatten(raw)
    n = len(rows)
    if not n:
        return QUOTES.empty_table()
    ts = _tick_times(rows)
    prices = [pa.array([r[k] for r in rows], pa.float64()) for k in ("bp", "bs", "ap", "as")]
    texts = [pa.array([r.get(k) for r in rows], pa.string()) for k in ("bx", "ax")]
    conditions = pa.array([_codes(r.get("c")) for r in rows], pa.string())
    return pa.Table.from_arrays([
        pa.array(symbols, pa.string()), ts, *prices, *texts, conditions, pa.array([r.get("z") for r in rows], pa.string()),
        quote_seq(ts, *prices), pa.repeat(pa.scalar(source, pa.string()), n),
    ], schema=QUOTES)


def _trades_table(raw: Mapping[str, list[dict[str, Any]]], source: str, crypto: bool) -> pa.Table:
    symbols, rows = _flatten(raw)
    n = len(rows)
    if not n:
        return TRADES.empty_table()
    return pa.Table.from_arrays([
        pa.array(symbols, pa.string()), _tick_times(rows),
        pa.array([r["p"] for r in rows], pa.float64()), pa.array([r["s"] for r in rows], pa.float64()),
        pa.array(["" if crypto else r["x"] for r in rows], pa.string()),
        pa.array([r["i"] for r in rows], pa.uint64()).view(pa.int64()),  # as the stream stores ids
        pa.array([_codes(r.get("c")) for r in rows], pa.string()), pa.array([r.get("z") for r in rows], pa.string()),
        pa.repeat(pa.scalar(source, pa.string()), n),
    ], schema=TRADES)


def _sorted(table: pa.Table) -> pa.Table:
    return table.combine_chunks().sort_by([("symbol", "ascending"), ("ts", "ascending")])


def _session(day: Mapping[str, Any]) -> calendar.Session:
    when = date.fromisoformat(str(day["date"])[:10])

    def at(hhmm: str | None, default: time) -> datetime:
        wall = default if not hhmm else time(int(hhmm.replace(":", "")[:2]), int(hhmm.replace(":", "")[2:4]))
        return datetime.combine(when, wall, tzinfo=calendar.NEW_YORK).astimezone(UTC)

    regular_close = at(day["close"], calendar.REGULAR_CLOSE)
    half = regular_close.astimezone(calendar.NEW_YORK).time() < calendar.REGULAR_CLOSE
    return calendar.Session(
        day=when,
        premarket_open=at(day.get("session_open"), calendar.PREMARKET_OPEN),
        regular_open=at(day["open"], calendar.REGULAR_OPEN),
        regular_close=regular_close,
        after_hours_close=at(day.get("session_close"),
                             calendar.HALF_DAY_AFTER_HOURS_CLOSE if half else calendar.AFTER_HOURS_CLOSE),
    )
