"""Polygon (Massive) REST on loopback, as polygon-api-client expects it (PROTOCOLS.md, section C).

Endpoints: aggregates (`/v2/aggs/ticker/...`, split-adjusted as of today unless `adjusted=false`),
reference tickers and their types, options contracts, splits and dividends (`/v3/reference/...`
and their successors `/stocks/v1/...`), the stocks snapshot and the market status. Authentication by `Authorization: Bearer`
or `?apiKey=`; a key in `unentitled_keys` authenticates but gets 403 on market data, like a plan
without it. 429 bodies carry no Retry-After, as the vendor's.

Pagination follows the vendor: aggregates cut pages at `limit` base (minute or daily)
aggregates and continue with the next window in the path and a cursor of the remaining query;
reference lists continue with `?cursor=` alone, a base64url of every filter and the offset. The
last page has no `next_url` key at all.

Quirks kept on purpose: an unknown ticker gets 200 with no `results` (as for a ticker that did not
trade), days are New York days for stocks and UTC days for crypto, and day bars are stamped at
local midnight.
"""

from __future__ import annotations

import base64
import re
import threading
import uuid
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.replay.data import (
    AGG_BARS,
    ReplayData,
    aggregate,
    days_between,
    day_bounds,
    kind_of,
    zone,
)
from market_platform.replay.http import HttpError, ReplayHTTPServer, Reply, Request, key_label
from market_platform.replay.snapshots import SnapshotBook, SnapshotState
from market_platform.schemas import BARS, TS
from market_platform.sources import symbols as sym

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MS = re.compile(r"\d{1,15}")
_TIMESPANS = ("minute", "hour", "day")

#: Polygon market -> the platform's categories in it, and the locale it reports.
MARKETS: dict[str, tuple[tuple[str, ...], str]] = {
    "stocks": (("us_equities", "etf"), "us"),
    "otc": (("otc",), "us"),
    "crypto": (("crypto",), "global"),
    "fx": (("fx",), "global"),
    "indices": (("indices",), "us"),
}

TICKER_TYPES = (
    ("CS", "Common Stock", "stocks"), ("PFD", "Preferred Stock", "stocks"), ("WARRANT", "Warrant", "stocks"),
    ("RIGHT", "Rights", "stocks"), ("BOND", "Corporate Bond", "stocks"), ("ETF", "Exchange Traded Fund", "stocks"),
    ("ETN", "Exchange Traded Note", "stocks"), ("SP", "Structured Product", "stocks"),
    ("ADRC", "American Depository Receipt Common", "stocks"), ("ADRW", "American Depository Receipt Warrants", "stocks"),
    ("ADRR", "American Depository Receipt Rights", "stocks"), ("FUND", "Fund", "stocks"),
    ("BASKET", "Basket", "stocks"), ("UNIT", "Unit", "stocks"), ("LT", "Liquidating Trust", "stocks"),
    ("OS", "Ordinary Shares", "stocks"), ("INDEX", "Index", "indices"),
)
_OCC = re.compile(r"^([A-Z]{1,6})(\d{2})(\d{2})(\d{2})([CP])(\d{8})$")

RATE_LIMITED = ("You've exceeded the maximum requests per minute, please wait or upgrade your "
                "subscription to continue. https://polygon.io/pricing")
NOT_ENTITLED = "You are not entitled to this data. Please upgrade your plan at https://polygon.io/pricing"


def _request_id() -> str:
    return uuid.uuid4().hex


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError(f"invalid cursor {text!r}") from None


def _ms(instant_ns: int) -> int:
    return instant_ns // 1_000_000


class PolygonReplay(ReplayHTTPServer):
    """Polygon REST on 127.0.0.1, serving `data`."""

    vendor = "Polygon"

    def __init__(self, data: ReplayData, *, api_keys: Iterable[str], unentitled_keys: Iterable[str] = (),
                 **options: Any) -> None:
        super().__init__(data, **options)
        self.api_keys, self.unentitled_keys = frozenset(api_keys), frozenset(unentitled_keys)
        self.route(r"/v2/aggs/ticker/([^/]+)/range/([^/]+)/([^/]+)/([^/]+)/([^/]+)", self.aggs)
        self.route(r"/v3/reference/tickers", self.tickers)
        self.route(r"/v3/reference/tickers/types", self.ticker_types)
        self.route(r"/v3/reference/options/contracts", self.options_contracts)
        self.route(r"/v3/reference/splits", self.splits)
        self.route(r"/v3/reference/dividends", self.dividends)
        self.route(r"/stocks/v1/splits", self.splits_v1)
        self.route(r"/stocks/v1/dividends", self.dividends_v1)
        self.route(r"/v2/snapshot/locale/us/markets/stocks/tickers", lambda request: self.snapshot(request, "stocks"))
        self.route(r"/v2/snapshot/locale/global/markets/crypto/tickers",
                   lambda request: self.snapshot(request, "crypto"))
        self.book = SnapshotBook(data)
        self._listings: dict[tuple, list[dict[str, Any]]] = {}
        self._listings_lock = threading.Lock()
        self.route(r"/v1/marketstatus/now", self.market_status)

    # ----------------------------------------------------------------------- vendor specifics

    def authenticate(self, request: Request) -> str | None:
        header = request.headers.get("Authorization") or ""
        key = header[len("Bearer "):].strip() if header.startswith("Bearer ") else request.query.get("apiKey")
        if not key:
            raise HttpError(401, {"status": "ERROR", "request_id": _request_id(), "error": "API Key was not provided"})
        if key in self.unentitled_keys:
            if request.path.startswith(("/v2/aggs", "/v2/snapshot")):
                raise HttpError(403, {"status": "NOT_AUTHORIZED", "request_id": _request_id(), "message": NOT_ENTITLED})
        elif key not in self.api_keys:
            raise HttpError(401, {"status": "ERROR", "request_id": _request_id(), "error": "Unknown API Key"})
        return key_label(key)

    def error_body(self, status: int, message: str) -> Any:
        if status == 429:
            return {"status": "ERROR", "request_id": _request_id(), "error": RATE_LIMITED}
        if status == 404:
            return {"status": "NOT_FOUND", "request_id": _request_id(), "message": message or "Not Found"}
        if status == 403:
            return {"status": "NOT_AUTHORIZED", "request_id": _request_id(), "message": NOT_ENTITLED}
        return {"status": "ERROR", "request_id": _request_id(), "error": message or "Internal Server Error"}

    def _params(self, request: Request) -> dict[str, str]:
        """The query, with a cursor's parameters in place of the cursor."""
        params = {k: v for k, v in request.query.items() if k != "apiKey"}
        cursor = params.pop("cursor", None)
        if cursor:
            params.update(dict(parse_qsl(_unb64(cursor), keep_blank_values=True)))
        return params

    def _today(self) -> date:
        return self.now().astimezone(calendar.NEW_YORK).date()

    # ----------------------------------------------------------------------- aggregates

    def aggs(self, request: Request, ticker: str, multiplier: str, timespan: str, start: str, end: str) -> Reply:
        params = self._params(request)
        if not multiplier.isdigit() or int(multiplier) < 1:
            raise InvalidInputError(f"multiplier {multiplier!r}: expected a positive integer")
        if timespan not in _TIMESPANS:
            raise InvalidInputError(f"timespan {timespan!r} is not served by the replay: expected one of "
                                    f"{', '.join(_TIMESPANS)}")
        m = int(multiplier)
        adjusted = params.get("adjusted", "true").lower() != "false"
        order = params.get("sort", "asc")
        if order not in ("asc", "desc"):
            raise InvalidInputError(f"sort {order!r}: expected asc or desc")
        limit = _int_param(params, "limit", 5000, 1, 50_000)
        symbol = sym.from_polygon(ticker)
        kind = kind_of(symbol)
        lo = _instant(start, "from", zone(kind), end=False)
        hi = _instant(end, "to", zone(kind), end=True)
        body: dict[str, Any] = {"ticker": ticker, "queryCount": 0, "resultsCount": 0, "adjusted": adjusted,
                                "status": "OK", "request_id": _request_id(), "count": 0}
        buckets, rest = self._buckets(symbol, kind, lo, hi, timespan, m, order, limit, adjusted)
        counts = buckets.column("base_count").to_numpy()
        take = max(1, int(np.searchsorted(np.cumsum(counts), limit, side="right"))) if len(counts) else 0
        page = buckets.slice(0, take)
        starts = pc.cast(buckets.column("ts"), pa.int64()).to_numpy()
        if page.num_rows:
            body["results"] = _agg_results(page)
            body.update(queryCount=int(counts[:take].sum()), resultsCount=page.num_rows, count=page.num_rows)
        more_buckets = take < buckets.num_rows
        if more_buckets or rest:
            cursor = _b64(urlencode({"adjusted": str(adjusted).lower(), "limit": limit, "sort": order}))
            if order == "asc":
                nxt = starts[take] if more_buckets else _ns(day_bounds(rest[0], kind)[0])
                path = f"{ticker}/range/{m}/{timespan}/{_ms(int(nxt))}/{end}"
            else:
                path = f"{ticker}/range/{m}/{timespan}/{start}/{_ms(int(starts[take - 1])) - 1}"
            body["next_url"] = f"{self.url}/v2/aggs/ticker/{path}?cursor={cursor}"
        return Reply(200, body)

    def _buckets(self, symbol: str, kind: str, lo: datetime, hi: datetime, timespan: str, m: int, order: str,
                 limit: int, adjusted: bool) -> tuple[pa.Table, list[date]]:
        """The aggregates of [lo, hi] in `order` (AGG_BARS; `base_count` counts daily aggregates for
        day bars), and the days not loaded because earlier ones already exceed `limit`. `adjusted`:
        split-adjusted as of today, as Polygon's default (prices times split_from / split_to of
        every split since, volumes divided by it); raw otherwise."""
        tz = zone(kind)
        days = days_between(lo, hi, kind)
        if order == "desc":
            days.reverse()
        loaded, base, rest = [], 0, []
        for i, day in enumerate(days):
            bars = self.data.minute_bars([symbol], day)
            ts = bars.column("ts")
            bars = bars.filter(pc.and_(pc.greater_equal(ts, pa.scalar(lo, TS)), pc.less_equal(ts, pa.scalar(hi, TS))))
            loaded.append(bars)
            base += bars.num_rows
            # Minute and hour buckets never span two days, so whole days can be left to the next page.
            if timespan != "day" and base >= limit:
                rest = days[i + 1:]
                break
        if order == "desc":
            loaded.reverse()
        table = pa.concat_tables(loaded) if loaded else BARS.empty_table()
        if adjusted and kind == "stocks":
            table = self.data.adjust(table, as_of=self._today(), splits=True)
        if timespan == "day":
            daily = aggregate(table, "day", 1, tz=tz)
            daily = daily.set_column(daily.num_columns - 1, AGG_BARS.field("base_count"),
                                     pa.array(np.ones(daily.num_rows, np.int64)))
            buckets = aggregate(daily, "day", m, tz=tz, anchor=lo.astimezone(tz).date()) if m > 1 else daily
        else:
            buckets = aggregate(table, timespan, m, tz=tz)
        if order == "desc":
            buckets = buckets.take(pa.array(np.arange(buckets.num_rows)[::-1]))
        return buckets, rest

    # ----------------------------------------------------------------------- reference

    def tickers(self, request: Request) -> Reply:
        params = self._params(request)
        day = _date_param(params.get("date")) or self._today()
        active = params.get("active", "true").lower() != "false"
        limit = _int_param(params, "limit", 100, 1, 1000)
        offset = _int_param(params, "offset", 0, 0, None)
        market = params.get("market")
        if market and market not in MARKETS:
            raise InvalidInputError(f"market {market!r}: expected one of {', '.join(MARKETS)}")
        rows: list[dict[str, Any]] = []
        for name in [market] if market else list(MARKETS):
            categories, locale = MARKETS[name]
            for category in categories:
                rows.extend(_ticker_rows(self.data.universe(category, day, include_inactive=not active),
                                         name, locale, category, day, active))
        rows = [r for r in rows if _ticker_matches(r, params)]
        rows = _sorted(rows, params.get("sort", "ticker"), params.get("order", "asc"))
        return self._page(request.path, rows, params, offset, limit)

    def options_contracts(self, request: Request) -> Reply:
        params = self._params(request)
        day = _date_param(params.get("as_of")) or self._today()
        limit = _int_param(params, "limit", 10, 1, 1000)
        offset = _int_param(params, "offset", 0, 0, None)
        rows = [] if params.get("expired", "false").lower() == "true" else \
            _contract_rows(self.data.universe("options", day))
        rows = _filtered(rows, params, {"underlying_ticker": str, "contract_type": str, "expiration_date": str,
                                        "strike_price": float})
        rows = _sorted(rows, params.get("sort", "ticker"), params.get("order", "asc"))
        return self._page(request.path, rows, params, offset, limit)

    # ----------------------------------------------------------------------- corporate actions
    #
    # What Polygon knows today: the actions announced by the replay's date, including upcoming
    # ones. Amounts are in the raw terms of their day (Polygon does not adjust dividends for later
    # splits). /v3/reference/{splits,dividends} are what polygon-api-client 1.16.3 calls
    # (`list_splits`, `list_dividends`; limit default 10, max 1000; ?cursor= pages);
    # /stocks/v1/{splits,dividends} are their successors with `historical_adjustment_factor`
    # (limit default 100, max 5000, `sort=column.direction`).

    def _actions(self, action_type: str, *, factors: bool = False) -> list[dict[str, Any]]:
        today = self._today()
        rows = [r for r in self.data.corporate_action_rows(today) if r["action_type"] == action_type]
        return _with_adjustment_factors(rows, today, self.data.previous_close) if factors else rows

    def _listing(self, path: str, params: dict[str, str], build) -> list[dict[str, Any]]:
        """`build()`'s filtered and sorted rows, kept while clients page through them (the cursor
        repeats every filter, so page n of a listing is a slice of the same rows)."""
        key = (path, self._today(), tuple(sorted((k, v) for k, v in params.items() if k not in ("offset", "limit"))))
        with self._listings_lock:
            rows = self._listings.get(key)
        if rows is None:
            rows = build()
            with self._listings_lock:
                if len(self._listings) >= 16:
                    self._listings.pop(next(iter(self._listings)))
                self._listings[key] = rows
        return rows

    def splits(self, request: Request) -> Reply:
        params = self._params(request)
        limit = _int_param(params, "limit", 10, 1, 1000)
        offset = _int_param(params, "offset", 0, 0, None)

        def build() -> list[dict[str, Any]]:
            rows = [_split_v3(r) for r in self._actions("split")]
            if params.get("reverse_split") is not None:
                reverse = params["reverse_split"].lower() == "true"
                rows = [r for r in rows if (r["split_from"] > r["split_to"]) == reverse]
            rows = _filtered(rows, params, {"ticker": str, "execution_date": str})
            return _sorted(rows, params.get("sort", "execution_date"), params.get("order", "desc"))

        return self._page(request.path, self._listing(request.path, params, build), params, offset, limit)

    def dividends(self, request: Request) -> Reply:
        params = self._params(request)
        limit = _int_param(params, "limit", 10, 1, 1000)
        offset = _int_param(params, "offset", 0, 0, None)

        def build() -> list[dict[str, Any]]:
            rows = _filtered([_dividend_v3(r) for r in self._actions("dividend")], params, _DIVIDEND_FILTERS)
            return _sorted(rows, params.get("sort", "ex_dividend_date"), params.get("order", "desc"))

        return self._page(request.path, self._listing(request.path, params, build), params, offset, limit)

    def splits_v1(self, request: Request) -> Reply:
        params = self._params(request)

        def build() -> list[dict[str, Any]]:
            rows = [{**_split_v3(r), "adjustment_type": "reverse_split" if r["split_from"] > r["split_to"]
                     else "forward_split", "historical_adjustment_factor": r["factor"]}
                    for r in self._actions("split", factors=True)]
            rows = _filtered(rows, params, {"ticker": str, "execution_date": str, "adjustment_type": str})
            return _sorted_v1(rows, params, "execution_date")

        return self._page_v1(request.path, self._listing(request.path, params, build), params)

    def dividends_v1(self, request: Request) -> Reply:
        params = self._params(request)

        def build() -> list[dict[str, Any]]:
            rows = []
            for r in self._actions("dividend", factors=True):
                row = {**_dividend_v3(r), "distribution_type": "special" if r["dividend_type"] == "SC" else "recurring",
                       "historical_adjustment_factor": r["factor"]}
                del row["dividend_type"]
                rows.append(row)
            rows = _filtered(rows, params, {**_DIVIDEND_FILTERS, "distribution_type": str})
            return _sorted_v1(rows, params, "ex_dividend_date")

        return self._page_v1(request.path, self._listing(request.path, params, build), params)

    def _page_v1(self, path: str, rows: list[dict[str, Any]], params: dict[str, str]) -> Reply:
        limit = _int_param(params, "limit", 100, 1, 5000)
        offset = _int_param(params, "offset", 0, 0, None)
        return self._page(path, rows, params, offset, limit)

    def _page(self, path: str, rows: list[dict[str, Any]], params: dict[str, str], offset: int, limit: int) -> Reply:
        page = rows[offset:offset + limit]
        body: dict[str, Any] = {"results": page, "status": "OK", "request_id": _request_id(), "count": len(page)}
        if offset + limit < len(rows):
            state = {**params, "offset": str(offset + limit), "limit": str(limit)}
            body["next_url"] = f"{self.url}{path}?cursor={_b64(urlencode(sorted(state.items())))}"
        return Reply(200, body)

    def ticker_types(self, request: Request) -> Reply:
        asset_class, locale = request.query.get("asset_class"), request.query.get("locale")
        results = [{"code": code, "description": text, "asset_class": cls, "locale": "us"}
                   for code, text, cls in TICKER_TYPES
                   if (asset_class is None or asset_class == cls) and locale in (None, "us")]
        return Reply(200, {"results": results, "status": "OK", "request_id": _request_id(), "count": len(results)})

    # ----------------------------------------------------------------------- snapshot, status

    def snapshot(self, request: Request, market: str) -> Reply:
        """The whole market's snapshot (or `tickers=`) as of the replay's clock (see
        replay.snapshots): day so far, last completed minute (`min.t` in ms), previous day,
        last trade and quote (`t` and `updated` in ns; lastQuote `P`/`S` are the ask)."""
        kind = "crypto" if market == "crypto" else "stocks"
        requested = request.query.get("tickers") or ""
        symbols = None
        if requested:
            symbols = sorted({sym.from_polygon(t.strip()) for t in requested.split(",") if t.strip()})
        state = self.book.state(kind, self.now(), symbols)
        if kind == "stocks" and request.query.get("include_otc", "false").lower() != "true":
            otc = self.data.universe("otc", state.day).column("symbol")
            state = type(state)(state.day, state.previous, state.bars.filter(
                pc.invert(pc.is_in(state.bars.column("symbol"), value_set=otc))), state.trades, state.quotes)
        tickers = _snapshot_entries(state, crypto=kind == "crypto")
        return Reply(200, {"status": "OK", "count": len(tickers), "tickers": tickers, "request_id": _request_id()})

    def market_status(self, request: Request) -> Reply:
        now = self.now()
        session = calendar.default_calendar().session_at(now)
        phase = session.phase_at(now) if session else None
        market = {"regular": "open", "premarket": "extended-hours", "afterhours": "extended-hours"}.get(phase, "closed")
        weekday = now.astimezone(calendar.NEW_YORK).weekday() < 5
        return Reply(200, {
            "market": market, "earlyHours": phase == "premarket", "afterHours": phase == "afterhours",
            "serverTime": now.astimezone(calendar.NEW_YORK).replace(microsecond=0).isoformat(),
            "exchanges": {"nyse": market, "nasdaq": market, "otc": market},
            "currencies": {"fx": "open" if weekday else "closed", "crypto": "open"},
        })


# --------------------------------------------------------------------------- helpers


def _ns(instant: datetime) -> int:
    delta = instant.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _instant(text: str, name: str, tz, *, end: bool) -> datetime:
    """A from/to path segment: YYYY-MM-DD (the whole local day) or Unix milliseconds (inclusive)."""
    if _DATE.fullmatch(text):
        day = calendar.to_date(text) + timedelta(days=1 if end else 0)
        instant = datetime.combine(day, datetime.min.time(), tzinfo=tz).astimezone(UTC)
        return instant - timedelta(microseconds=1) if end else instant
    if _MS.fullmatch(text):
        return _EPOCH + timedelta(milliseconds=int(text))
    raise InvalidInputError(f"Could not parse the time parameter: '{name}'={text!r}. "
                            "Use YYYY-MM-DD or Unix MS Timestamps")


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidInputError(f"{name}={text!r}: expected an integer") from None
    if value < low:
        raise InvalidInputError(f"{name}={value}: expected at least {low}")
    return min(value, high) if high is not None else value


def _date_param(text: str | None) -> date | None:
    if not text:
        return None
    return calendar.to_date(text[:10])


def _cast(cast, text: str, name: str):
    try:
        return cast(text)
    except ValueError:
        raise InvalidInputError(f"{name}={text!r}: expected a {cast.__name__}") from None


def _sorted(rows: list[dict[str, Any]], key: str, order: str) -> list[dict[str, Any]]:
    if order not in ("asc", "desc"):
        raise InvalidInputError(f"order {order!r}: expected asc or desc")
    return sorted(rows, key=lambda r: (r.get(key) is None, r.get(key) or "", r.get("ticker", "")),
                  reverse=order == "desc")


_DIVIDEND_FILTERS = {"ticker": str, "ex_dividend_date": str, "record_date": str, "declaration_date": str,
                     "pay_date": str, "frequency": int, "cash_amount": float, "dividend_type": str}


def _sorted_v1(rows: list[dict[str, Any]], params: dict[str, str], default: str) -> list[dict[str, Any]]:
    """Rows sorted as /stocks/v1 sorts: `sort=col.dir[,col.dir]` (default `{default}.desc`)."""
    for spec in reversed((params.get("sort") or f"{default}.desc").split(",")):
        column, _, direction = spec.strip().partition(".")
        rows = _sorted(rows, column, direction or "asc")
    return rows


_TESTS = (("", lambda a, b: a == b), (".gte", lambda a, b: a >= b), (".gt", lambda a, b: a > b),
          (".lte", lambda a, b: a <= b), (".lt", lambda a, b: a < b))


def _filtered(rows: list[dict[str, Any]], params: dict[str, str], fields: dict[str, type]) -> list[dict[str, Any]]:
    """`rows` whose fields pass the query's filters: `name`, `name.gt|gte|lt|lte`, `name.any_of`."""
    for name, cast in fields.items():
        for op, test in _TESTS:
            if name + op in params:
                value = _cast(cast, params[name + op], name + op)
                rows = [r for r in rows if r.get(name) is not None and test(r[name], value)]
        if name + ".any_of" in params:
            values = {_cast(cast, v, name + ".any_of") for v in params[name + ".any_of"].split(",")}
            rows = [r for r in rows if r.get(name) in values]
    return rows


def _with_adjustment_factors(rows: list[dict[str, Any]], today: date, previous_close) -> list[dict[str, Any]]:
    """Each action with `factor`: the product of its own and its symbol's later factors of the same
    type up to `today` (split_from / split_to; 1 - cash / previous close), what multiplies a price
    before its ex-date to today's basis; 1 for actions not yet in effect."""
    own = []
    for r in rows:
        if r["ex_date"] > today:
            own.append(1.0)
        elif r["action_type"] == "split":
            own.append(r["split_from"] / r["split_to"])
        else:
            close = previous_close(r["symbol"], r["ex_date"])
            own.append(1.0 - r["cash_amount"] / close if close else 1.0)
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["symbol"], rows[i]["ex_date"]), reverse=True)
    out: list[dict[str, Any]] = [{}] * len(rows)
    product, symbol = 1.0, None
    for i in order:
        if rows[i]["symbol"] != symbol:
            product, symbol = 1.0, rows[i]["symbol"]
        product *= own[i]
        out[i] = {**rows[i], "factor": product}
    return out


def _action_hash(action_id: str) -> str:
    return "E" + uuid.uuid5(uuid.NAMESPACE_URL, action_id).hex


def _split_v3(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": _action_hash(r["action_id"]), "execution_date": r["ex_date"].isoformat(),
            "split_from": r["split_from"], "split_to": r["split_to"], "ticker": sym.to_polygon(r["symbol"])}


def _dividend_v3(r: dict[str, Any]) -> dict[str, Any]:
    out = {"id": _action_hash(r["action_id"]), "cash_amount": r["cash_amount"], "currency": "USD",
           "declaration_date": r["announced_date"].isoformat(), "dividend_type": r["dividend_type"],
           "ex_dividend_date": r["ex_date"].isoformat(), "frequency": 0 if r["dividend_type"] == "SC" else 4,
           "pay_date": r["pay_date"].isoformat() if r["pay_date"] else None,
           "record_date": r["record_date"].isoformat() if r["record_date"] else None,
           "ticker": sym.to_polygon(r["symbol"])}
    return {k: v for k, v in out.items() if v is not None}


def _agg_results(page: pa.Table) -> list[dict[str, Any]]:
    columns = {name: page.column(name).to_pylist() for name in ("open", "high", "low", "close", "volume",
                                                                 "vwap", "trade_count")}
    ms = (pc.cast(page.column("ts"), pa.int64()).to_numpy() // 1_000_000).tolist()
    return [{"v": v, "vw": vw, "o": o, "c": c, "h": h, "l": lo, "t": t,
             "n": n}
            for o, h, lo, c, v, vw, n, t in zip(columns["open"], columns["high"], columns["low"], columns["close"],
                                                 columns["volume"], columns["vwap"], columns["trade_count"], ms,
                                                 strict=True)]


#: Alpaca's venue letters (the simulator's) as Polygon's exchange ids, and trade conditions as
#: Polygon's condition ids ("@", a regular sale, has none).
POLYGON_EXCHANGES = {"A": 1, "B": 2, "C": 3, "D": 4, "J": 7, "K": 8, "M": 9, "N": 10, "P": 11, "Q": 12,
                     "V": 15, "X": 17, "Y": 18, "Z": 19, "H": 20, "U": 21, "L": 22}
POLYGON_CONDITIONS = {"T": 12, "F": 14, "I": 37}
#: The crypto exchange id the replay reports (Coinbase).
POLYGON_CRYPTO_EXCHANGE = 1


def _snapshot_entries(state: SnapshotState, *, crypto: bool) -> list[dict[str, Any]]:
    """`tickers` of a Polygon snapshot response, one per row of `state.bars`."""
    bars = state.bars
    col = {name: bars.column(name).to_pylist() for name in bars.column_names if name != "min_ts"}
    min_ms = (pc.cast(bars.column("min_ts"), pa.int64()).fill_null(0).to_numpy() // 1_000_000).tolist()
    updated = state.updated_ns().tolist()
    trades, quotes = _by_symbol(state.trades), _by_symbol(state.quotes)
    entries = []
    for i, symbol in enumerate(col["symbol"]):
        day = _ohlcv(col, "day", i)
        prev = _ohlcv(col, "prev", i)
        close, prev_close = col["day_close"][i], col["prev_close"][i]
        change = close - prev_close if close is not None and prev_close else 0.0
        entry: dict[str, Any] = {
            "ticker": sym.to_polygon(symbol),
            "todaysChange": round(change, 6),
            "todaysChangePerc": round(100.0 * change / prev_close, 6) if close is not None and prev_close else 0.0,
            "updated": updated[i],
            "day": day, "prevDay": prev,
        }
        if col["min_close"][i] is not None:
            entry["min"] = {**_ohlcv(col, "min", i), "av": col["min_av"][i], "t": min_ms[i],
                            "n": col["min_trade_count"][i]}
        trade = trades.get(symbol)
        if trade is not None:
            entry["lastTrade"] = {"i": str(trade["trade_id"]), "p": trade["price"], "s": trade["size"],
                                  "t": trade["ts"],
                                  "x": POLYGON_CRYPTO_EXCHANGE if crypto else POLYGON_EXCHANGES.get(trade["exchange"], 0)}
            conditions = [POLYGON_CONDITIONS[c] for c in (trade["conditions"] or "").split(",") if c in POLYGON_CONDITIONS]
            if conditions:
                entry["lastTrade"]["c"] = conditions
        quote = quotes.get(symbol)
        if quote is not None:
            entry["lastQuote"] = {"P": quote["ask_price"], "S": quote["ask_size"], "p": quote["bid_price"],
                                  "s": quote["bid_size"], "t": quote["ts"]}
        entries.append(entry)
    return entries


def _by_symbol(table: pa.Table) -> dict[str, dict[str, Any]]:
    """Rows of a trades or quotes table by symbol, with `ts` as integer nanoseconds."""
    table = table.set_column(table.schema.get_field_index("ts"), "ts", pc.cast(table.column("ts"), pa.int64()))
    return {row["symbol"]: row for row in table.to_pylist()}


def _ohlcv(columns: dict[str, list], prefix: str, i: int) -> dict[str, Any]:
    """Polygon's {o, h, l, c, v, vw} of bar `prefix` (day, min, prev) at row `i`; zeros when absent."""
    if columns[f"{prefix}_close"][i] is None:
        return {"o": 0, "h": 0, "l": 0, "c": 0, "v": 0, "vw": 0}
    vwap = columns[f"{prefix}_vwap"][i]
    return {"o": columns[f"{prefix}_open"][i], "h": columns[f"{prefix}_high"][i], "l": columns[f"{prefix}_low"][i],
            "c": columns[f"{prefix}_close"][i], "v": columns[f"{prefix}_volume"][i],
            "vw": vwap if vwap is not None else 0}


def _ticker_rows(table: pa.Table, market: str, locale: str, category: str, day: date,
                 active: bool) -> list[dict[str, Any]]:
    rows = []
    for r in table.to_pylist():
        if r["active"] != active:
            continue
        symbol = r["symbol"]
        row: dict[str, Any] = {
            "ticker": sym.to_polygon(symbol, index=category == "indices"), "name": r["name"],
            "market": market, "locale": locale,
        }
        if market in ("stocks", "otc"):
            row.update(primary_exchange=r["exchange"], type=r["type"], currency_name="usd")
        elif market == "indices":
            row.update(type="INDEX", currency_name="usd")
        else:
            base, quote = symbol.split("/")
            base_name, _, quote_name = (r["name"] or "").partition(" - ")
            row.update(currency_symbol=quote, currency_name=quote_name or quote, base_currency_symbol=base,
                       base_currency_name=base_name or base)
        row["active"] = r["active"]
        if r["delist_date"] is not None:
            row["delisted_utc"] = f"{r['delist_date'].isoformat()}T00:00:00Z"
        row["last_updated_utc"] = f"{day.isoformat()}T00:00:00Z"
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def _ticker_matches(row: dict[str, Any], params: dict[str, str]) -> bool:
    ticker = row["ticker"]
    for name, field in (("type", "type"), ("exchange", "primary_exchange")):
        if params.get(name) and row.get(field) != params[name]:
            return False
    if params.get("ticker") and ticker != params["ticker"]:
        return False
    for op, test in ((".gte", ticker.__ge__), (".gt", ticker.__gt__), (".lte", ticker.__le__), (".lt", ticker.__lt__)):
        bound = params.get("ticker" + op)
        if bound and not test(bound):
            return False
    if params.get("cusip") or params.get("cik"):
        return False  # the replay has no CUSIPs or CIKs
    search = (params.get("search") or "").lower()
    return not search or search in ticker.lower() or search in (row.get("name") or "").lower()


def _contract_rows(table: pa.Table) -> list[dict[str, Any]]:
    rows = []
    for symbol in table.column("symbol").to_pylist():
        match = _OCC.match(symbol)
        if not match:
            continue
        root, yy, mm, dd, right, strike = match.groups()
        rows.append({
            "cfi": "OCASPS" if right == "C" else "OPASPS", "contract_type": "call" if right == "C" else "put",
            "exercise_style": "american", "expiration_date": f"20{yy}-{mm}-{dd}", "primary_exchange": "BATO",
            "shares_per_contract": 100, "strike_price": int(strike) / 1000, "ticker": "O:" + symbol,
            "underlying_ticker": root,
        })
    return rows
