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

Nothing one message holds can stop the writer: rows the database refuses for their content
(text it cannot store, a value out of its range: `_CONTENT_ERRORS`) are isolated by writing the
batch in halves, and those alone become dead letters. Any other failure ends the writer:
`failure` holds it, `drain()` returns at once, the stream fails the run with it, and what was
not written stays in the spool for the next run. A spooled entry that cannot be read, or keeps
failing for what it holds, is moved to `dead_letters`, whole, and the replay goes on.
Entries name their stream: a spool shared by mistake replays only this stream's.
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
from market_platform.storage.server import one_line
from market_platform.storage.timescale import TickStore
from market_platform.streaming.convert import (
    Converter,
    dead_letter_rows,
    dead_letter_table,
)
from market_platform.streaming.spool import Spool, SpoolEntry, SpoolReadError
from market_platform.streaming.stats import StreamStats

log = logging.getLogger(__name__)

UTC = timezone.utc
NS = 1_000_000_000
_KINDS = ("quotes", "trades", "bars")
_LAG_SAMPLE = 2048  # rows of a batch whose lag is measured
_REPLAY_ROWS = 100_000  # spooled batches are replayed merged up to about this many rows
_SPOOL_ATTEMPTS = 3  # a spooled entry that fails this often for anything but an outage is set aside
#: What the database refuses for a row's content (class 22 data exceptions, class 23 integrity
#: violations other than a repeated key, which the dedupe path handles).
_CONTENT_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)
#: What a spooled entry's own content can raise when written (tables an earlier version wrote,
#: values the database refuses); anything else (a refusal of every write) stops the writer.
_ENTRY_ERRORS = (*_CONTENT_ERRORS, InvalidInputError, pa.ArrowException, KeyError, ValueError, TypeError)


@dataclass
class Unit:
    """Messages of one flush of the event loop, by kind, in arrival order."""

    quotes: list
    trades: list
    bars: list
    dead: list[dict] = field(default_factory=list)
    arrived: float = 0.0   # wall time the first message arrived

    def __len__(self) -> int:
        return len(self.quotes) + len(self.trades) + len(self.bars)


@dataclass
class Op:
    """Bookkeeping that travels with the data, in order: `gap` or `stats`; and `close_gap` (the
    run's end, for a gap no valid event closed)."""

    name: str
    args: dict[str, Any]


@dataclass
class Batch:
    tables: dict[str, pa.Table]
    arrived: float
    max_event_ns: int
    done: set[str] = field(default_factory=set)
    retried: bool = False
    min_event_ns: int = 0


class Pipeline:
    """The converter and writer threads of one stream (see the module docstring).

    `store_factory` makes the writer's own TickStore; `on_gap(gap_id, start, end, reason)` is
    called by the writer after it records a gap; `event_to_wall` maps event times (ns, an array)
    to the wall time they happened (seconds), for the lag from event to commit (None: from
    arrival).
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
        on_gap: Callable[[int, datetime, datetime, str], None] | None = None,
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
        self._inflight = spool.count(self._mine)  # entries of another stream stay where they are
        self._spooling = self._inflight > 0
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
        self.converted_event_ns = 0  # the latest valid event time converted so far (the clock)
        self.beyond_event_ns = 0  # the latest valid event time after the window (the feed has moved on)
        self.first_event_ns = 0      # the earliest valid event time of the first data converted
        self._held: Op | None = None  # a gap waiting for the first valid event after it
        self.failure: BaseException | None = None  # what ended the writer, if anything did
        self.set_aside = 0  # spooled entries moved to dead_letters
        self._entry_failures: dict[int, int] = {}
        self._replay_single = False

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
                if left <= 0 or self.failure is not None:
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
            self.spool.prepend([_to_entry(item, self.converter.stream) for item in older])
        while True:
            try:
                item = self._raw.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Op) and item.name == "close_gap":
                continue
            self._spool(self._convert(item) if isinstance(item, Unit) else item)
        if self._held is not None and "late_after_ns" not in self._held.args:
            self._spool(self._held)  # a gap no valid event closed: recorded open, the sweep closes it
        self._held = None
        self._write_checkpoint(force=True)
        return self.spool.count(self._mine)

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
            if isinstance(item, Op) and item.name in ("gap", "close_gap"):
                self._gap_op(item)
                continue
            try:
                converted = self._convert(item) if isinstance(item, Unit) else item
            except Exception:  # a bug here must not stop the stream: keep the messages as dead letters
                log.exception("%s: could not convert a batch", self.converter.stream)
                converted = self._as_dead_letters(item)
                self.stats.add(errors=1)
            if isinstance(converted, Batch) and converted.min_event_ns:
                self.first_event_ns = self.first_event_ns or converted.min_event_ns
                if self._held is not None:
                    self._release(converted.min_event_ns)
            self._route_item(converted)

    def _gap_op(self, op: Op) -> None:
        """Gaps whose end is the first valid event after them are held until it is converted;
        `close_gap` (the run's end) closes one that none came for."""
        if op.name == "close_gap":
            if self._held is not None:
                self._release(op.args["end_ns"], closing=True)
            self._done(1)
        elif op.args.get("end_ns") is not None:
            self._route_item(op)
        elif self._held is None:
            self._held = op
        else:  # disconnected again before any valid event: the held gap, from earlier, covers it
            self._done(1)

    def _release(self, end_ns: int, *, closing: bool = False) -> None:
        op, self._held = self._held, None
        args = op.args
        late = args.pop("late_after_ns", None)
        if late is not None and (closing or end_ns - args["start_ns"] <= late):
            self._done(1)  # the stream started on time (or never had data: the minute check sees to it)
            return
        args["end_ns"] = max(end_ns, args["start_ns"])
        self._route_item(op)

    def _convert(self, unit: Unit) -> Batch:
        received_at = datetime.fromtimestamp(unit.arrived or time.time(), UTC)
        tables: dict[str, pa.Table] = {}
        dead = list(unit.dead)
        filtered = outside = 0
        max_event_ns = min_event_ns = 0
        for kind in _KINDS:
            msgs = getattr(unit, kind)
            if msgs:
                result = self.converter.convert(kind, msgs, received_at)
                tables[kind] = result.table
                dead += result.dead
                filtered += result.filtered
                outside += result.outside
                self.beyond_event_ns = max(self.beyond_event_ns, result.beyond_ns)
                max_event_ns = max(max_event_ns, result.max_event_ns)
                if result.min_event_ns:
                    min_event_ns = min(min_event_ns or result.min_event_ns, result.min_event_ns)
        if dead:
            tables["dead_letters"] = dead_letter_table(dead)
        self.stats.add(dead_letters=len(dead), filtered=filtered, outside_window=outside)
        self.converted_event_ns = max(self.converted_event_ns, max_event_ns)
        return Batch(tables, unit.arrived, max_event_ns, min_event_ns=min_event_ns)

    def _as_dead_letters(self, item: Unit | Op) -> Batch | Op:
        if isinstance(item, Op):
            return item
        rows = [self.converter.dead_letter("not converted: internal error", m) for kind in _KINDS
                for m in getattr(item, kind)] + list(item.dead)
        return Batch({"dead_letters": dead_letter_table(rows)} if rows else {}, item.arrived, 0)

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
        entry = _to_entry(item, self.converter.stream)
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
                try:
                    if store is None:
                        store = self._store_factory()
                    if self._pending is None:
                        try:
                            self._pending, self._pending_seq = self._next_item()
                        except _Unreadable as exc:  # a spooled entry that cannot be read back
                            self._set_aside(store, exc.seq, exc.reason)
                            continue
                        if self._pending is None:
                            if self._stop.is_set():
                                return
                            continue
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
                except Exception as exc:
                    if self._pending_seq is None or not isinstance(exc, _ENTRY_ERRORS):
                        raise  # not the content of a spooled entry: the writer stops and the run fails
                    self._spooled_failure(store, exc)
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
                        self._entry_failures.pop(seq, None)
                    self.replayed += len(self._pending_seq)
                    finished = len(self._pending_seq)
                self._pending, self._pending_seq = None, None
                self._done(finished)
        except Exception as exc:
            self.failure = exc
            log.error("%s: the writer stopped: %s", self.converter.stream, one_line(exc))
            with self._idle:
                self._idle.notify_all()
        finally:
            if store is not None:
                store.close()

    def _spooled_failure(self, store: TickStore | None, exc: Exception) -> None:
        """A replayed spool entry failed for something other than an outage: it is tried alone,
        and after `_SPOOL_ATTEMPTS` failures set aside in dead_letters."""
        seqs, self._pending, self._pending_seq = self._pending_seq or [], None, None
        log.warning("%s: replaying spooled entries %s failed: %s", self.converter.stream, seqs, one_line(exc))
        self._replay_single = True
        if len(seqs) != 1:
            return  # merged entries: the next round takes them one by one
        seq = seqs[0]
        self._entry_failures[seq] = self._entry_failures.get(seq, 0) + 1
        if self._entry_failures[seq] >= _SPOOL_ATTEMPTS:
            self._set_aside(store or self._store_factory(), seq, f"failed {_SPOOL_ATTEMPTS} times: {one_line(exc)}")

    def _set_aside(self, store: TickStore, seq: int, reason: str) -> None:
        """Move spool entry `seq` to dead_letters, whole (its file's bytes), and go on."""
        path = self.spool.path(seq)
        try:
            raw = path.read_bytes()
        except OSError:
            raw = None
        store.write_dead_letters([{"stream": self.converter.stream, "raw": raw,
                                   "reason": f"spool entry {path.name} set aside: {reason}"[:1000]}])
        self.spool.remove(seq)
        self._entry_failures.pop(seq, None)
        self.set_aside += 1
        self.stats.add(dead_letters=1, errors=1)
        log.error("%s: spool entry %s moved to dead_letters: %s", self.converter.stream, path.name, reason)
        self._done(1)

    def _next_item(self) -> tuple[Batch | Op | None, list[int] | None]:
        try:
            return self._db.get_nowait(), None
        except queue.Empty:
            pass
        with self._route:
            if self._spooling:
                run = self._oldest_run()
                if run:
                    try:
                        return _merge([_from_entry(e) for e in run]), [e.seq for e in run]
                    except Exception as exc:  # entries this version cannot make a batch of
                        if len(run) == 1:
                            raise _Unreadable(run[0].seq, f"not an entry this version can write: {one_line(exc)}")
                        self._replay_single = True  # one at a time, to find the one at fault
                        return None, None
                if self._db.empty():
                    self._spooling = False
                    self._replay_single = False
                    log.info("%s: spool drained", self.converter.stream)
        try:
            return self._db.get(timeout=0.1), None
        except queue.Empty:
            return None, None

    def _mine(self, header: dict[str, Any]) -> bool:
        return header.get("stream", self.converter.stream) == self.converter.stream

    def _oldest_run(self) -> list[SpoolEntry]:
        try:
            return self.spool.oldest_run(1 if self._replay_single else _REPLAY_ROWS, _mergeable, accept=self._mine)
        except SpoolReadError as exc:
            raise _Unreadable(exc.seq, str(exc)) from None

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
                written = self._isolated(store, kind, table, lambda t: store.write_bars(t))
                self.stats.add(bars_inserted=written, duplicates=table.num_rows - written)
            else:
                written = self._isolated(store, kind, table, lambda t: self._insert(store, kind, t, safe))
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

    def _isolated(self, store: TickStore, kind: str, table: pa.Table, write: Callable[[pa.Table], int]) -> int:
        """`write(table)`; when the database refuses it for some row's content, the table is
        written in halves until the refused rows stand alone: they become dead letters (with the
        database's reason), everything else is stored. Returns the rows written. A failure of
        every row of a larger table is no row's fault: it is raised."""
        try:
            return write(table)
        except _CONTENT_ERRORS as exc:
            if isinstance(exc, psycopg.errors.UniqueViolation):
                raise
            error = exc
        refused: list[tuple[int, BaseException]] = [(0, error)] if table.num_rows == 1 else []
        written = self._halves(kind, table, 0, write, refused) if table.num_rows > 1 else 0
        if table.num_rows > 1 and len(refused) == table.num_rows:
            raise error
        rows = [self.converter.dead_letter(f"the tick store refused the {kind[:-1]}: {one_line(exc)}"[:500],
                                           _row_message(table.slice(i, 1)))
                for i, exc in refused]
        store.write_dead_letters(rows)
        self.stats.add(dead_letters=len(rows))
        log.warning("%s: %d %s refused by the tick store went to dead_letters (%s)", self.converter.stream,
                    len(rows), kind, one_line(error))
        return written

    def _halves(self, kind: str, table: pa.Table, offset: int, write: Callable[[pa.Table], int],
                refused: list[tuple[int, BaseException]]) -> int:
        middle = table.num_rows // 2
        written = 0
        for part, start in ((table.slice(0, middle), 0), (table.slice(middle), middle)):
            if not part.num_rows:
                continue
            try:
                written += write(part)
            except _CONTENT_ERRORS as exc:
                if isinstance(exc, psycopg.errors.UniqueViolation):
                    raise
                if part.num_rows == 1:
                    refused.append((offset + start, exc))
                else:
                    written += self._halves(kind, part, offset + start, write, refused)
        return written

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
        if op.name == "stats":  # {"rows": [row, ...]}, or one row (spooled by an earlier version)
            store.write_stream_stats(op.args["rows"] if "rows" in op.args else [op.args])
        elif op.name == "gap":
            args = op.args
            start = datetime.fromtimestamp(args["start_ns"] / NS, UTC)
            end = datetime.fromtimestamp(args["end_ns"] / NS, UTC) if args.get("end_ns") is not None else None
            gap_id = store.record_gap(self.converter.stream, start, max(start, end) if end else None,
                                      reason=args["reason"], symbols=args.get("symbols", ()))
            log.warning("%s: gap %d recorded: %s .. %s UTC (%s)", self.converter.stream, gap_id,
                        f"{start:%H:%M:%S}", f"{end:%H:%M:%S}" if end else "open", args["reason"])
            if self._on_gap is not None and end is not None:
                self._on_gap(gap_id, start, max(start, end), args["reason"])
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


class _Unreadable(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.reason = seq, reason


def _row_message(row: pa.Table) -> dict[str, Any]:
    """One stored row as a message-like dict for its dead letter (times in ns)."""
    out = row.to_pylist()[0]
    if "ts" in out:
        out["ts"] = int(pc.cast(row.column("ts"), pa.int64())[0].as_py())
    return out


def read_checkpoint(path: Path) -> int | None:
    """The latest committed event time (ns) a previous run of the stream recorded, if any."""
    try:
        return int(json.loads(path.read_text())["committed_event_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if "__datetime__" in value:
            return datetime.fromisoformat(value["__datetime__"])
        return {key: _from_jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(item) for item in value]
    return value


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


def _to_entry(item: Batch | Op, stream: str) -> SpoolEntry:
    if isinstance(item, Op):
        return SpoolEntry({"type": "op", "stream": stream, "name": item.name, "args": _jsonable(item.args)})
    return SpoolEntry({"type": "batch", "stream": stream, "arrived": item.arrived, "max_event_ns": item.max_event_ns,
                       "done": sorted(item.done)}, {k: t for k, t in item.tables.items() if k not in item.done})


def _from_entry(entry: SpoolEntry) -> Batch | Op:
    header = entry.header
    if header.get("type") == "op":
        return Op(header["name"], _from_jsonable(header["args"]))
    return Batch(dict(entry.tables), float(header.get("arrived", 0.0)), int(header.get("max_event_ns", 0)),
                 set(header.get("done", ())), retried=True)
