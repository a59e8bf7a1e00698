"""Resumable, idempotent backfills of a session's bars into the lake.

    result = backfill_session(vendors, lake, date(2024, 3, 7), ["AAPL", "MSFT"])
    result.source, result.rows, result.fetched, result.resumed

One call fills one partition (a session) of `minute_bars` (timeframe 1m) or of `vendor_bars_<tf>`
(the vendor's own 5m/15m/1h/1d bars, kept beside the platform's rollups, never over them). The
source comes from `Vendors.choose` (Flat Files for old sessions, REST for recent ones) and lands in
every row's `source` column.

Resumable at ticker granularity. REST results are staged in the lake's staging area as tickers
complete, a piece per `stage_every` tickers (or per `stage_seconds`), each written beside a progress
piece naming the tickers it holds, those without bars that day included. A run that dies, even by
SIGKILL, leaves its pieces; the next run for the partition and source fetches only the tickers no
piece holds. A bars piece without its progress piece (a kill between the two writes) is ignored.
A session's flat file is one object and is read whole.

Commit, idempotent: the partition becomes its previous rows minus every ticker fetched, plus what
was fetched. A fetched ticker's bars replace its earlier ones wholesale (late corrections win, bars
the vendor withdrew go); other tickers stay, so a run for a few tickers merges into the session.
Rows repeating a (symbol, ts) keep the last. A fetched bar without VWAP (the Flat Files carry none)
that equals the stored bar in every other value confirms it: the bar takes the new source and keeps
its VWAP, so a ticker's session always has a single source. The staged pieces go last; committing
twice writes the same file.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.progress import task as progress_task
from market_platform.errors import InvalidInputError
from market_platform.history.vendors import Vendors
from market_platform.schemas import BARS, PROGRESS, Source
from market_platform.sources.vendor import symbol_list
from market_platform.storage.lake import Lake

#: Where each timeframe's bars go: ours (1m) and the vendor's own aggregates.
DATASETS = {"1m": "minute_bars", "5m": "vendor_bars_5m", "15m": "vendor_bars_15m", "1h": "vendor_bars_1h",
            "1d": "vendor_bars_1d"}
TIMEFRAMES = tuple(DATASETS)
#: Staging only: which tickers each staged piece of a partition holds.
PROGRESS_DATASET = "backfill_progress"

#: Values compared to decide that a fetched bar confirms the stored one.
_VALUES = ("open", "high", "low", "close", "volume", "trade_count")

Log = Callable[[str], None]


def dataset_for(timeframe: str) -> str:
    try:
        return DATASETS[timeframe]
    except KeyError:
        raise InvalidInputError(f"unknown timeframe {timeframe!r}: expected one of {', '.join(TIMEFRAMES)}") \
            from None


@dataclass
class SessionResult:
    """What `backfill_session` did to one partition."""

    day: date
    dataset: str
    source: str
    symbols: int            # tickers asked for
    fetched: int            # tickers fetched by this call
    resumed: int            # tickers an interrupted run had staged already
    rows: int               # rows of the partition after the commit
    confirmed: int = 0      # stored bars a VWAP-less source confirmed (their VWAP kept)
    etag: str | None = None  # the flat file's ETag, when read from Flat Files
    table: pa.Table = field(default_factory=BARS.empty_table, repr=False)  # the partition as written

    def sources(self) -> dict[str, int]:
        """Rows per value of the `source` column."""
        if not self.table.num_rows:
            return {}
        return {c["values"]: c["counts"] for c in pc.value_counts(self.table.column("source")).to_pylist()}


def backfill_session(
    vendors: Vendors,
    lake: Lake,
    day: date,
    symbols: Sequence[str],
    *,
    timeframe: str = "1m",
    source: str = "auto",
    stage_every: int = 100,
    stage_seconds: float = 30.0,
    log: Log | None = None,
) -> SessionResult:
    """Fetch `symbols`' bars of session `day` at `timeframe` and merge them into the lake (see the
    module docstring). `source`: see `Vendors.choose`."""
    dataset = dataset_for(timeframe)
    calendar.session(day)  # NotASessionError on weekends and holidays
    if stage_every < 1:
        raise InvalidInputError(f"stage_every {stage_every!r}: expected a positive number of tickers")
    names = symbol_list(symbols) if symbols else []
    chosen = vendors.choose(day, source, timeframe=timeframe)
    stager = _Stager(lake, dataset, day, chosen, stage_every, stage_seconds)
    resumed = [s for s in names if s in stager.done]
    todo = [s for s in names if s not in stager.done]
    if log and resumed:
        log(f"{day}: {len(resumed)} of {len(names)} tickers already staged by an interrupted run; "
            f"fetching the other {len(todo)}")
    etag = None
    extra = None
    with progress_task(f"{dataset} {day.isoformat()}: {len(todo)} tickers from {chosen}", total=len(todo)) as advance:
        stager.on_added = advance
        if chosen == Source.POLYGON_FLATFILES.value:
            if todo:
                dataset_name = "day_aggs_v1" if timeframe == "1d" else "minute_aggs_v1"
                file = vendors.flatfiles.read(day, todo, dataset=dataset_name)
                etag, extra = file.etag, file.table
                stager.done.update(todo)
                advance(len(todo))
        elif todo:
            try:
                _fetch_rest(vendors, chosen, day, todo, timeframe, stager)
            except BaseException:
                # Whatever completed is kept for the next run; a failing stage must not hide the cause.
                try:
                    stager.flush()
                except Exception:
                    pass
                raise
            stager.flush()
    table, confirmed = _commit(lake, dataset, day, stager, extra)
    return SessionResult(day=day, dataset=dataset, source=chosen, symbols=len(names), fetched=len(todo),
                         resumed=len(resumed), rows=table.num_rows, confirmed=confirmed, etag=etag, table=table)


def _fetch_rest(vendors: Vendors, source: str, day: date, symbols: list[str], timeframe: str,
                stager: _Stager) -> None:
    adapter = vendors.rest(source)
    if source == Source.POLYGON_REST.value:
        adapter.aggregates(day, symbols, timeframe=timeframe, on_symbol_done=stager.add)
        return
    # Alpaca takes many symbols per request: a request's worth is the unit of progress.
    step = min(adapter.symbols_per_request, stager.stage_every)
    for i in range(0, len(symbols), step):
        chunk = symbols[i:i + step]
        stager.add_many(chunk, adapter.aggregates(day, chunk, timeframe=timeframe, check_unknown=False))


class _Stager:
    """The staged pieces of one partition and source: what is done, and new pieces as tickers complete."""

    def __init__(self, lake: Lake, dataset: str, day: date, source: str, stage_every: int,
                 stage_seconds: float) -> None:
        self.lake, self.dataset, self.day, self.source = lake, dataset, day, source
        self.stage_every, self.stage_seconds = stage_every, stage_seconds
        self.progress_spec = {"dataset": dataset, "date": day.isoformat()}
        bars = set(lake.staged(dataset, day))
        progress = set(lake.staged(PROGRESS_DATASET, self.progress_spec))
        prefix = f"{source}-"
        #: Pieces of this source with both halves written: the only ones trusted.
        self.pieces = sorted(n for n in bars & progress if n.startswith(prefix))
        self.done: set[str] = set()
        for name in self.pieces:
            self.done.update(lake.read_staged(PROGRESS_DATASET, self.progress_spec, name).column("symbol").to_pylist())
        numbers = [int(n[len(prefix):].split("-")[0]) for n in bars | progress
                   if n.startswith(prefix) and n[len(prefix):].split("-")[0].isdigit()]
        self._next = max(numbers, default=0) + 1
        # A run's own suffix: two runs staging the same partition at once never overwrite each other.
        self._token = uuid.uuid4().hex[:8]
        self._pending: list[tuple[str, pa.Table]] = []
        self._since = time.monotonic()
        #: Told how many tickers each add completed (a progress bar's advance).
        self.on_added: Callable[[int], None] = lambda n: None

    def add(self, symbol: str, table: pa.Table) -> None:
        self._pending.append((symbol, table))
        self.on_added(1)
        if len(self._pending) >= self.stage_every or time.monotonic() - self._since >= self.stage_seconds:
            self.flush()

    def add_many(self, symbols: Sequence[str], table: pa.Table) -> None:
        column = table.column("symbol")
        for symbol in symbols:
            self._pending.append((symbol, table.filter(pc.equal(column, symbol))))
        self.on_added(len(symbols))
        if len(self._pending) >= self.stage_every or time.monotonic() - self._since >= self.stage_seconds:
            self.flush()

    def flush(self) -> None:
        """Stage the pending tickers: the bars piece first, then the progress piece that vouches for it."""
        if not self._pending:
            return
        name = f"{self.source}-{self._next:06d}-{self._token}"
        tables = [t for _, t in self._pending if t.num_rows]
        bars = pa.concat_tables(tables) if tables else BARS.empty_table()
        progress = pa.table({"symbol": [s for s, _ in self._pending],
                             "rows": [t.num_rows for _, t in self._pending]}, schema=PROGRESS)
        self.lake.stage(self.dataset, self.day, name, bars)
        self.lake.stage(PROGRESS_DATASET, self.progress_spec, name, progress)
        self.pieces.append(name)
        self.done.update(s for s, _ in self._pending)
        self._next += 1
        self._pending = []
        self._since = time.monotonic()

    def staged_bars(self) -> list[pa.Table]:
        return [self.lake.read_staged(self.dataset, self.day, name) for name in self.pieces]

    def clear(self) -> None:
        self.lake.clear_staged(self.dataset, self.day)
        self.lake.clear_staged(PROGRESS_DATASET, self.progress_spec)


def _commit(lake: Lake, dataset: str, day: date, stager: _Stager, extra: pa.Table | None) -> tuple[pa.Table, int]:
    fetched = [t.select(BARS.names).cast(BARS) for t in stager.staged_bars()]
    if extra is not None:
        fetched.append(extra.select(BARS.names).cast(BARS))
    new = pa.concat_tables(fetched) if fetched else BARS.empty_table()
    old = lake.read_partition(dataset, day) if lake.has_partition(dataset, day) else BARS.empty_table()
    replaced = pa.array(sorted(stager.done), pa.string())
    is_replaced = pc.is_in(old.column("symbol"), value_set=replaced)
    new, confirmed = _keep_confirmed(new, old.filter(is_replaced))
    merged = dedupe_last(pa.concat_tables([old.filter(pc.invert(is_replaced)), new]))
    lake.write_partition(dataset, day, merged)
    stager.clear()
    return merged, confirmed


def _keep_confirmed(new: pa.Table, prior: pa.Table) -> tuple[pa.Table, int]:
    """`new`, where a row without VWAP equals a `prior` row of its (symbol, ts) in every other
    value, with that row's VWAP; and how many rows that confirmed."""
    if not prior.num_rows or not new.num_rows or new.column("vwap").null_count == 0:
        return new, 0
    indexed = new.append_column("__new", pa.array(np.arange(new.num_rows), pa.int64()))
    renamed = prior.rename_columns([f"__old_{n}" if n not in ("symbol", "ts") else n for n in prior.column_names])
    joined = indexed.join(renamed, keys=["symbol", "ts"], join_type="left outer", use_threads=False)
    same = pc.is_null(joined.column("vwap"))
    for name in _VALUES:
        mine, theirs = joined.column(name), joined.column(f"__old_{name}")
        equal = pc.or_kleene(pc.equal(mine, theirs), pc.and_(pc.is_null(mine), pc.is_null(theirs)))
        same = pc.and_(same, pc.fill_null(equal, False))
    same = pc.fill_null(same, False)
    # A confirmed bar keeps its stored values (VWAP included) under the new source, so a
    # ticker's session has one source and its rollups one row per bucket.
    columns = [joined.column(n) if n in ("symbol", "ts", "source") else
               pc.if_else(same, joined.column(f"__old_{n}"), joined.column(n)) for n in BARS.names]
    out = pa.Table.from_arrays(columns, schema=BARS).take(pc.sort_indices(joined.column("__new")))
    return out, pc.sum(pc.cast(same, pa.int64())).as_py() or 0


def dedupe_last(table: pa.Table) -> pa.Table:
    """`table` sorted by (symbol, ts) with one row per (symbol, ts): the last one given."""
    n = table.num_rows
    if n < 2:
        return table.combine_chunks()
    order = pc.sort_indices(table, sort_keys=[("symbol", "ascending"), ("ts", "ascending")])  # stable
    table = table.take(order).combine_chunks()
    symbol, ts = table.column("symbol").chunk(0), pc.cast(table.column("ts"), pa.int64()).chunk(0)
    change = pc.or_(pc.not_equal(symbol.slice(1), symbol.slice(0, n - 1)),
                    pc.not_equal(ts.slice(1), ts.slice(0, n - 1)))
    keep = np.append(change.to_numpy(zero_copy_only=False), True)  # the last of each run of equal keys
    return table if keep.all() else table.filter(pa.array(keep))
