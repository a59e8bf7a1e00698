"""Polygon (Massive) Flat Files: one gzip CSV per day for the whole market, read from S3 with boto3
and parsed into Arrow as it streams: memory holds a few blocks, not the file (measured: a day of
3,000 tickers, 700k rows, or eight times that, reads in under 45 MB of Arrow memory with 1 MB
blocks; larger blocks let Arrow's CSV reader run further ahead and grow with the file).

    source = FlatFilesSource.from_env()      # POLYGON_S3_ACCESS_KEY, POLYGON_S3_SECRET_KEY, ...
    if source.exists(day):
        bars = source.minute_bars(day, ["AAPL"])                  # a Table
        lake.write_partition("minute_bars", day, source.iter_batches(day))   # streamed

Layout `{prefix}/{dataset}/YYYY/MM/YYYY-MM-DD.csv.gz` with the vendor's header
`ticker,volume,open,close,high,low,window_start,transactions` (nanosecond timestamps; day files
stamped at local midnight). Volumes are parsed as float64, since the vendor writes fractional
shares as decimals. Rows come out as schemas.BARS with `source = polygon_flatfiles`; the files
carry no VWAP, so `vwap` is null. Crypto tickers `X:BTC-USD` become `BTC/USD`.

Errors: 403 (keys unknown, or the plan lacks the dataset; the vendor lists every prefix but refuses
GET and HEAD outside the plan) -> VendorAuthError; a missing file -> VendorNotFoundError (files for
day D appear around 11:00 New York on D+1, and can be republished: compare `etag`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from market_platform import calendar, settings
from market_platform.errors import (
    ConfigError,
    InvalidInputError,
    VendorAuthError,
    VendorError,
    VendorNotFoundError,
    VendorUnavailableError,
)
from market_platform.schemas import BARS, TS, Source
from market_platform.sources import symbols as sym

DEFAULT_ENDPOINT = "https://files.polygon.io"
DEFAULT_BUCKET = "flatfiles"
COLUMNS = ("ticker", "volume", "open", "close", "high", "low", "window_start", "transactions")
PREFIXES = {"stocks": "us_stocks_sip", "crypto": "global_crypto"}
DATASETS = ("minute_aggs_v1", "day_aggs_v1")
_TYPES = {"ticker": pa.string(), "volume": pa.float64(), "open": pa.float64(), "close": pa.float64(),
          "high": pa.float64(), "low": pa.float64(), "window_start": pa.int64(), "transactions": pa.int64()}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def flatfile_key(day: date, *, market: str = "stocks", dataset: str = "minute_aggs_v1") -> str:
    """The object key of a day's file, e.g. `us_stocks_sip/minute_aggs_v1/2024/03/2024-03-07.csv.gz`."""
    if market not in PREFIXES:
        raise InvalidInputError(f"unknown flat-file market {market!r}: expected one of {', '.join(PREFIXES)}")
    if dataset not in DATASETS:
        raise InvalidInputError(f"unknown flat-file dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    return f"{PREFIXES[market]}/{dataset}/{day:%Y}/{day:%m}/{day.isoformat()}.csv.gz"


@dataclass(frozen=True)
class FlatFile:
    """A day's file as read: where it was, its ETag (to detect republication) and its bars."""

    key: str
    etag: str
    table: pa.Table


class FlatFilesSource:
    """Polygon Flat Files on S3 (`endpoint`, `bucket`), with the Flat Files keys (not the REST key)."""

    name = Source.POLYGON_FLATFILES.value

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        bucket: str = DEFAULT_BUCKET,
        region: str = "us-east-1",
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        attempts: int = 5,
        block_size: int = 1 << 20,
    ) -> None:
        if not access_key or not secret_key:
            raise ConfigError(f"no Flat Files keys: set {settings.POLYGON_S3_ACCESS_KEY_VAR} and "
                              f"{settings.POLYGON_S3_SECRET_KEY_VAR} (they differ from the REST API key)")
        import boto3
        from botocore.config import Config

        self.endpoint, self.bucket, self.block_size = endpoint.rstrip("/"), bucket, block_size
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          connect_timeout=connect_timeout, read_timeout=read_timeout,
                          retries={"max_attempts": attempts, "mode": "standard"}),
        )
        self._secrets = (access_key, secret_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> FlatFilesSource:
        """A source from POLYGON_S3_ACCESS_KEY, POLYGON_S3_SECRET_KEY, POLYGON_S3_ENDPOINT, POLYGON_S3_BUCKET."""
        env = os.environ if environ is None else environ
        options.setdefault("endpoint", env.get(settings.POLYGON_S3_ENDPOINT_VAR) or DEFAULT_ENDPOINT)
        options.setdefault("bucket", env.get(settings.POLYGON_S3_BUCKET_VAR) or DEFAULT_BUCKET)
        return cls(env.get(settings.POLYGON_S3_ACCESS_KEY_VAR, ""), env.get(settings.POLYGON_S3_SECRET_KEY_VAR, ""),
                   **options)

    def __repr__(self) -> str:
        return f"FlatFilesSource({self.endpoint}, bucket={self.bucket!r})"

    # ----------------------------------------------------------------------- objects

    def exists(self, day: date | str, *, market: str = "stocks", dataset: str = "minute_aggs_v1") -> bool:
        """Whether the day's file is published."""
        return self.etag(day, market=market, dataset=dataset) is not None

    def etag(self, day: date | str, *, market: str = "stocks", dataset: str = "minute_aggs_v1") -> str | None:
        """The ETag of the day's file (it changes when the vendor republishes), or None if absent."""
        key = flatfile_key(calendar.to_date(day), market=market, dataset=dataset)
        try:
            with self._errors(key):
                return self._client.head_object(Bucket=self.bucket, Key=key)["ETag"]
        except VendorNotFoundError:
            return None

    # ----------------------------------------------------------------------- bars

    def iter_batches(self, day: date | str, symbols: Sequence[str] | None = None, *, market: str = "stocks",
                     dataset: str = "minute_aggs_v1") -> Iterator[pa.RecordBatch]:
        """schemas.BARS record batches of the day's file, in file order (by ticker), as it downloads."""
        _, batches = self._open(calendar.to_date(day), market, dataset, symbols)
        return batches

    def read(self, day: date | str, symbols: Sequence[str] | None = None, *, market: str = "stocks",
             dataset: str = "minute_aggs_v1") -> FlatFile:
        """The day's file as one table of schemas.BARS (of `symbols` only, if given), with its ETag."""
        day = calendar.to_date(day)
        (key, etag), batches = self._open(day, market, dataset, symbols)
        table = pa.Table.from_batches(list(batches), schema=BARS)
        return FlatFile(key, etag, table.sort_by([("symbol", "ascending"), ("ts", "ascending")]))

    def minute_bars(self, day: date | str, symbols: Sequence[str] | None = None) -> pa.Table:
        """1-minute bars of session `day` (stocks file), or of the UTC day (crypto file) when
        `symbols` are crypto pairs; mixed symbols read both files."""
        return self._by_market(day, symbols, "minute_aggs_v1")

    def day_bars(self, day: date | str, symbols: Sequence[str] | None = None) -> pa.Table:
        """The vendor's daily bars of `day` (stamped at midnight New York; crypto: UTC)."""
        return self._by_market(day, symbols, "day_aggs_v1")

    def _by_market(self, day: date | str, symbols: Sequence[str] | None, dataset: str) -> pa.Table:
        day = calendar.to_date(day)
        if symbols is None:
            markets = {"stocks": None}
        else:
            names = [symbols] if isinstance(symbols, str) else list(symbols)
            markets = {}
            for s in names:
                markets.setdefault("crypto" if sym.is_crypto(s) else "stocks", []).append(s)
        tables = [self.read(day, wanted, market=market, dataset=dataset).table for market, wanted in markets.items()]
        if not tables:
            return BARS.empty_table()
        return pa.concat_tables(tables).sort_by([("symbol", "ascending"), ("ts", "ascending")])

    def _open(self, day: date, market: str, dataset: str, symbols: Sequence[str] | None):
        if market == "stocks" and not calendar.is_session(day):
            calendar.session(day)  # raises NotASessionError naming the day
        key = flatfile_key(day, market=market, dataset=dataset)
        with self._errors(key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        wanted = None
        if symbols is not None:
            names = [symbols] if isinstance(symbols, str) else list(symbols)
            wanted = pa.array(sorted({sym.to_flatfile(s) for s in names}), pa.string())
        return (key, response["ETag"]), self._batches(response["Body"], key, wanted)

    def _batches(self, body, key: str, wanted: pa.Array | None) -> Iterator[pa.RecordBatch]:
        source = Source.POLYGON_FLATFILES.value
        try:
            with self._errors(key), pa.CompressedInputStream(pa.PythonFile(body, mode="r"), "gzip") as stream:
                reader = pa_csv.open_csv(
                    stream,
                    read_options=pa_csv.ReadOptions(block_size=self.block_size, use_threads=False),
                    convert_options=pa_csv.ConvertOptions(column_types=_TYPES, include_columns=list(COLUMNS)),
                )
                for batch in reader:
                    if wanted is not None:
                        batch = batch.filter(pc.is_in(batch.column("ticker"), value_set=wanted))
                    if batch.num_rows:
                        yield _bars_batch(batch, source)
        finally:
            body.close()

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.bucket}/{key}"
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _DENIED or status == "403":
                raise VendorAuthError(
                    f"Polygon Flat Files refused {where} ({code or status}): the Flat Files keys "
                    f"({settings.POLYGON_S3_ACCESS_KEY_VAR}/{settings.POLYGON_S3_SECRET_KEY_VAR}) are wrong or the "
                    "plan does not include this dataset") from None
            if code in _MISSING or status == "404":
                raise VendorNotFoundError(
                    f"no flat file {where}: not published yet (files for a day appear around 11:00 New York "
                    "the next day) or no trading that day") from None
            raise VendorUnavailableError(f"Polygon Flat Files failed on {where}: {self._scrub(str(exc))}") from None
        except BotoCoreError as exc:
            raise VendorUnavailableError(f"Polygon Flat Files unreachable for {where}: {self._scrub(str(exc))}") \
                from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise VendorError(f"could not read {where} as a flat file: {self._scrub(str(exc))[:300]}") from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _bars_batch(batch: pa.RecordBatch, source: str) -> pa.RecordBatch:
    n = batch.num_rows
    return pa.RecordBatch.from_arrays([
        sym.from_flatfile_array(batch.column("ticker")),
        batch.column("window_start").cast(TS),
        batch.column("open"), batch.column("high"), batch.column("low"), batch.column("close"),
        batch.column("volume"),
        pa.nulls(n, pa.float64()),
        batch.column("transactions"),
        pa.repeat(pa.scalar(source, pa.string()), n),
    ], schema=BARS)
