"""Upkeep of the tick store: day partitions ahead and retention on plain PostgreSQL, the
refresh of the rollups (storage/refresh.py), and the status report of `market-platform db status`.

On TimescaleDB chunks and retention are the extension's policies; on plain PostgreSQL the
writers create the day partitions they need (`ensure_partitions`) and `maintain()` creates them
ahead and drops those past retention. On both, `maintain()` refreshes the rollup ranges pending.
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
from market_platform.storage.refresh import ROLLUPS, Refresher
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


def _iso(value: date | datetime | None) -> str | None:
    if isinstance(value, datetime):
        value = value.astimezone(UTC)
    return value.isoformat() if value is not None else None


def aware(value: datetime, name: str) -> datetime:
    """`value`, checked to be a timezone-aware datetime (InvalidInputError naming `name` if not)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInputError(f"{name}={value!r}: expected a timezone-aware datetime")
    return value


class Maintenance:
    """Partitions, retention, the rollup refresh and status of the database behind `connection`."""

    def __init__(self, connection: StoreConnection, schema: Schema, refresher: Refresher) -> None:
        self._connection = connection
        self._schema = schema
        self._refresher = refresher
        self._partitions: set[tuple[str, date]] = set()  # day partitions known to exist

    def maintain(self, *, now: datetime | None = None, days_ahead: int = 3) -> dict[str, Any]:
        """Plain PostgreSQL: create the day partitions of today (New York) and `days_ahead`
        days after, and drop those more than the retention's days before today. Both variants:
        refresh the rollup ranges pending (`refresh_rollups`; on TimescaleDB chunks and
        retention are the extension's policies).

        Returns {"variant", "created": [partition names], "dropped": [partition names],
        "rollups": {"refreshed", "deferred": [ranges]}}.
        """
        now = aware(now, "now") if now is not None else datetime.now(UTC)
        if not isinstance(days_ahead, int) or days_ahead < 0:
            raise InvalidInputError(f"days_ahead={days_ahead!r}: expected a whole number >= 0")
        today = now.astimezone(NEW_YORK).date()
        created: list[str] = []
        dropped: list[str] = []
        with self._connection.session() as conn:
            variant = self._schema.variant_of(conn)
            if variant == "postgres":
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
        rollups = self._refresher.refresh(now=now).report()
        return {"variant": variant, "created": created, "dropped": dropped, "rollups": rollups}

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
        """What `market-platform db status` prints: where, which variant, the migrations applied
        and pending, retention, the rollups and their pending refreshes, and every table of the
        schema: rows, bytes, oldest and newest data, partitions or chunks.

        Row counts are exact below 100k rows and planner estimates above. `oldest`/`newest` of
        quotes, trades and bars_1m are the first and last New York days holding rows (never an
        empty partition made ahead); of another table, the least and greatest value of its
        first date or time column (when it is small or that column leads an index)."""
        with self._connection.session() as conn, conn.transaction():
            variant = self._schema.variant_of(conn)
            recorded = self._schema.recorded_variant(conn) is not None
            applied = (
                dict(conn.execute("SELECT version, name FROM schema_migrations").fetchall()) if recorded else {}
            )
            pending = [m.name for m in migrations(variant, self._schema.sql_root) if m.version not in applied]
            has_retention = conn.execute("SELECT to_regclass('retention_settings') IS NOT NULL").fetchone()[0]
            tables = {table: self._table_status(conn, table, variant) for table in self._tables(conn)}
            return {
                "url": redact(self._connection.url),
                "server_version": conn.info.server_version,
                "variant": variant,
                "timescaledb": self._schema.timescaledb_version(conn),
                "schema_version": max(applied) if applied else None,
                "latest_migration": applied[max(applied)] if applied else None,
                "migrations_applied": len(applied),
                "pending": pending,
                "retention_days": self._schema.retention_days(conn) if has_retention else None,
                "rollups": self._rollup_status(conn, variant),
                "tables": tables,
            }

    @staticmethod
    def _tables(conn: psycopg.Connection) -> list[str]:
        """The tables of the schema (not partitions): the tick store's own first, in order, then
        any other by name; the bookkeeping of migrations and retention is reported apart."""
        names = [name for (name,) in conn.execute(
            "SELECT c.relname::text FROM pg_class AS c WHERE c.relnamespace = current_schema()::regnamespace "
            "AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND c.relname NOT IN ('schema_migrations', 'retention_settings') ORDER BY 1"
        ).fetchall()]
        return [t for t in TABLES if t in names] + [t for t in names if t not in TABLES]

    @staticmethod
    def _rollup_status(conn: psycopg.Connection, variant: str) -> dict[str, dict[str, Any]]:
        if not conn.execute("SELECT to_regclass('rollup_dirty') IS NOT NULL").fetchone()[0]:
            return {}
        pending = dict(conn.execute("SELECT rollup, count(*) FROM rollup_dirty GROUP BY 1").fetchall())
        kind = "continuous aggregate" if variant == "timescale" else "view"
        return {name: {"kind": kind, "pending_days": pending.get(name, 0)} for name, _ in ROLLUPS.values()
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]}

    def _table_status(self, conn: psycopg.Connection, table: str, variant: str) -> dict[str, Any]:
        hypertable = variant == "timescale" and conn.execute(
            "SELECT EXISTS (SELECT FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema = current_schema() AND hypertable_name = %s)", (table,)
        ).fetchone()[0]
        parts: dict[str, Any] = {}
        if hypertable:
            rows, size = conn.execute(
                "SELECT approximate_row_count(%s::regclass), hypertable_size(%s::regclass)", (table, table)
            ).fetchone()
            chunks = conn.execute(
                "SELECT range_start, range_end FROM timescaledb_information.chunks "
                "WHERE hypertable_schema = current_schema() AND hypertable_name = %s ORDER BY range_start",
                (table,),
            ).fetchall()
            parts["chunks"] = len(chunks)
            days = sorted({d for start, end in chunks for d in _days_between(start, end)})
        else:
            # pg_partition_tree has one row per partition of a partitioned table, none for a plain one.
            rows, size = conn.execute(
                "SELECT CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(greatest(l.reltuples, 0)), 0) "
                "FROM pg_partition_tree(c.oid) AS t JOIN pg_class AS l ON l.oid = t.relid WHERE t.isleaf) "
                "ELSE greatest(c.reltuples, 0) END::bigint, "
                "CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0) "
                "FROM pg_partition_tree(c.oid) AS t WHERE t.isleaf) ELSE pg_total_relation_size(c.oid) END::bigint "
                "FROM pg_class AS c WHERE c.oid = %s::regclass", (table,)
            ).fetchone()
            days = []
            if table in LIVE_TABLES and variant == "postgres":
                days = [day for (day,) in conn.execute("SELECT day FROM day_partitions(%s)", (table,)).fetchall()]
                parts["partitions"] = len(days)
        exact = rows is None or rows < _EXACT_COUNT_BELOW
        if exact:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
        if table in LIVE_TABLES:
            oldest, newest = _first_day_with_rows(conn, table, days), _first_day_with_rows(conn, table, days[::-1])
        else:
            oldest, newest = _time_bounds(conn, table, small=exact)
        return {"rows": int(rows), "rows_exact": exact, "bytes": int(size or 0),
                "oldest": _iso(oldest), "newest": _iso(newest), **parts}


def _days_between(start: datetime, end: datetime) -> list[date]:
    """The New York days that [start, end) meets."""
    first, last = start.astimezone(NEW_YORK).date(), (end - timedelta(microseconds=1)).astimezone(NEW_YORK).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _first_day_with_rows(conn: psycopg.Connection, table: str, days: list[date]) -> date | None:
    """The first of `days` (New York dates) on which `table` holds a row; each probe reads one
    partition or chunk, and stops at its first row."""
    for day in days:
        start = datetime.combine(day, datetime.min.time(), tzinfo=NEW_YORK)
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=NEW_YORK)
        if conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE ts >= {} AND ts < {})").format(
                sql.Identifier(table), sql.Literal(start), sql.Literal(end))).fetchone()[0]:
            return day
    return None


def _time_bounds(conn: psycopg.Connection, table: str, *, small: bool) -> tuple[Any, Any]:
    """The least and greatest value of `table`'s first date or time column, when the table is
    small or an index leads with that column (else (None, None): a scan would be too long)."""
    row = conn.execute(
        "SELECT a.attname::text, EXISTS (SELECT FROM pg_index AS i WHERE i.indrelid = a.attrelid "
        "AND i.indkey[0] = a.attnum AND i.indpred IS NULL) "
        "FROM pg_attribute AS a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
        "AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) "
        "ORDER BY a.attnum LIMIT 1", (table,)
    ).fetchone()
    if row is None or not (small or row[1]):
        return None, None
    column = sql.Identifier(row[0])
    return conn.execute(sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(
        c=column, t=sql.Identifier(table))).fetchone()
