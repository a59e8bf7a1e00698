"""The tick store's write path: quotes, trades, bars, universe snapshots and stream bookkeeping
(stream_stats, stream_gaps, dead_letters).

Writes: Arrow tables in the schemas of `market_platform.schemas`, sent with binary COPY built
from the Arrow buffers (`pgbinary`), through a temporary staging table where duplicates are
possible, so writes are idempotent by natural key. Where the batch's range meets compressed
chunks (TimescaleDB's columnstore), the staged rows stored already are dropped first, so nothing
stored is decompressed (`Writers`, `skip_stored`). Bars record the minutes they insert or change
in rollup_dirty, in the same transaction, for the rollups' refresh (storage/refresh.py).
Timestamps keep microseconds (PostgreSQL's precision); the nanoseconds of Arrow timestamps are
truncated.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from psycopg.pq import TransactionStatus

from market_platform.errors import InvalidInputError
from market_platform.schemas import BARS, CORPORATE_ACTIONS, KEYS, QUOTES, TRADES, UNIVERSE, conform
from market_platform.storage import pgbinary
from market_platform.storage.maintenance import Maintenance, aware
from market_platform.storage.migrations import LIVE_TABLES, Schema
from market_platform.storage.refresh import note_changes_sql
from market_platform.storage.server import StoreConnection, one_line

UTC = timezone.utc


def _keep_last(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """`table` with one row per key (the last one), keys compared at PostgreSQL's precision."""
    if table.num_rows < 2:
        return table
    probe = pa.table({name: table.column(name) for name in keys})
    if "ts" in keys:
        probe = probe.set_column(probe.schema.get_field_index("ts"), "ts",
                                 pc.cast(table.column("ts"), pa.timestamp("us", "UTC"), safe=False))
    probe = probe.append_column("__row", pa.array(np.arange(table.num_rows)))
    last = probe.group_by(list(keys), use_threads=False).aggregate([("__row", "max")]).column("__row_max")
    if len(last) == table.num_rows:
        return table
    return table.take(np.sort(last.to_numpy()))  # keeps the batch's order


def _time_range(table: pa.Table) -> tuple[datetime, datetime]:
    """The first and last ts of `table`, at PostgreSQL's precision (microseconds)."""
    bounds = pc.min_max(pc.cast(table.column("ts"), pa.timestamp("us", "UTC"), safe=False))
    return bounds["min"].as_py(), bounds["max"].as_py()


def _duplicate_keys(table: pa.Table, keys: Sequence[str]) -> list[dict[str, Any]]:
    counts = table.select(list(keys)).group_by(list(keys)).aggregate([([], "count_all")])
    return counts.filter(pc.greater(counts.column("count_all"), 1)).select(list(keys)).to_pylist()


def _escape_nul(value: Any) -> Any:
    """`value` with each NUL of its strings, dict keys included, written as `\\u0000` (see
    `Writers.write_dead_letters`)."""
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    if isinstance(value, Mapping):
        return {_escape_nul(key): _escape_nul(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape_nul(item) for item in value]
    return value


#: The natural key of each live table (schemas.KEYS by table name).
_TABLE_KEYS = {"quotes": KEYS["quotes"], "trades": KEYS["trades"], "bars_1m": KEYS["bars"]}
#: How long the compressed chunk ranges of a hypertable are trusted before they are read again.
_COMPRESSED_TTL_S = 60.0
SKIP_STORED = ("compressed", "always", "never")


class Writers:
    """The writers of the database behind `connection`; day partitions come from `maintenance`.

    `skip_stored` says when a deduplicating write (quotes, trades, bars) first drops the rows of
    its batch already stored unchanged, reading the keys of the batch's time range, before it
    inserts: "compressed" (default) when that range meets a compressed (columnstore) chunk on
    TimescaleDB, "always", or "never". An INSERT ... ON CONFLICT that meets a stored key in a
    compressed chunk decompresses the key's batch into the row store, even when it then changes
    nothing; reading compares in memory and moves nothing. Uncompressed data keeps the plain
    ON CONFLICT path, whose rates benchmarks/copy_throughput.py tracks (on plain PostgreSQL,
    benchmarks/redelivered_quotes.py finds reading first no slower, and faster when the whole
    batch is stored already).
    """

    def __init__(
        self, connection: StoreConnection, schema: Schema, maintenance: Maintenance, *, skip_stored: str = "compressed"
    ) -> None:
        if skip_stored not in SKIP_STORED:
            raise InvalidInputError(f"skip_stored={skip_stored!r}: expected one of {', '.join(SKIP_STORED)}")
        self._connection = connection
        self._schema = schema
        self._maintenance = maintenance
        self.skip_stored = skip_stored
        self._compressed: dict[str, tuple[float, list[tuple[datetime, datetime]]]] = {}

    def write_quotes(self, table: pa.Table, *, dedupe: bool = True) -> int:
        """Insert quotes (schemas.QUOTES); returns the rows inserted.

        dedupe=True ignores rows whose (symbol, ts, seq) is stored already or repeats in the
        batch. dedupe=False COPYs straight into the table (faster) and raises
        InvalidInputError, storing nothing, if any key is already there.
        """
        return self._write("quotes", conform(table, QUOTES), "ignore" if dedupe else "append")

    def write_trades(self, table: pa.Table, *, dedupe: bool = True) -> int:
        """Insert trades (schemas.TRADES), keyed by (symbol, ts, exchange, trade_id); as
        `write_quotes`."""
        return self._write("trades", conform(table, TRADES), "ignore" if dedupe else "append")

    def write_bars(self, table: pa.Table) -> int:
        """Upsert one-minute bars (schemas.BARS) into bars_1m; returns rows inserted or changed.

        A bar whose (symbol, ts, source) exists is replaced when any value differs (a late
        correction) and left alone when equal, so a rerun returns 0. Within the batch the last
        row of a key wins. The minutes inserted or changed are recorded in rollup_dirty in the
        same transaction, for `refresh_rollups()` (see storage/refresh.py).
        """
        bars = _keep_last(conform(table, BARS), KEYS["bars"])
        return self._write("bars_1m", bars, "upsert")

    def write_universe(self, table: pa.Table) -> int:
        """Store universe rows (schemas.UNIVERSE), replacing every (snapshot_date, category)
        snapshot the table holds; returns the rows inserted.

        Raises InvalidInputError naming the keys that repeat within the table.
        """
        rows = conform(table, UNIVERSE)
        duplicates = _duplicate_keys(rows, KEYS["universe"])
        if duplicates:
            raise InvalidInputError(
                f"universe rows repeat the key (snapshot_date, category, symbol): {duplicates[:5]}"
            )
        return self._write("universe", rows, "replace")

    def write_corporate_actions(self, table: pa.Table, *, source: str, start: Any = None, end: Any = None,
                                symbols: Sequence[str] | None = None) -> int:
        """Replace `source`'s stored corporate actions (schemas.CORPORATE_ACTIONS) with ex_date in
        [start, end] (None: unbounded) — with `symbols`, only those whose symbol or new_symbol is
        one of them — by `table`'s rows, in one transaction; returns the rows written.

        What a refresh of that window fetched is then exactly what the store holds for it.
        Raises InvalidInputError for rows of another source or repeated action ids.
        """
        rows = conform(table, CORPORATE_ACTIONS)
        other = rows.filter(pc.not_equal(rows.column("source"), source))
        if other.num_rows:
            raise InvalidInputError(f"corporate actions of source {other.column('source')[0].as_py()!r} in a write "
                                    f"of source {source!r}: expected only {source!r}")
        duplicates = _duplicate_keys(rows, KEYS["corporate_actions"])
        if duplicates:
            raise InvalidInputError(f"corporate actions repeat the key (action_id, source): {duplicates[:5]}")
        where = [sql.SQL("source = {}").format(sql.Literal(source))]
        if start is not None:
            where.append(sql.SQL("ex_date >= {}").format(sql.Literal(start)))
        if end is not None:
            where.append(sql.SQL("ex_date <= {}").format(sql.Literal(end)))
        if symbols is not None:
            names = sql.Literal(list(symbols))
            where.append(sql.SQL("(symbol = ANY({n}) OR new_symbol = ANY({n}))").format(n=names))
        with self._connection.session() as conn:
            stage = self._stage(conn, "corporate_actions")  # before the write's transaction (see _stage)
            with conn.transaction():
                return self._replace_actions(conn, stage, rows, where)

    def _replace_actions(self, conn: psycopg.Connection, stage: sql.Identifier, rows: pa.Table,
                         where: list[sql.Composable]) -> int:
        conn.execute(sql.SQL("DELETE FROM corporate_actions WHERE ") + sql.SQL(" AND ").join(where))
        if not rows.num_rows:
            return 0
        columns, _ = self._copy(conn, stage, rows)
        return conn.execute(sql.SQL(
            "INSERT INTO corporate_actions ({c}) SELECT {c} FROM {s} ON CONFLICT (action_id, source) DO UPDATE SET "
        ).format(c=columns, s=stage) + sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name))
            for name in CORPORATE_ACTIONS.names if name not in KEYS["corporate_actions"]
        )).rowcount

    def _write(self, target: str, table: pa.Table, mode: str) -> int:
        if table.num_rows == 0:
            return 0
        with self._connection.session() as conn:
            variant = self._schema.variant_of(conn)
            partitioned = target in LIVE_TABLES and variant == "postgres"
            skip = mode in ("ignore", "upsert") and self._skips(conn, variant, target, table)
            stage = self._stage(conn, target) if mode != "append" else None
            for attempt in (1, 2):
                if partitioned:
                    self._maintenance.ensure_partitions(conn, target, table.column("ts"))
                try:
                    with conn.transaction():
                        return self._copy_into(conn, target, table, mode, skip, stage)
                except psycopg.errors.CheckViolation as exc:
                    # A partition this store had seen was dropped since (maintain() elsewhere).
                    if attempt == 2 or not partitioned or "no partition" not in str(exc):
                        raise
                    self._maintenance.forget_partitions(target)
                except psycopg.errors.UniqueViolation as exc:
                    raise InvalidInputError(f"{target}: a row's key is stored already: {one_line(exc)}") from None
        raise AssertionError("unreachable")

    def _skips(self, conn: psycopg.Connection, variant: str, target: str, table: pa.Table) -> bool:
        """Whether this write drops the rows already stored first (see the class docstring)."""
        if self.skip_stored != "compressed":
            return self.skip_stored == "always"
        if variant != "timescale":
            return False
        low, high = _time_range(table)
        return any(start <= high and end > low for start, end in self._compressed_ranges(conn, target))

    def _compressed_ranges(self, conn: psycopg.Connection, target: str) -> list[tuple[datetime, datetime]]:
        """The time ranges of `target`'s compressed chunks, read at most every minute: a chunk
        compressed since only makes a write take the slower path, never a wrong one."""
        checked, ranges = self._compressed.get(target, (float("-inf"), []))
        if time.monotonic() - checked > _COMPRESSED_TTL_S:
            with conn.transaction():
                ranges = [tuple(row) for row in conn.execute(
                    "SELECT range_start, range_end FROM timescaledb_information.chunks "
                    "WHERE hypertable_schema = current_schema() AND hypertable_name = %s AND is_compressed",
                    (target,),
                ).fetchall()]
            self._compressed[target] = (time.monotonic(), ranges)
        return ranges

    def _stage(self, conn: psycopg.Connection, target: str) -> sql.Identifier:
        """The connection's staging table for `target`, created once, in a transaction of its own:
        created inside a write's, it would vanish with a write that rolls back while the cache
        still names it."""
        name = f"_stage_{target}"
        if name not in self._connection.staged:
            # Inside a caller's transaction the table lasts only as long as it: not cached then.
            committed = conn.info.transaction_status == TransactionStatus.IDLE
            # Per connection; emptied at every commit, so a failed write leaves nothing behind.
            with conn.transaction():
                conn.execute(
                    sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS").format(
                        sql.Identifier(name), sql.Identifier(target)
                    )
                )
            if committed:
                self._connection.staged.add(name)
        return sql.Identifier(name)

    @staticmethod
    def _copy(conn: psycopg.Connection, into: sql.Identifier, table: pa.Table) -> tuple[sql.Composable, int]:
        encoded = pgbinary.encode(table)
        columns = sql.SQL(", ").join(map(sql.Identifier, encoded.columns))
        cur = conn.cursor()
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(into, columns)) as copy:
            for chunk in encoded.chunks:
                copy.write(chunk)
        return columns, cur.rowcount

    @staticmethod
    def _drop_stored(conn: psycopg.Connection, target: str, stage: sql.Identifier, table: pa.Table, mode: str) -> None:
        """Delete from the staging table the rows `target` holds already (unchanged, for an
        upsert), reading only the batch's time range of `target` (its constant bounds let the
        planner skip every other partition or chunk)."""
        keys = _TABLE_KEYS[target]
        same = [sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(k)) for k in keys]
        if mode == "upsert":
            values = [sql.Identifier(c) for c in table.column_names if c not in keys]
            same.append(sql.SQL("({}) IS NOT DISTINCT FROM ({})").format(
                sql.SQL(", ").join(sql.SQL("t.{}").format(v) for v in values),
                sql.SQL(", ").join(sql.SQL("s.{}").format(v) for v in values),
            ))
        low, high = _time_range(table)
        conn.execute(sql.SQL("DELETE FROM {s} AS s USING {t} AS t WHERE t.ts >= {low} AND t.ts <= {high} AND {same}").format(
            s=stage, t=sql.Identifier(target), low=sql.Literal(low), high=sql.Literal(high),
            same=sql.SQL(" AND ").join(same),
        ))

    def _copy_into(self, conn: psycopg.Connection, target: str, table: pa.Table, mode: str, skip: bool,
                   stage: sql.Identifier | None) -> int:
        into = sql.Identifier(target)
        if stage is None:  # append
            return self._copy(conn, into, table)[1]
        columns, _ = self._copy(conn, stage, table)
        if skip:
            self._drop_stored(conn, target, stage, table, mode)
        insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(into, columns, columns, stage)
        if mode == "ignore":
            return conn.execute(insert + sql.SQL(" ON CONFLICT DO NOTHING")).rowcount
        if mode == "upsert":
            keys = KEYS["bars"]
            values = [sql.Identifier(name) for name in table.column_names if name not in keys]
            update = sql.SQL(
                " ON CONFLICT ({keys}) DO UPDATE SET {sets} WHERE ({old}) IS DISTINCT FROM ({new}) RETURNING ts"
            ).format(
                keys=sql.SQL(", ").join(map(sql.Identifier, keys)),
                sets=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(v, v) for v in values),
                old=sql.SQL(", ").join(sql.SQL("{}.{}").format(into, v) for v in values),
                new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(v) for v in values),
            )
            return conn.execute(note_changes_sql(insert + update)).fetchone()[0]
        if mode == "replace":
            conn.execute(
                sql.SQL(
                    "DELETE FROM {t} AS u USING (SELECT DISTINCT snapshot_date, category FROM {s}) AS s "
                    "WHERE u.snapshot_date = s.snapshot_date AND u.category = s.category"
                ).format(t=into, s=stage)
            )
            return conn.execute(insert).rowcount
        raise ValueError(f"unknown write mode {mode!r}")

    # -- stream bookkeeping ----------------------------------------------------------------

    # How a minute's row merges into one stored already (a rerun of a killed run's window, or
    # any second writer of the minute): its counts add, so the per-minute rows still sum to what
    # the table holds. The *_total columns are the writing run's running totals since it
    # started: the newer run's replace them (added, they would jump at the minutes both runs
    # wrote and fall back after). Queue depth and lag percentiles keep the larger value: a
    # gauge's worst reading is the one to alert on, and a percentile of two runs' lags taken
    # together lies between theirs, so the larger is a bound (GREATEST skips a NULL lag).
    _STREAM_STATS_MERGE: dict[str, str] = {
        **dict.fromkeys(("received", "quotes_inserted", "trades_inserted", "bars_inserted", "duplicates",
                         "dead_letters", "errors", "reconnects"), "{c} = stream_stats.{c} + EXCLUDED.{c}"),
        **dict.fromkeys(("quotes_total", "trades_total", "bars_total"), "{c} = EXCLUDED.{c}"),
        **dict.fromkeys(("queue_depth", "lag_p50_ms", "lag_p99_ms"), "{c} = GREATEST(stream_stats.{c}, EXCLUDED.{c})"),
    }
    _STREAM_STATS_COLUMNS = ("stream", "minute", *_STREAM_STATS_MERGE)

    def write_stream_stats(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Upsert stream_stats rows (one per stream and minute; keys are column names, `stream`
        and `minute` required, the counters default to 0); returns the rows written.

        A row for a minute stored already adds its counts to the stored ones (a rerun never
        overwrites a killed run's counts); see `_STREAM_STATS_MERGE` for the other columns."""
        if not rows:
            return 0
        names = sorted({name for row in rows for name in row})
        unknown = sorted(set(names) - set(self._STREAM_STATS_COLUMNS))
        if unknown or not {"stream", "minute"} <= set(names):
            raise InvalidInputError(
                f"stream_stats rows with columns {names}: expected stream, minute and any of "
                f"{', '.join(self._STREAM_STATS_COLUMNS[2:])}"
            )
        for row in rows:
            aware(row["minute"], "minute")
        counters = [name for name in names if name not in ("stream", "minute")]
        statement = sql.SQL(
            "INSERT INTO stream_stats ({cols}) VALUES ({vals}) ON CONFLICT (stream, minute) "
            "DO UPDATE SET {sets}"
        ).format(
            cols=sql.SQL(", ").join(map(sql.Identifier, names)),
            vals=sql.SQL(", ").join(map(sql.Placeholder, names)),
            sets=sql.SQL(", ").join(
                [sql.SQL(self._STREAM_STATS_MERGE[c]).format(c=sql.Identifier(c)) for c in counters]
                + [sql.SQL("recorded_at = now()")]
            ),
        )
        params = [{name: row.get(name, 0) for name in names} for row in rows]
        with self._connection.session() as conn, conn.transaction():
            conn.cursor().executemany(statement, params)
        return len(rows)

    def record_gap(
        self,
        stream: str,
        gap_start: datetime,
        gap_end: datetime | None = None,
        *,
        reason: str,
        symbols: Sequence[str] = (),
        detected_by: str = "stream",
    ) -> int:
        """Record a gap of `stream` (gap_end None while it lasts) found by `detected_by`
        (stream, minute_check, feed_health); returns its id."""
        aware(gap_start, "gap_start")
        if gap_end is not None and aware(gap_end, "gap_end") < gap_start:
            raise InvalidInputError(f"gap_end={gap_end} is before gap_start={gap_start}")
        with self._connection.session() as conn, conn.transaction():
            return conn.execute(
                "INSERT INTO stream_gaps (stream, gap_start, gap_end, symbols, reason, detected_by) "
                "VALUES (%s, %s, %s, %s, %s, ARRAY[%s]) RETURNING id",
                (stream, gap_start, gap_end, list(symbols), reason, detected_by),
            ).fetchone()[0]

    def witness_gaps(self, gap_ids: Sequence[int], detector: str) -> int:
        """Add `detector` to the detectors of the gaps `gap_ids` (a silence it found that another
        detector had recorded already: one row per silence); returns the rows changed."""
        if not gap_ids:
            return 0
        with self._connection.session() as conn, conn.transaction():
            return conn.execute(
                "UPDATE stream_gaps SET detected_by = array_append(detected_by, %s) "
                "WHERE id = ANY(%s) AND NOT %s = ANY(detected_by)",
                (detector, [int(i) for i in gap_ids], detector),
            ).rowcount

    def close_gap(self, gap_id: int, gap_end: datetime) -> None:
        """Set the end of an open gap."""
        with self._connection.session() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE stream_gaps SET gap_end = %s WHERE id = %s", (aware(gap_end, "gap_end"), gap_id)
            )
        if cur.rowcount != 1:
            raise InvalidInputError(f"no stream gap with id {gap_id}")

    def mark_gap_repaired(self, gap_id: int, *, repaired_bars: int, repaired_at: datetime | None = None,
                          repaired_quotes: int | None = None, repaired_trades: int | None = None,
                          repair_calls: int | None = None) -> None:
        """Record that a gap was backfilled with `repaired_bars` bars (and `repaired_quotes`
        quotes, `repaired_trades` trades, in `repair_calls` REST calls, when given)."""
        with self._connection.session() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE stream_gaps SET repaired_at = %s, repaired_bars = %s, repaired_quotes = %s, "
                "repaired_trades = %s, repair_calls = %s, repair_error = NULL WHERE id = %s",
                (aware(repaired_at, "repaired_at") if repaired_at else datetime.now(UTC), repaired_bars,
                 repaired_quotes, repaired_trades, repair_calls, gap_id),
            )
        if cur.rowcount != 1:
            raise InvalidInputError(f"no stream gap with id {gap_id}")

    def mark_gap_repair_failed(self, gap_id: int, error: str, *, repair_calls: int | None = None) -> None:
        """Record why a gap's repair failed (it stays unrepaired, for a later sweep)."""
        with self._connection.session() as conn, conn.transaction():
            cur = conn.execute("UPDATE stream_gaps SET repair_error = %s, repair_calls = %s WHERE id = %s",
                               (_escape_nul(error), repair_calls, gap_id))
        if cur.rowcount != 1:
            raise InvalidInputError(f"no stream gap with id {gap_id}")

    def write_dead_letters(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Store messages that could not be stored otherwise. Each row: stream, reason, and
        optionally raw (bytes), detail (JSON-able), received_at (default now).

        PostgreSQL's text and jsonb cannot hold NUL (U+0000), which a bad message may carry: in
        stream, reason and detail (keys and values) each NUL is written as the six characters
        `\\u0000`, JSON's spelling of it, so `text.replace("\\\\u0000", "\\x00")` restores it;
        raw (bytea) keeps the message byte for byte, NULs included."""
        if not rows:
            return 0
        params = []
        for row in rows:
            if not row.get("stream") or not row.get("reason"):
                raise InvalidInputError(f"dead letter {dict(row)!r}: expected a stream and a reason")
            params.append((
                row.get("received_at") or datetime.now(UTC), _escape_nul(row["stream"]), _escape_nul(row["reason"]),
                row.get("raw"),
                psycopg.types.json.Jsonb(_escape_nul(row["detail"])) if row.get("detail") is not None else None,
            ))
        with self._connection.session() as conn, conn.transaction():
            conn.cursor().executemany(
                "INSERT INTO dead_letters (received_at, stream, reason, raw, detail) VALUES (%s, %s, %s, %s, %s)",
                params,
            )
        return len(params)
