"""Alpaca REST on loopback: market data and the trading API's reference endpoints on one server,
as alpaca-py expects them (PROTOCOLS.md, section B).

Endpoints: `/v2/stocks/bars`, `/v1beta3/crypto/us/bars` (multi-symbol, `limit` across symbols,
`page_token` pagination with `next_page_token` always present), `/v2/stocks/quotes`,
`/v2/stocks/trades`, `/v1beta3/crypto/us/quotes`, `/v1beta3/crypto/us/trades` (the historical
ticks, in the same shape and pagination, from the simulated market behind the provider: the
quotes and trades the stream replay sends), `/v2/assets` and `/v2/assets/{symbol}`,
`/v2/calendar`, `/v2/clock`, and the snapshots `/v2/stocks/snapshots` and
`/v1beta3/crypto/us/snapshots` (replay.snapshots). Authentication by `APCA-API-KEY-ID` and
`APCA-API-SECRET-KEY`; crypto data needs none, as at Alpaca. A key id in `sip_denied` gets 403 on
`feed=sip`, as a free plan does.

Bars are sorted by symbol, then time; a symbol with no bars is absent. `start` and `end` are
inclusive and apply to the bar's start; a date alone means that New York day. Daily bars are
stamped at midnight New York (stocks) or UTC (crypto).
"""

from __future__ import annotations

import base64
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.replay.data import ReplayData, aggregate, days_between, zone
from market_platform.replay.http import HttpError, ReplayHTTPServer, Reply, Request
from market_platform.replay.snapshots import SnapshotBook, SnapshotState
from market_platform.schemas import BARS, QUOTES, TRADES, TS
from market_platform.sources.alpaca import CRYPTO_SYMBOL as _CRYPTO_SYMBOL
from market_platform.sources.alpaca import STOCK_SYMBOL as _STOCK_SYMBOL

UTC = timezone.utc
_TIMEFRAME = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D)$")
_UNITS = {"Min": ("minute", 59), "T": ("minute", 59), "Hour": ("hour", 23), "H": ("hour", 23),
          "Day": ("day", 1), "D": ("day", 1)}
_FEEDS = ("sip", "iex", "otc", "boats", "delayed_sip")
_ADJUSTMENTS = {"raw", "split", "dividend", "spin-off", "all"}
#: Listing MIC -> the exchange name alpaca-py's enum accepts.
EXCHANGES = {"XNYS": "NYSE", "XNAS": "NASDAQ", "XASE": "AMEX", "ARCX": "ARCA", "BATS": "BATS", "OTCM": "OTC"}
_ASSET_IDS = uuid.UUID("6f1c0a8e-4a47-4d0e-9d43-5e2f7f1b8a10")
SIP_DENIED = "subscription does not permit querying recent SIP data"


def asset_id(symbol: str) -> str:
    """A stable UUID per symbol, as Alpaca's asset ids are."""
    return str(uuid.uuid5(_ASSET_IDS, symbol))


class AlpacaReplay(ReplayHTTPServer):
    """Alpaca's data and trading REST APIs on 127.0.0.1, serving `data`.

    `keys` maps key ids to secrets; `page_cap` bounds a page below the client's `limit` (the real
    API's cap is 10,000), so tests can page through small data."""

    vendor = "Alpaca"

    def __init__(self, data: ReplayData, *, keys: Mapping[str, str], sip_denied: Iterable[str] = (),
                 page_cap: int = 10_000, **options: Any) -> None:
        super().__init__(data, **options)
        self.keys, self.sip_denied, self.page_cap = dict(keys), frozenset(sip_denied), page_cap
        self.route(r"/v2/stocks/bars", lambda request: self.bars(request, "stocks"))
        self.route(r"/v1beta3/crypto/us/bars", lambda request: self.bars(request, "crypto"))
        for what in ("quotes", "trades"):
            self.route(rf"/v2/stocks/{what}", lambda request, what=what: self.ticks(request, "stocks", what))
            self.route(rf"/v1beta3/crypto/us/{what}", lambda request, what=what: self.ticks(request, "crypto", what))
        self._tick_cache: OrderedDict[tuple, pa.Table] = OrderedDict()
        self.route(r"/v2/assets", self.assets)
        self.route(r"/v2/assets/(.+)", self.asset)
        self.route(r"/v2/calendar", self.calendar)
        self.route(r"/v2/clock", self.clock_now)
        self.route(r"/v1/corporate-actions", self.corporate_actions)
        self._action_pages: dict[tuple, list[tuple[str, dict[str, Any]]]] = {}
        self._add_snapshot_routes()

    # ----------------------------------------------------------------------- vendor specifics

    def authenticate(self, request: Request) -> str | None:
        key_id = request.headers.get("APCA-API-KEY-ID")
        secret = request.headers.get("APCA-API-SECRET-KEY")
        if not key_id and not secret and request.path.startswith("/v1beta3/crypto/"):
            return None  # crypto market data needs no key
        if not key_id or self.keys.get(key_id) != secret:
            raise HttpError(401, {"code": 40110000, "message": "request is not authorized"})
        return key_id

    def error_body(self, status: int, message: str) -> Any:
        if status == 429:
            return {"code": 42910000, "message": "rate limit exceeded"}
        if status == 403:
            return {"code": 40310000, "message": message or "forbidden"}
        if status == 404:
            return {"code": 40410000, "message": message or "not found"}
        if status >= 500:
            return {"code": 50010000, "message": message or "internal server error"}
        return {"code": 40010001, "message": message}

    def throttle_headers(self) -> dict[str, str]:
        limit = self.rate_limit.calls or 0
        reset = int(self.now().timestamp() + self.rate_limit.window)
        return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}

    def _today(self) -> date:
        return self.now().astimezone(calendar.NEW_YORK).date()

    def _check_feed(self, request: Request) -> None:
        """A stock request's `feed` (default sip) is known and in the key's plan (else 400/403)."""
        feed = request.query.get("feed") or "sip"
        if feed not in _FEEDS:
            raise InvalidInputError(f"invalid feed: {feed}")
        if feed == "sip" and request.headers.get("APCA-API-KEY-ID") in self.sip_denied:
            raise HttpError(403, {"message": SIP_DENIED})

    # ----------------------------------------------------------------------- bars

    def _market_data_query(self, request: Request, kind: str) -> tuple[list[str], datetime, datetime, int]:
        """What every market-data request of `kind` names: symbols, start and end (inclusive),
        the page limit; and the feed (stocks), which the plan must include."""
        q = request.query
        symbols = _symbols(q, kind)
        start = _time(q["start"], end=False) if q.get("start") else \
            datetime.combine(self._today(), datetime.min.time(), tzinfo=calendar.NEW_YORK).astimezone(UTC)
        end = _time(q["end"], end=True) if q.get("end") else self.now()
        if start > end:
            raise InvalidInputError("end should not be before start")
        limit = int(q.get("limit") or 1000)
        if not 1 <= limit <= 10_000:
            raise InvalidInputError(f"invalid limit: {limit} (expected 1 to 10000)")
        if kind == "stocks":
            self._check_feed(request)
        return symbols, start, end, limit

    def bars(self, request: Request, kind: str) -> Reply:
        q = request.query
        symbols, start, end, limit = self._market_data_query(request, kind)
        unit, multiplier = _timeframe(q.get("timeframe"))
        order = q.get("sort") or "asc"
        if order not in ("asc", "desc"):
            raise InvalidInputError(f"invalid sort: {order}")
        adjustment = {"raw"}
        if kind == "stocks":
            adjustment = set((q.get("adjustment") or "raw").split(","))
            if not adjustment <= _ADJUSTMENTS:
                raise InvalidInputError(f"invalid adjustment: {q.get('adjustment')}")
        after_symbol, after_ts = _token(q.get("page_token"))
        room = min(limit, self.page_cap)
        out: dict[str, list[dict[str, Any]]] = {}
        token = None
        for s in symbols:
            if after_symbol is not None and s < after_symbol:
                continue
            table = self._bars(s, start, end, unit, multiplier, kind, adjustment)
            ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()
            order_index = np.arange(len(ts)) if order == "asc" else np.arange(len(ts))[::-1]
            if s == after_symbol and after_ts is not None:
                order_index = order_index[ts[order_index] >= after_ts] if order == "asc" else \
                    order_index[ts[order_index] <= after_ts]
            if not len(order_index):
                continue
            if room == 0:
                token = _make_token(s, int(ts[order_index[0]]))
                break
            chosen = order_index[:room]
            out[s] = _bar_dicts(table.take(pa.array(chosen)))
            room -= len(chosen)
            if len(chosen) < len(order_index):
                token = _make_token(s, int(ts[order_index[len(chosen)]]))
                break
        return Reply(200, {"bars": out, "next_page_token": token})

    def _bars(self, symbol: str, start: datetime, end: datetime, unit: str, multiplier: int, kind: str,
              adjustment: set[str]) -> pa.Table:
        minutes = [self.data.minute_bars([symbol], day) for day in days_between(start, end, kind)]
        table = pa.concat_tables(minutes) if minutes else BARS.empty_table()
        # Adjusted as of today, for the actions in effect by then; "all" adds spin-offs (none here).
        table = self.data.adjust(table, as_of=self._today(), splits=bool(adjustment & {"split", "all"}),
                                 dividends=bool(adjustment & {"dividend", "all"}))
        bars = aggregate(table, unit, multiplier, tz=zone(kind))
        ts = bars.column("ts")
        return bars.filter(pc.and_(pc.greater_equal(ts, pa.scalar(start, TS)), pc.less_equal(ts, pa.scalar(end, TS))))

    # ----------------------------------------------------------------------- corporate actions
    #
    # GET /v1/corporate-actions (alpaca-py `CorporateActionsClient`): {"corporate_actions": {type:
    # [action, ...]}, "next_page_token": ...}, `limit` (1-1000, default 100) actions per page
    # across types, filtered by `symbols`, `types` and the inclusive [start, end] of the ex-date
    # (default today), sorted by ex-date (`sort`), announced by today. Splits carry old/new rates,
    # cash dividends `rate` (per share), renames are name_changes, delistings worthless_removals.

    def corporate_actions(self, request: Request) -> Reply:
        q = request.query
        today = self._today()
        start = calendar.to_date(q["start"]) if q.get("start") else today
        end = calendar.to_date(q["end"]) if q.get("end") else today
        if start > end:
            raise InvalidInputError("end should not be before start")
        limit = int(q.get("limit") or 100)
        if not 1 <= limit <= 1000:
            raise InvalidInputError(f"invalid limit: {limit} (expected 1 to 1000)")
        order = q.get("sort") or "asc"
        if order not in ("asc", "desc"):
            raise InvalidInputError(f"invalid sort: {order}")
        types = set(q["types"].split(",")) if q.get("types") else set(_ACTION_TYPES.values()) | {"reverse_split"}
        unknown = types - set(_ACTION_TYPES.values()) - {"reverse_split"} - _OTHER_ACTION_TYPES
        if unknown:
            raise InvalidInputError(f"invalid types: {','.join(sorted(unknown))}")
        symbols = [s for s in (q.get("symbols") or "").split(",") if s] or None
        key = (today, start, end, tuple(symbols or ()), tuple(sorted(types)), order)
        entries = self._action_pages.get(key)
        if entries is None:  # computed once while a client pages through it
            if symbols is None:
                rows = [r for r in self.data.corporate_action_rows(today) if start <= r["ex_date"] <= end]
            else:
                rows = self.data.corporate_actions(as_of=today, symbols=symbols, start=start, end=end).to_pylist()
            rows = sorted(rows, key=lambda r: (r["ex_date"], r["action_id"]), reverse=order == "desc")
            entries = [(t, r) for t, r in ((_action_type(r), r) for r in rows) if t in types]
            if len(self._action_pages) >= 16:
                self._action_pages.pop(next(iter(self._action_pages)), None)
            self._action_pages[key] = entries
        offset = int(_unb64_token(q.get("page_token")) or 0)
        limit = min(limit, self.page_cap)
        page = entries[offset:offset + limit]
        out: dict[str, list[dict[str, Any]]] = {}
        for action_type, r in page:
            out.setdefault(action_type + "s", []).append(_action_dict(action_type, r))
        token = base64.b64encode(str(offset + limit).encode()).decode() if offset + limit < len(entries) else None
        return Reply(200, {"corporate_actions": out, "next_page_token": token})

    # ----------------------------------------------------------------------- historical quotes and trades
    #
    # GET /v2/stocks/{quotes,trades} and /v1beta3/crypto/us/{quotes,trades}: the ticks of the
    # simulated market (`SimMarket.quotes` / `trades`, what the stream replay sends), as
    # {"quotes"|"trades": {symbol: [tick, ...]}, "next_page_token": ...}, sorted by symbol then
    # time, `limit` (1-10,000, default 1,000) ticks per page across symbols. `start` and `end`
    # are inclusive; `t` is RFC 3339 with nanoseconds, so a tick's time is exactly the stream's.

    def ticks(self, request: Request, kind: str, what: str) -> Reply:
        q = request.query
        symbols, start, end, limit = self._market_data_query(request, kind)
        if (q.get("sort") or "asc") != "asc":
            raise InvalidInputError("this replay serves sort=asc only")
        table = self._tick_table(kind, what, symbols, start, end)
        after_symbol, after_row = _token(q.get("page_token"))
        names = table.column("symbol").to_numpy(zero_copy_only=False) if table.num_rows else np.array([], object)
        first = 0
        if after_symbol is not None:
            first = int(np.searchsorted(names, after_symbol, side="left")) + int(after_row or 0)
        page = table.slice(first, min(limit, self.page_cap))
        token = None
        if first + page.num_rows < table.num_rows:
            symbol = names[first + page.num_rows]
            token = _make_token(symbol, first + page.num_rows - int(np.searchsorted(names, symbol, side="left")))
        out: dict[str, list[dict[str, Any]]] = {}
        rows = (_quote_dicts if what == "quotes" else _trade_dicts)(page, crypto=kind == "crypto")
        for symbol, row in zip(page.column("symbol").to_pylist(), rows, strict=True):
            out.setdefault(symbol, []).append(row)
        return Reply(200, {what: out, "next_page_token": token})

    def _tick_table(self, kind: str, what: str, symbols: list[str], start: datetime, end: datetime) -> pa.Table:
        """The ticks in [start, end], sorted by (symbol, ts); the last few requests are kept, so
        the pages of one request are cut from one table."""
        key = (kind, what, tuple(symbols), start, end)
        if key in self._tick_cache:
            self._tick_cache.move_to_end(key)
            return self._tick_cache[key]
        market = getattr(self.data.provider, "sim", None)
        if market is None:
            raise HttpError(404, {"code": 40410000, "message": f"this replay has no {what}"})
        parts = []
        stop = end + timedelta(microseconds=1)  # `end` is inclusive
        for day in days_between(start, end, kind):
            # Symbols the market does not know (on that day) simply have no ticks, as at Alpaca.
            listed = set(market.symbols(day, category="crypto") if kind == "crypto" else market.stock_symbols(day))
            known = [s for s in symbols if s in listed]
            if known:
                fetch = market.quotes if what == "quotes" else market.trades
                parts.append(fetch(day, known, start=start, end=stop))
        table = pa.concat_tables(parts).sort_by([("symbol", "ascending"), ("ts", "ascending")]) if parts else \
            (QUOTES if what == "quotes" else TRADES).empty_table()
        self._tick_cache[key] = table
        while len(self._tick_cache) > 4:
            self._tick_cache.popitem(last=False)
        return table

    # ----------------------------------------------------------------------- trading API

    def _asset_rows(self, asset_class: str, day: date) -> list[dict[str, Any]]:
        categories = {"us_equity": ("us_equities", "etf", "otc"), "crypto": ("crypto",)}.get(asset_class, ())
        rows = []
        for category in categories:
            for r in self.data.universe(category, day, include_inactive=True).to_pylist():
                crypto = category == "crypto"
                otc = category == "otc"
                rows.append({
                    "id": asset_id(r["symbol"]), "class": asset_class,
                    "exchange": "CRYPTO" if crypto else EXCHANGES.get(r["exchange"] or "", ""),
                    "symbol": r["symbol"], "name": r["name"] or r["symbol"],
                    "status": "active" if r["active"] else "inactive", "tradable": bool(r["active"]),
                    "marginable": not (crypto or otc), "shortable": not (crypto or otc),
                    "easy_to_borrow": not (crypto or otc), "fractionable": not otc,
                    "maintenance_margin_requirement": 100 if crypto or otc else 30,
                    "margin_requirement_long": "100" if crypto or otc else "30",
                    "margin_requirement_short": "100" if crypto or otc else "30",
                    "attributes": [],
                })
        return rows

    def assets(self, request: Request) -> Reply:
        q = request.query
        asset_class = q.get("asset_class") or "us_equity"
        if asset_class not in ("us_equity", "us_option", "crypto", "crypto_perp"):
            raise InvalidInputError(f"invalid asset_class: {asset_class}")
        rows = self._asset_rows(asset_class, self._today())
        if q.get("status"):
            rows = [r for r in rows if r["status"] == q["status"]]
        if q.get("exchange"):
            rows = [r for r in rows if r["exchange"] == q["exchange"]]
        return Reply(200, sorted(rows, key=lambda r: r["symbol"]))

    def asset(self, request: Request, wanted: str) -> Reply:
        day = self._today()
        for asset_class in ("us_equity", "crypto"):
            for row in self._asset_rows(asset_class, day):
                if wanted in (row["symbol"], row["id"], row["symbol"].replace("/", "")):
                    return Reply(200, row)
        raise HttpError(404, {"code": 40410000, "message": f"asset not found for {wanted}"})

    def calendar(self, request: Request) -> Reply:
        cal = calendar.default_calendar()
        start = calendar.to_date(request.query["start"]) if request.query.get("start") else cal.start
        end = calendar.to_date(request.query["end"]) if request.query.get("end") else cal.end
        start, end = max(start, cal.start), min(end, cal.end)
        if start > end:
            return Reply(200, [])
        days = cal.sessions(start, end)
        out = []
        for day in days:
            session = cal.session(day)
            local = {name: getattr(session, name).astimezone(calendar.NEW_YORK)
                     for name in ("premarket_open", "regular_open", "regular_close", "after_hours_close")}
            settlement = cal.next_session(day) if day < cal.end else day
            out.append({
                "date": day.isoformat(), "open": local["regular_open"].strftime("%H:%M"),
                "close": local["regular_close"].strftime("%H:%M"),
                "session_open": local["premarket_open"].strftime("%H%M"),
                "session_close": local["after_hours_close"].strftime("%H%M"),
                "settlement_date": settlement.isoformat(),
            })
        return Reply(200, out)

    def clock_now(self, request: Request) -> Reply:
        now = self.now()
        cal = calendar.default_calendar()
        session = cal.session_at(now)
        is_open = session is not None and session.phase_at(now) == "regular"
        next_open = cal.next_open(now, phase="regular")
        if is_open:
            next_close = session.regular_close
        else:
            next_close = cal.session(next_open.astimezone(calendar.NEW_YORK).date()).regular_close
        ny = calendar.NEW_YORK
        return Reply(200, {"timestamp": now.astimezone(ny).isoformat(), "is_open": is_open,
                           "next_open": next_open.astimezone(ny).isoformat(),
                           "next_close": next_close.astimezone(ny).isoformat()})


    # ----------------------------------------------------------------------- snapshots (issue 13)

    def _add_snapshot_routes(self) -> None:
        self.snapshots_book = SnapshotBook(self.data)
        self.route(r"/v2/stocks/snapshots", lambda request: self.snapshots(request, "stocks"))
        self.route(r"/v1beta3/crypto/us/snapshots", lambda request: self.snapshots(request, "crypto"))

    def snapshots(self, request: Request, kind: str) -> Reply:
        """Snapshots of `symbols` as of the replay's clock (see replay.snapshots): latestTrade,
        latestQuote, minuteBar, dailyBar, prevDailyBar, times in RFC-3339. Stocks answer a map by
        symbol with no wrapper key; crypto wraps it in `snapshots`. Symbols without data are absent."""
        symbols = _symbols(request.query, kind)
        if kind == "stocks":
            self._check_feed(request)
        state = self.snapshots_book.state(kind, self.now(), symbols)
        body = _alpaca_snapshots(state, crypto=kind == "crypto")
        return Reply(200, {"snapshots": body} if kind == "crypto" else body)


def _alpaca_snapshots(state: SnapshotState, *, crypto: bool) -> dict[str, dict[str, Any]]:
    bars = state.bars
    col = {name: bars.column(name).to_pylist() for name in bars.column_names if not name.endswith("_ts")}
    minute_t = _rfc3339(bars.column("min_ts"))
    day_t = _midnight(state.day, crypto)
    prev_t = _midnight(state.previous, crypto)
    trades = _event_rows(state.trades)
    quotes = _event_rows(state.quotes)
    out = {}
    for i, symbol in enumerate(col["symbol"]):
        entry: dict[str, Any] = {}
        trade = trades.get(symbol)
        if trade is not None:
            entry["latestTrade"] = {"t": trade["t"], "p": trade["price"], "s": _size(trade["size"], crypto),
                                    "i": trade["trade_id"]}
            if crypto:
                entry["latestTrade"]["tks"] = "B"
            else:
                entry["latestTrade"].update(x=trade["exchange"], c=(trade["conditions"] or "").split(","),
                                            z=trade["tape"])
        quote = quotes.get(symbol)
        if quote is not None:
            entry["latestQuote"] = {"t": quote["t"], "bp": quote["bid_price"], "bs": _size(quote["bid_size"], crypto),
                                    "ap": quote["ask_price"], "as": _size(quote["ask_size"], crypto)}
            if not crypto:
                entry["latestQuote"].update(bx=quote["bid_exchange"], ax=quote["ask_exchange"],
                                            c=[quote["conditions"]] if quote["conditions"] else [], z=quote["tape"])
        for key, prefix, stamp in (("minuteBar", "min", minute_t[i]), ("dailyBar", "day", day_t),
                                   ("prevDailyBar", "prev", prev_t)):
            if col[f"{prefix}_close"][i] is not None:
                volume = col[f"{prefix}_volume"][i]
                entry[key] = {"t": stamp, "o": col[f"{prefix}_open"][i], "h": col[f"{prefix}_high"][i],
                              "l": col[f"{prefix}_low"][i], "c": col[f"{prefix}_close"][i],
                              "v": _size(volume, crypto), "n": col[f"{prefix}_trade_count"][i],
                              "vw": col[f"{prefix}_vwap"][i]}
        out[symbol] = entry
    return out


#: The platform's action types as Alpaca's (a split is forward or reverse by its ratio).
_ACTION_TYPES = {"split": "forward_split", "dividend": "cash_dividend", "rename": "name_change",
                 "delisting": "worthless_removal"}
_OTHER_ACTION_TYPES = {"unit_split", "stock_dividend", "spin_off", "cash_merger", "stock_merger",
                       "stock_and_cash_merger", "redemption", "rights_distribution"}


def _action_type(r: dict[str, Any]) -> str:
    if r["action_type"] == "split" and r["split_from"] > r["split_to"]:
        return "reverse_split"
    return _ACTION_TYPES[r["action_type"]]


def cusip(symbol: str) -> str:
    """A stable, made-up 9-character CUSIP per symbol (the replay has no real ones)."""
    return uuid.uuid5(_ASSET_IDS, "cusip:" + symbol).hex[:9].upper()


def _action_dict(action_type: str, r: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(uuid.uuid5(_ASSET_IDS, r["action_id"])), **_action_fields(action_type, r)}


def _action_fields(action_type: str, r: dict[str, Any]) -> dict[str, Any]:
    ex = r["ex_date"].isoformat()
    symbol = r["symbol"]
    if action_type in ("forward_split", "reverse_split"):
        out: dict[str, Any] = {"symbol": symbol, "new_rate": r["split_to"], "old_rate": r["split_from"],
                               "process_date": ex, "ex_date": ex, "record_date": ex, "payable_date": ex}
        if action_type == "forward_split":
            return {**out, "cusip": cusip(symbol)}
        return {**out, "old_cusip": cusip(symbol), "new_cusip": cusip(symbol + ":1")}
    if action_type == "cash_dividend":
        return {"symbol": symbol, "cusip": cusip(symbol), "rate": r["cash_amount"],
                "special": r["dividend_type"] == "SC", "foreign": False, "process_date": ex, "ex_date": ex,
                "record_date": r["record_date"].isoformat() if r["record_date"] else None,
                "payable_date": r["pay_date"].isoformat() if r["pay_date"] else None}
    if action_type == "name_change":
        return {"old_symbol": symbol, "old_cusip": cusip(symbol), "new_symbol": r["new_symbol"],
                "new_cusip": cusip(r["new_symbol"]), "process_date": ex}
    return {"symbol": symbol, "cusip": cusip(symbol), "process_date": ex}


def _unb64_token(text: str | None) -> str | None:
    if not text:
        return None
    try:
        value = base64.b64decode(text).decode()
        int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError(f"invalid page_token: {text}") from None
    return value


def _rfc3339(ts: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """Nanosecond RFC-3339 strings (Z) of a timestamp column, None where null."""
    ints = pc.cast(ts, pa.int64())
    valid = pc.is_valid(ints).to_numpy(zero_copy_only=False)
    text = np.datetime_as_string(ints.fill_null(0).to_numpy(zero_copy_only=False).view("M8[ns]"), unit="ns")
    return [t + "Z" if ok else None for t, ok in zip(text.tolist(), valid.tolist(), strict=True)]


def _event_rows(table: pa.Table) -> dict[str, dict[str, Any]]:
    rows = table.drop_columns(["ts"]).to_pylist()
    for row, stamp in zip(rows, _rfc3339(table.column("ts")), strict=True):
        row["t"] = stamp
    return {row["symbol"]: row for row in rows}


def _midnight(day: date, crypto: bool) -> str:
    instant = datetime.combine(day, datetime.min.time(), tzinfo=UTC if crypto else calendar.NEW_YORK)
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _size(value: float, crypto: bool) -> float | int:
    """Alpaca sends stock sizes and volumes as integers when whole, crypto's as floats."""
    return value if crypto or not float(value).is_integer() else int(value)


# --------------------------------------------------------------------------- helpers


def _symbols(query: Mapping[str, str], kind: str) -> list[str]:
    """The request's `symbols`, sorted, each a valid stock symbol or crypto pair (else 400)."""
    symbols = sorted({s.strip() for s in (query.get("symbols") or "").split(",") if s.strip()})
    if not symbols:
        raise InvalidInputError("missing symbols")
    pattern = _CRYPTO_SYMBOL if kind == "crypto" else _STOCK_SYMBOL
    for s in symbols:
        if not pattern.match(s):
            raise InvalidInputError(f"invalid symbol: {s}")
    return symbols


def _timeframe(text: str | None) -> tuple[str, int]:
    match = _TIMEFRAME.match(text or "")
    if not match:
        raise InvalidInputError(f"invalid timeframe: {text}")
    amount, unit_name = int(match.group(1)), match.group(2)
    unit, most = _UNITS[unit_name]
    if not 1 <= amount <= most:
        raise InvalidInputError(f"invalid timeframe: {text}")
    return unit, amount


def _time(text: str, *, end: bool) -> datetime:
    """RFC-3339 (up to nanoseconds) or YYYY-MM-DD (the New York day: its start, or its end)."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        day = calendar.to_date(text) + timedelta(days=1 if end else 0)
        instant = datetime.combine(day, datetime.min.time(), tzinfo=calendar.NEW_YORK).astimezone(UTC)
        return instant - timedelta(microseconds=1) if end else instant
    cleaned = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        instant = datetime.fromisoformat(cleaned)
    except ValueError:
        raise InvalidInputError(f"invalid time: {text}") from None
    if instant.tzinfo is None:
        raise InvalidInputError(f"invalid time: {text} (no time zone)")
    return instant.astimezone(UTC)


def _make_token(symbol: str, ts_ns: int) -> str:
    return base64.b64encode(f"{symbol}|{ts_ns}".encode()).decode()


def _token(text: str | None) -> tuple[str | None, int | None]:
    if not text:
        return None, None
    try:
        symbol, _, ts = base64.b64decode(text).decode().rpartition("|")
        return symbol, int(ts)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError(f"invalid page_token: {text}") from None


def _rfc3339_ns(column: pa.ChunkedArray | pa.Array) -> list[str]:
    ts = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
    return [t + "Z" for t in np.datetime_as_string(ts.view("M8[ns]"), unit="ns").tolist()]


def _shares(values: list) -> list:
    """Sizes as Alpaca sends them: whole numbers as integers."""
    return [int(v) if v is not None and float(v).is_integer() else v for v in values]


def _codes(values: list) -> list:
    return [v.split(",") if v else ([] if v == "" else None) for v in values]


def _quote_dicts(table: pa.Table, *, crypto: bool) -> list[dict[str, Any]]:
    t = _rfc3339_ns(table.column("ts"))
    bp, ap = table.column("bid_price").to_pylist(), table.column("ask_price").to_pylist()
    bs, asz = _shares(table.column("bid_size").to_pylist()), _shares(table.column("ask_size").to_pylist())
    if crypto:
        return [{"t": a, "bp": b, "bs": c, "ap": d, "as": e} for a, b, c, d, e in zip(t, bp, bs, ap, asz, strict=True)]
    bx, ax = table.column("bid_exchange").to_pylist(), table.column("ask_exchange").to_pylist()
    c, z = _codes(table.column("conditions").to_pylist()), table.column("tape").to_pylist()
    return [{"t": a, "ax": f, "ap": d, "as": e, "bx": g, "bp": b, "bs": cc, "c": h, "z": i}
            for a, b, cc, d, e, f, g, h, i in zip(t, bp, bs, ap, asz, ax, bx, c, z, strict=True)]


def _trade_dicts(table: pa.Table, *, crypto: bool) -> list[dict[str, Any]]:
    t = _rfc3339_ns(table.column("ts"))
    p, s = table.column("price").to_pylist(), _shares(table.column("size").to_pylist())
    i = table.column("trade_id").to_numpy().view(np.uint64).tolist()  # ids are unsigned at the vendor
    if crypto:
        return [{"t": a, "p": b, "s": c, "i": d} for a, b, c, d in zip(t, p, s, i, strict=True)]
    x, c, z = table.column("exchange").to_pylist(), _codes(table.column("conditions").to_pylist()), \
        table.column("tape").to_pylist()
    return [{"t": a, "x": e, "p": b, "s": cc, "c": f, "i": d, "z": g}
            for a, b, cc, d, e, f, g in zip(t, p, s, i, x, c, z, strict=True)]


def _bar_dicts(table: pa.Table) -> list[dict[str, Any]]:
    ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()
    stamps = [t + "Z" for t in np.datetime_as_string(ts.view("M8[ns]"), unit="s").tolist()]
    volume = table.column("volume").to_pylist()
    columns = [table.column(name).to_pylist() for name in ("open", "high", "low", "close", "trade_count", "vwap")]
    return [{"t": t, "o": o, "h": h, "l": lo, "c": c, "v": int(v) if float(v).is_integer() else v, "n": n, "vw": vw}
            for t, o, h, lo, c, n, vw, v in zip(stamps, *columns, volume, strict=True)]
