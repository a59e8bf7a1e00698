"""The tick store's schema: numbered migrations, the variant, and the retention settings.

`init_schema()` applies the numbered files of `sql/common/` and `sql/<variant>/` in order, one
transaction each, recorded in `schema_migrations`; a rerun applies nothing and a new file
applies alone. The variant is `timescale` when the extension is installed or loadable
(hypertables with 1-day chunks, compression, retention policies, continuous aggregates) and
`postgres` otherwise (PostgreSQL >= 15: range partitions by New York day that `maintain()`
creates ahead and drops past retention, rollups as views). Both have the same tables, columns
and queries. A database keeps the variant it was created with. On TimescaleDB the retention of
bars_1m must outlast the rollups' refresh windows (`Retention.check_rollups`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from market_platform import settings
from market_platform.errors import ConfigError, InvalidInputError, StorageError
from market_platform.storage.server import StoreConnection, redact

VARIANTS = ("postgres", "timescale")
#: Tables partitioned by day (plain PostgreSQL) or hypertables with retention (TimescaleDB).
LIVE_TABLES = ("quotes", "trades", "bars_1m")
#: Every table `status()` reports on.
TABLES = (*LIVE_TABLES, "stream_stats", "stream_gaps", "dead_letters", "universe")
MIN_SERVER_VERSION = 150000
#: by_range() and time zones in continuous aggregates (2.13), the columnstore names (2.18).
MIN_TIMESCALEDB = (2, 18)
#: How far back the refresh policy of each TimescaleDB rollup reaches (its start_offset in
#: sql/timescale/0041..0044). A refresh over minutes that retention dropped deletes their rollups,
#: so bars_1m must be kept longer than the longest window: see `Retention.check_rollups`.
ROLLUP_REFRESH_WINDOWS: dict[str, timedelta] = {
    "bars_5m": timedelta(days=3),
    "bars_15m": timedelta(days=3),
    "bars_1h": timedelta(days=7),
    "bars_1d": timedelta(days=30),
}
#: The longest window, plus a day for its oldest New York-day bucket (a retention policy drops
#: whole 24-hour chunks) and a day for the policies running at different times.
MIN_BARS_DAYS_WITH_ROLLUPS = max(ROLLUP_REFRESH_WINDOWS.values()).days + 2

_INIT_LOCK = 0x6D70_7363_6865_6D61  # "mpschema": serialises concurrent init_schema() calls
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Retention:
    """Days of each live table to keep (TimescaleDB retention policies; `maintain()` on plain
    PostgreSQL). A day is a New York calendar day on plain PostgreSQL, 24 hours on TimescaleDB."""

    quotes_days: int = 30
    trades_days: int = 30
    bars_days: int = 365

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"Retention.{name}={value!r}: expected a whole number of days >= 1")

    def by_table(self) -> dict[str, int]:
        return {"quotes": self.quotes_days, "trades": self.trades_days, "bars_1m": self.bars_days}

    def check_rollups(self) -> None:
        """Raise ConfigError when bars_1m would be dropped inside a rollup's refresh window.

        On TimescaleDB the rollups are continuous aggregates, which keep their rows after the
        minutes are dropped, until a refresh over those minutes deletes them; the refresh
        policies look back up to 30 days (`ROLLUP_REFRESH_WINDOWS`), so bars_1m must be kept at
        least `MIN_BARS_DAYS_WITH_ROLLUPS` days. (On plain PostgreSQL the rollups are views of
        bars_1m and follow its retention.)"""
        if self.bars_days < MIN_BARS_DAYS_WITH_ROLLUPS:
            longest = max(ROLLUP_REFRESH_WINDOWS, key=ROLLUP_REFRESH_WINDOWS.__getitem__)
            raise ConfigError(
                f"Retention.bars_days={self.bars_days} (bars_retention_days of the tick_store resource) "
                f"would drop minutes that the refresh of {longest} ({ROLLUP_REFRESH_WINDOWS[longest].days} days back) "
                f"still covers, and TimescaleDB would delete their rollups: expected at least "
                f"{MIN_BARS_DAYS_WITH_ROLLUPS} days"
            )


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file of `sql/common/` or `sql/<variant>/`."""

    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations(variant: str, sql_root: Path | None = None) -> list[Migration]:
    """The migrations of `variant` in the order they apply: `common/` and `<variant>/` merged
    by number. Raises StorageError for a misnamed file or a number used twice."""
    if variant not in VARIANTS:
        raise InvalidInputError(f"unknown schema variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    root = sql_root or settings.sql_dir()
    found: dict[int, Migration] = {}
    for folder in (root / "common", root / variant):
        for path in sorted(folder.glob("*.sql")):
            match = _MIGRATION_FILE.match(path.name)
            if not match:
                raise StorageError(f"migration file {path} is misnamed: expected NNNN_name.sql")
            version = int(match.group(1))
            if version in found:
                raise StorageError(f"migrations {found[version].path} and {path} share number {version}")
            found[version] = Migration(version, path.stem, path)
    return [found[version] for version in sorted(found)]



class Schema:
    """The schema of the database behind `connection`: its variant (cached once recorded),
    its migrations and its retention.

    `retention=None` keeps the retention the database has (the `Retention` defaults on a new
    one); a `Retention` given here is written by `init_schema()` and applied from then on.
    """

    def __init__(
        self, connection: StoreConnection, *, retention: Retention | None = None, sql_root: Path | None = None
    ) -> None:
        self._connection = connection
        self.retention = retention
        self.sql_root = sql_root or settings.sql_dir()
        self._variant: str | None = None

    @staticmethod
    def timescaledb_version(conn: psycopg.Connection) -> str | None:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        return row[0] if row else None

    @staticmethod
    def timescaledb_loadable(conn: psycopg.Connection) -> bool:
        available = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb')"
        ).fetchone()[0]
        if not available:
            return False
        try:
            with conn.transaction():
                preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
        except psycopg.errors.InsufficientPrivilege:
            return True  # cannot tell; CREATE EXTENSION will say why if it is not preloaded
        return "timescaledb" in (preload or "")

    def has_timescaledb(self) -> bool:
        """Whether the database has TimescaleDB installed, or can load it (available and in
        shared_preload_libraries)."""
        with self._connection.session() as conn:
            return self.timescaledb_version(conn) is not None or self.timescaledb_loadable(conn)

    def recorded_variant(self, conn: psycopg.Connection) -> str | None:
        if self._variant is None:
            with conn.transaction():
                exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
                row = conn.execute("SELECT variant FROM schema_migrations LIMIT 1").fetchone() if exists else None
            self._variant = row[0] if row else None
        return self._variant

    def variant_of(self, conn: psycopg.Connection) -> str:
        # In a transaction block of its own: a bare SELECT would open an implicit transaction,
        # turning the caller's next `conn.transaction()` into a savepoint that `session()`
        # rolls back at the end (a fresh store's first write was lost that way).
        recorded = self.recorded_variant(conn)
        if recorded:
            return recorded
        with conn.transaction():
            if self.timescaledb_version(conn) is not None or self.timescaledb_loadable(conn):
                return "timescale"
        return "postgres"

    def variant(self) -> str:
        """The schema variant, "timescale" or "postgres": the one the database was created
        with, else the one `init_schema()` would pick now."""
        with self._connection.session() as conn:
            return self.variant_of(conn)

    def _check_server(self, conn: psycopg.Connection, variant: str) -> None:
        if variant == "postgres" and conn.info.server_version < MIN_SERVER_VERSION:
            raise StorageError(
                f"the tick store at {redact(self._connection.url)} runs PostgreSQL {conn.info.server_version}: "
                "expected >= 15 (or TimescaleDB)"
            )
        if variant == "timescale":
            version = self.timescaledb_version(conn)
            if version is not None and tuple(int(p) for p in re.findall(r"\d+", version)[:2]) < MIN_TIMESCALEDB:
                raise StorageError(
                    f"the tick store at {redact(self._connection.url)} has TimescaleDB {version}: "
                    f"expected >= {'.'.join(map(str, MIN_TIMESCALEDB))}"
                )

    # -- schema ----------------------------------------------------------------------------

    def init_schema(self) -> list[str]:
        """Apply the migrations the database lacks; return their names (empty on a rerun).

        Concurrent callers wait for each other (an advisory lock). Raises StorageError when an
        applied migration's file has changed since (add a new migration instead).
        """
        with self._connection.session() as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_lock(%s)", (_INIT_LOCK,))
            try:
                return self._migrate(conn)
            finally:
                if not conn.broken:
                    conn.rollback()
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_unlock(%s)", (_INIT_LOCK,))

    def _migrate(self, conn: psycopg.Connection) -> list[str]:
        with conn.transaction():
            conn.execute((self.sql_root / "schema_migrations.sql").read_text(encoding="utf-8"))
            self._variant = None
            variant = self.variant_of(conn)
            self._check_server(conn, variant)
            if variant == "timescale":  # refused before anything is written
                self._effective_retention(conn).check_rollups()
            applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        done: list[str] = []
        for migration in migrations(variant, self.sql_root):
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise StorageError(
                        f"migration {migration.path.name} changed after it was applied: "
                        "add a new numbered migration instead of editing an applied one"
                    )
                continue
            with conn.transaction():
                self._write_retention(conn)
                conn.execute(migration.text)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, variant, checksum) VALUES (%s, %s, %s, %s)",
                    (migration.version, migration.name, variant, migration.checksum),
                )
            done.append(migration.name)
        self._variant = variant
        with conn.transaction():
            self._write_retention(conn)
            if variant == "timescale":
                self._sync_retention_policies(conn)
        return done

    def _write_retention(self, conn: psycopg.Connection) -> int:
        """Store this store's Retention (or the defaults where the database has none yet)."""
        if not conn.execute("SELECT to_regclass('retention_settings') IS NOT NULL").fetchone()[0]:
            return 0
        days = (self.retention or Retention()).by_table()
        conflict = (
            sql.SQL("DO NOTHING") if self.retention is None
            else sql.SQL("DO UPDATE SET days = EXCLUDED.days WHERE retention_settings.days <> EXCLUDED.days")
        )
        cur = conn.execute(
            sql.SQL(
                "INSERT INTO retention_settings (table_name, days) "
                "SELECT * FROM unnest(%s::text[], %s::integer[]) ON CONFLICT (table_name) {}"
            ).format(conflict),
            (list(days), list(days.values())),
        )
        return cur.rowcount

    def _effective_retention(self, conn: psycopg.Connection) -> Retention:
        """This store's Retention, else the database's (the defaults where it has none yet)."""
        if self.retention is not None:
            return self.retention
        if not conn.execute("SELECT to_regclass('retention_settings') IS NOT NULL").fetchone()[0]:
            return Retention()
        days = self.retention_days(conn)
        return Retention(quotes_days=days["quotes"], trades_days=days["trades"], bars_days=days["bars_1m"])

    def retention_days(self, conn: psycopg.Connection) -> dict[str, int]:
        if self.retention is not None:
            return self.retention.by_table()
        stored = dict(conn.execute("SELECT table_name, days FROM retention_settings").fetchall())
        return {**Retention().by_table(), **stored}

    @staticmethod
    def _sync_retention_policies(conn: psycopg.Connection) -> None:
        """Make each hypertable's retention policy drop after the stored number of days."""
        for table, days in conn.execute("SELECT table_name, days FROM retention_settings").fetchall():
            row = conn.execute(
                "SELECT (config->>'drop_after')::interval = make_interval(days => %s) "
                "FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention' "
                "AND hypertable_schema = current_schema() AND hypertable_name = %s",
                (days, table),
            ).fetchone()
            if row and row[0]:
                continue
            if row:
                conn.execute("SELECT remove_retention_policy(%s::regclass)", (table,))
            conn.execute(
                "SELECT add_retention_policy(%s::regclass, drop_after => make_interval(days => %s))",
                (table, days),
            )
