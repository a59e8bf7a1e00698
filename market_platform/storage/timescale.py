"""The tick store: quotes, trades and minute bars in PostgreSQL, with TimescaleDB when it is there.

`TickStore` is a facade over one module per responsibility, which is where the code is:

- `server.py`: where the store lives (`MARKET_DB_URL` or the embedded server), URLs, databases,
  and the one connection a store keeps (`StoreConnection`);
- `migrations.py`: the schema variant (`timescale` or `postgres`), the numbered migrations of
  `sql/` and the retention settings (`Schema`);
- `writers.py`: the COPY write path of quotes, trades, bars and universe snapshots, and the
  stream's bookkeeping (stream_stats, stream_gaps, dead_letters) (`Writers`);
- `refresh.py`: which rollup buckets minutes written behind their watermark left stale, and
  their refresh (`Refresher`: `refresh_rollups`);
- `maintenance.py`: day partitions ahead, retention, the rollup refresh, and `status()`
  (`Maintenance`);
- `reads.py`: `read_arrow` and `read_bars` (`Reads`);
- `snapshots.py`: the minute snapshots, their queue table, missed minutes and silent-stall gaps
  (`SnapshotStore`).

Each module's docstring tells its part. Connections: a `TickStore` keeps one connection,
opened on first use and reopened after it breaks; its methods are serialised by a lock, so a
store may be shared between threads, but writers that must run in parallel (the streamer's
worker thread, an asset) should each use a `TickStore` of their own. `connect()` hands out a
fresh connection the caller owns. A lost server raises `DatabaseUnavailableError` (the streamer
spools and retries on it).
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from market_platform.errors import InvalidInputError
from market_platform.schemas import KEYS
from market_platform.storage.maintenance import Maintenance, aware
from market_platform.storage.migrations import (
    LIVE_TABLES,
    MIN_BARS_DAYS_WITH_ROLLUPS,
    MIN_SERVER_VERSION,
    MIN_TIMESCALEDB,
    ROLLUP_REFRESH_WINDOWS,
    TABLES,
    VARIANTS,
    Migration,
    Retention,
    Schema,
    migrations,
)
from market_platform.storage.reads import Reads
from market_platform.storage.refresh import ROLLUPS, Refresher
from market_platform.storage.server import (
    EMBEDDED_DATABASE,
    StoreConnection,
    _validated,
    create_database,
    dagster_storage_url,
    database_url,
    drop_database,
    redact,
    start_embedded,
    stop_embedded,
)
from market_platform.storage.snapshots import SnapshotStore
from market_platform.storage.writers import Writers

__all__ = [
    "EMBEDDED_DATABASE", "KEYS", "LIVE_TABLES", "MIN_BARS_DAYS_WITH_ROLLUPS", "MIN_SERVER_VERSION",
    "MIN_TIMESCALEDB", "ROLLUPS", "ROLLUP_REFRESH_WINDOWS", "TABLES", "VARIANTS", "Migration", "Retention",
    "TickStore", "create_database",
    "dagster_storage_url", "database_url", "drop_database", "init_database", "migrations", "redact",
    "start_embedded", "stop_embedded",
]


def _delegate(part: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """A `TickStore` method that calls `method` of the store's `part`, with its name, signature
    and docstring."""

    @functools.wraps(method)
    def call(self: TickStore, *args: Any, **kwargs: Any) -> Any:
        return method(getattr(self, part), *args, **kwargs)

    return call


class TickStore:
    """The live tick store in one PostgreSQL database (see the module docstring).

    `retention=None` keeps the retention the database has (the `Retention` defaults on a new
    one); a `Retention` given here is written by `init_schema()` and applied from then on.
    `skip_stored` says when deduplicating writes read what is stored before inserting (see
    `Writers`: by default where the batch meets compressed chunks).
    """

    def __init__(
        self,
        url: str,
        *,
        retention: Retention | None = None,
        sql_root: Path | None = None,
        connect_timeout: float = 5,
        skip_stored: str = "compressed",
    ) -> None:
        self._connection = StoreConnection(_validated(url, "url"), timeout=connect_timeout)
        self._schema = Schema(self._connection, retention=retention, sql_root=sql_root)
        self._refresher = Refresher(self._connection, self._schema)
        self._maintenance = Maintenance(self._connection, self._schema, self._refresher)
        self._writers = Writers(self._connection, self._schema, self._maintenance, skip_stored=skip_stored)
        self._reads = Reads(self._connection, self._schema, self._refresher)
        self._snapshots = SnapshotStore(self._connection, self._schema)

    @property
    def url(self) -> str:
        return self._connection.url

    @property
    def retention(self) -> Retention | None:
        return self._schema.retention

    @retention.setter
    def retention(self, value: Retention | None) -> None:
        self._schema.retention = value

    @classmethod
    def from_settings(cls, url: str | None = None, **kwargs: Any) -> "TickStore":
        """A store on `database_url(url)`: `url`, `MARKET_DB_URL` or the embedded server."""
        return cls(database_url(url), **kwargs)

    def __repr__(self) -> str:
        return f"TickStore({redact(self.url)!r})"

    def __enter__(self) -> "TickStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    connect = _delegate("_connection", StoreConnection.connect)
    close = _delegate("_connection", StoreConnection.close)

    has_timescaledb = _delegate("_schema", Schema.has_timescaledb)
    variant = _delegate("_schema", Schema.variant)
    init_schema = _delegate("_schema", Schema.init_schema)

    maintain = _delegate("_maintenance", Maintenance.maintain)
    status = _delegate("_maintenance", Maintenance.status)

    pending_rollups = _delegate("_refresher", Refresher.pending)

    def refresh_rollups(
        self,
        *,
        now: datetime | None = None,
        timeframes: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Refresh the rollup buckets that minutes written behind their watermark left stale,
        of `timeframes` (default all of "5m", "15m", "1h", "1d") and within [start, end)
        (default all time); see storage/refresh.py. Returns {"refreshed", "deferred":
        [{"rollup", "day", "start", "end"}]}: deferred ranges are open buckets, served by
        real-time aggregation until they close."""
        for name, value in (("start", start), ("end", end)):
            if value is not None:
                aware(value, name)
        unknown = sorted(set(timeframes or ()) - set(ROLLUPS))
        if unknown:
            raise InvalidInputError(f"unknown timeframes {unknown}: expected any of {', '.join(ROLLUPS)}")
        rollups = [ROLLUPS[t][0] for t in timeframes] if timeframes is not None else None
        return self._refresher.refresh(now=now, rollups=rollups, start=start, end=end).report()

    write_quotes = _delegate("_writers", Writers.write_quotes)
    write_trades = _delegate("_writers", Writers.write_trades)
    write_bars = _delegate("_writers", Writers.write_bars)
    write_universe = _delegate("_writers", Writers.write_universe)
    write_corporate_actions = _delegate("_writers", Writers.write_corporate_actions)
    write_stream_stats = _delegate("_writers", Writers.write_stream_stats)
    record_gap = _delegate("_writers", Writers.record_gap)
    close_gap = _delegate("_writers", Writers.close_gap)
    witness_gaps = _delegate("_writers", Writers.witness_gaps)
    mark_gap_repaired = _delegate("_writers", Writers.mark_gap_repaired)
    mark_gap_repair_failed = _delegate("_writers", Writers.mark_gap_repair_failed)
    write_dead_letters = _delegate("_writers", Writers.write_dead_letters)

    read_arrow = _delegate("_reads", Reads.read_arrow)
    read_bars = _delegate("_reads", Reads.read_bars)
    universe_symbols = _delegate("_reads", Reads.universe_symbols)

    write_snapshots = _delegate("_snapshots", SnapshotStore.write_snapshots)
    maintain_snapshots = _delegate("_snapshots", SnapshotStore.maintain_snapshots)
    enqueue_snapshot = _delegate("_snapshots", SnapshotStore.enqueue_snapshot)
    claim_snapshot_batch = _delegate("_snapshots", SnapshotStore.claim_snapshot_batch)
    snapshot_queue_stats = _delegate("_snapshots", SnapshotStore.snapshot_queue_stats)
    dead_letter_snapshots = _delegate("_snapshots", SnapshotStore.dead_letter_snapshots)
    record_snapshot_miss = _delegate("_snapshots", SnapshotStore.record_snapshot_miss)
    record_stall = _delegate("_snapshots", SnapshotStore.record_stall)
    stalls = _delegate("_snapshots", SnapshotStore.stalls)


def init_database(url: str | None = None, *, retention: Retention | None = None,
                  now: datetime | None = None) -> dict[str, Any]:
    """What `market-platform db init` does: resolve the URL (starting the embedded server if
    need be), apply pending migrations, run `maintain()`, and report.

    Returns {"applied": [migration names], "maintain": maintain()'s dict, "status": status()}.
    """
    with TickStore.from_settings(url, retention=retention) as store:
        applied = store.init_schema()
        return {"applied": applied, "maintain": store.maintain(now=now), "status": store.status()}
