"""From raw message lists to committed rows: convert, route, write, spool, replay.

    event loop --put()--> [raw queue] --converter thread--> [db queue] --writer thread--> TickStore
                                                   \\                         ^
                                                    `--> spool (disk) -------'

The event loop hands over `Unit`s (the messages of one flush) and `Op`s (gaps, statistics)
through a bounded queue; when it is full, `put()` refuses and the loop waits, which holds up
reading the websocket (backpressure). The converter turns units into Arrow tables and routes
them: to the bounded database queue while the writer keeps up, else to the spool, and once
anything is spooled everything after it is spooled too until the writer has drained it, so
rows reach the database in the order they arrived (a bar correction never lands before the
bar it corrects). The writer retries a failed write forever with backoff while the database
is away; meanwhile the spool takes the stream. Memory holds at most the two queues.

Writes are idempotent: quotes and trades are COPYed straight into their tables while no key
repeats (fast), and through the deduplicating path when one does, after any retry and for
everything replayed from the spool; bars are upserts, so a `u` correction replaces its bar.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from market_platform.errors import DatabaseUnavailableError, InvalidInputError, StorageError
from market_platform.storage.timescale import TickStore
from market_platform.streaming.convert import (
    Converter,
    dead_letter_rows,
    dead_letter_table,
)
from market_platform.streaming.spool import Spool, SpoolEntry
from market_platform.streaming.stats import StreamStats

log = logging.getLogger(__name__)

UTC = timezone.utc
NS = 1_000_000_000
_KINDS = ("quotes", "trades", "bars")
_LAG_SAMPLE = 2048  # rows of a batch whose lag is measured
_REPLAY_ROWS = 100_000  # spooled batches are replayed merged up to about this many rows


@dataclass
class Unit:
    """Messages of one flush of the event loop, by kind, in arrival order."""

    quotes: list
    trades: list
    bars: list
    dead: list[dict] = field(default_factory=list)
    arrived: float = 0.0   # wall time the first message arrived
    max_event_ns: int = 0  # latest event time among the messages

    def __len__(self) -> int:
        return len(self.quotes) + len(self.trades) + len(self.bars)


@dataclass
class Op:
    """Bookkeeping that travels with the data, in order: `gap` or `stats`."""

    name: str
    args: dict[str, Any]


@dataclass
class Batch:
    tables: dict[str, pa.Table]
    arrived: float
    max_event_ns: int
    done: set[str] = field(default_factory=set)
    retried: bool = False


class Pipeline:
    """The converter and writer threads of one stream (see the module docstring).

    `store_factory` makes the writer's own TickStore; `on_gap(gap_id, start, end)` is called by
    the writer after it records a gap; `event_to_wall` maps event times (ns, an array) to the
    wall time they happened (seconds), for the lag from event to commit (None: from arrival).
    """

    def __init__(
        self,
        store_factory: Callable[[], TickStore],
        converter: Converter,
        stats: StreamStats,
        spool: Spool,
        *,
        queue_units: int = 8,
        queue_batches: int = 4,
        on_gap: Callable[[int, datetime, datetime], None] | None = None,
        event_to_wall: Callable[[np.ndarray], np.ndarray] | None = None,
        checkpoint: Path | None = None,
        spool_after: float = 1.0,
    ) -> None:
        self._store_factory = store_factory
        self.converter, self.stats, self.spool = converter, stats, spool
        self._raw: queue.Queue = queue.Queue(maxsize=queue_units)
        self._db: queue.Queue = queue.Queue(maxsize=queue_batches)
        self._on_gap = on_gap
        self._event_to_wall = event_to_wall
        self._checkpoint = checkpoint
        self._spool_after = spool_after
        self._route = threading.Lock()
        self._spooling = not spool.empty()
        self._inflight = len(spool)
        self._idle = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.committed_event_ns = 0
        self.first_arrival: float | None = None  # wall time the first message written had arrived
        self.last_commit: float | None = None    # wall time of the last commit of data
        self.spooled = 0
        self.replayed = 0
        self.db_down_since: float | None = None
        self.db_outages = 0
        self._last_checkpoint = 0.0
        self._recent_duplicates = 0  # batches to write through the dedupe path
        self._pending: Batch | Op | None = None  # the writer's current item (retried until written)
        self._pending_seq: list[int] | None = None  # its spool entries, when it came from the spool
        self._stop_now = False
        self._stop_now_event = threading.Event()

    # -- the event loop's side -------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._convert_loop, "convert"), (self._write_loop, "write")):
            thread = threading.Thread(target=target, name=f"{name}-{self.converter.stream}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def put(self, item: Unit | Op) -> bool:
        """Hand over an item; False when the queue is full (wait and try again)."""
        with self._idle:
            self._inflight += 1
        try:
            self._raw.put_nowait(item)
            return True
        except queue.Full:
            with self._idle:
                self._inflight -= 1
            return False

    def depth(self) -> int:
        """Items not yet written: queued, being written, or spooled."""
        return self._inflight

    def drain(self, timeout: float) -> bool:
        """Wait until everything handed over is in the database; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 10.0) -> int:
        """Stop the threads; whatever is not in the database yet goes to the spool, in order,
        for the next run to replay. Returns the spool's entries left (0 after a full drain)."""
        self._stop.set()
        self._stop_now = True
        self._stop_now_event.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        # Older than anything spooled: the writer's item, then the database queue.
        older: list[Batch | Op] = []
        if self._pending is not None and self._pending_seq is None:
            older.append(self._pending)
        self._pending = None
        while True:
            try:
                older.append(self._db.get_nowait())
            except queue.Empty:
                break
        if older:
            self.spool.prepend([_to_entry(item) for item in older])
        while True:
            try:
                item = self._raw.get_nowait()
            except queue.Empty:
                break
            self._spool(self._convert(item) if isinstance(item, Unit) else item)
        self._write_checkpoint(force=True)
        return len(self.spool)

    def _done(self, count: int = 1) -> None:
        with self._idle:
            self._inflight -= count
            self._idle.notify_all()

    # -- converter thread --------------------------------------------------------------------

    def _convert_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._raw.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                converted = self._convert(item) if isinstance(item, Unit) else item
            except Exception:  # a bug here must not stop the stream: keep the messages as dead letters
                log.exception("%s: could not convert a batch", self.converter.stream)
                converted = self._as_dead_letters(item)
                self.stats.add(errors=1)
            self._route_item(converted)

    def _convert(self, unit: Unit) -> Batch:
        received_at = datetime.fromtimestamp(unit.arrived or time.time(), UTC)
        tables: dict[str, pa.Table] = {}
        dead = list(unit.dead)
        filtered = 0
        for kind in _KINDS:
            msgs = getattr(unit, kind)
            if msgs:
                result = self.converter.convert(kind, msgs, received_at)
                tables[kind] = result.table
                dead += result.dead
                filtered += result.filtered
        if dead:
            tables["dead_letters"] = dead_letter_table(dead)
        self.stats.add(dead_letters=len(dead), filtered=filtered)
        return Batch(tables, unit.arrived, unit.max_event_ns)

    def _as_dead_letters(self, item: Unit | Op) -> Batch | Op:
        if isinstance(item, Op):
            return item
        rows = [self.converter.dead_letter("not converted: internal error", m) for kind in _KINDS
                for m in getattr(item, kind)] + list(item.dead)
        return Batch({"dead_letters": dead_letter_table(rows)} if rows else {}, item.arrived, item.max_event_ns)

    def _route_item(self, item: Batch | Op) -> None:
        if not self._spooling:
            # A short hiccup is absorbed by backpressure; a database that stays behind gets the spool.
            try:
                self._db.put(item, timeout=self._spool_after)
                return
            except queue.Full:
                pass
        with self._route:
            if not self._spooling:
                try:
                    self._db.put_nowait(item)
                    return
                except queue.Full:
                    self._spooling = True
                    log.info("%s: the database is behind; spooling to %s", self.converter.stream, self.spool.directory)
            self._spool(item)

    def _spool(self, item: Batch | Op) -> None:
        entry = _to_entry(item)
        while True:
            try:
                self.spool.append(entry)
                self.spooled += 1
                return
            except StorageError as exc:  # a full disk: keep trying, holding up the stream meanwhile
                log.error("%s: %s; retrying in 1 s", self.converter.stream, exc)
                self.stats.add(errors=1)
                time.sleep(1.0)

    # -- writer thread ------------------------------------------------------------------------

    def _write_loop(self) -> None:
        store: TickStore | None = None
        backoff = 0.2
        try:
            while not self._stop_now:
                if self._pending is None:
                    self._pending, self._pending_seq = self._next_item()
                    if self._pending is None:
                        if self._stop.is_set():
                            return
                        continue
                try:
                    if store is None:
                        store = self._store_factory()
                    self._write(store, self._pending, replayed=self._pending_seq is not None)
                except (DatabaseUnavailableError, psycopg.OperationalError) as exc:
                    if self.db_down_since is None:
                        self.db_down_since = time.monotonic()
                        self.db_outages += 1
                        log.warning("%s: the tick store is unavailable (%s); retrying, spooling meanwhile",
                                    self.converter.stream, exc)
                    if isinstance(self._pending, Batch):
                        self._pending.retried = True
                    if store is not None:
                        store.close()
                        store = None
                    self._stop_now_event.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if self.db_down_since is not None:
                    log.info("%s: the tick store is back after %.1f s", self.converter.stream,
                             time.monotonic() - self.db_down_since)
                    self.db_down_since = None
                backoff = 0.2
                finished = 1
                if self._pending_seq is not None:
                    for seq in self._pending_seq:
                        self.spool.remove(seq)
                    self.replayed += len(self._pending_seq)
                    finished = len(self._pending_seq)
                self._pending, self._pending_seq = None, None
                self._done(finished)
        finally:
            if store is not None:
                store.close()

    def _next_item(self) -> tuple[Batch | Op | None, list[int] | None]:
        try:
            return self._db.get_nowait(), None
        except queue.Empty:
            pass
        with self._route:
            if self._spooling:
                run = self.spool.oldest_run(_REPLAY_ROWS, _mergeable)
                if run:
                    return _merge([_from_entry(e) for e in run]), [e.seq for e in run]
                if self._db.empty():
                    self._spooling = False
                    log.info("%s: spool drained", self.converter.stream)
        try:
            return self._db.get(timeout=0.1), None
        except queue.Empty:
            return None, None

    def _write(self, store: TickStore, item: Batch | Op, *, replayed: bool) -> None:
        if isinstance(item, Op):
            self._write_op(store, item)
            return
        safe = replayed or item.retried or self._recent_duplicates > 0
        if self._recent_duplicates:
            self._recent_duplicates -= 1
        committed = time.time()
        for kind in ("quotes", "trades", "bars", "dead_letters"):
            table = item.tables.get(kind)
            if kind in item.done or table is None or not table.num_rows:
                item.done.add(kind)
                continue
            if kind == "dead_letters":
                store.write_dead_letters(dead_letter_rows(table))
            elif kind == "bars":
                written = store.write_bars(table)
                self.stats.add(bars_inserted=written, duplicates=table.num_rows - written)
            else:
                written = self._insert(store, kind, table, safe)
                self.stats.add(**{f"{kind}_inserted": written, "duplicates": table.num_rows - written})
                committed = time.time()
                self._lags(table, committed, item.arrived)
            item.done.add(kind)
        self.committed_event_ns = max(self.committed_event_ns, item.max_event_ns)
        if item.tables:
            self.last_commit = time.time()
            if item.arrived and (self.first_arrival is None or item.arrived < self.first_arrival):
                self.first_arrival = item.arrived
        self._write_checkpoint()

    def _insert(self, store: TickStore, kind: str, table: pa.Table, safe: bool) -> int:
        write = store.write_quotes if kind == "quotes" else store.write_trades
        if not safe:
            try:
                return write(table, dedupe=False)
            except InvalidInputError:
                # A key repeats (a redelivery): this batch and the next few take the dedupe path.
                self._recent_duplicates = 8
        return write(table, dedupe=True)

    def _lags(self, table: pa.Table, committed: float, arrived: float) -> None:
        n = table.num_rows
        step = max(1, n // _LAG_SAMPLE)
        if self._event_to_wall is None:
            self.stats.add_lags(np.full((n + step - 1) // step, (committed - arrived) * 1000.0))
            return
        ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()[::step]
        self.stats.add_lags(np.maximum((committed - self._event_to_wall(ts)) * 1000.0, 0.0))

    def _write_op(self, store: TickStore, op: Op) -> None:
        if op.name == "stats":
            store.write_stream_stats([op.args])
        elif op.name == "gap":
            args = op.args
            start = datetime.fromtimestamp(args["start_ns"] / NS, UTC)
            end = datetime.fromtimestamp(args["end_ns"] / NS, UTC)
            gap_id = store.record_gap(self.converter.stream, start, max(start, end), reason=args["reason"],
                                      symbols=args.get("symbols", ()))
            log.warning("%s: gap %d recorded: %s .. %s UTC (%s)", self.converter.stream, gap_id,
                        f"{start:%H:%M:%S}", f"{end:%H:%M:%S}", args["reason"])
            if self._on_gap is not None:
                self._on_gap(gap_id, start, max(start, end))
        else:
            raise InvalidInputError(f"unknown pipeline op {op.name!r}")

    def _write_checkpoint(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._checkpoint is None or not self.committed_event_ns or (not force and now - self._last_checkpoint < 1.0):
            return
        self._last_checkpoint = now
        tmp = self._checkpoint.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"committed_event_ns": self.committed_event_ns}))
            os.replace(tmp, self._checkpoint)
        except OSError as exc:  # the checkpoint only narrows a restart's gap: never fatal
            log.warning("%s: cannot write the checkpoint %s: %s", self.converter.stream, self._checkpoint, exc)


def read_checkpoint(path: Path) -> int | None:
    """The latest committed event time (ns) a previous run of the stream recorded, if any."""
    try:
        return int(json.loads(path.read_text())["committed_event_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _jsonable(args: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in args.items():
        out[key] = {"__datetime__": value.isoformat()} if isinstance(value, datetime) else value
    return out


def _from_jsonable(args: dict[str, Any]) -> dict[str, Any]:
    return {k: datetime.fromisoformat(v["__datetime__"]) if isinstance(v, dict) and "__datetime__" in v else v
            for k, v in args.items()}


def _mergeable(entry: SpoolEntry) -> bool:
    return entry.header.get("type") == "batch" and not entry.header.get("done")


def _merge(items: list[Batch | Op]) -> Batch | Op:
    """Consecutive batches as one (rows keep their order, so a later correction still wins)."""
    if len(items) == 1:
        return items[0]
    tables: dict[str, list[pa.Table]] = {}
    for item in items:
        for kind, table in item.tables.items():
            tables.setdefault(kind, []).append(table)
    merged = {kind: pa.concat_tables(parts).combine_chunks() for kind, parts in tables.items()}
    return Batch(merged, min(i.arrived for i in items), max(i.max_event_ns for i in items), retried=True)


def _to_entry(item: Batch | Op) -> SpoolEntry:
    if isinstance(item, Op):
        return SpoolEntry({"type": "op", "name": item.name, "args": _jsonable(item.args)})
    return SpoolEntry({"type": "batch", "arrived": item.arrived, "max_event_ns": item.max_event_ns,
                       "done": sorted(item.done)}, {k: t for k, t in item.tables.items() if k not in item.done})


def _from_entry(entry: SpoolEntry) -> Batch | Op:
    header = entry.header
    if header.get("type") == "op":
        return Op(header["name"], _from_jsonable(header["args"]))
    return Batch(dict(entry.tables), float(header.get("arrived", 0.0)), int(header.get("max_event_ns", 0)),
                 set(header.get("done", ())), retried=True)
