"""The historical lake: Hive-partitioned Parquet under a local path or `s3://bucket/prefix`, queried by DuckDB.

Layout — one file per partition, so replacing a partition is a single atomic step:

    <root>/<dataset>/<k1>=<v1>[/<k2>=<v2>]/data.parquet
    <root>/_staging/<dataset>/<k1>=<v1>[/...]/<name>.parquet     resumable work, invisible to the views

Atomicity. Locally a file is written to `.<name>.tmp-<uuid>` beside its final name, fsynced, renamed
over it with `os.replace`, and the directory is fsynced: a crash leaves the old file or the new one,
never half of either. On S3 the file is written to a local temp file first and then uploaded to its
final key with one PUT or one multipart upload, which S3 shows only once complete (boto3 aborts a
failed multipart upload). Readers only ever look at `*.parquet` files, so leftovers of a killed
writer (hidden temp files, incomplete multipart uploads) are invisible; `Lake.clean_temp` removes them.

Determinism. Rows are sorted by (symbol, ts) where those columns exist, with a stable sort, so ties
keep their input order; row groups hold exactly `row_group_rows` rows whatever the input chunking;
zstd; no timestamps or random names end up in the file. The same table written twice gives
byte-identical files (`Lake.file_digest`).

Streaming. `write_partition` also takes an iterable of RecordBatches (or Tables) and writes them with
bounded memory — about one row group plus one batch. Each batch is sorted on its own, so the batches
must arrive in (symbol, ts) order *between* each other (for example `ORDER BY symbol, ts` in the
query that produces them); a batch that starts before the previous one ended raises
InvalidInputError and nothing is written.

Datasets are registered with a schema (or None: any schema) and their partition keys; writes to a
dataset with a schema are `schemas.conform`-ed. The platform's datasets are all declared here
(`PLATFORM_DATASETS`), so every process sees the same set whatever it imported. The key named
`date` holds a real date `YYYY-MM-DD` and is typed DATE in DuckDB; other keys hold
`[A-Za-z0-9_.-]+` and are VARCHAR.

S3 settings come from the constructor, else the environment: MARKET_LAKE_S3_ENDPOINT (e.g.
`http://127.0.0.1:9000`; unset means AWS), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
(+ AWS_SESSION_TOKEN), AWS_DEFAULT_REGION (default us-east-1). DuckDB's httpfs extension cannot be
installed here, so on S3 each view scans a `pyarrow.dataset` (a snapshot of the files present at
`connect()`); locally a view is a `read_parquet` glob, which sees new partitions as they land.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from market_platform import schemas, settings
from market_platform.errors import (
    ConfigError,
    InvalidInputError,
    LakeError,
    MarketPlatformError,
    PartitionNotFoundError,
    UnknownDatasetError,
)

S3_ENDPOINT_VAR = "MARKET_LAKE_S3_ENDPOINT"
DATA_FILE = "data.parquet"
STAGING = "_staging"
#: 128k rows: a 700k-row day of bars gives 6 row groups, enough for DuckDB to prune by symbol and
#: scan in parallel, while a day of quotes (~80M rows) stays around 600 row groups.
DEFAULT_ROW_GROUP_ROWS = 131_072
#: S3 uploads above this size go multipart, in parts of this size (S3 allows 10,000 parts).
DEFAULT_S3_PART_BYTES = 64 * 2**20
SORT_COLUMNS = ("symbol", "ts")

#: Dataset name -> its Arrow schema, or None when any schema is accepted.
DATASETS: dict[str, pa.Schema | None] = {}
#: Dataset name -> its partition keys, outermost first.
PARTITION_KEYS: dict[str, tuple[str, ...]] = {}

Partition = str | dt.date | Mapping[str, str | dt.date]
Data = pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch | pa.Table]

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_VALUE = re.compile(r"[A-Za-z0-9_.-]+\Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_GLOB_CHARS = set("*?[]{}")


def register_dataset(name: str, schema: pa.Schema | None, *, keys: tuple[str, ...] = ("date",)) -> None:
    """Declare a lake dataset: its schema (None accepts any) and its partition keys, outermost first.

    Registering a name again with the same definition is a no-op (modules may be imported twice);
    a different definition raises InvalidInputError.
    """
    keys = tuple(keys)
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(f"dataset name {name!r} is not valid: expected [a-z][a-z0-9_]*")
    if (
        not keys
        or len(set(keys)) != len(keys)
        or not all(isinstance(k, str) and _NAME.match(k) for k in keys)
    ):
        raise InvalidInputError(
            f"partition keys {keys!r} of {name!r}: expected distinct names [a-z][a-z0-9_]*"
        )
    if name in DATASETS:
        old = DATASETS[name]
        same_schema = old is schema or (old is not None and schema is not None and old.equals(schema))
        if same_schema and PARTITION_KEYS[name] == keys:
            return
        raise InvalidInputError(
            f"dataset {name!r} is already registered with other schema or keys {PARTITION_KEYS[name]}"
        )
    DATASETS[name] = schema
    PARTITION_KEYS[name] = keys


#: Every dataset of the platform, declared here and only here, so that whatever a process imported,
#: `connect()` (and so `query`, `status`, the checks) sees them all: name -> (schema, partition keys).
PLATFORM_DATASETS: dict[str, tuple[pa.Schema, tuple[str, ...]]] = {
    # Bars: ours (minute bars and their rollups) and the vendors' own aggregates beside them.
    **{name: (schemas.BARS, ("date",)) for name in (
        "minute_bars", "bars_5m", "bars_15m", "bars_1h", "bars_1d",
        "vendor_bars_5m", "vendor_bars_15m", "vendor_bars_1h", "vendor_bars_1d")},
    "quotes_daily": (schemas.QUOTES, ("date",)),
    "trades_daily": (schemas.TRADES, ("date",)),
    # Universe snapshots, per category and day; the top-3000 ranking per day.
    "universe": (schemas.UNIVERSE, ("category", "date")),
    "top3000": (schemas.RANKED_UNIVERSE, ("date",)),
    # Corporate actions: one file per reporting source, replaced whole by each refresh.
    "corporate_actions": (schemas.CORPORATE_ACTIONS, ("source",)),
    # Derived data.
    "daily_metrics": (schemas.DAILY_METRICS, ("date",)),
    "intraday_metrics": (schemas.INTRADAY_METRICS, ("date",)),
    "return_features": (schemas.RETURN_FEATURES, ("date",)),
    "return_forecast": (schemas.RETURN_FORECAST, ("date",)),
    # Staging only (resumable backfills): which tickers each staged piece holds.
    "backfill_progress": (schemas.PROGRESS, ("dataset", "date")),
}
for _name, (_schema, _keys) in PLATFORM_DATASETS.items():
    register_dataset(_name, _schema, keys=_keys)


def partition_spec(dataset: str, partition: Partition) -> dict[str, str]:
    """The validated partition of `dataset` as {key: value} in key order.

    A date string or `datetime.date` means {"date": ...} for datasets partitioned by date alone;
    a mapping gives every key. Raises UnknownDatasetError or InvalidInputError naming the value.
    """
    keys = _keys(dataset)
    if isinstance(partition, (str, dt.date)):
        if keys != ("date",):
            raise InvalidInputError(
                f"partition {partition!r} of {dataset!r}: expected a mapping with keys {keys}, "
                f"e.g. {dict.fromkeys(keys, '...')}"
            )
        partition = {"date": partition}
    if not isinstance(partition, Mapping) or set(partition) != set(keys):
        raise InvalidInputError(f"partition {partition!r} of {dataset!r}: expected exactly the keys {keys}")
    return {key: _key_value(dataset, key, partition[key]) for key in keys}


def _key_value(dataset: str, key: str, value: object) -> str:
    if key == "date":
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value.isoformat()
        if isinstance(value, str) and _DATE.match(value):
            try:
                dt.date.fromisoformat(value)
                return value
            except ValueError:
                pass
        raise InvalidInputError(
            f"partition key date={value!r} of {dataset!r}: expected a real date as YYYY-MM-DD"
        )
    if isinstance(value, str) and _VALUE.match(value):
        return value
    raise InvalidInputError(
        f"partition key {key}={value!r} of {dataset!r}: expected a non-empty string of letters, digits, '_', '.', '-'"
    )


def _keys(dataset: str) -> tuple[str, ...]:
    try:
        return PARTITION_KEYS[dataset]
    except (KeyError, TypeError):
        raise UnknownDatasetError(
            f"unknown lake dataset {dataset!r}: expected one of {sorted(DATASETS)}"
        ) from None


def _partition_dir(dataset: str, spec: Mapping[str, str]) -> str:
    return "/".join([dataset, *(f"{key}={value}" for key, value in spec.items())])


def _label(dataset: str, spec: Mapping[str, str]) -> str:
    return f"{dataset} partition {'/'.join(f'{k}={v}' for k, v in spec.items())}"


class Lake:
    """The Parquet lake at `url` (a local path, `file://` URL or `s3://bucket[/prefix]`).

    Nothing is touched until the first call; every method is safe to call from several processes
    (the last replace of a partition wins, whole).
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        s3_endpoint: str | None = None,
        s3_key: str | None = None,
        s3_secret: str | None = None,
        s3_region: str | None = None,
        s3_part_bytes: int = DEFAULT_S3_PART_BYTES,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        tmp_dir: str | None = None,
    ) -> None:
        if row_group_rows < 1:
            raise ConfigError(f"row_group_rows={row_group_rows}: expected a positive number")
        self.row_group_rows = row_group_rows
        text = os.fspath(url)
        if text.startswith("s3://"):
            bucket, prefix = _parse_s3_url(text)
            self._store: _LocalStore | _S3Store = _S3Store(
                bucket,
                prefix,
                endpoint=s3_endpoint if s3_endpoint is not None else os.environ.get(S3_ENDPOINT_VAR) or None,
                key=s3_key,
                secret=s3_secret,
                region=s3_region,
                part_bytes=s3_part_bytes,
                tmp_dir=tmp_dir,
            )
        else:
            self._store = _LocalStore(_parse_local_url(text))
        self.url = self._store.url

    @classmethod
    def from_settings(cls) -> Lake:
        """The lake at MARKET_LAKE_URL (default `$MARKET_PLATFORM_HOME/lake`), S3 settings from the env."""
        return cls(settings.lake_url())

    def __repr__(self) -> str:
        endpoint = getattr(self._store, "endpoint", None)
        return f"Lake({self.url!r}" + (f", s3_endpoint={endpoint!r})" if endpoint else ")")

    @property
    def is_s3(self) -> bool:
        return isinstance(self._store, _S3Store)

    @property
    def local_root(self) -> Path | None:
        """The directory of a local lake (None on S3)."""
        return self._store.root if isinstance(self._store, _LocalStore) else None

    def check(self, *, exists: bool = False) -> None:
        """Raise ConfigError when the lake cannot be used: a local root that is a file or lies
        under one, or (with `exists`) that does not exist yet. An S3 lake is checked by use."""
        if not isinstance(self._store, _LocalStore):
            return
        root = self._store.root
        existing = next(path for path in (root, *root.parents) if path.exists())
        if not existing.is_dir():
            raise ConfigError(f"lake path {str(root)!r}: {str(existing)!r} is a file: expected a directory "
                              f"(set {settings.LAKE_URL_VAR} to a directory or s3://bucket[/prefix])")
        if exists and existing != root:
            raise ConfigError(f"no lake at {str(root)!r}: the directory does not exist (check {settings.LAKE_URL_VAR}; "
                              "`market-platform discover` or `backfill` creates it)")

    # -- partitions ---------------------------------------------------------------------------

    def write_partition(
        self, dataset: str, partition: Partition, data: Data, *, schema: pa.Schema | None = None
    ) -> int:
        """Replace one partition of `dataset` with `data`, atomically; returns the rows written.

        `data` is a Table (sorted here) or an iterable of RecordBatches/Tables written with bounded
        memory, which must arrive in (symbol, ts) order between batches (see the module docstring).
        `schema` applies to datasets registered without one. On any error nothing is written and
        the previous partition, if any, stays as it was.
        """
        spec = partition_spec(dataset, partition)
        return self._write(f"{_partition_dir(dataset, spec)}/{DATA_FILE}", dataset, spec, data, schema)

    def read_partition(
        self, dataset: str, partition: Partition, *, columns: list[str] | None = None
    ) -> pa.Table:
        """The partition's rows as stored (sorted, without Hive key columns); `columns` selects some."""
        spec = partition_spec(dataset, partition)
        return self._read(f"{_partition_dir(dataset, spec)}/{DATA_FILE}", _label(dataset, spec), columns)

    def file_metadata(self, dataset: str, partition: Partition) -> dict[bytes, bytes]:
        """The key-value metadata of a partition's Parquet file (its Arrow schema's), e.g.
        schemas.RAW_BARS_KEY; raises PartitionNotFoundError when there is no such partition."""
        spec = partition_spec(dataset, partition)
        rel = f"{_partition_dir(dataset, spec)}/{DATA_FILE}"
        with self._errors(f"reading {_label(dataset, spec)}", missing=rel):
            with self._store.fs.open_input_file(self._store.path(rel)) as file:
                return dict(pq.ParquetFile(file).schema_arrow.metadata or {})

    def has_partition(self, dataset: str, partition: Partition) -> bool:
        spec = partition_spec(dataset, partition)
        return self._store.exists(f"{_partition_dir(dataset, spec)}/{DATA_FILE}")

    def delete_partition(self, dataset: str, partition: Partition) -> bool:
        """Remove a partition; returns False if there was none."""
        spec = partition_spec(dataset, partition)
        with self._errors(f"deleting {_label(dataset, spec)}"):
            return self._store.delete(f"{_partition_dir(dataset, spec)}/{DATA_FILE}")

    def partitions(self, dataset: str) -> list[dict[str, str]]:
        """Every partition of `dataset` with data, as {key: value}, in sorted order."""
        return [spec for spec, _ in self._partition_files(dataset)]

    def dates(self, dataset: str) -> list[str]:
        """The distinct `date` keys of `dataset`'s partitions, sorted (`YYYY-MM-DD`)."""
        if "date" not in _keys(dataset):
            raise InvalidInputError(f"dataset {dataset!r} is partitioned by {_keys(dataset)}, not by date")
        return sorted({spec["date"] for spec in self.partitions(dataset)})

    def state(self, dataset: str) -> tuple | None:
        """What identifies the contents of `dataset` now, for caches of what is computed from it:
        (path, size, mtime in ns) of each partition file of a local lake, or None on S3 (whose
        listings date objects to the second). Every write here gives the file it replaces a new
        mtime, from the nanosecond clock (a filesystem's own is coarser: two writes within its
        tick could leave the same size and mtime)."""
        _keys(dataset)
        if not isinstance(self._store, _LocalStore):
            return None
        selector = pafs.FileSelector(self._store.path(dataset), recursive=True, allow_not_found=True)
        with self._errors(f"listing {dataset}"):
            infos = self._store.fs.get_file_info(selector)
        return tuple(sorted((info.path, info.size, info.mtime_ns) for info in infos
                            if info.type == pafs.FileType.File and info.base_name == DATA_FILE))

    def datasets(self) -> list[str]:
        """The registered datasets that have at least one partition."""
        return [name for name in sorted(DATASETS) if self._partition_files(name)]

    def count(self, dataset: str, partition: Partition | None = None) -> int:
        """Rows in one partition, or in the whole dataset, from the Parquet footers (no scan)."""
        if partition is None:
            rels = [rel for _, rel in self._partition_files(dataset)]
            if not rels:
                return 0
            # The dataset reads the footers in parallel, which matters on S3 (one GET each).
            with self._errors(f"counting {dataset}"):
                return self._arrow_dataset(dataset, rels).count_rows()
        spec = partition_spec(dataset, partition)
        rel = f"{_partition_dir(dataset, spec)}/{DATA_FILE}"
        with self._errors(f"reading the footer of {_label(dataset, spec)}", missing=rel):
            return pq.read_metadata(self._store.path(rel), filesystem=self._store.fs).num_rows

    def file_digest(self, dataset: str, partition: Partition) -> str:
        """SHA-256 (hex) of the partition's file: equal digests mean byte-identical files."""
        spec = partition_spec(dataset, partition)
        rel = f"{_partition_dir(dataset, spec)}/{DATA_FILE}"
        digest = hashlib.sha256()
        with self._errors(f"reading {_label(dataset, spec)}", missing=rel):
            with self._store.fs.open_input_stream(self._store.path(rel)) as stream:
                while chunk := stream.read(8 * 2**20):
                    digest.update(chunk)
        return digest.hexdigest()

    # -- DuckDB -------------------------------------------------------------------------------

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new in-memory DuckDB connection with one view per dataset that has data.

        Views carry the Hive keys as columns (`date` as DATE, others VARCHAR). The session time zone
        is UTC, so timestamps come back as stored whatever the machine's zone. The caller closes it.
        """
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            for name in DATASETS:
                files = self._partition_files(name)
                if not files:
                    continue
                if isinstance(self._store, _LocalStore):
                    source = con.sql(
                        "SELECT * FROM " + self._store.scan_sql(name, PARTITION_KEYS[name], union=DATASETS[name] is None)
                    )
                else:
                    source = con.from_arrow(self._arrow_dataset(name, [rel for _, rel in files]))
                _microsecond_view(source, name)
        except BaseException:
            con.close()
            raise
        return con

    def scan(
        self, con: duckdb.DuckDBPyConnection, dataset: str, partitions: Iterable[Partition]
    ) -> duckdb.DuckDBPyRelation | None:
        """The rows of `partitions` of `dataset` as a relation of `con` (Hive keys as columns, as in
        the views; timestamps as stored), or None when none of them has data. Opens those
        partitions' files only: a filter on a view's keys still globs every partition (a read of a
        thousand sessions' closes costs twice as much through the view)."""
        wanted = {tuple(partition_spec(dataset, partition).values()) for partition in partitions}
        rels = [rel for spec, rel in self._partition_files(dataset) if tuple(spec.values()) in wanted]
        if not rels:
            return None
        if isinstance(self._store, _LocalStore):
            return con.sql("SELECT * FROM " + self._store.scan_sql(
                dataset, PARTITION_KEYS[dataset], union=DATASETS[dataset] is None, rels=rels))
        return con.from_arrow(self._arrow_dataset(dataset, rels))

    def query(self, sql: str, params: list[Any] | Mapping[str, Any] | None = None) -> pa.Table:
        """Run `sql` over the dataset views and return the result as an Arrow table."""
        with self.connect() as con:
            relation = con.sql(sql, params=params)
            return relation.to_arrow_table() if relation is not None else pa.table({})

    def _arrow_dataset(self, name: str, rels: list[str]) -> pads.Dataset:
        keys = pa.schema(
            [(key, pa.date32() if key == "date" else pa.string()) for key in PARTITION_KEYS[name]]
        )
        with self._errors(f"opening dataset {name}"):
            return pads.dataset(
                [self._store.path(rel) for rel in rels],
                filesystem=self._store.fs,
                format="parquet",
                partitioning=pads.partitioning(keys, flavor="hive"),
                partition_base_dir=self._store.path(name),
            )

    # -- staging: resumable work, one file per named piece --------------------------------------

    def stage(
        self, dataset: str, partition: Partition, name: str, data: Data, *, schema: pa.Schema | None = None
    ) -> int:
        """Write (atomically, replacing) the piece `name` of a partition being built; returns its rows.

        Staged pieces are invisible to partitions and views until `commit_staged`.
        """
        spec = partition_spec(dataset, partition)
        return self._write(self._staged_rel(dataset, spec, name), dataset, spec, data, schema)

    def staged(self, dataset: str, partition: Partition) -> list[str]:
        """Names of the pieces staged for a partition, sorted."""
        spec = partition_spec(dataset, partition)
        directory = f"{STAGING}/{_partition_dir(dataset, spec)}"
        with self._errors(f"listing {directory}"):
            rels = self._store.list_files(directory, recursive=False)
        return sorted(rel.rsplit("/", 1)[-1][: -len(".parquet")] for rel in rels if _is_parquet(rel))

    def read_staged(self, dataset: str, partition: Partition, name: str | None = None) -> pa.Table:
        """One staged piece, or all of them concatenated in name order when `name` is None."""
        spec = partition_spec(dataset, partition)
        names = [name] if name is not None else self.staged(dataset, spec)
        tables = [
            self._read(
                self._staged_rel(dataset, spec, n), f"staged piece {n!r} of {_label(dataset, spec)}", None
            )
            for n in names
        ]
        if tables:
            return pa.concat_tables(tables)
        if DATASETS[dataset] is None:
            raise InvalidInputError(
                f"nothing staged for {_label(dataset, spec)} and the dataset has no schema"
            )
        return DATASETS[dataset].empty_table()

    def commit_staged(self, dataset: str, partition: Partition) -> int:
        """Replace the partition with all its staged pieces (sorted together), then clear them.

        The pieces are read into memory together. A crash between the two steps leaves the pieces
        staged, and committing again writes the same file.
        """
        spec = partition_spec(dataset, partition)
        rows = self.write_partition(dataset, spec, self.read_staged(dataset, spec))
        self.clear_staged(dataset, spec)
        return rows

    def clear_staged(self, dataset: str, partition: Partition) -> int:
        """Delete a partition's staged pieces; returns how many there were."""
        spec = partition_spec(dataset, partition)
        names = self.staged(dataset, spec)
        with self._errors(f"clearing staged pieces of {_label(dataset, spec)}"):
            for name in names:
                self._store.delete(self._staged_rel(dataset, spec, name))
        return len(names)

    def _staged_rel(self, dataset: str, spec: Mapping[str, str], name: str) -> str:
        if not isinstance(name, str) or not _VALUE.match(name) or name.startswith("."):
            raise InvalidInputError(
                f"staged piece name {name!r}: expected letters, digits, '_', '.', '-', not starting with '.'"
            )
        return f"{STAGING}/{_partition_dir(dataset, spec)}/{name}.parquet"

    # -- maintenance --------------------------------------------------------------------------

    def clean_temp(self, *, older_than: float = 3600.0) -> int:
        """Remove what killed writers left behind more than `older_than` seconds ago; returns how many.

        Locally: hidden `.*.tmp-*` files. On S3: incomplete multipart uploads under the prefix.
        Never touches a writer younger than `older_than`, so it is safe to run beside live writes.
        """
        with self._errors("cleaning temporary files"):
            return self._store.clean_temp(time.time() - older_than)

    # -- internals ----------------------------------------------------------------------------

    def _write(
        self, rel: str, dataset: str, spec: dict[str, str], data: Data, schema: pa.Schema | None
    ) -> int:
        label = _label(dataset, spec)
        fixed = DATASETS[dataset]
        if schema is not None and fixed is not None and not schema.equals(fixed):
            raise InvalidInputError(
                f"{label}: the dataset has a fixed schema; schema= is only for datasets without one"
            )
        schema = fixed if fixed is not None else schema
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if isinstance(data, pa.Table):
            # Validate and sort before touching storage: bad input creates nothing at all.
            pieces: Iterator[pa.Table] = iter([_prepare(data, schema, spec, label)])
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
            pieces = _prepare_stream(data, schema, spec, label)
        else:
            raise InvalidInputError(
                f"{label}: expected a pyarrow Table or an iterable of RecordBatches, got {type(data).__name__}"
            )
        with self._errors(f"writing {label}"):
            with self._store.target(rel) as tmp:
                return _write_parquet(tmp, pieces, schema, self.row_group_rows, label)

    def _read(self, rel: str, label: str, columns: list[str] | None) -> pa.Table:
        with self._errors(f"reading {label}", missing=rel):
            with self._store.fs.open_input_file(self._store.path(rel)) as file:
                parquet = pq.ParquetFile(file)
                names = parquet.schema_arrow.names
                unknown = [c for c in columns or [] if c not in names]
                if unknown:
                    raise InvalidInputError(f"{label} has no columns {unknown}: expected some of {names}")
                return parquet.read(columns=columns)

    def _partition_files(self, dataset: str) -> list[tuple[dict[str, str], str]]:
        """(spec, relative path) of every partition file of `dataset`, sorted by spec."""
        keys = _keys(dataset)
        with self._errors(f"listing {dataset}"):
            rels = self._store.list_files(dataset, recursive=True)
        found = []
        for rel in rels:
            parts = rel.split("/")
            if len(parts) != len(keys) + 2 or parts[-1] != DATA_FILE:
                continue
            pairs = [part.partition("=") for part in parts[1:-1]]
            if [key for key, _, _ in pairs] == list(keys):
                found.append(({key: value for key, _, value in pairs}, rel))
        return sorted(found, key=lambda item: tuple(item[0].values()))

    @contextmanager
    def _errors(self, doing: str, *, missing: str | None = None) -> Iterator[None]:
        """Turn storage failures into LakeError (PartitionNotFoundError for a missing file)."""
        try:
            yield
        except MarketPlatformError:
            raise
        except FileNotFoundError as exc:
            if missing is not None:
                raise PartitionNotFoundError(f"{doing}: {self.url}/{missing} does not exist") from None
            raise LakeError(f"{doing} in {self.url} failed: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            if missing is not None and not self._store.exists(missing):
                raise PartitionNotFoundError(f"{doing}: {self.url}/{missing} does not exist") from None
            raise LakeError(f"{doing} in {self.url} failed: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("botocore", "boto3", "s3transfer")):
                raise LakeError(f"{doing} in {self.url} failed: {exc}") from exc
            raise


# -- writing ------------------------------------------------------------------------------------


def _prepare(table: pa.Table, schema: pa.Schema | None, spec: Mapping[str, str], label: str) -> pa.Table:
    """`table` conformed to `schema`, checked against the partition's keys, sorted by (symbol, ts)."""
    if schema is not None:
        try:
            table = schemas.conform(table, schema)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{label}: {exc}") from None
    _check_key_columns(table, spec, label)
    sort_keys = [(name, "ascending") for name in SORT_COLUMNS if name in table.column_names]
    if sort_keys and table.num_rows > 1:
        # sort_indices is stable: rows equal on (symbol, ts) keep their input order.
        table = table.take(pc.sort_indices(table, sort_keys=sort_keys))
    return table


def _prepare_stream(
    data: Iterable[Any], schema: pa.Schema | None, spec: Mapping[str, str], label: str
) -> Iterator[pa.Table]:
    previous_end: tuple | None = None
    for index, item in enumerate(data):
        if isinstance(item, pa.RecordBatch):
            item = pa.Table.from_batches([item])
        elif not isinstance(item, pa.Table):
            raise InvalidInputError(
                f"{label}: batch {index} is a {type(item).__name__}: expected a RecordBatch or Table"
            )
        table = _prepare(item, schema, spec, label)
        # Later batches of a schemaless dataset must look like the first one.
        schema = table.schema
        if table.num_rows and any(name in table.column_names for name in SORT_COLUMNS):
            start, end = _sort_key(table, 0), _sort_key(table, table.num_rows - 1)
            if previous_end is not None and start < previous_end:
                raise InvalidInputError(
                    f"{label}: batch {index} starts at {_show(start)}, before the previous batch ended at "
                    f"{_show(previous_end)}: streamed batches must arrive in (symbol, ts) order"
                )
            previous_end = end
        yield table


def _sort_key(table: pa.Table, row: int) -> tuple:
    key = []
    for name in SORT_COLUMNS:
        if name in table.column_names:
            scalar = table.column(name)[row]
            if pa.types.is_timestamp(scalar.type):
                scalar = scalar.cast(pa.int64())
            value = scalar.as_py()
            key.append((value is None, value))  # nulls sort last, as sort_indices puts them
    return tuple(key)


def _show(key: tuple) -> str:
    return repr(tuple(value for _, value in key))


def _check_key_columns(table: pa.Table, spec: Mapping[str, str], label: str) -> None:
    """A column named like a partition key must hold the partition's value in every row.

    Readers (DuckDB and pyarrow alike) replace such a column by the key from the path, so a
    different value would silently change on the way back.
    """
    for key, value in spec.items():
        if key not in table.column_names:
            continue
        column = table.column(key)
        try:
            expected = pa.scalar(dt.date.fromisoformat(value) if key == "date" else value).cast(column.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InvalidInputError(
                f"{label}: column {key!r} of type {column.type} cannot hold the key value {value!r}"
            ) from None
        matches = pc.fill_null(pc.equal(column, expected), False)
        # min_count=0: no rows at all agree too (by default `all` of nothing is null).
        if not pc.all(matches, min_count=0).as_py():
            other = column.filter(pc.invert(matches))
            raise InvalidInputError(
                f"{label}: {len(other)} rows have {key}={other[0].as_py()!r} (first seen): "
                f"expected the partition's {value!r}"
            )


def _write_parquet(
    path: str, pieces: Iterator[pa.Table], schema: pa.Schema | None, group_rows: int, label: str
) -> int:
    """Write sorted `pieces` to `path` in row groups of exactly `group_rows` rows; returns the rows.

    Row groups are cut from the concatenated rows and each is made contiguous before writing, so
    the bytes depend only on the rows, never on how the input was chunked.
    """
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = []
    pending_rows = rows = 0
    try:
        for table in pieces:
            if writer is None:
                writer = _open_writer(path, table.schema)
            pending.append(table)
            pending_rows += table.num_rows
            rows += table.num_rows
            while pending_rows >= group_rows:
                combined = pa.concat_tables(pending)
                writer.write_table(combined.slice(0, group_rows).combine_chunks(), row_group_size=group_rows)
                pending = [combined.slice(group_rows)]
                pending_rows -= group_rows
        if writer is None:
            if schema is None:
                raise InvalidInputError(
                    f"{label}: no batches to write and no schema: pass schema= for an empty partition"
                )
            writer = _open_writer(path, schema)
        if pending_rows:
            writer.write_table(pa.concat_tables(pending).combine_chunks(), row_group_size=group_rows)
    finally:
        if writer is not None:
            writer.close()
    return rows


def _open_writer(path: str, schema: pa.Schema) -> pq.ParquetWriter:
    sort_keys = [(name, "ascending") for name in SORT_COLUMNS if name in schema.names]
    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        write_statistics=True,
        sorting_columns=pq.SortingColumn.from_ordering(schema, sort_keys) if sort_keys else None,
    )


def _is_parquet(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.endswith(".parquet") and not name.startswith(".")


# -- stores: where bytes go ---------------------------------------------------------------------


def _parse_local_url(text: str) -> Path:
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"lake URL {_redact(text)!r} is not supported: expected a local path, file:///path or s3://bucket[/prefix]"
            )
        text = parts.path
    if not text:
        raise ConfigError("lake URL is empty: expected a local path or s3://bucket[/prefix]")
    root = Path(text).expanduser().resolve()
    if _GLOB_CHARS & set(str(root)) or "'" in str(root):
        raise ConfigError(
            f"lake path {str(root)!r} contains one of * ? [ ] {{ }} ': DuckDB globs would misread it"
        )
    return root


def _parse_s3_url(text: str) -> tuple[str, str]:
    parts = urlsplit(text)
    if (
        parts.username
        or parts.password
        or parts.port
        or parts.query
        or parts.fragment
        or not _BUCKET.match(parts.hostname or "")
    ):
        raise ConfigError(
            f"lake URL {_redact(text)!r} is not valid: expected s3://bucket[/prefix] (credentials go in the env)"
        )
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ConfigError(
            f"lake URL {text!r} has an empty or relative path segment: expected s3://bucket[/prefix]"
        )
    return parts.hostname or "", prefix


def _redact(url: str) -> str:
    """`url` with any user:password@ replaced, for messages."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def _microsecond_view(source: duckdb.DuckDBPyRelation, name: str) -> None:
    """View `name` over `source`, with nanosecond timestamps as DuckDB's TIMESTAMPTZ.

    Parquet keeps nanoseconds, which DuckDB reads as TIMESTAMPTZ_NS, and DuckDB 2.0 refuses to
    compare that with a TIMESTAMPTZ (`ts > now() - INTERVAL 1 HOUR`, a typed literal) without an
    explicit cast. The views cast, so users' SQL works as written, at microseconds (PostgreSQL's
    precision too); `read_partition` still returns the nanoseconds.
    """
    columns = [column for column, kind in zip(source.columns, source.types) if str(kind) == "TIMESTAMPTZ_NS"]
    replace = ", ".join(f'CAST("{column}" AS TIMESTAMPTZ) AS "{column}"' for column in columns)
    source.project(f"* REPLACE ({replace})" if replace else "*").create_view(name)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a rename or a new file in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalStore:
    """A local directory; atomic writes by temp file beside the target + fsync + rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self.fs = pafs.LocalFileSystem()

    def path(self, rel: str) -> str:
        return str(self.root / rel)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def list_files(self, rel_dir: str, *, recursive: bool) -> list[str]:
        selector = pafs.FileSelector(self.path(rel_dir), recursive=recursive, allow_not_found=True)
        base = len(str(self.root)) + 1
        return [
            info.path[base:] for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File
        ]

    @contextmanager
    def target(self, rel: str) -> Iterator[str]:
        final = self.root / rel
        created = []
        for parent in reversed(final.parents):
            if not parent.exists():
                try:
                    parent.mkdir()
                    created.append(parent)
                except FileExistsError:
                    pass  # a concurrent writer made it
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex}")
        try:
            yield str(tmp)
            now = time.time_ns()  # a new mtime for every write (`Lake.state`)
            os.utime(tmp, ns=(now, now))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            for directory in reversed(created):
                try:
                    directory.rmdir()
                except OSError:
                    break  # no longer empty: someone else wrote there
            raise
        # Make the rename, and any directory it needed, survive a power loss.
        fsync_dir(final.parent)
        for directory in created:
            fsync_dir(directory.parent)

    def delete(self, rel: str) -> bool:
        path = self.root / rel
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        for parent in path.parents:
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break
        return True

    def clean_temp(self, cutoff: float) -> int:
        removed = 0
        for info in self.fs.get_file_info(
            pafs.FileSelector(str(self.root), recursive=True, allow_not_found=True)
        ):
            name = info.base_name
            if (
                info.type == pafs.FileType.File
                and name.startswith(".")
                and ".tmp-" in name
                and info.mtime.timestamp() < cutoff
            ):
                Path(info.path).unlink(missing_ok=True)
                removed += 1
        return removed

    def scan_sql(self, name: str, keys: tuple[str, ...], *, union: bool, rels: list[str] | None = None) -> str:
        """The `read_parquet(...)` of a dataset's files (or of the files `rels` only), Hive keys typed."""
        # Names and keys are validated identifiers, partition values too (partition_spec), and the
        # root has no quote or glob characters (checked in _parse_local_url).
        pattern = ("[" + ", ".join(f"'{self.path(rel)}'" for rel in rels) + "]" if rels is not None else
                   "'" + "/".join([str(self.root), name, *(f"{key}=*" for key in keys), "*.parquet"]) + "'")
        types = ", ".join(f"'{key}': {'DATE' if key == 'date' else 'VARCHAR'}" for key in keys)
        options = f"hive_partitioning = true, hive_types = {{{types}}}" + (
            ", union_by_name = true" if union else ""
        )
        return f"read_parquet({pattern}, {options})"


class _S3Store:
    """An S3 bucket and prefix: reads through pyarrow's S3 filesystem, writes with boto3 uploads."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint: str | None,
        key: str | None,
        secret: str | None,
        region: str | None,
        part_bytes: int,
        tmp_dir: str | None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        self.bucket, self.prefix = bucket, prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.endpoint = endpoint
        self.tmp_dir = tmp_dir
        token = None
        if key is None and secret is None:
            key, secret = (
                os.environ.get("AWS_ACCESS_KEY_ID") or None,
                os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
            )
            token = os.environ.get("AWS_SESSION_TOKEN") or None
        if (key is None) != (secret is None):
            raise ConfigError(
                "S3 credentials are half set: give both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither"
            )
        region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        scheme, host = "https", None
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.username
                or parts.password
                or parts.path.strip("/")
            ):
                raise ConfigError(
                    f"{S3_ENDPOINT_VAR}={_redact(endpoint)!r} is not valid: expected http(s)://host[:port]"
                )
            scheme, host = parts.scheme, parts.netloc
        self.fs = pafs.S3FileSystem(
            access_key=key,
            secret_key=secret,
            session_token=token,
            region=region,
            scheme=scheme,
            endpoint_override=host,
        )
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=token,
            region_name=region,
        )
        self.transfer = TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def path(self, rel: str) -> str:
        return f"{self.bucket}/{self.key(rel)}"

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def list_files(self, rel_dir: str, *, recursive: bool) -> list[str]:
        selector = pafs.FileSelector(self.path(rel_dir), recursive=recursive, allow_not_found=True)
        base = len(self.path(""))  # "bucket/prefix/" or "bucket/"
        return [
            info.path[base:] for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File
        ]

    @contextmanager
    def target(self, rel: str) -> Iterator[str]:
        # pyarrow's S3 output stream completes its upload even when closed on an error, which
        # would publish half a file; a local temp file plus boto3's upload (which aborts a failed
        # multipart upload) publishes all or nothing.
        fd, tmp = tempfile.mkstemp(prefix="lake-", suffix=".parquet.tmp", dir=self.tmp_dir)
        os.close(fd)
        try:
            yield tmp
            self.client.upload_file(tmp, self.bucket, self.key(rel), Config=self.transfer)
        finally:
            os.unlink(tmp)

    def delete(self, rel: str) -> bool:
        if not self.exists(rel):
            return False
        # boto3, not pyarrow: pyarrow would leave a directory marker object behind.
        self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))
        return True

    def clean_temp(self, cutoff: float) -> int:
        removed = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key("")):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        return removed
