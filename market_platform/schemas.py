"""Arrow schemas of everything the platform stores: the only place column names and types live.

Timestamps are UTC with nanosecond precision in Arrow and Parquet (PostgreSQL keeps
microseconds). Prices are float64; sizes and volumes are float64 too, because vendors now send
fractional shares. Every row carries a `source` naming where it came from (see `Source`).
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform.errors import InvalidInputError

TS = pa.timestamp("ns", tz="UTC")


class Source(StrEnum):
    """Values of the `source` column."""

    SIM = "sim"                              # the in-process simulated market
    POLYGON_REST = "polygon_rest"            # Polygon/Massive REST aggregates
    POLYGON_FLATFILES = "polygon_flatfiles"  # Polygon/Massive Flat Files on S3
    ALPACA_REST = "alpaca_rest"              # Alpaca historical REST
    ALPACA_STREAM = "alpaca_stream"          # Alpaca websocket, live
    ALPACA_REPAIR = "alpaca_repair"          # Alpaca REST, fetched to fill a stream gap
    DERIVED = "derived"                      # computed by the platform (rollups)


#: Parquet key-value metadata every bars file carries: its prices and volumes are raw (as traded,
#: never split- or dividend-adjusted; adjusted views are computed at read time from
#: `corporate_actions`). A file of REST bars without it was written before bars were stored raw
#: and may hold split-adjusted prices (`market_platform.history.raw`).
RAW_BARS_KEY, RAW_BARS_VALUE = b"market_platform.prices", b"raw"

BARS = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),  # start of the bar's interval
        pa.field("open", pa.float64(), nullable=False),  # raw prices, as traded (see RAW_BARS_KEY)
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),  # raw shares, not split-adjusted
        pa.field("vwap", pa.float64()),
        pa.field("trade_count", pa.int64()),
        pa.field("source", pa.string(), nullable=False),
    ],
    metadata={RAW_BARS_KEY: RAW_BARS_VALUE},
)

QUOTES = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("bid_price", pa.float64(), nullable=False),
        pa.field("bid_size", pa.float64(), nullable=False),
        pa.field("ask_price", pa.float64(), nullable=False),
        pa.field("ask_size", pa.float64(), nullable=False),
        pa.field("bid_exchange", pa.string()),
        pa.field("ask_exchange", pa.string()),
        pa.field("conditions", pa.string()),  # vendor condition codes, comma-joined
        pa.field("tape", pa.string()),
        # The vendor's sequence number where it sends one, else `quote_seq` (a content hash):
        # with symbol and ts it identifies a quote, so redeliveries deduplicate.
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

TRADES = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("size", pa.float64(), nullable=False),
        pa.field("exchange", pa.string(), nullable=False),  # "" when the vendor sends none (crypto)
        # Vendor trade id; unsigned 64-bit ids above 2**63-1 keep their bits as a negative int64.
        pa.field("trade_id", pa.int64(), nullable=False),
        pa.field("conditions", pa.string()),
        pa.field("tape", pa.string()),
        pa.field("source", pa.string(), nullable=False),
    ]
)

UNIVERSE = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("category", pa.string(), nullable=False),  # one of CATEGORIES
        pa.field("type", pa.string()),  # vendor type code: CS, ETF, ADRC, ...
        pa.field("exchange", pa.string()),  # primary exchange MIC (XNYS, XNAS, ...)
        pa.field("currency", pa.string()),
        pa.field("market_cap", pa.float64()),
        pa.field("active", pa.bool_(), nullable=False),
        pa.field("list_date", pa.date32()),
        pa.field("delist_date", pa.date32()),
        pa.field("snapshot_date", pa.date32(), nullable=False),  # the day this row describes
        pa.field("source", pa.string(), nullable=False),
    ]
)

#: Ticker categories, as partitions of `ticker_universe`.
CATEGORIES = ("us_equities", "etf", "crypto", "fx", "options", "indices", "otc")
#: The categories whose tickers have minute bars on trading days (the "stocks" universe; what a
#: stock stream or snapshot poll covers).
STOCK_CATEGORIES = ("us_equities", "etf")

#: A universe ranked by a measure: UNIVERSE rows plus their rank (1 = first) and the average
#: daily dollar volume (close x volume) they were ranked by, e.g. the `top3000` universe.
RANKED_UNIVERSE = UNIVERSE.append(pa.field("rank", pa.int32(), nullable=False)).append(
    pa.field("dollar_volume", pa.float64(), nullable=False)
)

#: What a resumable backfill has fetched of a partition so far: one row per ticker done (with the
#: bars it had, possibly none), staged beside the bars themselves.
PROGRESS = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
    ]
)

#: One row per symbol and minute polled from a vendor's whole-market snapshot (the tick store's
#: `market_snapshots`): the last trade and quote, the day so far, the last completed minute bar (`min_*`,
#: starting at `min_ts`), the previous session's close and the change from it, the vendor's
#: `updated` time, and `inserted_at` (set by the database). Missing values (no trade yet today,
#: a plan without quotes) are nulls, never zeros.
SNAPSHOTS = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("minute", TS, nullable=False),  # the minute polled
        pa.field("source", pa.string(), nullable=False),
        pa.field("last_price", pa.float64()),
        pa.field("last_size", pa.float64()),
        pa.field("last_trade_ts", TS),
        pa.field("bid_price", pa.float64()),
        pa.field("bid_size", pa.float64()),
        pa.field("ask_price", pa.float64()),
        pa.field("ask_size", pa.float64()),
        pa.field("quote_ts", TS),
        pa.field("day_open", pa.float64()),
        pa.field("day_high", pa.float64()),
        pa.field("day_low", pa.float64()),
        pa.field("day_close", pa.float64()),
        pa.field("day_volume", pa.float64()),
        pa.field("day_vwap", pa.float64()),
        pa.field("min_ts", TS),
        pa.field("min_open", pa.float64()),
        pa.field("min_high", pa.float64()),
        pa.field("min_low", pa.float64()),
        pa.field("min_close", pa.float64()),
        pa.field("min_volume", pa.float64()),
        pa.field("min_vwap", pa.float64()),
        pa.field("prev_close", pa.float64()),
        pa.field("change", pa.float64()),
        pa.field("change_pct", pa.float64()),  # percent: 1.5 means +1.5%
        pa.field("updated", TS),
        pa.field("inserted_at", TS),
    ]
)

#: Silent stalls of the live stream found by feed health (one per symbol and stretch of minutes
#: it traded by the snapshots with no live bar while the stream was connected), as alert rules
#: see them: `ts` is the first silent minute, `silent_minutes` the traded minutes with no bar.
STREAM_STALLS = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("end_ts", TS, nullable=False),
        pa.field("stream", pa.string(), nullable=False),
        pa.field("gap_id", pa.int64(), nullable=False),
        pa.field("silent_minutes", pa.int64(), nullable=False),
    ]
)

#: Kinds of corporate action (`action_type`).
ACTION_TYPES = ("split", "dividend", "rename", "delisting")
#: Dividend kinds (`dividend_type`), Polygon's codes: CD a regular cash dividend, SC a special one.
DIVIDEND_TYPES = ("CD", "SC")
#: Values of a corporate action's `source`: who reported it.
ACTION_SOURCES = ("sim", "polygon", "alpaca")

#: Corporate actions, one row per action (lake dataset and tick store table `corporate_actions`).
#: Bars everywhere are stored raw (as traded); these rows are what read-time adjustment uses.
#:
#: - `action_id` is deterministic and the same for one event whichever source reports it:
#:   `{action_type}:{symbol}:{ex_date}` (dividends add `:{dividend_type}`), so sources compare
#:   like with like; (action_id, source) is unique.
#: - `symbol` is the ticker as traded before `ex_date`.
#: - `ex_date` is the first session the action is in effect: a split's or dividend's ex-date, the
#:   first session under `new_symbol` for a rename, the first session it no longer trades for a
#:   delisting. `announced_date` is when it was declared: a point-in-time read as of a day applies
#:   only the actions with announced_date <= that day.
#: - Splits use Polygon's naming: a 2-for-1 forward split is split_from 1, split_to 2 (raw prices
#:   halve, volumes double from ex_date); a 1-for-10 reverse split is split_from 10, split_to 1.
#: - `cash_amount` is per share in the raw terms of the day before ex_date.
CORPORATE_ACTIONS = pa.schema(
    [
        pa.field("action_id", pa.string(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("action_type", pa.string(), nullable=False),  # one of ACTION_TYPES
        pa.field("ex_date", pa.date32(), nullable=False),
        pa.field("announced_date", pa.date32(), nullable=False),
        pa.field("split_from", pa.float64()),
        pa.field("split_to", pa.float64()),
        pa.field("cash_amount", pa.float64()),
        pa.field("dividend_type", pa.string()),  # one of DIVIDEND_TYPES for dividends, else null
        pa.field("record_date", pa.date32()),
        pa.field("pay_date", pa.date32()),
        pa.field("new_symbol", pa.string()),  # renames only
        pa.field("source", pa.string(), nullable=False),  # one of ACTION_SOURCES
    ]
)

#: The order corporate actions are kept in, in every table of them.
ACTIONS_ORDER = [("symbol", "ascending"), ("ex_date", "ascending"), ("action_type", "ascending"),
                 ("action_id", "ascending")]


def action_id(action_type: str, symbol: str, ex_date, dividend_type: str | None = None) -> str:
    """The `action_id` of a corporate action (see CORPORATE_ACTIONS)."""
    day = ex_date.isoformat() if hasattr(ex_date, "isoformat") else str(ex_date)
    base = f"{action_type}:{symbol}:{day}"
    return f"{base}:{dividend_type}" if action_type == "dividend" and dividend_type else base


def actions_table(rows: list[dict], source: str) -> pa.Table:
    """CORPORATE_ACTIONS from dicts holding some of its columns (the rest null), `action_id` and
    `source` filled in, sorted by (symbol, ex_date, action_type, action_id), one row per action_id."""
    full = []
    seen = set()
    for row in rows:
        out = {name: row.get(name) for name in CORPORATE_ACTIONS.names}
        out["action_id"] = action_id(out["action_type"], out["symbol"], out["ex_date"], out["dividend_type"])
        out["source"] = source
        if out["action_id"] not in seen:
            seen.add(out["action_id"])
            full.append(out)
    table = conform(pa.Table.from_pylist(full, schema=CORPORATE_ACTIONS.with_metadata(None))
                    if full else CORPORATE_ACTIONS.empty_table(), CORPORATE_ACTIONS)
    return table.sort_by(ACTIONS_ORDER)


#: Columns that identify a row; writers deduplicate on them.
KEYS: dict[str, tuple[str, ...]] = {
    "bars": ("symbol", "ts", "source"),
    "quotes": ("symbol", "ts", "seq"),
    "trades": ("symbol", "ts", "exchange", "trade_id"),
    "universe": ("snapshot_date", "category", "symbol"),
    "snapshots": ("symbol", "minute", "source"),
    "corporate_actions": ("action_id", "source"),
}

SCHEMAS: dict[str, pa.Schema] = {"bars": BARS, "quotes": QUOTES, "trades": TRADES, "universe": UNIVERSE,
                                  "snapshots": SNAPSHOTS, "corporate_actions": CORPORATE_ACTIONS}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in order, cast to its types.

    Raises InvalidInputError naming the missing columns or the column that cannot be cast.
    """
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise InvalidInputError(
            f"table lacks columns {missing}: expected {schema.names}, got {table.column_names}"
        )
    columns = []
    for field in schema:
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InvalidInputError(
                    f"column {field.name!r} of type {column.type} cannot become {field.type}: {exc}"
                ) from None
        if not field.nullable and column.null_count:
            raise InvalidInputError(f"column {field.name!r} has {column.null_count} nulls: expected none")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised: a fast, well-spread 64-bit hash step."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def quote_seq(ts: pa.Array | pa.ChunkedArray, *prices_and_sizes: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A content hash of quotes (timestamp in ns, bid/ask prices and sizes) as int64.

    Vendors such as Alpaca send no quote sequence number; this stands in for it, so a redelivered
    quote hashes to the same value and deduplicates, while two different quotes in the same
    nanosecond stay distinct. Vectorised: no Python object per row.
    """
    with np.errstate(over="ignore"):
        h = _mix(_to_numpy(pc.cast(ts, pa.int64())).view(np.uint64).copy())
        for column in prices_and_sizes:
            bits = _to_numpy(pc.cast(column, pa.float64())).view(np.uint64)
            h = _mix(h ^ bits)
    return pa.array(h.view(np.int64))


def _to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.to_numpy(zero_copy_only=False)


# -- Derived datasets (market_platform.analytics): metrics, features and forecasts in the lake ----

#: One row per symbol and session. `ts` is the session's date at midnight New York (as in
#: bars_1d). Prices and returns are of the regular session; volumes span the whole session.
DAILY_METRICS = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("open", pa.float64()),  # first regular-session bar's open
        pa.field("high", pa.float64()),
        pa.field("low", pa.float64()),
        pa.field("close", pa.float64()),  # last regular-session bar's close
        pa.field("prev_close", pa.float64()),  # the previous session's regular close
        pa.field("open_close_return", pa.float64()),  # close / open - 1
        pa.field("log_return", pa.float64()),  # ln(close / open)
        pa.field("pct_change", pa.float64()),  # close / prev_close - 1
        pa.field("gap", pa.float64()),  # open / prev_close - 1
        pa.field("price_range", pa.float64()),  # high - low
        pa.field("range_pct", pa.float64()),  # (high - low) / open
        pa.field("vwap", pa.float64()),  # regular session
        pa.field("volume", pa.float64(), nullable=False),  # whole session
        pa.field("dollar_volume", pa.float64(), nullable=False),  # whole session, sum of vwap * volume
        pa.field("trade_count", pa.int64()),
        pa.field("bars", pa.int64(), nullable=False),  # 1-minute bars in the session
        pa.field("realized_vol", pa.float64()),  # sqrt(sum of squared 1-minute log returns), regular
        pa.field("premarket_volume_share", pa.float64()),
        pa.field("afterhours_volume_share", pa.float64()),
        pa.field("half_day", pa.bool_(), nullable=False),
    ]
)

#: One row per symbol and 5-minute window (clock-aligned, `ts` its start) with at least one bar.
INTRADAY_METRICS = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("phase", pa.string(), nullable=False),  # premarket, regular, afterhours
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("pct_change", pa.float64(), nullable=False),  # close / previous window's close - 1
        pa.field("vwap", pa.float64()),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("trade_count", pa.int64()),
        pa.field("observations", pa.int64(), nullable=False),  # 1-minute bars in the window
        pa.field("volatility", pa.float64(), nullable=False),  # sqrt(sum of squared 1-minute log returns)
        pa.field("probability_of_profit", pa.float64(), nullable=False),
    ]
)

#: Features of each (symbol, 5-minute window), known at the window's end, and the label.
RETURN_FEATURES = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("phase", pa.string(), nullable=False),
        pa.field("ret_lag0", pa.float64(), nullable=False),  # this window's log return
        pa.field("ret_lag1", pa.float64()),
        pa.field("ret_lag2", pa.float64()),
        pa.field("rolling_vol", pa.float64()),  # std of the last 12 windows' log returns
        pa.field("volume_z", pa.float64()),  # log volume vs the 12 windows before
        pa.field("vwap_distance", pa.float64()),  # close / session VWAP so far - 1
        pa.field("minutes_from_open", pa.float64(), nullable=False),  # window start - regular open
        pa.field("next_return", pa.float64()),  # label: the symbol's next window's log return
    ]
)

#: Walk-forward predictions of each window's next return, beside what happened.
RETURN_FORECAST = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("predicted_return", pa.float64(), nullable=False),
        pa.field("next_return", pa.float64()),
    ]
)
