"""Polygon Flat Files on a loopback S3 server (moto), as the vendor lays them out (PROTOCOLS.md, D).

Bucket `flatfiles`, one gzip CSV per day for the whole universe, sorted by ticker:

    us_stocks_sip/minute_aggs_v1/YYYY/MM/YYYY-MM-DD.csv.gz     sessions only
    us_stocks_sip/day_aggs_v1/YYYY/MM/YYYY-MM-DD.csv.gz
    global_crypto/minute_aggs_v1/YYYY/MM/YYYY-MM-DD.csv.gz     every UTC day
    global_crypto/day_aggs_v1/YYYY/MM/YYYY-MM-DD.csv.gz

with the vendor's header `ticker,volume,open,close,high,low,window_start,transactions`,
nanosecond `window_start` (day files: local midnight), volumes written as decimals where they are
fractional, and crypto tickers as `X:BTC-USD`. The rows are the same minute bars the REST
replays serve (`ReplayData`), without VWAP, which the files do not carry.

moto accepts any credentials; a thin WSGI layer in front of it checks the access key id
(unknown: 403 InvalidAccessKeyId), refuses GET and HEAD of objects to keys in `unentitled_keys`
(403 AccessDenied, while LIST works, as at the vendor), injects faults and logs requests.
moto keeps its buckets in process-wide state: two replays in one process need two bucket names.
"""

from __future__ import annotations

import gzip
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from market_platform import calendar
from market_platform.errors import ConfigError, InvalidInputError
from market_platform.replay.data import ReplayData, aggregate, zone
from market_platform.replay.http import Faults, LoggedRequest, RequestLog, Service
from market_platform.schemas import BARS
from market_platform.sources import symbols as sym
from market_platform.sources.flatfiles import flatfile_key
from market_platform.sources.vendor import run_concurrently

HEADER = b"ticker,volume,open,close,high,low,window_start,transactions\n"
def flatfile_bytes(bars: pa.Table, *, crypto: bool) -> bytes:
    """A vendor flat file (gzip CSV) of bars in schemas.BARS, sorted by ticker then time."""
    table = pa.table({
        "ticker": sym.to_flatfile_array(bars.column("symbol"), crypto=crypto),
        "volume": bars.column("volume"),
        "open": bars.column("open"),
        "close": bars.column("close"),
        "high": bars.column("high"),
        "low": bars.column("low"),
        "window_start": pc.cast(bars.column("ts"), pa.int64()),
        "transactions": pc.fill_null(bars.column("trade_count"), 0),
    }).sort_by([("ticker", "ascending"), ("window_start", "ascending")])
    sink = pa.BufferOutputStream()
    sink.write(HEADER)
    pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
    # gzip's usual level 6: Arrow's gzip stream compresses at level 9, four times slower for 5% less.
    return gzip.compress(sink.getvalue().to_pybytes(), compresslevel=6)


def _s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>").encode()


_REASONS = {403: "Forbidden", 404: "Not Found", 500: "Internal Server Error", 503: "Slow Down"}
_CODES = {403: ("AccessDenied", "Access Denied"), 500: ("InternalError", "We encountered an internal error."),
          503: ("SlowDown", "Please reduce your request rate.")}


class _Gatekeeper:
    """WSGI middleware in front of moto: access keys, entitlement, faults, request log."""

    def __init__(self, app, replay: FlatFilesReplay) -> None:
        self.app, self.replay = app, replay

    def __call__(self, environ: dict[str, Any], start_response):
        arrived = time.monotonic()
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        key = _access_key(environ)
        delay, failure = self.replay.faults.take(path)
        if delay:
            time.sleep(delay)
        denial = None
        if failure is not None:
            denial = (failure.status, *_CODES.get(failure.status, ("InternalError", "injected failure")))
        elif key != self.replay._admin_key:
            if key not in self.replay.keys:
                denial = (403, "InvalidAccessKeyId",
                          "The AWS Access Key Id you provided does not exist in our records.")
            elif key in self.replay.unentitled_keys and method in ("GET", "HEAD") and path.count("/") >= 2:
                denial = (403, "AccessDenied", "Access Denied")
        if denial is not None:
            status, code, message = denial
            body = b"" if method == "HEAD" else _s3_error(code, message)
            start_response(f"{status} {_REASONS.get(status, 'Error')}",
                           [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            self.replay.log.add(LoggedRequest(arrived, method, path, status, key))
            return [body]
        seen: dict[str, int] = {}

        def capture(status: str, headers, exc_info=None):
            seen["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, capture)
        finally:
            self.replay.log.add(LoggedRequest(arrived, method, path, seen.get("status", 500), key))


def _access_key(environ: dict[str, Any]) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in header:
        return header.split("Credential=", 1)[1].split("/", 1)[0]
    credential = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential")
    return credential[0].split("/", 1)[0] if credential else None


class FlatFilesReplay(Service):
    """Polygon Flat Files on a moto S3 server at 127.0.0.1, filled from `data`.

    `keys` maps access key ids to secrets (moto does not check secrets, so neither does this)."""

    def __init__(self, data: ReplayData, *, keys: Mapping[str, str], unentitled_keys: Iterable[str] = (),
                 host: str = "127.0.0.1", port: int = 0, bucket: str = "flatfiles",
                 region: str = "us-east-1") -> None:
        self.data, self.bucket, self.region = data, bucket, region
        self.keys, self.unentitled_keys = dict(keys), frozenset(unentitled_keys)
        self.faults, self.log = Faults(), RequestLog()
        self._host, self._port = host, port
        self._admin_key = f"replay-admin-{uuid.uuid4().hex[:8]}"
        self._server = None
        self._client = None

    def __repr__(self) -> str:
        return f"FlatFilesReplay({self.endpoint if self._server else 'not started'}, bucket={self.bucket!r})"

    def start(self) -> None:
        if self._server is not None:
            return
        import boto3
        from botocore.config import Config
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a log line per request otherwise
        replay = self

        class _Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from moto.moto_server.werkzeug_app import (
                    DomainDispatcherApplication,
                    MotoRequestHandler,
                    create_backend_app,
                )
                from werkzeug.serving import make_server

                app = _Gatekeeper(DomainDispatcherApplication(create_backend_app), replay)
                self._server = make_server(self._ip_address, self._port, app, True,
                                           request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        server = _Server(ip_address=self._host, port=self._port, verbose=False)
        server.start()
        self._server = server
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self._admin_key,
            aws_secret_access_key="replay", region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        existing = {b["Name"] for b in self._client.list_buckets().get("Buckets", [])}
        if self.bucket in existing:  # another replay's bucket: stop this server, leave the bucket alone
            self._server.stop()
            self._server = self._client = None
            raise ConfigError(f"bucket {self.bucket!r} already exists in this process's moto state: "
                              "expected a bucket name no other replay uses")
        self._client.create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        if self._server is None:
            return
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                for item in page.get("Contents", []):
                    self._client.delete_object(Bucket=self.bucket, Key=item["Key"])
            self._client.delete_bucket(Bucket=self.bucket)
        except Exception:  # stopping must not fail on cleanup
            pass
        self._server.stop()
        self._server = self._client = None

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FlatFilesReplay is not started")
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    def reset(self) -> None:
        self.faults.clear()
        self.log.clear()

    # ----------------------------------------------------------------------- publishing

    def publish(self, day: date, *, markets: Iterable[str] = ("stocks", "crypto"),
                datasets: Iterable[str] = ("minute_aggs_v1", "day_aggs_v1")) -> list[str]:
        """Write `day`'s minute and day files, or those of `datasets` (stocks on sessions, crypto
        every day); the keys written."""
        if self._client is None:
            raise RuntimeError("FlatFilesReplay is not started")
        written = []
        for market in markets:
            if market == "stocks" and not calendar.is_session(day):
                continue
            minutes = self.data.day_bars(market, day)
            for dataset in datasets:
                table = minutes if dataset == "minute_aggs_v1" else \
                    aggregate(minutes, "day", 1, tz=zone(market)).select(BARS.names)
                key = flatfile_key(day, market=market, dataset=dataset)
                body = flatfile_bytes(table, crypto=market == "crypto")
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body)
                written.append(key)
        return written

    def populate(self, start: date, end: date, *, workers: int = 2) -> int:
        """Publish every day in [start, end] (`workers` days at once: the simulator's numpy and
        gzip release the GIL); returns the number of files written."""
        start, end = calendar.to_date(start), calendar.to_date(end)
        if start > end:
            raise InvalidInputError(f"start {start.isoformat()} is after end {end.isoformat()}")
        days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
        return sum(len(keys) for keys in run_concurrently(days, self.publish, workers=workers))

    def republish(self, day: date, *, market: str = "stocks", symbols: Iterable[str] | None = None,
                  volume_delta: float = 100.0) -> pa.Table:
        """Correct `day` late, as the vendor sometimes does, and rewrite its files (new ETags).

        The first bar of each of `symbols` (default: the first three that traded) gains
        `volume_delta` shares and one trade; every replay serves the corrected bars from now on.
        Returns the corrected rows (schemas.BARS)."""
        minutes = self.data.day_bars(market, day)
        wanted = sorted(set(symbols)) if symbols is not None else \
            sorted(set(minutes.column("symbol").to_pylist()))[:3]
        rows = []
        for s in wanted:
            mine = minutes.filter(pc.equal(minutes.column("symbol"), s))
            if not mine.num_rows:
                raise InvalidInputError(f"{s} has no bars on {day.isoformat()} to correct")
            first = mine.slice(0, 1).to_pylist()[0]
            first.update(volume=first["volume"] + volume_delta, trade_count=(first["trade_count"] or 0) + 1)
            rows.append(first)
        corrections = pa.Table.from_pylist(rows, schema=BARS)
        self.data.correct(day, corrections)
        self.publish(day, markets=[market])
        return corrections

    def etag(self, day: date, *, market: str = "stocks", dataset: str = "minute_aggs_v1") -> str | None:
        """The current ETag of a day's file, or None if it is not published."""
        try:
            return self._client.head_object(Bucket=self.bucket, Key=flatfile_key(day, market=market,
                                                                                dataset=dataset))["ETag"]
        except self._client.exceptions.ClientError:
            return None
