"""The tick store's side of the minute snapshots: the `market_snapshots` table, its queue table (the
default queue backend), the minutes the poller missed, and silent-stall gaps.

Writes: `write_snapshots` sends schemas.SNAPSHOTS rows with binary COPY (built from the Arrow
buffers by `pgbinary`) straight into `market_snapshots`; when a row's (symbol, minute, source) is stored
already (a message processed twice), that savepoint is undone and the rows go through a temporary
staging table with ON CONFLICT DO NOTHING instead, so nothing is stored twice. It takes
the caller's connection when given, so the queue table's processor can write rows and delete
the messages they came from in one transaction (exactly once); plain PostgreSQL gets the day
partitions it needs first, in a transaction of their own.

Queue table: `enqueue` adds a message, `claim_batch` runs a callback over up to N claimed
messages (`FOR UPDATE SKIP LOCKED`, oldest first) inside a transaction that the callback uses for
its own writes, then deletes them and commits; an exception rolls everything back and leaves the
messages queued for the next processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Sequence, TypeVar

import psycopg
import psycopg.types.json
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from market_platform.calendar import NEW_YORK
from market_platform.errors import InvalidInputError
from market_platform.schemas import SNAPSHOTS, conform
from market_platform.storage.maintenance import aware
from market_platform.storage.migrations import Schema
from market_platform.storage.server import StoreConnection
from market_platform.storage.writers import Writers

_copy = Writers._copy  # COPY BINARY from the Arrow buffers: (column list, rows copied)

UTC = timezone.utc
T = TypeVar("T")

#: Columns the writer sends (inserted_at is the database's now()).
WRITTEN = [name for name in SNAPSHOTS.names if name != "inserted_at"]
_WRITTEN_SCHEMA = pa.schema([SNAPSHOTS.field(name) for name in WRITTEN])
#: Days of snapshots kept (plain PostgreSQL drops older day partitions in `maintain_snapshots`;
#: TimescaleDB's retention policy does the same, see sql/timescale/0063_snapshots.sql).
SNAPSHOT_RETENTION_DAYS = 30
STALL_KIND = "silent_stall"


@dataclass(frozen=True)
class QueuedMessage:
    """A claimed row of snapshot_queue."""

    id: int
    enqueued_at: datetime
    source: str
    market: str
    minute: datetime
    part: int
    parts: int
    polled_at: datetime
    body_size: int
    body: bytes  # zstd-compressed


class SnapshotStore:
    """Snapshots, their queue table, misses and stall gaps in the database behind `connection`."""

    def __init__(self, connection: StoreConnection, schema: Schema) -> None:
        self._connection = connection
        self._schema = schema
        self._partitions: set[date] = set()  # day partitions known to exist (committed)

    # -- snapshots ---------------------------------------------------------------------------

    def write_snapshots(self, table: pa.Table, *, conn: psycopg.Connection | None = None) -> int:
        """Insert schemas.SNAPSHOTS rows, ignoring those whose (symbol, minute, source) is stored
        already; returns the rows inserted. With `conn`, writes in the caller's open transaction
        (which commits or rolls back with the caller's other writes)."""
        rows = conform(table.select(WRITTEN) if "inserted_at" in table.column_names else table, _WRITTEN_SCHEMA)
        if not rows.num_rows:
            return 0
        if conn is not None:
            # Inside the caller's transaction: a new partition commits with the rows or not at all.
            self._ensure_partitions(conn, rows, remember=False)
            return self._insert(conn, rows)
        with self._connection.session() as own:
            self._ensure_partitions(own, rows, remember=True)  # committed at once, before the rows
            with own.transaction():
                return self._insert(own, rows)

    def _ensure_partitions(self, conn: psycopg.Connection, rows: pa.Table, *, remember: bool) -> None:
        if self._schema.variant_of(conn) != "postgres":
            return
        local = pc.cast(pc.unique(rows.column("minute")), pa.timestamp("ns", tz=str(NEW_YORK)))
        days = sorted({date.fromisoformat(text) for text in pc.strftime(local, "%Y-%m-%d").to_pylist()})
        missing = [day for day in days if day not in self._partitions]
        if not missing:
            return
        with conn.transaction():
            conn.execute("SELECT ensure_day_partition('market_snapshots', d) FROM unnest(%s::date[]) AS d", (missing,))
        if remember:
            self._partitions.update(missing)

    def _insert(self, conn: psycopg.Connection, rows: pa.Table) -> int:
        target = sql.Identifier("market_snapshots")
        try:
            # Straight in (3x faster); a key stored already (a redelivered message, a minute polled
            # twice) undoes only this savepoint, and the rows take the staging path below.
            with conn.transaction():
                return _copy(conn, target, rows)[1]
        except psycopg.errors.UniqueViolation:
            pass
        stage = sql.Identifier("_stage_snapshots")
        # Per connection, emptied at every commit (and below, for a second batch before one); not
        # remembered as created, since a rollback of the caller's transaction takes it away.
        conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE market_snapshots INCLUDING DEFAULTS) "
                             "ON COMMIT DELETE ROWS").format(stage))
        columns, _ = _copy(conn, stage, rows)
        inserted = conn.execute(sql.SQL(
            "INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"
        ).format(target=target, cols=columns, stage=stage)).rowcount
        conn.execute(sql.SQL("TRUNCATE {}").format(stage))
        return inserted

    def maintain_snapshots(self, *, now: datetime | None = None,
                           keep_days: int = SNAPSHOT_RETENTION_DAYS) -> list[str]:
        """Plain PostgreSQL: drop the market_snapshots day partitions older than `keep_days` New York
        days; returns their names (TimescaleDB's retention policy does this itself)."""
        now = aware(now, "now") if now is not None else datetime.now(UTC)
        with self._connection.session() as conn:
            if self._schema.variant_of(conn) != "postgres":
                return []
            keep_from = now.astimezone(NEW_YORK).date() - timedelta(days=keep_days)
            with conn.transaction():
                dropped = [name for (name,) in conn.execute(
                    "SELECT drop_day_partitions('market_snapshots', %s)", (keep_from,)).fetchall()]
        self._partitions = {day for day in self._partitions if day >= keep_from}
        return dropped

    # -- the queue table ---------------------------------------------------------------------

    def enqueue_snapshot(self, *, source: str, market: str, minute: datetime, polled_at: datetime,
                         body: bytes, body_size: int, part: int = 0, parts: int = 1) -> int:
        """Add one message (a compressed raw response) to snapshot_queue; returns its id."""
        aware(minute, "minute"), aware(polled_at, "polled_at")
        with self._connection.session() as conn, conn.transaction():
            return conn.execute(
                "INSERT INTO snapshot_queue (source, market, minute, part, parts, polled_at, body_size, body) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (source, market, minute, part, parts, polled_at, body_size, body),
            ).fetchone()[0]

    def claim_snapshot_batch(self, limit: int,
                             handle: Callable[[psycopg.Connection, list[QueuedMessage]], T]) -> tuple[int, T | None]:
        """Claim up to `limit` queued messages, oldest first, skipping those another processor
        holds; `handle(conn, messages)` does its writes on `conn`; then the messages are deleted
        and everything commits together. Returns (messages claimed, what `handle` returned);
        (0, None) when the queue is empty. If `handle` raises, nothing is written or deleted."""
        if limit < 1:
            raise InvalidInputError(f"limit={limit!r}: expected at least one message")
        with self._connection.session() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT id, enqueued_at, source, market, minute, part, parts, polled_at, body_size, body "
                "FROM snapshot_queue ORDER BY enqueued_at, id LIMIT %s FOR UPDATE SKIP LOCKED", (limit,)
            ).fetchall()
            if not rows:
                return 0, None
            messages = [QueuedMessage(*row[:9], bytes(row[9])) for row in rows]
            result = handle(conn, messages)
            conn.execute("DELETE FROM snapshot_queue WHERE id = ANY(%s)", ([m.id for m in messages],))
            return len(messages), result

    def snapshot_queue_stats(self) -> dict[str, Any]:
        """{"depth", "oldest" (enqueued_at of the oldest message, or None), "bytes"}."""
        with self._connection.session() as conn, conn.transaction():
            depth, oldest, size = conn.execute(
                "SELECT count(*), min(enqueued_at), coalesce(sum(octet_length(body)), 0) FROM snapshot_queue"
            ).fetchone()
        return {"depth": int(depth), "oldest": oldest, "bytes": int(size)}

    def dead_letter_snapshots(self, rows: Sequence[Mapping[str, Any]], *, conn: psycopg.Connection) -> int:
        """Write dead letters of queued snapshots in the caller's transaction, once per message:
        each row has stream, reason, key (the message's identity), raw and detail; a row whose
        (stream, key) is in dead_letters already (a redelivery) is skipped. Returns rows written."""
        written = 0
        for row in rows:
            detail = {**(row.get("detail") or {}), "key": row["key"]}
            written += conn.execute(
                "INSERT INTO dead_letters (stream, reason, raw, detail) SELECT %(stream)s, %(reason)s, %(raw)s, "
                "%(detail)s WHERE NOT EXISTS (SELECT FROM dead_letters WHERE stream = %(stream)s "
                "AND detail->>'key' = %(key)s)",
                {"stream": row["stream"], "reason": row["reason"].replace("\x00", ""), "raw": row.get("raw"),
                 "detail": psycopg.types.json.Jsonb(detail), "key": row["key"]},
            ).rowcount
        return written

    # -- misses ------------------------------------------------------------------------------

    def record_snapshot_miss(self, *, source: str, market: str, minute: datetime, reason: str, requests: int = 0,
                             throttled: int = 0, parts: Sequence[int] = ()) -> None:
        """Record a minute the poller could not poll (a later record of the same minute adds
        its requests and failed parts, and keeps the first reason)."""
        aware(minute, "minute")
        with self._connection.session() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO snapshot_misses (source, market, minute, reason, requests, throttled, parts) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (source, market, minute) DO UPDATE SET "
                "requests = snapshot_misses.requests + EXCLUDED.requests, "
                "throttled = snapshot_misses.throttled + EXCLUDED.throttled, "
                "parts = snapshot_misses.parts || EXCLUDED.parts",
                (source, market, minute, reason, requests, throttled, list(parts)),
            )

    # -- silent stalls -----------------------------------------------------------------------

    def record_stall(self, stream: str, symbol: str, start: datetime, end: datetime, *, reason: str,
                     conn: psycopg.Connection | None = None) -> tuple[int, str]:
        """Record that `stream` was silent on `symbol` over [start, end) while connected: a
        stream_gaps row of kind silent_stall. A stall of the symbol that overlaps or touches
        this one is extended instead (and marked for repair again). Returns (gap id, "new",
        "extended" or "known")."""
        aware(start, "start"), aware(end, "end")
        if end <= start:
            raise InvalidInputError(f"stall end {end} is not after its start {start}")

        def run(c: psycopg.Connection) -> tuple[int, str]:
            row = c.execute(
                "SELECT id, gap_start, gap_end FROM stream_gaps WHERE kind = %s AND stream = %s AND symbols = %s "
                "AND gap_start <= %s AND gap_end >= %s ORDER BY gap_start LIMIT 1 FOR UPDATE",
                (STALL_KIND, stream, [symbol], end, start),
            ).fetchone()
            if row is None:
                gap_id = c.execute(
                    "INSERT INTO stream_gaps (stream, gap_start, gap_end, symbols, reason, kind, detected_by) "
                    "VALUES (%s, %s, %s, %s, %s, %s, ARRAY['feed_health']) RETURNING id",
                    (stream, start, end, [symbol], reason, STALL_KIND),
                ).fetchone()[0]
                return gap_id, "new"
            gap_id, old_start, old_end = row
            if start >= old_start and end <= old_end:
                return gap_id, "known"
            c.execute("UPDATE stream_gaps SET gap_start = least(gap_start, %s), gap_end = greatest(gap_end, %s), "
                      "repaired_at = NULL, reason = %s WHERE id = %s", (start, end, reason, gap_id))
            return gap_id, "extended"

        if conn is not None:
            return run(conn)
        with self._connection.session() as own, own.transaction():
            return run(own)

    def stalls(self, start: datetime, end: datetime, *, stream: str | None = None) -> list[Mapping[str, Any]]:
        """Silent-stall gaps overlapping [start, end) (of `stream`, or all), oldest first."""
        aware(start, "start"), aware(end, "end")
        with self._connection.session() as conn, conn.transaction():
            cur = conn.execute(
                "SELECT id, stream, symbols[1] AS symbol, gap_start, gap_end, reason, detected_at, repaired_at, "
                "repaired_bars FROM stream_gaps WHERE kind = %s AND gap_start < %s AND gap_end > %s "
                "AND (%s::text IS NULL OR stream = %s) ORDER BY gap_start, symbols[1]",
                (STALL_KIND, end, start, stream, stream),
            )
            names = [column.name for column in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
