"""The snapshot processor: queued responses into the tick store's `market_snapshots`, a batch at a time.

A batch is up to `batch_size` messages (10, SQS's largest receive). Each is parsed into Arrow
(`parse`); the batch's rows go in with one binary COPY and ON CONFLICT DO NOTHING; a message
that does not parse goes to `dead_letters` (once per message key, with the raw body) instead.
All of it happens in the transaction the queue commits before the batch leaves the queue (see
`queue`), so a processor that dies mid-batch stores nothing and the batch is processed again.

When to run: `is_due` says whether a queue should be processed now - `batch_size` messages are
waiting, or the oldest has waited `max_wait` - and `drain` then takes batches until the queue is
empty (a backlog left by a stopped processor drains in one go).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pyarrow as pa

from market_platform.errors import MalformedResponseError
from market_platform.snapshots.parse import parse
from market_platform.snapshots.queue import Delivery, QueueStats, SnapshotQueue
from market_platform.storage.timescale import TickStore

log = logging.getLogger(__name__)

UTC = timezone.utc
BATCH_SIZE = 10
MAX_WAIT = timedelta(minutes=1)


@dataclass
class ProcessReport:
    """What processing did."""

    batches: int = 0
    messages: int = 0
    rows: int = 0  # inserted into market_snapshots
    duplicates: int = 0  # rows already there (a redelivered message)
    dead_letters: int = 0
    minutes: set[tuple[str, str, datetime]] = field(default_factory=set)  # (source, market, minute)
    last_minute: datetime | None = None

    def add(self, other: ProcessReport) -> None:
        for name in ("batches", "messages", "rows", "duplicates", "dead_letters"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.minutes |= other.minutes
        if other.last_minute is not None and (self.last_minute is None or other.last_minute > self.last_minute):
            self.last_minute = other.last_minute

    def summary(self) -> str:
        return (f"{self.messages} messages in {self.batches} batches: {self.rows:,} rows stored "
                f"({self.duplicates:,} already there), {len(self.minutes)} minutes, "
                f"{self.dead_letters} dead letters")


def store_batch(store: TickStore, conn: psycopg.Connection, deliveries: list[Delivery]) -> ProcessReport:
    """Parse `deliveries` and write their rows and dead letters on `conn` (in its transaction)."""
    report = ProcessReport(batches=1, messages=len(deliveries))
    tables, dead = [], []
    for delivery in deliveries:
        message = delivery.message
        if message is None:
            dead.append({"stream": "snapshots", "reason": _clean(delivery.error or "undecodable message"),
                         "key": delivery.key, "raw": delivery.raw, "detail": {"enqueued_at": _iso(delivery.enqueued_at)}})
            continue
        try:
            table = parse(message)
        except MalformedResponseError as exc:
            dead.append({"stream": message.stream, "reason": _clean(str(exc)), "key": message.key, "raw": message.body,
                         "detail": {"minute": message.minute.isoformat(), "part": message.part, "parts": message.parts,
                                    "polled_at": message.polled_at.isoformat(),
                                    "receive_count": delivery.receive_count}})
            continue
        tables.append(table)
        report.minutes.add((message.source, message.market, message.minute))
        if report.last_minute is None or message.minute > report.last_minute:
            report.last_minute = message.minute
    rows = pa.concat_tables(tables) if tables else None
    if rows is not None and rows.num_rows:
        report.rows = store.write_snapshots(rows, conn=conn)
        report.duplicates = rows.num_rows - report.rows
    if dead:
        report.dead_letters = store.dead_letter_snapshots(dead, conn=conn)
        for row in dead:
            log.warning("snapshot %s to dead_letters: %s", row["key"], row["reason"])
    return report


def process_batch(queue: SnapshotQueue, store: TickStore, *, batch_size: int = BATCH_SIZE) -> ProcessReport:
    """One batch of up to `batch_size` messages; an empty report when the queue is empty."""
    claimed, report = queue.process(lambda conn, deliveries: store_batch(store, conn, deliveries),
                                    limit=batch_size, connect=store.connect)
    return report if claimed else ProcessReport()


def drain(queue: SnapshotQueue, store: TickStore, *, batch_size: int = BATCH_SIZE,
          max_batches: int | None = None) -> ProcessReport:
    """Batches until the queue has nothing left to hand out (or `max_batches`)."""
    total = ProcessReport()
    while max_batches is None or total.batches < max_batches:
        report = process_batch(queue, store, batch_size=batch_size)
        if not report.batches:
            break
        total.add(report)
        log.info("snapshots: batch of %d messages, %d rows, %d dead letters", report.messages, report.rows,
                 report.dead_letters)
    return total


def is_due(stats: QueueStats, now: datetime, *, nonempty_since: datetime | None = None,
           batch_size: int = BATCH_SIZE, max_wait: timedelta = MAX_WAIT) -> str | None:
    """Why the queue should be processed now (None: not yet). The oldest message's age comes
    from the queue, or, where the queue cannot tell (SQS), from `nonempty_since`: when the
    caller first saw it non-empty."""
    if stats.depth >= batch_size:
        return f"{stats.depth} messages are waiting"
    oldest = stats.oldest or nonempty_since
    if stats.depth and oldest is not None and now - oldest >= max_wait:
        return f"the oldest of {stats.depth} messages has waited {(now - oldest).total_seconds():.0f} s"
    return None


def _clean(text: str) -> str:
    return text.replace("\x00", "")


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None
