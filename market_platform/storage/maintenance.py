"""Upkeep of the tick store: day partitions ahead and retention on plain PostgreSQL, and the
status report of `market-platform db status`.

On TimescaleDB chunks and retention are the extension's policies; on plain PostgreSQL the
writers create the day partitions they need (`ensure_partitions`) and `maintain()` creates them
ahead and drops those past retention.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from market_platform.errors import InvalidInputError
from market_platform.storage.migrations import LIVE_TABLES, TABLES, Schema, migrations
from market_platform.storage.server import StoreConnection, redact

NEW_YORK = ZoneInfo("America/New_York")
UTC = timezone.utc

_HOUR_NS = 3_600_000_000_000
_EXACT_COUNT_BELOW = 100_000  # status(): count rows exactly when the estimate is this small


def _new_york_days(ts: pa.ChunkedArray | pa.Array) -> list[date]:
    """The New York dates the timestamps fall on. New York's offset is a whole number of hours,
    so every instant of a UTC hour has the date of the hour's start: only distinct hours are
    converted in Python."""
    nanos = pc.cast(ts, pa.timestamp("ns", "UTC")).cast(pa.int64())
    hours = np.unique(nanos.to_numpy() // _HOUR_NS) if len(nanos) else np.array([], np.int64)
    return sorted({datetime.fromtimestamp(int(h) * 3600, UTC).astimezone(NEW_YORK).date() for h in hours})


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def aware(value: datetime, name: str) -> datetime:
    """`value`, checked to be a timezone-aware datetime (InvalidInputError naming `name` if not)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInputError(f"{name}={value!r}: expected a timezone-aware datetime")
    return value


class Maintenance:
    """Partitions, retention and status of the database behind `connection`."""

    def __init__(self, connection: StoreConnection, schema: Schema) -> None:
        self._connection = connection
        self._schema = schema
        self._partitions: set[tuple[str, date]] = set()  # day partitions known to exist

    def maintain(self, *, now: datetime | None = None, days_ahead: int = 3) -> dict[str, Any]:
        """Plain PostgreSQL: create the day partitions of today (New York) and `days_ahead`
        days after, and drop those more than the retention's days before today.

        Returns {"variant", "created": [partition names], "dropped": [partition names]}. On
        TimescaleDB chunks and retention are the extension's policies: nothing to do here.
        """
        now = aware(now, "now") if now is not None else datetime.now(UTC)
        if not isinstance(days_ahead, int) or days_ahead < 0:
            raise InvalidInputError(f"days_ahead={days_ahead!r}: expected a whole number >= 0")
        today = now.astimezone(NEW_YORK).date()
        with self._connection.session() as conn:
            variant = self._schema.variant_of(conn)
            if variant == "timescale":
                return {"variant": variant, "created": [], "dropped": []}
            created: list[str] = []
            dropped: list[str] = []
            with conn.transaction():
                retention = self._schema.retention_days(conn)
                for table in LIVE_TABLES:
                    rows = conn.execute(
                        "SELECT d::date, ensure_day_partition(%s, d::date) "
                        "FROM generate_series(%s::date, %s::date, INTERVAL '1 day') AS d",
                        (table, today, today + timedelta(days=days_ahead)),
                    ).fetchall()
                    created += [f"{table}_p{day:%Y%m%d}" for day, new in rows if new]
                    dropped += [name for (name,) in conn.execute(
                        "SELECT drop_day_partitions(%s, %s)",
                        (table, today - timedelta(days=retention[table])),
                    ).fetchall()]
            self._partitions.clear()
            return {"variant": variant, "created": created, "dropped": dropped}

    def ensure_partitions(self, conn: psycopg.Connection, table: str, ts: pa.ChunkedArray) -> None:
        missing = [day for day in _new_york_days(ts) if (table, day) not in self._partitions]
        if missing:
            # Own transaction, committed before the data's: the parent's lock is held briefly.
            with conn.transaction():
                conn.execute("SELECT ensure_day_partition(%s, d) FROM unnest(%s::date[]) AS d", (table, missing))
            self._partitions.update((table, day) for day in missing)

    def forget_partitions(self, table: str) -> None:
        """Forget the partitions of `table` known to exist (one was dropped elsewhere)."""
        self._partitions = {key for key in self._partitions if key[0] != table}

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `market-platform db status` prints: where, which variant and schema version,
        pending migrations, retention, and rows, bytes and partitions of each table. Row counts
        are exact below 100k rows and planner estimates above."""
        with self._connection.session() as conn:
            variant = self._schema.variant_of(conn)
            recorded = self._schema.recorded_variant(conn) is not None
            applied = (
                dict(conn.execute("SELECT version, name FROM schema_migrations").fetchall()) if recorded else {}
            )
            pending = [m.name for m in migrations(variant, self._schema.sql_root) if m.version not in applied]
            has_retention = conn.execute("SELECT to_regclass('retention_settings') IS NOT NULL").fetchone()[0]
            tables = {
                table: self._table_status(conn, table, variant)
                for table in TABLES
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
            }
            return {
                "url": redact(self._connection.url),
                "server_version": conn.info.server_version,
                "variant": variant,
                "timescaledb": self._schema.timescaledb_version(conn),
                "schema_version": max(applied) if applied else None,
                "migrations_applied": len(applied),
                "pending": pending,
                "retention_days": self._schema.retention_days(conn) if has_retention else None,
                "tables": tables,
            }

    @staticmethod
    def _table_status(conn: psycopg.Connection, table: str, variant: str) -> dict[str, Any]:
        hypertable = variant == "timescale" and conn.execute(
            "SELECT EXISTS (SELECT FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema = current_schema() AND hypertable_name = %s)", (table,)
        ).fetchone()[0]
        if hypertable:
            rows, size = conn.execute(
                "SELECT approximate_row_count(%s::regclass), hypertable_size(%s::regclass)", (table, table)
            ).fetchone()
            chunks = conn.execute(
                "SELECT count(*), min(range_start), max(range_end) FROM timescaledb_information.chunks "
                "WHERE hypertable_schema = current_schema() AND hypertable_name = %s", (table,)
            ).fetchone()
            parts = {"chunks": chunks[0], "oldest": _iso(chunks[1]), "newest": _iso(chunks[2])}
        else:
            rows, size = conn.execute(
                "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint, "
                "coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint "
                "FROM pg_partition_tree(%s::regclass) AS t JOIN pg_class AS c ON c.oid = t.relid "
                "WHERE t.isleaf", (table,)
            ).fetchone()
            parts = {}
            if table in LIVE_TABLES:
                count, oldest, newest = conn.execute(
                    "SELECT count(*), min(day), max(day) FROM day_partitions(%s)", (table,)
                ).fetchone()
                parts = {"partitions": count, "oldest": _iso(oldest), "newest": _iso(newest)}
        exact = rows is None or rows < _EXACT_COUNT_BELOW
        if exact:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
        return {"rows": int(rows), "rows_exact": exact, "bytes": int(size or 0), **parts}
