"""Adjusted and point-in-time reads of raw bars, from the corporate actions (`schemas.CORPORATE_ACTIONS`).

Bars are stored raw, as traded, from every source. Adjustment happens here, at read time, as of a
date, by DuckDB: never written over the raw bars, and rollups of raw bars stay raw.

Which actions apply as of a day D: those announced by D (`announced_date <= D`) and in effect by D
(`ex_date <= D`), one row per `action_id`: an action is known from the earliest announcement any
source reports (Polygon dates declarations; Alpaca's rows carry the ex-date), its values from the
first such source by name. An action announced but not yet effective changes nothing a reader on
D sees: D's bars still trade in the old terms. So a read as of D gives the prices a backtest run
on D would have seen, and the last bar it returns (D's, at the latest) is as traded.

Factors, for a bar of session d (a step function of d per symbol, computed once per read):

- **split** = the product over splits with ex_date > d of split_from / split_to. Prices (open,
  high, low, close, vwap) are multiplied by it, volumes divided: a 2:1 split (from 1, to 2)
  halves earlier prices and doubles earlier volumes. trade_count is left alone.
- **all** = split times, for each dividend with ex_date > d, (1 - cash_amount / c), c being the
  symbol's raw close of the session before the ex-date (the last 1-minute bar of that session,
  as `bars_1d` rolls it up: read from bars_1d, else minute_bars; CRSP's and Yahoo's convention).
  Where the lake lacks that session (a gap) but holds earlier ones, the symbol's last close
  before it stands in; a dividend with no earlier bar in the lake adjusts nothing there anyway
  (`Installed.unpriced_dividends` lists those). Volumes get the split factor only. A split and
  a dividend on the same ex-date: the dividend's ratio uses the raw close before the split.

Renames chain symbols: the history of an old ticker is the history of the ticker it became. An
adjusted read labels every bar with `symbol` (the name as of the read's date, following every
rename in effect by then) and `traded_symbol` (the name it traded under), so asking for the new
ticker returns both symbols' bars. Actions recorded under an old ticker apply to its successor's
history. Delistings change no price: the symbol's history stays, its last bar is its last.

In SQL (`query`): for each bar dataset (minute_bars, bars_5m, bars_15m, bars_1h, bars_1d and the
vendors' `vendor_bars_*`) the views `<dataset>_adjusted_split` and `<dataset>_adjusted_all`, with
the raw dataset's columns plus `traded_symbol`; `<dataset>_labelled` is the raw bars with the same
labels (no adjustment). The views hold the sessions up to the read's date only. `adjustment_factors` shows the factors (one row per symbol and ex-date:
the factor of the bars before it), `symbol_lineage` the renames as traded-symbol ranges.

In Python: `bars_as_of(["AAPL"], "2024-01-02", "2024-06-28", as_of="2024-06-28", adjust="all")`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa

from market_platform import calendar, schemas
from market_platform.errors import InvalidInputError
from market_platform.storage.lake import Lake
from market_platform.storage.rollups import TIMEFRAMES

ACTIONS = "corporate_actions"
#: Adjustments a read can ask for: raw (renames still labelled), splits only, splits and dividends.
ADJUSTMENTS = ("none", "split", "all")
#: The bar datasets that get adjusted views: ours, then the vendors' own aggregates.
BAR_DATASETS = (*(dataset for dataset, _ in TIMEFRAMES.values()),
                "vendor_bars_5m", "vendor_bars_15m", "vendor_bars_1h", "vendor_bars_1d")
_PRICES = ("open", "high", "low", "close", "vwap")


def view_name(dataset: str, adjust: str) -> str:
    """The view of `dataset` with adjustment `adjust` (none: the labelled raw bars)."""
    check_adjust(adjust)
    return f"{dataset}_labelled" if adjust == "none" else f"{dataset}_adjusted_{adjust}"


def check_adjust(adjust: str) -> str:
    if adjust not in ADJUSTMENTS:
        raise InvalidInputError(f"adjust={adjust!r}: expected one of {', '.join(ADJUSTMENTS)}")
    return adjust


def today() -> date:
    """Today's date in New York: the default `as_of` of a read."""
    return datetime.now(calendar.NEW_YORK).date()


@dataclass
class Installed:
    """What `install` put in a connection."""

    as_of: date
    actions: int            # actions applied (known and in effect by as_of)
    renames: int
    factors: int            # rows of adjustment_factors
    unpriced_dividends: list[tuple[str, date]]  # (symbol, ex_date) with no close before the ex-date
    views: list[str]


def lineage(renames: Sequence[tuple[str, str, date]]) -> pa.Table:
    """(traded_symbol, first_day, end_day, symbol): a bar of `traded_symbol` on a session in
    [first_day, end_day) belongs to the ticker now called `symbol`, from renames given as
    (old, new, ex_date). Renames are few: a Python walk over them, never over bars."""
    ordered = sorted(renames, key=lambda r: (r[2], r[0]))
    rows = []
    for index, (old, new, ex) in enumerate(ordered):
        # Since when `old` traded under that name for this company: the latest rename into it, or
        # away from it (a ticker reused by another listing), before this one.
        first = max((e for o, n, e in ordered[:index] if old in (n, o) and e < ex), default=date(1900, 1, 1))
        final, since = new, ex
        while True:
            nxt = next(((n, e) for o, n, e in ordered if o == final and e > since), None)
            if nxt is None:
                break
            final, since = nxt
        rows.append((old, first, ex, final))
    return pa.table({"traded_symbol": pa.array([r[0] for r in rows], pa.string()),
                     "first_day": pa.array([r[1] for r in rows], pa.date32()),
                     "end_day": pa.array([r[2] for r in rows], pa.date32()),
                     "symbol": pa.array([r[3] for r in rows], pa.string())})


def _previous_sessions(days: list[date]) -> dict[date, date]:
    """The session before each of `days` (distinct ex-dates: a few hundred at most)."""
    if not days:
        return {}
    first = max(calendar.CALENDAR_START, min(days) - timedelta(days=20))  # no gap between sessions is longer
    sessions = np.array(calendar.sessions(first, max(days)), dtype="datetime64[D]")
    wanted = np.array(days, dtype="datetime64[D]")
    at = np.searchsorted(sessions, wanted, side="left") - 1
    return {day: sessions[i].astype(date) for day, i in zip(days, at) if i >= 0}


_KNOWN_SQL = """
CREATE OR REPLACE TEMP TABLE __adj_actions AS
SELECT * FROM __adj_source
WHERE announced_date <= $as_of AND ex_date <= $as_of
QUALIFY row_number() OVER (PARTITION BY action_id ORDER BY source) = 1
"""

# Actions under the name of today's successor ticker (`lineage`); `traded_symbol` as recorded.
_ACTS_SQL = """
CREATE OR REPLACE TEMP TABLE __adj_acts AS
SELECT coalesce(l.symbol, a.symbol) AS symbol, a.symbol AS traded_symbol, a.action_type, a.ex_date,
       a.split_from, a.split_to, a.cash_amount
FROM __adj_actions a
LEFT JOIN symbol_lineage l ON a.symbol = l.traded_symbol AND a.ex_date > l.first_day AND a.ex_date <= l.end_day
WHERE a.action_type IN ('split', 'dividend')
"""

_FACTORS_SQL = """
CREATE OR REPLACE TEMP TABLE __adj_factors AS
WITH divs AS (
    SELECT d.symbol, d.ex_date, 1 - sum(d.cash_amount) / any_value(c.close) AS ratio
    FROM __adj_acts d
    JOIN __adj_prev p ON p.ex_date = d.ex_date
    JOIN __adj_closes c ON c.symbol = d.traded_symbol AND c.day = p.prev_day
    WHERE d.action_type = 'dividend'
    GROUP BY d.symbol, d.ex_date
),
events AS (
    SELECT symbol, ex_date, split_from / split_to AS split, 1.0 AS dividend FROM __adj_acts WHERE action_type = 'split'
    UNION ALL
    SELECT symbol, ex_date, 1.0, ratio FROM divs
),
by_day AS (
    SELECT symbol, ex_date, product(split) AS split, product(dividend) AS dividend FROM events GROUP BY ALL
)
SELECT symbol, ex_date,
       product(split) OVER later AS split_factor,
       product(split * dividend) OVER later AS all_factor
FROM by_day
WINDOW later AS (PARTITION BY symbol ORDER BY ex_date DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
ORDER BY symbol, ex_date
"""


# Where a traded symbol's bars need relabelling or factors other than 1: ranges of sessions
# [first_day, end_day) with the name as of the read (`symbol`) and the factors, cut at every
# breakpoint of that traded symbol (its own ex-dates, its renames' bounds, and within those the
# ex-dates of the ticker it became), so each range is constant; an old name's bars carry its
# successor's factors, a ticker's own factors apply to the sessions its bars are its own (not those
# it traded as another company, before a rename away). Each range is listed once per calendar month
# it touches (`bucket`) and clipped to the sessions the lake holds [$first, $end): bars join by hash
# on (symbol, month) and then check the range, one or two candidates per bar. (A table per session
# was 1.6M rows for 5 years of 3,000 tickers, slower to build and to probe; an ASOF join per bar
# sorts them all, 3-4x slower still.)
_RANGES_SQL = """
CREATE OR REPLACE TEMP TABLE __adj_ranges AS
WITH breaks AS (
    SELECT symbol AS traded_symbol, DATE '1900-01-01' AS day FROM __adj_factors
    UNION SELECT symbol, ex_date FROM __adj_factors
    UNION SELECT traded_symbol, first_day FROM symbol_lineage
    UNION SELECT traded_symbol, end_day FROM symbol_lineage
    UNION SELECT l.traded_symbol, f.ex_date FROM symbol_lineage l
          JOIN __adj_factors f ON f.symbol = l.symbol AND f.ex_date > l.first_day AND f.ex_date < l.end_day
),
pieces AS (
    SELECT traded_symbol, day AS first_day,
           coalesce(lead(day) OVER (PARTITION BY traded_symbol ORDER BY day), DATE '9999-12-31') AS end_day
    FROM breaks
),
labelled AS (
    SELECT p.*, coalesce(l.symbol, p.traded_symbol) AS symbol
    FROM pieces p LEFT JOIN symbol_lineage l
      ON l.traded_symbol = p.traded_symbol AND p.first_day >= l.first_day AND p.first_day < l.end_day
),
valued AS (
    -- The factors of the bars before the first ex-date after the range's start.
    SELECT p.traded_symbol, greatest(p.first_day, $first) AS first_day, least(p.end_day, $end) AS end_day,
           p.symbol, coalesce(f.split_factor, 1.0) AS split_factor, coalesce(f.all_factor, 1.0) AS all_factor
    FROM labelled p ASOF LEFT JOIN __adj_factors f ON f.symbol = p.symbol AND p.first_day < f.ex_date
)
SELECT traded_symbol, unnest(generate_series(year(first_day) * 12 + month(first_day),
                                             year(end_day - 1) * 12 + month(end_day - 1))) AS bucket,
       first_day, end_day, symbol, split_factor, all_factor
FROM valued
WHERE first_day < end_day AND (symbol <> traded_symbol OR split_factor <> 1.0 OR all_factor <> 1.0)
"""


#: A session's raw close per dataset, aggregated over its rows `b` of one (symbol, session): bars_1d
#: holds one bar per source (the first source's), minute_bars the session's minutes (the last one's).
_SESSION_CLOSE = {"bars_1d": "min_by(b.close, b.source)", "minute_bars": "arg_max(b.close, b.ts)"}


def _closes_sql(con: duckdb.DuckDBPyConnection, views: set[str], lake: Lake, days: list[date]) -> str:
    """A relation (symbol, day, close): the raw whole-session close of each (symbol, day) of
    `__adj_needed` (dividends' symbols on the sessions before their ex-dates), from bars_1d where
    the lake has that session (a file of one bar per symbol), else from minute_bars. Both give the
    session's last 1-minute close. Only those sessions' files are opened (`Lake.scan`)."""
    daily_days = set(lake.dates("bars_1d")) if "bars_1d" in views else set()
    minute_days = set(lake.dates("minute_bars")) if "minute_bars" in views else set()
    # Each session from one dataset only, and only sessions the lake holds: no close twice.
    in_daily = [d for d in days if d.isoformat() in daily_days]
    elsewhere = [d for d in days if d.isoformat() in minute_days - daily_days]
    parts = []
    for dataset, wanted in (("bars_1d", in_daily), ("minute_bars", elsewhere)):
        scan = lake.scan(con, dataset, wanted) if wanted else None
        if scan is None:
            continue
        scan.create_view(f"__adj_scan_{dataset}")
        parts.append(f"SELECT b.symbol, b.date AS day, {_SESSION_CLOSE[dataset]} AS close FROM __adj_scan_{dataset} b "
                     "SEMI JOIN __adj_needed n ON b.symbol = n.symbol AND b.date = n.day GROUP BY b.symbol, b.date")
    if not parts:
        return "SELECT CAST(NULL AS VARCHAR) AS symbol, CAST(NULL AS DATE) AS day, CAST(NULL AS DOUBLE) AS close WHERE false"
    return " UNION ALL ".join(parts)


def _gap_closes(con: duckdb.DuckDBPyConnection, views: set[str], lake: Lake) -> None:
    """Add to `__adj_closes`, for a dividend whose previous session the lake lacks (a gap in its
    history) while it holds earlier ones, the symbol's last close before it: a dividend after
    stored bars is never dropped for want of the exact session (the ratio moves by the price's
    drift over the gap times the yield, a fraction of a basis point)."""
    source = next((name for name in ("bars_1d", "minute_bars") if name in views), None)
    dates = lake.dates(source) if source else []
    if not dates:
        return
    con.execute("CREATE OR REPLACE TEMP TABLE __adj_gaps AS SELECT n.symbol, n.day FROM __adj_needed n "
                "ANTI JOIN __adj_closes c ON c.symbol = n.symbol AND c.day = n.day WHERE n.day > $first",
                {"first": date.fromisoformat(dates[0])})
    if not con.sql("SELECT count(*) FROM __adj_gaps").fetchall()[0][0]:
        return
    con.execute(f"""
        INSERT INTO __adj_closes
        SELECT g.symbol, g.day, c.close FROM __adj_gaps g
        ASOF JOIN (SELECT b.symbol, b.date AS day, {_SESSION_CLOSE[source]} AS close FROM {source} b
                   WHERE b.symbol IN (SELECT symbol FROM __adj_gaps) GROUP BY b.symbol, b.date) c
          ON g.symbol = c.symbol AND g.day >= c.day""")


@dataclass
class _Computed:
    """What `install` computes from the lake: the tables its views read, and its counts."""

    lineage: pa.Table
    factors: pa.Table
    ranges: pa.Table
    actions: int
    renames: int
    unpriced: list[tuple[str, date]]


#: The latest `_Computed`, by the lake's state and the arguments (`_cache_key`): a session that
#: reads again (a notebook, a backtest, `query` run twice in a process) reads no close again.
_CACHE: OrderedDict[tuple, _Computed] = OrderedDict()
_CACHE_SIZE = 4


def _cache_key(lake: Lake, views: set[str], as_of: date, symbols: Sequence[str] | None,
               dividends: bool) -> tuple | None:
    """The arguments and the state of every dataset `install` reads (`Lake.state`: a local
    lake's files, their sizes and nanosecond mtimes), or None where the lake has no such state."""
    states = []
    for dataset in sorted(views & {ACTIONS, *BAR_DATASETS}):
        state = lake.state(dataset)
        if state is None:
            return None
        states.append((dataset, state))
    return (str(lake.url), as_of, None if symbols is None else tuple(sorted(set(symbols))), dividends, tuple(states))


def install(con: duckdb.DuckDBPyConnection, lake: Lake, *, as_of: date | str | None = None,
            symbols: Sequence[str] | None = None, dividends: bool = True) -> Installed:
    """Create in `con` (a `Lake.connect()` connection) the adjusted views of every bar dataset the
    lake holds, `adjustment_factors` and `symbol_lineage`, as of `as_of` (default: today): the
    views hold the sessions up to `as_of` only, adjusted by what was known and in effect then.
    `symbols` (names as of `as_of`): compute the factors of these tickers only (a read of a few
    reads the closes of their dividends only); the views then adjust no other ticker.
    `dividends=False`: splits and renames only (no close is read); the `_adjusted_all` views are
    then not created, and `all_factor` equals `split_factor`.

    The factors are computed once per state of the lake's files and arguments, in a process: a
    local lake's reads again with nothing written in between reuse them (`_CACHE`)."""
    as_of = today() if as_of is None else calendar.to_date(as_of)
    views = {name for (name,) in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    key = _cache_key(lake, views, as_of, symbols, dividends)
    computed = _CACHE.get(key) if key is not None else None
    if computed is None:
        computed = _compute(con, lake, views, as_of, symbols, dividends)
        if key is not None:
            _CACHE[key] = computed
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    else:  # cached: copy its tables into `con` (on a miss, `_compute` created them in `con` already)
        _CACHE.move_to_end(key)
        for name, table in (("symbol_lineage", computed.lineage), ("__adj_factors", computed.factors),
                            ("__adj_ranges", computed.ranges)):
            con.register(f"{name}_arrow", table)
            con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
            con.unregister(f"{name}_arrow")
    con.execute("CREATE OR REPLACE TEMP TABLE adjustment_factors AS SELECT * FROM __adj_factors")
    created = []
    for dataset in BAR_DATASETS:
        if dataset not in views:
            continue
        for adjust in ADJUSTMENTS if dividends else ("none", "split"):
            con.execute(f"CREATE OR REPLACE TEMP VIEW {view_name(dataset, adjust)} AS "
                        + adjusted_sql(dataset, adjust, as_of))
            created.append(view_name(dataset, adjust))
    return Installed(as_of=as_of, actions=computed.actions, renames=computed.renames,
                     factors=computed.factors.num_rows, unpriced_dividends=list(computed.unpriced), views=created)


def _compute(con: duckdb.DuckDBPyConnection, lake: Lake, views: set[str], as_of: date,
             symbols: Sequence[str] | None, dividends: bool) -> _Computed:
    """`install`'s tables, computed in `con` from the lake."""
    if ACTIONS in views:
        con.sql(f"SELECT {', '.join(schemas.CORPORATE_ACTIONS.names)} FROM {ACTIONS}").create_view("__adj_source")
    else:
        con.register("__adj_source", schemas.CORPORATE_ACTIONS.empty_table())
    con.execute(_KNOWN_SQL, {"as_of": as_of})
    renames = con.sql("SELECT symbol, new_symbol, ex_date FROM __adj_actions "
                      "WHERE action_type = 'rename' AND new_symbol IS NOT NULL").fetchall()
    con.register("__adj_lineage", lineage(renames))
    con.execute("CREATE OR REPLACE TEMP TABLE symbol_lineage AS SELECT * FROM __adj_lineage")
    con.execute(_ACTS_SQL)
    if symbols is not None:
        con.execute("DELETE FROM __adj_acts WHERE NOT list_contains($names, symbol)", {"names": sorted(set(symbols))})
    if not dividends:
        con.execute("DELETE FROM __adj_acts WHERE action_type = 'dividend'")
    ex_dates = [d for (d,) in con.sql("SELECT DISTINCT ex_date FROM __adj_acts WHERE action_type = 'dividend'").fetchall()]
    previous = _previous_sessions(ex_dates)
    con.register("__adj_prev_arrow", pa.table({"ex_date": pa.array(list(previous), pa.date32()),
                                               "prev_day": pa.array(list(previous.values()), pa.date32())}))
    con.execute("CREATE OR REPLACE TEMP TABLE __adj_prev AS SELECT * FROM __adj_prev_arrow")
    con.execute("CREATE OR REPLACE TEMP TABLE __adj_needed AS SELECT DISTINCT d.traded_symbol AS symbol, p.prev_day AS day "
                "FROM __adj_acts d JOIN __adj_prev p USING (ex_date) WHERE d.action_type = 'dividend'")
    # One close per (symbol, session) whatever overlaps the datasets have: a dividend joins one.
    con.execute("CREATE OR REPLACE TEMP TABLE __adj_closes AS SELECT symbol, day, min(close) AS close FROM ("
                + _closes_sql(con, views, lake, sorted(set(previous.values()))) + ") GROUP BY symbol, day")
    _gap_closes(con, views, lake)
    con.execute(_FACTORS_SQL)
    unpriced = con.sql("""
        SELECT DISTINCT d.traded_symbol, d.ex_date FROM __adj_acts d
        LEFT JOIN __adj_prev p ON p.ex_date = d.ex_date
        LEFT JOIN __adj_closes c ON c.symbol = d.traded_symbol AND c.day = p.prev_day
        WHERE d.action_type = 'dividend' AND c.close IS NULL ORDER BY 2, 1""").fetchall()
    firsts = [dates[0] for dates in (lake.dates(dataset) for dataset in BAR_DATASETS if dataset in views) if dates]
    first = min(firsts, default=as_of.isoformat())
    con.execute(_RANGES_SQL, {"first": date.fromisoformat(first), "end": as_of + timedelta(days=1)})
    return _Computed(lineage=con.table("symbol_lineage").to_arrow_table(),
                     factors=con.table("__adj_factors").to_arrow_table(),
                     ranges=con.table("__adj_ranges").to_arrow_table(),
                     actions=con.sql("SELECT count(*) FROM __adj_actions").fetchall()[0][0],
                     renames=len(renames), unpriced=[(s, d) for s, d in unpriced])


def adjusted_sql(relation: str, adjust: str, as_of: date | None = None) -> str:
    """SELECT of `relation` (bars with a `date` column: the session) adjusted by `adjust`, with
    `symbol` the name as of the read and `traded_symbol` the name traded, and only the sessions up
    to `as_of` (None: all). Needs `install`'s tables."""
    check_adjust(adjust)
    # A date rendered by isoformat: a literal, so DuckDB prunes the later partitions.
    until = f" WHERE b.date <= DATE '{as_of.isoformat()}'" if as_of is not None else ""
    replace = ""
    if adjust != "none":
        factor = f"coalesce(f.{adjust}_factor, 1.0)"
        prices = ", ".join(f"b.{p} * {factor} AS {p}" for p in _PRICES)
        replace = f" REPLACE ({prices}, b.volume / coalesce(f.split_factor, 1.0) AS volume)"
    return (f"SELECT coalesce(f.symbol, b.symbol) AS symbol, b.symbol AS traded_symbol, b.* EXCLUDE (symbol){replace} "
            f"FROM {relation} b LEFT JOIN __adj_ranges f ON b.symbol = f.traded_symbol "
            "AND year(b.date) * 12 + month(b.date) = f.bucket AND b.date >= f.first_day AND b.date < f.end_day"
            f"{until}")


def connect(lake: Lake, *, as_of: date | str | None = None, symbols: Sequence[str] | None = None,
            dividends: bool = True) -> tuple[duckdb.DuckDBPyConnection, Installed]:
    """`lake.connect()` with `install`'s views; the caller closes the connection."""
    con = lake.connect()
    try:
        return con, install(con, lake, as_of=as_of, symbols=symbols, dividends=dividends)
    except BaseException:
        con.close()
        raise


_DAY_ACTIONS_SQL = """
WITH known AS (
    SELECT * FROM corporate_actions WHERE ex_date = $day AND announced_date <= $day
    QUALIFY row_number() OVER (PARTITION BY action_id ORDER BY source) = 1
)
SELECT symbol,
       any_value(new_symbol) FILTER (WHERE action_type = 'rename') AS new_symbol,
       coalesce(product(split_from / split_to) FILTER (WHERE action_type = 'split'), 1.0) AS split,
       coalesce(sum(cash_amount) FILTER (WHERE action_type = 'dividend'), 0.0) AS cash
FROM known
GROUP BY symbol
ORDER BY symbol
"""

DAY_ACTIONS = pa.schema([("symbol", pa.string()), ("new_symbol", pa.string()), ("split", pa.float64()),
                         ("cash", pa.float64())])


def day_actions(lake: Lake, day: date | str) -> pa.Table:
    """The actions taking effect on session `day` (ex_date = day) known by then, one row per symbol
    as traded the session before: (symbol, new_symbol of a rename, split = product of split_from /
    split_to, cash = dividends per share). What a return from the previous session to `day` crosses."""
    day = calendar.to_date(day)
    if not lake.partitions(ACTIONS):
        return DAY_ACTIONS.empty_table()
    return lake.query(_DAY_ACTIONS_SQL, {"day": day}).cast(DAY_ACTIONS)


def bars_as_of(
    symbols: str | Sequence[str],
    start: date | str,
    end: date | str,
    as_of: date | str | None = None,
    *,
    adjust: str = "all",
    timeframe: str = "1d",
    lake: Lake | None = None,
) -> pa.Table:
    """Bars of `symbols` for the sessions in [start, end] at `timeframe`, adjusted as of `as_of`
    (default: `end`): only the actions announced and in effect by then, what a backtest run on
    `as_of` would have seen. `symbols` are names as of `as_of`; a renamed ticker's earlier bars come
    with it, `traded_symbol` naming what they traded as. Columns: schemas.BARS with
    `traded_symbol` after `symbol`, and `date` (the session). Sorted by symbol and ts.

    Raises InvalidInputError for an unknown timeframe or adjustment, a backwards range, or an
    `end` after `as_of` (a read as of a day sees no later bar).
    """
    from market_platform.storage.rollups import dataset_for

    dataset = dataset_for(timeframe)
    check_adjust(adjust)
    start, end = calendar.to_date(start), calendar.to_date(end)
    as_of = end if as_of is None else calendar.to_date(as_of)
    names = [symbols] if isinstance(symbols, str) else list(symbols)
    if not names or not all(isinstance(s, str) and s for s in names):
        raise InvalidInputError(f"symbols {symbols!r}: expected a ticker or a list of tickers")
    if start > end:
        raise InvalidInputError(f"start {start} is after end {end}: expected start <= end")
    if end > as_of:
        raise InvalidInputError(f"end {end} is after as_of {as_of}: a read as of a day sees no later bar "
                                "(expected end <= as_of)")
    lake = lake or Lake.from_settings()
    names = sorted(set(names))
    if not lake.partitions(dataset):
        return _empty_result()
    con, _ = connect(lake, as_of=as_of, symbols=names, dividends=adjust == "all")
    try:
        traded = sorted({*names, *(s for (s,) in con.sql(
            "SELECT traded_symbol FROM symbol_lineage WHERE list_contains($names, symbol)", params={"names": names}
        ).fetchall())})
        # traded_symbol is the raw column: a filter on it with constants reaches the Parquet scan.
        listed = ", ".join(f"$t{i}" for i in range(len(traded)))
        return con.sql(
            f"SELECT * FROM {view_name(dataset, adjust)} WHERE traded_symbol IN ({listed}) "
            "AND list_contains($names, symbol) AND date BETWEEN $start AND $end ORDER BY symbol, ts, source",
            params={**{f"t{i}": s for i, s in enumerate(traded)}, "names": names, "start": start, "end": end},
        ).to_arrow_table()
    finally:
        con.close()


def _empty_result() -> pa.Table:
    schema = schemas.BARS.insert(1, pa.field("traded_symbol", pa.string())).append(pa.field("date", pa.date32()))
    return schema.empty_table()


__all__ = ["ADJUSTMENTS", "BAR_DATASETS", "Installed", "adjusted_sql", "bars_as_of", "check_adjust", "connect",
           "day_actions", "install", "lineage", "view_name"]
