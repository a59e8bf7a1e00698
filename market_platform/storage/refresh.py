"""Keeping the rollups (bars_5m, bars_15m, bars_1h, bars_1d) up to date with bars_1m after writes
behind their watermark: the bookkeeping of `rollup_dirty` (sql/common/0040_rollup_dirty.sql).

On TimescaleDB the rollups are continuous aggregates. Real-time aggregation computes only the
buckets after the watermark, and the refresh policies only look back a few days, so a minute
written behind the watermark (a late correction, a gap repair, a replayed past session, any
job's bars) would leave its buckets stale. The writer records the minutes it inserted or changed
per rollup and New York day in `rollup_dirty`, in the same transaction as the bars, and
`Refresher.refresh` (run by `maintain()`, the `rollup_refresh_schedule`, and `read_bars` for what
it reads) refreshes exactly those buckets with `refresh_continuous_aggregate`, then deletes the
row. On plain PostgreSQL the rollups are views, always current: the same bookkeeping runs, and a
refresh only deletes the row.

What to refresh is decided by `plan` alone, a pure function of the pending rows and the time:
the buckets of a row are refreshed once closed (those before the bucket running at `now`),
whatever their age; the open bucket stays pending, served meanwhile by real-time aggregation
(neither this refresh nor a policy, whose `end_offset` is one bucket, moves the watermark past
it). A refreshed bucket holds the rollup of the minutes bars_1m holds then, as the plain views
do: minutes written into a day that retention had dropped before are rolled up alone.

A row is deleted (or trimmed to its open bucket) only at the version read before the refresh,
so minutes written while it runs stay pending and are refreshed next time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable, Sequence
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from market_platform.errors import InvalidInputError
from market_platform.storage.migrations import Schema
from market_platform.storage.server import StoreConnection

NEW_YORK = ZoneInfo("America/New_York")
UTC = timezone.utc

#: Rollup timeframes: relation name and bucket width.
ROLLUPS: dict[str, tuple[str, timedelta]] = {
    "5m": ("bars_5m", timedelta(minutes=5)),
    "15m": ("bars_15m", timedelta(minutes=15)),
    "1h": ("bars_1h", timedelta(hours=1)),
    "1d": ("bars_1d", timedelta(days=1)),
}
_WIDTHS: dict[str, timedelta] = dict(ROLLUPS.values())
ROLLUP_NAMES: tuple[str, ...] = tuple(_WIDTHS)

_EPOCH = datetime(2000, 1, 3, tzinfo=UTC)  # time_bucket's origin; whole days from the Unix epoch


def bucket_start(rollup: str, ts: datetime) -> datetime:
    """The start of the bucket of `rollup` that holds `ts`: New York midnight for bars_1d, else
    the UTC bucket of its width (New York's UTC offset is a whole number of hours)."""
    width = _WIDTHS[rollup]
    if width == timedelta(days=1):
        return datetime.combine(ts.astimezone(NEW_YORK).date(), time(0), tzinfo=NEW_YORK).astimezone(UTC)
    return ts.astimezone(UTC) - (ts - _EPOCH) % width


def bucket_end(rollup: str, start: datetime) -> datetime:
    """The end of the bucket of `rollup` that starts at `start` (the next New York midnight for
    bars_1d: 23 or 25 hours later on the days DST starts or ends)."""
    if _WIDTHS[rollup] == timedelta(days=1):
        day = start.astimezone(NEW_YORK).date() + timedelta(days=1)
        return datetime.combine(day, time(0), tzinfo=NEW_YORK).astimezone(UTC)
    return start + _WIDTHS[rollup]


@dataclass(frozen=True)
class DirtyRange:
    """One row of rollup_dirty: minutes first_ts..last_ts (starts, inclusive) of New York day
    `day` that `rollup` has not caught up with, at `version`."""

    rollup: str
    day: date
    first_ts: datetime
    last_ts: datetime
    version: int = 1

    def window(self) -> tuple[datetime, datetime]:
        """The buckets holding the minutes: [start of the first, end of the last)."""
        return bucket_start(self.rollup, self.first_ts), bucket_end(self.rollup, bucket_start(self.rollup, self.last_ts))


@dataclass(frozen=True)
class Step:
    """What `plan` decided for one pending range: "refresh" [start, end) (then delete the row,
    or trim it to `keep_from` when its open bucket stays pending), or "defer" (only its open
    bucket is dirty)."""

    range: DirtyRange
    action: str
    start: datetime
    end: datetime
    keep_from: datetime | None = None

    def report(self) -> dict[str, Any]:
        return {"rollup": self.range.rollup, "day": self.range.day.isoformat(),
                "start": self.start.isoformat(), "end": self.end.isoformat()}


def plan(pending: Iterable[DirtyRange], *, now: datetime) -> list[Step]:
    """What to do with each pending range at `now` (see the module docstring)."""
    steps = []
    for dirty in pending:
        start, end = dirty.window()
        open_bucket = bucket_start(dirty.rollup, now)
        closed_end = min(end, open_bucket)
        if closed_end <= start:
            steps.append(Step(dirty, "defer", start, end))
        else:
            steps.append(Step(dirty, "refresh", start, closed_end, open_bucket if end > open_bucket else None))
    return steps


@dataclass
class RefreshResult:
    """What a refresh did: the ranges refreshed, and those deferred (open buckets)."""

    refreshed: list[Step] = field(default_factory=list)
    deferred: list[Step] = field(default_factory=list)

    def report(self) -> dict[str, list[dict[str, Any]]]:
        return {name: [step.report() for step in getattr(self, name)] for name in ("refreshed", "deferred")}


class Refresher:
    """The rollup refresh of the database behind `connection`.

    `materialized` says whether the rollups are continuous aggregates to refresh with
    `CALL refresh_continuous_aggregate` (default: when the schema variant is "timescale").
    """

    def __init__(self, connection: StoreConnection, schema: Schema, *, materialized: bool | None = None) -> None:
        self._connection = connection
        self._schema = schema
        self._materialized = materialized

    def pending(
        self,
        *,
        rollups: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[DirtyRange]:
        """The pending ranges of `rollups` (default all) whose buckets meet [start, end)."""
        with self._connection.session() as conn, conn.transaction():
            return self._pending(conn, rollups, start, end)

    @staticmethod
    def _pending(
        conn: psycopg.Connection, rollups: Sequence[str] | None, start: datetime | None, end: datetime | None
    ) -> list[DirtyRange]:
        wanted = list(rollups) if rollups is not None else list(ROLLUP_NAMES)
        unknown = sorted(set(wanted) - set(ROLLUP_NAMES))
        if unknown:
            raise InvalidInputError(f"unknown rollups {unknown}: expected any of {', '.join(ROLLUP_NAMES)}")
        if not conn.execute("SELECT to_regclass('rollup_dirty') IS NOT NULL").fetchone()[0]:
            return []  # a schema from before it (init_schema adds it)
        # The New York days a bucket meeting [start, end) can hold minutes of, a day either side.
        rows = conn.execute(
            "SELECT rollup, day, first_ts, last_ts, version FROM rollup_dirty "
            "WHERE rollup = ANY(%s) AND (%s::date IS NULL OR day >= %s::date - 1) "
            "AND (%s::date IS NULL OR day <= %s::date + 1) ORDER BY rollup, day",
            (wanted, *[(d.astimezone(NEW_YORK).date() if d else None) for d in (start, start, end, end)]),
        ).fetchall()
        found = [DirtyRange(*row) for row in rows]
        return [
            dirty for dirty in found
            if (start is None or dirty.window()[1] > start) and (end is None or dirty.window()[0] < end)
        ]

    def refresh(
        self,
        *,
        now: datetime | None = None,
        rollups: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> RefreshResult:
        """Refresh the pending ranges of `rollups` (default all) whose buckets meet [start, end)
        (default all), as `plan` decides at `now`; return what was done."""
        now = now or datetime.now(UTC)
        with self._connection.session() as conn:
            with conn.transaction():
                variant = self._schema.variant_of(conn)
                pending = self._pending(conn, rollups, start, end)
        materialized = variant == "timescale" if self._materialized is None else self._materialized
        result = RefreshResult()
        for step in plan(pending, now=now):
            if step.action == "defer":
                result.deferred.append(step)
                continue
            if materialized:
                self._refresh_continuous_aggregate(step)
            self._settle(step)
            result.refreshed.append(step)
        return result

    def _refresh_continuous_aggregate(self, step: Step) -> None:
        # A procedure that cannot run inside a transaction block: a connection of its own, in
        # autocommit, so the store's connection and its lock are not held while it runs.
        with self._connection.connect(autocommit=True) as conn:
            conn.execute(
                "CALL refresh_continuous_aggregate(%s::regclass, %s::timestamptz, %s::timestamptz)",
                (step.range.rollup, step.start, step.end),
            )

    def _settle(self, step: Step) -> None:
        """Delete the step's row, or trim it to its open bucket, if no write changed it since."""
        key = (step.range.rollup, step.range.day, step.range.version)
        with self._connection.session() as conn, conn.transaction():
            if step.keep_from is not None:
                conn.execute(
                    "UPDATE rollup_dirty SET first_ts = %s WHERE rollup = %s AND day = %s AND version = %s",
                    (step.keep_from, *key),
                )
            else:
                conn.execute("DELETE FROM rollup_dirty WHERE rollup = %s AND day = %s AND version = %s", key)


def note_changes_sql(changed: sql.Composable) -> sql.Composed:
    """A statement that runs the data-modifying `changed` (an INSERT into bars_1m ... RETURNING
    ts), records the minutes it returned in rollup_dirty for every rollup, one row per New York
    day, and returns how many rows it changed."""
    return sql.SQL(
        "WITH changed AS ({changed}), "
        "spans AS (SELECT (ts AT TIME ZONE 'America/New_York')::date AS day, min(ts) AS first_ts, "
        "max(ts) AS last_ts, count(*) AS n FROM changed GROUP BY 1), "
        "noted AS (INSERT INTO rollup_dirty AS d (rollup, day, first_ts, last_ts) "
        "SELECT r.rollup, s.day, s.first_ts, s.last_ts FROM spans AS s CROSS JOIN unnest({rollups}::text[]) AS r(rollup) "
        # A fixed order: two writers of the same days lock the rows in the same order.
        "ORDER BY 1, 2 "
        "ON CONFLICT (rollup, day) DO UPDATE SET first_ts = LEAST(d.first_ts, EXCLUDED.first_ts), "
        "last_ts = GREATEST(d.last_ts, EXCLUDED.last_ts), version = d.version + 1, noted_at = now()) "
        "SELECT coalesce(sum(n), 0)::bigint FROM spans"
    ).format(changed=changed, rollups=sql.Literal(list(ROLLUP_NAMES)))
