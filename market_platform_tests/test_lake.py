"""The Parquet lake on real files and a real S3 server (moto on loopback), read back through DuckDB."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from market_platform import schemas
from market_platform.errors import (
    ConfigError,
    InvalidInputError,
    LakeError,
    PartitionNotFoundError,
    UnknownDatasetError,
)
from market_platform.storage.lake import DATASETS, Lake, partition_spec, register_dataset

DAY = "2024-11-29"
NS_PER_MINUTE = 60 * 10**9

register_dataset("lake_test_any", None)
register_dataset("lake_test_by_venue", None, keys=("venue", "date"))


def bars(symbols: int = 20, minutes: int = 30, *, day: str = DAY, seed: int = 0) -> pa.Table:
    """`symbols` x `minutes` 1-minute bars in arrival order (minute by minute), not sorted by symbol."""
    rng = np.random.default_rng(seed)
    n = symbols * minutes
    start = np.datetime64(f"{day}T14:30", "ns").astype(np.int64)
    close = 100 + rng.standard_normal(n).cumsum() * 0.01
    return pa.table(
        {
            "symbol": pa.array([f"S{i:04d}" for i in range(symbols)] * minutes),
            "ts": pa.array(start + np.repeat(np.arange(minutes), symbols) * NS_PER_MINUTE, schemas.TS),
            "open": close,
            "high": close + 0.05,
            "low": close - 0.05,
            "close": close,
            "volume": rng.integers(1, 10_000, n).astype(np.float64),
            "vwap": close,
            "trade_count": rng.integers(1, 100, n),
            "source": pa.array(["sim"] * n),
        }
    )


def stored(table: pa.Table) -> pa.Table:
    """Bars as the lake stores them: conformed to schemas.BARS and sorted by (symbol, ts)."""
    return schemas.conform(table, schemas.BARS).sort_by([("symbol", "ascending"), ("ts", "ascending")])


def tree(root: Path) -> list[str]:
    """Every file and directory under `root`, for 'nothing was written' checks."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# -- writing and reading -----------------------------------------------------------------------


def test_write_sorts_conforms_and_reads_back(lake: Lake) -> None:
    table = bars()
    # A table with wrong-but-castable types and extra chunks is conformed to schemas.BARS.
    loose = table.set_column(
        table.schema.get_field_index("volume"), "volume", pc.cast(table["volume"], pa.int64())
    )
    assert lake.write_partition("minute_bars", DAY, loose) == table.num_rows

    back = lake.read_partition("minute_bars", DAY)
    assert back.schema.equals(schemas.BARS)
    assert back.equals(stored(table))
    assert lake.read_partition("minute_bars", DAY, columns=["symbol", "close"]).column_names == [
        "symbol",
        "close",
    ]
    assert lake.has_partition("minute_bars", DAY) and not lake.has_partition("minute_bars", "2024-11-27")
    assert lake.count("minute_bars", DAY) == table.num_rows


def test_file_layout_compression_statistics_and_row_groups(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake", row_group_rows=1000)
    lake.write_partition("minute_bars", DAY, bars(symbols=50, minutes=50))  # 2,500 rows
    files = [p for p in (tmp_path / "lake").rglob("*") if p.is_file()]
    assert [str(p.relative_to(tmp_path / "lake")) for p in files] == [f"minute_bars/date={DAY}/data.parquet"]

    meta = pq.ParquetFile(files[0]).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]
    first = meta.row_group(0)
    assert first.column(0).compression == "ZSTD"
    assert [c.column_index for c in first.sorting_columns] == [0, 1]
    symbol_stats = [meta.row_group(i).column(0).statistics for i in range(3)]
    # Sorted by symbol, so row groups cover disjoint symbol ranges DuckDB can skip.
    assert symbol_stats[0].max <= symbol_stats[1].min and symbol_stats[1].max <= symbol_stats[2].min


def test_replace_swaps_the_whole_partition_and_leaves_no_temp_files(lake: Lake, tmp_path: Path) -> None:
    lake.write_partition("minute_bars", DAY, bars(symbols=10, seed=1))
    lake.write_partition("minute_bars", DAY, bars(symbols=3, seed=2))
    assert lake.count("minute_bars", DAY) == 3 * 30
    assert lake.read_partition("minute_bars", DAY).equals(stored(bars(symbols=3, seed=2)))
    assert tree(tmp_path / "lake") == [
        "minute_bars",
        f"minute_bars/date={DAY}",
        f"minute_bars/date={DAY}/data.parquet",
    ]


def test_partitions_dates_datasets_count_and_delete(lake: Lake, tmp_path: Path) -> None:
    assert lake.datasets() == [] and lake.partitions("minute_bars") == [] and lake.count("minute_bars") == 0
    for day, symbols in (("2024-11-29", 2), ("2024-11-26", 3), ("2024-11-27", 4)):
        lake.write_partition(
            "minute_bars", dt.date.fromisoformat(day) if symbols == 4 else day, bars(symbols, day=day)
        )
    lake.write_partition("bars_1d", DAY, bars(1, 1))
    assert lake.dates("minute_bars") == ["2024-11-26", "2024-11-27", "2024-11-29"]
    assert lake.partitions("minute_bars")[0] == {"date": "2024-11-26"}
    assert lake.datasets() == ["bars_1d", "minute_bars"]
    assert lake.count("minute_bars") == (2 + 3 + 4) * 30

    assert lake.delete_partition("minute_bars", "2024-11-27") is True
    assert lake.delete_partition("minute_bars", "2024-11-27") is False
    assert lake.dates("minute_bars") == ["2024-11-26", "2024-11-29"]
    assert not (tmp_path / "lake" / "minute_bars" / "date=2024-11-27").exists()
    with pytest.raises(PartitionNotFoundError, match="date=2024-11-27"):
        lake.read_partition("minute_bars", "2024-11-27")
    with pytest.raises(PartitionNotFoundError):
        lake.count("minute_bars", "2024-11-27")


def test_two_level_partitions_and_key_columns(lake: Lake) -> None:
    universe = pa.table(
        {
            "symbol": ["SPY", "QQQ"],
            "category": ["etf", "etf"],
            "active": [True, True],
            "snapshot_date": pa.array([dt.date(2024, 11, 29)] * 2),
            "source": ["sim", "sim"],
            **{
                name: pa.nulls(2, schemas.UNIVERSE.field(name).type)
                for name in ("name", "type", "exchange", "currency", "market_cap", "list_date", "delist_date")
            },
        }
    )
    lake.write_partition("universe", {"date": DAY, "category": "etf"}, universe)
    assert lake.partitions("universe") == [{"category": "etf", "date": DAY}]
    assert lake.read_partition("universe", {"category": "etf", "date": DAY})["symbol"].to_pylist() == [
        "QQQ",
        "SPY",
    ]
    # The file's `category` column must agree with the partition, or readers would silently rewrite it.
    with pytest.raises(InvalidInputError, match=r"category='etf'.*'us_equities'"):
        lake.write_partition("universe", {"category": "us_equities", "date": DAY}, universe)
    with pytest.raises(InvalidInputError, match="expected a mapping with keys"):
        lake.write_partition("universe", DAY, universe)
    assert lake.partitions("universe") == [{"category": "etf", "date": DAY}]


def test_empty_table_writes_an_empty_partition(lake: Lake) -> None:
    assert lake.write_partition("minute_bars", DAY, schemas.BARS.empty_table()) == 0
    assert lake.has_partition("minute_bars", DAY) and lake.count("minute_bars", DAY) == 0
    assert lake.query("SELECT count(*) AS n FROM minute_bars")["n"].to_pylist() == [0]
    assert lake.write_partition("minute_bars", "2024-11-27", iter([])) == 0
    assert lake.write_partition("lake_test_any", DAY, iter([pa.table({"x": pa.array([], pa.int8())})])) == 0
    assert lake.read_partition("lake_test_any", DAY).schema.types == [pa.int8()]
    with pytest.raises(InvalidInputError, match="pass schema="):
        lake.write_partition("lake_test_any", DAY, iter([]))


def test_empty_table_with_the_key_as_a_column_writes_an_empty_partition(lake: Lake) -> None:
    # A source's corporate actions refresh that finds none replaces its partition with no rows.
    actions = {"source": "sim"}
    assert lake.write_partition("corporate_actions", actions, schemas.CORPORATE_ACTIONS.empty_table()) == 0
    assert lake.count("corporate_actions", actions) == 0
    assert lake.write_partition("corporate_actions", actions, iter([schemas.CORPORATE_ACTIONS.empty_table()])) == 0
    universe = {"category": "us_equities", "date": DAY}
    assert lake.write_partition("universe", universe, schemas.UNIVERSE.empty_table()) == 0
    assert lake.partitions("universe") == [universe]


# -- idempotency: the same rows give the same bytes ---------------------------------------------


def test_rewrites_are_byte_identical_whatever_the_chunking_or_location(tmp_path: Path) -> None:
    table = bars(symbols=40, minutes=60)
    first = Lake(tmp_path / "a", row_group_rows=1000)
    first.write_partition("minute_bars", DAY, table)
    digest = first.file_digest("minute_bars", DAY)

    time.sleep(1.1)  # a wall-clock timestamp in the file would now differ
    first.write_partition("minute_bars", DAY, table)
    assert first.file_digest("minute_bars", DAY) == digest

    other = Lake(tmp_path / "b", row_group_rows=1000)  # nothing path-dependent in the bytes
    reordered = table.take(np.random.default_rng(7).permutation(table.num_rows))
    other.write_partition("minute_bars", DAY, pa.Table.from_batches(reordered.to_batches(max_chunksize=333)))
    assert other.file_digest("minute_bars", DAY) == digest

    streamed = stored(table).to_batches(max_chunksize=457)
    other.write_partition("minute_bars", "2024-11-27", iter(streamed))
    assert (
        Path(tmp_path / "b/minute_bars/date=2024-11-27/data.parquet").read_bytes()
        == Path(tmp_path / "a/minute_bars/date=2024-11-29/data.parquet").read_bytes()
    )


def test_equal_keys_keep_their_input_order(lake: Lake) -> None:
    """A stable sort: rows tied on (symbol, ts) come back in the order they were given."""
    ts = pa.array([5, 5, 5, 1], pa.timestamp("ns", tz="UTC"))
    table = pa.table({"symbol": ["A", "A", "A", "A"], "ts": ts, "value": [3, 1, 2, 0]})
    lake.write_partition("lake_test_any", DAY, table)
    assert lake.read_partition("lake_test_any", DAY)["value"].to_pylist() == [0, 3, 1, 2]


# -- bad input: a clear error and nothing written --------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "partition", "error", "message"),
    [
        ("minute_barz", DAY, UnknownDatasetError, r"'minute_barz'.*'minute_bars'"),
        ("minute_bars", "2024-13-01", InvalidInputError, r"date='2024-13-01'.*YYYY-MM-DD"),
        ("minute_bars", "2024-02-30", InvalidInputError, r"date='2024-02-30'"),
        ("minute_bars", "20241129", InvalidInputError, r"date='20241129'"),
        ("minute_bars", "../../etc", InvalidInputError, r"date='../../etc'"),
        ("minute_bars", dt.datetime(2024, 11, 29, 12), InvalidInputError, "YYYY-MM-DD"),
        ("minute_bars", {"date": DAY, "hour": "10"}, InvalidInputError, r"exactly the keys \('date',\)"),
        ("minute_bars", {}, InvalidInputError, "exactly the keys"),
        ("lake_test_by_venue", {"venue": "a/b", "date": DAY}, InvalidInputError, r"venue='a/b'"),
        ("lake_test_by_venue", {"venue": "", "date": DAY}, InvalidInputError, r"venue=''"),
    ],
)
def test_bad_dataset_or_partition_is_refused_before_any_write(
    lake: Lake, tmp_path: Path, dataset, partition, error, message
) -> None:
    with pytest.raises(error, match=message):
        lake.write_partition(dataset, partition, bars())
    assert tree(tmp_path / "lake") == []


def test_table_missing_columns_is_refused_and_the_old_partition_stays(lake: Lake, tmp_path: Path) -> None:
    lake.write_partition("minute_bars", DAY, bars(seed=1))
    digest, before = lake.file_digest("minute_bars", DAY), tree(tmp_path / "lake")
    with pytest.raises(
        InvalidInputError, match=r"minute_bars partition date=2024-11-29: table lacks columns \['vwap'\]"
    ):
        lake.write_partition("minute_bars", DAY, bars(seed=2).drop_columns(["vwap"]))
    with pytest.raises(InvalidInputError, match="'close' has 1 nulls"):
        broken = bars(seed=2)
        lake.write_partition(
            "minute_bars",
            DAY,
            broken.set_column(5, "close", pa.array([None] + [1.0] * (broken.num_rows - 1))),
        )
    with pytest.raises(InvalidInputError, match="missing"):
        lake.read_partition("minute_bars", DAY, columns=["missing"])
    assert lake.file_digest("minute_bars", DAY) == digest and tree(tmp_path / "lake") == before


def test_failing_streams_write_nothing(lake: Lake, tmp_path: Path) -> None:
    lake.write_partition("minute_bars", DAY, bars(seed=1))
    digest, before = lake.file_digest("minute_bars", DAY), tree(tmp_path / "lake")
    ordered = stored(bars(symbols=30, seed=2)).to_batches(max_chunksize=100)

    with pytest.raises(
        InvalidInputError,
        match=r"batch 1 starts at \('S0000'.*streamed batches must arrive in \(symbol, ts\) order",
    ):
        lake.write_partition("minute_bars", DAY, iter([ordered[2], ordered[0]]))

    def dies_midway():
        yield from ordered[:3]
        raise RuntimeError("vendor went away")

    with pytest.raises(RuntimeError, match="vendor went away"):
        lake.write_partition("minute_bars", DAY, dies_midway())
    with pytest.raises(RuntimeError):
        lake.write_partition("minute_bars", "2024-11-27", dies_midway())  # a new partition: no directory left
    with pytest.raises(InvalidInputError, match="batch 1 is a dict"):
        lake.write_partition("minute_bars", DAY, iter([ordered[0], {"symbol": "X"}]))
    with pytest.raises(InvalidInputError, match="lacks columns"):
        lake.write_partition(
            "minute_bars", DAY, iter([ordered[0], pa.Table.from_batches([ordered[1]]).drop_columns(["low"])])
        )
    assert lake.file_digest("minute_bars", DAY) == digest and tree(tmp_path / "lake") == before


def test_fixed_schema_refuses_another_and_registry_refuses_redefinition() -> None:
    with pytest.raises(InvalidInputError, match="fixed schema"):
        Lake("/tmp/unused-lake").write_partition("minute_bars", DAY, bars(), schema=schemas.QUOTES)
    register_dataset("lake_test_any", None)  # the same definition again is fine
    with pytest.raises(InvalidInputError, match="already registered"):
        register_dataset("minute_bars", schemas.QUOTES)
    with pytest.raises(InvalidInputError, match="not valid"):
        register_dataset("Bad-Name", None)
    assert DATASETS["minute_bars"] is schemas.BARS
    assert partition_spec("lake_test_by_venue", {"date": dt.date(2024, 1, 2), "venue": "x"}) == {
        "venue": "x",
        "date": "2024-01-02",
    }


@pytest.mark.parametrize(
    ("url", "shown", "hidden"),
    [
        ("gs://bucket/lake", "gs://bucket/lake", None),
        ("s3://admin:hunter2@bucket/lake", "***@bucket", "hunter2"),
        ("s3://Bad_Bucket/lake", "Bad_Bucket", None),
        ("s3://bucket/a//b", "a//b", None),
        ("/tmp/lake*", "lake*", None),
    ],
)
def test_bad_lake_urls_are_config_errors_without_secrets(url: str, shown: str, hidden: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        Lake(url, s3_endpoint="http://127.0.0.1:1", s3_key="k", s3_secret="s")
    assert shown in str(caught.value)
    if hidden:
        assert hidden not in str(caught.value)


# -- atomicity under a crash ------------------------------------------------------------------


WRITER = textwrap.dedent(
    """
    import itertools, sys
    import numpy as np, pyarrow as pa
    from market_platform import schemas
    from market_platform.storage.lake import Lake

    def batches():
        rng, n = np.random.default_rng(0), 50_000
        for i in itertools.count():
            close = 100 + rng.standard_normal(n)
            yield pa.table({
                "symbol": pa.array(["ZZZZ"] * n),
                "ts": pa.array(np.arange(i * n, (i + 1) * n, dtype=np.int64), schemas.TS),
                "open": close, "high": close, "low": close, "close": close, "volume": close,
                "vwap": close, "trade_count": np.arange(n), "source": pa.array(["sim"] * n)})
            if i == 10:
                print("writing", flush=True)  # well past the first row groups; never ends by itself

    Lake(sys.argv[1]).write_partition("minute_bars", "2024-11-29", batches())
    """
)


def test_writer_killed_midway_leaves_the_old_partition_intact(lake: Lake, tmp_path: Path) -> None:
    old = bars(symbols=50, seed=3)
    lake.write_partition("minute_bars", DAY, old)
    digest = lake.file_digest("minute_bars", DAY)
    partition_dir = tmp_path / "lake" / "minute_bars" / f"date={DAY}"

    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "lake")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline() == "writing\n"
        deadline = time.monotonic() + 60
        while not any(
            p.name.startswith(".data.parquet.tmp-") and p.stat().st_size > 1_000_000
            for p in partition_dir.iterdir()
        ):
            assert time.monotonic() < deadline and writer.poll() is None, (
                "the writer never produced its temp file"
            )
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    leftovers = [p.name for p in partition_dir.iterdir() if p.name != "data.parquet"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".data.parquet.tmp-")  # the half-written file
    assert lake.file_digest("minute_bars", DAY) == digest
    assert lake.read_partition("minute_bars", DAY).equals(stored(old))
    assert lake.query("SELECT count(*) AS n FROM minute_bars")["n"].to_pylist() == [old.num_rows]
    assert lake.clean_temp(older_than=3600) == 0  # too young: could still be a live writer
    assert lake.clean_temp(older_than=0) == 1
    assert os.listdir(partition_dir) == ["data.parquet"]


# -- DuckDB ---------------------------------------------------------------------------------


def test_duckdb_views_type_hive_keys_and_ignore_stray_files(lake: Lake, tmp_path: Path) -> None:
    lake.write_partition("minute_bars", DAY, bars(symbols=5, day=DAY))
    lake.write_partition("minute_bars", "2024-11-27", bars(symbols=7, day="2024-11-27"))
    lake.write_partition(
        "lake_test_by_venue", {"venue": "xnas", "date": DAY}, pa.table({"symbol": ["A", "B"], "x": [1, 2]})
    )
    lake.stage("minute_bars", DAY, "extra", bars(symbols=99))  # staged pieces are not in the views
    (tmp_path / "lake" / "minute_bars" / f"date={DAY}" / ".data.parquet.tmp-dead").write_bytes(b"half a file")
    (tmp_path / "lake" / "minute_bars" / f"date={DAY}" / "notes.txt").write_text("not data")

    with lake.connect() as con:
        views = {
            row[0] for row in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        }
        assert views == {"minute_bars", "lake_test_by_venue"}
        described = {name: kind for name, kind, *_ in con.sql("DESCRIBE minute_bars").fetchall()}
        # Nanoseconds are cast to TIMESTAMPTZ, which DuckDB compares with now() and typed literals.
        assert (described["date"], described["symbol"], described["ts"]) == (
            "DATE",
            "VARCHAR",
            "TIMESTAMP WITH TIME ZONE",
        )
        assert con.sql("SELECT count(*) FROM minute_bars WHERE ts < now() - INTERVAL 1 DAY"
                       " AND ts >= TIMESTAMPTZ '2024-11-27 00:00:00+00'").fetchall() == [(7 * 30 + 5 * 30,)]
    per_day = lake.query(
        "SELECT date, count(DISTINCT symbol) AS symbols FROM minute_bars GROUP BY date ORDER BY date"
    )
    assert per_day.to_pylist() == [
        {"date": dt.date(2024, 11, 27), "symbols": 7},
        {"date": dt.date(2024, 11, 29), "symbols": 5},
    ]
    assert lake.query("SELECT venue, date, sum(x) AS x FROM lake_test_by_venue GROUP BY ALL").to_pylist() == [
        {"venue": "xnas", "date": dt.date(2024, 11, 29), "x": 3}
    ]
    picked = lake.query(
        "SELECT count(*) AS n FROM minute_bars WHERE date = ?::DATE AND symbol = ?", [DAY, "S0001"]
    )
    assert picked["n"].to_pylist() == [30]


def test_duckdb_sees_timestamps_in_utc(lake: Lake) -> None:
    lake.write_partition("minute_bars", DAY, bars(symbols=1, minutes=1))
    row = lake.query("SELECT ts, strftime(ts, '%H:%M') AS hm FROM minute_bars").to_pylist()[0]
    assert row["hm"] == "14:30" and row["ts"].utcoffset() == dt.timedelta(0)


# -- staging --------------------------------------------------------------------------------


def test_staging_is_atomic_resumable_and_committed_in_one_replace(lake: Lake, tmp_path: Path) -> None:
    day = bars(symbols=6)
    pieces = {
        name: day.filter(pc.is_in(day["symbol"], pa.array(symbols)))
        for name, symbols in (
            ("part-2", ["S0004", "S0005"]),
            ("part-1", ["S0000", "S0001", "S0002", "S0003"]),
        )
    }
    for name, piece in pieces.items():
        assert lake.stage("minute_bars", DAY, name, piece) == piece.num_rows
    lake.stage("minute_bars", DAY, "part-2", pieces["part-2"])  # a rerun replaces, never duplicates
    assert lake.staged("minute_bars", DAY) == ["part-1", "part-2"]
    assert not lake.has_partition("minute_bars", DAY) and lake.datasets() == []
    assert lake.read_staged("minute_bars", DAY, "part-2").num_rows == pieces["part-2"].num_rows
    with pytest.raises(InvalidInputError, match="staged piece name"):
        lake.stage("minute_bars", DAY, "../x", day)

    assert lake.commit_staged("minute_bars", DAY) == day.num_rows
    assert lake.read_partition("minute_bars", DAY).equals(stored(day))
    assert lake.staged("minute_bars", DAY) == []
    reference = Lake(tmp_path / "reference")
    reference.write_partition("minute_bars", DAY, day)
    assert lake.file_digest("minute_bars", DAY) == reference.file_digest("minute_bars", DAY)
    assert lake.clear_staged("minute_bars", DAY) == 0


# -- S3 (moto on loopback) --------------------------------------------------------------------


def test_s3_lake_round_trip_views_and_bytes_equal_to_local(
    s3_lake: Lake, lake: Lake, s3_server, s3_bucket
) -> None:
    table = bars(symbols=30)
    assert s3_lake.write_partition("minute_bars", DAY, table) == table.num_rows
    s3_lake.write_partition("minute_bars", "2024-11-27", bars(symbols=2, day="2024-11-27"))
    lake.write_partition("minute_bars", DAY, table)

    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == [
        "lake/minute_bars/date=2024-11-27/data.parquet",
        f"lake/minute_bars/date={DAY}/data.parquet",
    ]
    assert s3_lake.file_digest("minute_bars", DAY) == lake.file_digest("minute_bars", DAY)
    assert s3_lake.read_partition("minute_bars", DAY).equals(stored(table))
    assert s3_lake.count("minute_bars") == table.num_rows + 2 * 30 and s3_lake.dates("minute_bars") == [
        "2024-11-27",
        DAY,
    ]
    per_day = s3_lake.query(
        "SELECT date, count(*) AS n FROM minute_bars WHERE symbol < 'S0002' GROUP BY date ORDER BY date"
    )
    assert per_day.to_pylist() == [
        {"date": dt.date(2024, 11, 27), "n": 60},
        {"date": dt.date(2024, 11, 29), "n": 60},
    ]

    assert s3_lake.delete_partition("minute_bars", "2024-11-27") and not s3_lake.delete_partition(
        "minute_bars", "2024-11-27"
    )
    assert s3_lake.dates("minute_bars") == [DAY] and s3_lake.datasets() == ["minute_bars"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_scan_reads_the_named_partitions_only(request: pytest.FixtureRequest, where: str) -> None:
    lake = request.getfixturevalue("lake" if where == "local" else "s3_lake")
    for day in ("2024-11-26", "2024-11-27", DAY):
        lake.write_partition("minute_bars", day, bars(symbols=2, minutes=3, day=day))
    with lake.connect() as con:
        # A partition without data is skipped; the date key is a DATE column, as in the views.
        scan = lake.scan(con, "minute_bars", [dt.date(2024, 11, 26), DAY, "2024-11-28"])
        rows = scan.aggregate("date, count(*) AS n", "date").order("date").fetchall()
        assert rows == [(dt.date(2024, 11, 26), 6), (dt.date(2024, 11, 29), 6)]
        assert lake.scan(con, "minute_bars", ["2024-11-28"]) is None and lake.scan(con, "minute_bars", []) is None
        with pytest.raises(InvalidInputError, match="expected a real date"):
            lake.scan(con, "minute_bars", ["2024-11-28'"])


def test_state_changes_with_every_write_even_within_a_clock_tick(lake: Lake, s3_lake: Lake) -> None:
    table = bars(symbols=2, minutes=3)
    states = []
    for _ in range(5):  # the same bytes each time, as fast as it goes
        lake.write_partition("minute_bars", DAY, table)
        states.append(lake.state("minute_bars"))
    assert len(set(states)) == 5 and all(len(state) == 1 for state in states)
    lake.delete_partition("minute_bars", DAY)
    assert lake.state("minute_bars") == () and lake.state("bars_1d") == ()
    assert s3_lake.state("minute_bars") is None


def test_s3_failed_write_keeps_the_old_object(s3_lake: Lake) -> None:
    s3_lake.write_partition("minute_bars", DAY, bars(seed=1))
    digest = s3_lake.file_digest("minute_bars", DAY)
    ordered = stored(bars(seed=2)).to_batches(max_chunksize=50)

    def dies_midway():
        yield from ordered[:4]
        raise RuntimeError("vendor went away")

    with pytest.raises(RuntimeError):
        s3_lake.write_partition("minute_bars", DAY, dies_midway())
    with pytest.raises(InvalidInputError, match="lacks columns"):
        s3_lake.write_partition("minute_bars", "2024-11-27", bars().drop_columns(["open"]))
    assert s3_lake.file_digest("minute_bars", DAY) == digest and s3_lake.dates("minute_bars") == [DAY]


def test_s3_multipart_upload_staging_and_cleanup(s3_server, s3_bucket) -> None:
    s3_lake = s3_server.lake(f"s3://{s3_bucket}", s3_part_bytes=5 * 2**20)  # S3's smallest part
    rng = np.random.default_rng(0)
    n = 250_000  # random floats do not compress: ~8 MB, so two parts
    noisy = pa.table(
        {
            "symbol": ["X"] * n,
            "ts": pa.array(np.arange(n), schemas.TS),
            "a": rng.random(n),
            "b": rng.random(n),
            "c": rng.random(n),
        }
    )
    s3_lake.write_partition("lake_test_any", DAY, noisy)
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"lake_test_any/date={DAY}/data.parquet")
    assert head["ContentLength"] > 5 * 2**20 and head["ETag"].strip('"').endswith("-2")  # multipart ETag
    assert s3_lake.read_partition("lake_test_any", DAY).equals(noisy)

    s3_lake.stage("lake_test_any", DAY, "p1", noisy.slice(0, 10))
    assert s3_lake.staged("lake_test_any", DAY) == ["p1"] and s3_lake.datasets() == ["lake_test_any"]
    assert s3_lake.clear_staged("lake_test_any", DAY) == 1 and s3_lake.staged("lake_test_any", DAY) == []

    # What a killed multipart upload leaves: invisible to readers, removed by clean_temp.
    s3_server.client().create_multipart_upload(
        Bucket=s3_bucket, Key="lake_test_any/date=2024-11-27/data.parquet"
    )
    assert s3_lake.dates("lake_test_any") == [DAY]
    # (moto reports every upload as initiated in 2010, so the age cut-off is only tested locally.)
    assert s3_lake.clean_temp(older_than=0) == 1
    assert "Uploads" not in s3_server.client().list_multipart_uploads(Bucket=s3_bucket)


def test_s3_settings_from_environment_never_show_the_secret(s3_server, s3_bucket, monkeypatch) -> None:
    monkeypatch.setenv("MARKET_LAKE_URL", f"s3://{s3_bucket}/env-lake")
    monkeypatch.setenv("MARKET_LAKE_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    lake = Lake.from_settings()
    assert lake.is_s3 and s3_server.secret not in repr(lake) and s3_server.endpoint in repr(lake)
    lake.write_partition("bars_1d", DAY, bars(symbols=2, minutes=1))
    assert lake.count("bars_1d", DAY) == 2

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="half set"):
        Lake.from_settings()
    with pytest.raises(ConfigError, match=r"MARKET_LAKE_S3_ENDPOINT='ftp://\*\*\*@host'") as caught:
        Lake(f"s3://{s3_bucket}", s3_endpoint="ftp://user:hunter2@host", s3_key="k", s3_secret="s")
    assert "hunter2" not in str(caught.value)


def test_s3_unreachable_bucket_is_a_lake_error(s3_server) -> None:
    missing = s3_server.lake("s3://no-such-bucket-here/lake")
    with pytest.raises(LakeError, match="no-such-bucket-here"):
        missing.write_partition("minute_bars", DAY, bars(symbols=1, minutes=1))


def test_local_lake_from_settings_and_file_urls(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MARKET_LAKE_URL", raising=False)
    monkeypatch.setenv("MARKET_PLATFORM_HOME", str(tmp_path / "home"))
    home_lake = Lake.from_settings()
    assert home_lake.url == str(tmp_path / "home" / "lake") and not home_lake.is_s3
    home_lake.write_partition("bars_1d", DAY, bars(symbols=2, minutes=1))
    assert Lake(f"file://{tmp_path}/home/lake").count("bars_1d") == 2


def test_every_platform_dataset_is_registered_whatever_was_imported():
    """Issue 11: `query` and `status --dataset` missed daily_metrics, vendor_bars_*, top3000 and the
    forecast datasets unless their own modules had been imported."""
    code = "from market_platform.storage import lake; print(' '.join(sorted(lake.DATASETS)))"
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from market_platform.analytics import forecast, metrics
    from market_platform.history import bars, universe

    expected = {*bars.DATASETS.values(), bars.PROGRESS_DATASET, universe.TOP_DATASET, metrics.DAILY_METRICS,
                metrics.INTRADAY_METRICS, forecast.RETURN_FEATURES, forecast.RETURN_FORECAST, "bars_5m", "bars_15m",
                "bars_1h", "bars_1d", "quotes_daily", "trades_daily", "universe"}
    assert expected <= set(names)
