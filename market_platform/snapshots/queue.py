"""The durable queue between the snapshot poller and its processor, with two backends.

- **The tick store's `snapshot_queue` table** (the default, MARKET_SNAPSHOT_QUEUE_URL unset): a
  message is a row; the processor claims a batch with `FOR UPDATE SKIP LOCKED`, writes the rows
  and deletes the messages in one transaction. Exactly once, by the transaction.
- **Amazon SQS** (`sqs://<queue name>` or the queue's https URL) through boto3: at-least-once,
  made exactly-once by the `market_snapshots` table's key, since the rows of a message commit before the
  message is deleted and a redelivery inserts nothing. An SQS message holds at most 256 KB, and a
  whole-market snapshot is 1-2 MB of JSON: bodies travel zstd-compressed (base64) inside the
  message when that fits (~10x smaller; a few hundred tickers), and otherwise in S3 with a pointer
  in the message - the SQS extended-client pattern - under `payloads=s3://bucket/prefix` given in
  the URL (`sqs://snapshots?payloads=s3://my-bucket/snapshots`). The payload object is deleted
  after its message. boto3 takes its region, credentials and endpoint from the environment as
  usual (AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for a local SQS/S3 such as moto's server), or from
  `region=` and `endpoint=` in the URL.

Both backends: `put(message)`, `stats()` (depth, oldest message, in flight), and
`process(handle, limit=..., connect=...)`: `handle(conn, deliveries)` runs in a database
transaction that commits before the batch leaves the queue.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit

import psycopg

from market_platform.errors import ConfigError, MalformedResponseError, MarketPlatformError, QueueUnavailableError
from market_platform.snapshots.messages import SnapshotMessage, compress, decompress
from market_platform.storage.timescale import TickStore

UTC = timezone.utc
QUEUE_URL_VAR = "MARKET_SNAPSHOT_QUEUE_URL"
#: SQS's limit on a message, and what a body may take inline under it (the envelope needs room).
SQS_MAX_MESSAGE = 262_144
INLINE_LIMIT = 240_000
ENVELOPE_VERSION = 1
T = TypeVar("T")
Handle = Callable[[psycopg.Connection, list["Delivery"]], T]


@dataclass
class Delivery:
    """A message as the processor receives it: the message (None when it cannot be decoded),
    its key, when it was enqueued, and for an undecodable one the error and the raw bytes."""

    message: SnapshotMessage | None
    key: str
    enqueued_at: datetime | None = None
    error: str | None = None
    raw: bytes | None = None
    receive_count: int = 1
    handle: Any = field(default=None, repr=False)  # the backend's own (receipt handle, payload URL)


@dataclass(frozen=True)
class QueueStats:
    depth: int  # messages waiting
    oldest: datetime | None  # when the oldest waiting one was enqueued (None: unknown or empty)
    in_flight: int = 0  # received by a processor, not yet deleted (SQS)


class SnapshotQueue(Protocol):
    name: str

    def put(self, message: SnapshotMessage) -> str: ...

    def stats(self) -> QueueStats: ...

    def process(self, handle: Handle, *, limit: int,
                connect: Callable[[], psycopg.Connection]) -> tuple[int, Any]: ...


# --------------------------------------------------------------------------- the table


class TableQueue:
    """snapshot_queue in the tick store (see the module docstring)."""

    name = "table"

    def __init__(self, store: TickStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"TableQueue({self.store!r})"

    def describe(self) -> str:
        return "the tick store's snapshot_queue table"

    def put(self, message: SnapshotMessage) -> str:
        return str(self.store.enqueue_snapshot(
            source=message.source, market=message.market, minute=message.minute, polled_at=message.polled_at,
            body=compress(message.body), body_size=len(message.body), part=message.part, parts=message.parts))

    def stats(self) -> QueueStats:
        found = self.store.snapshot_queue_stats()
        return QueueStats(found["depth"], found["oldest"])

    def process(self, handle: Handle, *, limit: int, connect: Callable[[], psycopg.Connection] | None = None
                ) -> tuple[int, Any]:
        """Claim up to `limit` messages, `handle` them and delete them, in one transaction."""

        def run(conn: psycopg.Connection, rows) -> Any:
            deliveries = []
            for row in rows:
                key = f"{row.source}/{row.market}/{row.minute.astimezone(UTC):%Y-%m-%dT%H:%MZ}/{row.part}"
                try:
                    message = SnapshotMessage(row.source, row.market, row.minute, row.polled_at,
                                              decompress(row.body, row.body_size), row.part, row.parts)
                    deliveries.append(Delivery(message, message.key, row.enqueued_at, handle=row.id))
                except MarketPlatformError as exc:
                    deliveries.append(Delivery(None, key, row.enqueued_at, error=str(exc), raw=row.body,
                                               handle=row.id))
            return handle(conn, deliveries)

        return self.store.claim_snapshot_batch(limit, run)


# --------------------------------------------------------------------------- SQS


class SqsQueue:
    """An Amazon SQS queue (see the module docstring). `queue_url` is the queue's URL; `payloads`
    an `s3://bucket/prefix` for bodies too big to go inline."""

    name = "sqs"

    def __init__(self, queue_url: str, *, payloads: str | None = None, region: str | None = None,
                 endpoint: str | None = None, visibility_timeout: int = 120, wait_seconds: int = 1,
                 inline_limit: int = INLINE_LIMIT) -> None:
        import boto3

        self.queue_url, self.endpoint = queue_url, endpoint
        self.visibility_timeout, self.wait_seconds, self.inline_limit = visibility_timeout, wait_seconds, inline_limit
        session = boto3.session.Session(region_name=region)
        self._sqs = session.client("sqs", endpoint_url=endpoint)
        self._s3 = session.client("s3", endpoint_url=endpoint) if payloads else None
        if payloads:
            self.payload_bucket, prefix = _s3_url(payloads)
            self.payload_prefix = prefix.rstrip("/") + "/" if prefix else ""
        else:
            self.payload_bucket, self.payload_prefix = None, ""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqsQueue:
        """`sqs://name?payloads=...&region=...&endpoint=...` or an http(s) queue URL (`?payloads=`
        may follow it too)."""
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query))
        unknown = sorted(set(params) - {"payloads", "region", "endpoint"})
        if unknown:
            raise ConfigError(f"{QUEUE_URL_VAR}: unknown parameters {unknown}: expected payloads, region, endpoint")
        options.setdefault("payloads", params.get("payloads"))
        options.setdefault("region", params.get("region"))
        options.setdefault("endpoint", params.get("endpoint"))
        if parts.scheme == "sqs":
            name = (parts.netloc + parts.path).strip("/")
            if not name or "/" in name:
                raise ConfigError(f"{QUEUE_URL_VAR}=sqs://{name}: expected sqs://<queue name>")
            queue = cls("", **options)
            try:
                queue.queue_url = queue._sqs.get_queue_url(QueueName=name)["QueueUrl"]
            except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentialsError
                raise ConfigError(f"{QUEUE_URL_VAR}: SQS queue {name!r} cannot be found: {_aws_error(exc)}") from None
            return queue
        if parts.scheme in ("https", "http") and parts.path.count("/") == 2:
            if options["endpoint"] is None and parts.scheme == "http":
                options["endpoint"] = f"http://{parts.netloc}"
            return cls(f"{parts.scheme}://{parts.netloc}{parts.path}", **options)
        raise ConfigError(f"{QUEUE_URL_VAR}={_redact(url)!r}: expected sqs://<queue name> or an SQS queue URL "
                          "(https://sqs.<region>.amazonaws.com/<account>/<name>)")

    def __repr__(self) -> str:
        return f"SqsQueue({self.queue_url})"

    def describe(self) -> str:
        where = f", bodies over {self.inline_limit // 1000} KB in s3://{self.payload_bucket}/{self.payload_prefix}" \
            if self.payload_bucket else ""
        return f"SQS queue {self.queue_url}{where}"

    # -- put ---------------------------------------------------------------------------------

    def put(self, message: SnapshotMessage) -> str:
        compressed = compress(message.body)
        envelope: dict[str, Any] = {
            "v": ENVELOPE_VERSION, "source": message.source, "market": message.market,
            "minute": message.minute.astimezone(UTC).isoformat(), "polled_at": message.polled_at.astimezone(UTC).isoformat(),
            "part": message.part, "parts": message.parts, "size": len(message.body),
        }
        inline = base64.b64encode(compressed).decode()
        if len(inline) <= self.inline_limit:
            envelope["body"] = inline
        else:
            if self._s3 is None:
                raise ConfigError(
                    f"a snapshot of {len(compressed):,} compressed bytes does not fit an SQS message: add "
                    f"?payloads=s3://<bucket>/<prefix> to {QUEUE_URL_VAR} for bodies to go through S3")
            key = f"{self.payload_prefix}{message.minute:%Y/%m/%d/%H%M}-{message.source}-{message.market}-" \
                  f"{message.part}-{uuid.uuid4().hex[:12]}.json.zst"
            self._aws(lambda: self._s3.put_object(Bucket=self.payload_bucket, Key=key, Body=compressed), "S3 put")
            envelope["payload"] = f"s3://{self.payload_bucket}/{key}"
        sent = self._aws(lambda: self._sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(envelope)),
                         "SQS send")
        return sent["MessageId"]

    # -- stats -------------------------------------------------------------------------------

    def stats(self) -> QueueStats:
        """SQS reports counts, not the age of the oldest message (that is CloudWatch's): `oldest`
        is None and the caller times the queue from when it first saw it non-empty."""
        found = self._aws(lambda: self._sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]), "SQS attributes")
        attributes = found.get("Attributes", {})
        return QueueStats(int(attributes.get("ApproximateNumberOfMessages", 0)), None,
                          int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)))

    # -- process -----------------------------------------------------------------------------

    def receive(self, limit: int, *, wait_seconds: int | None = None) -> list[Delivery]:
        """Up to `limit` (at most 10, SQS's batch) messages, hidden for `visibility_timeout` s."""
        found = self._aws(lambda: self._sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=max(1, min(limit, 10)),
            WaitTimeSeconds=self.wait_seconds if wait_seconds is None else wait_seconds,
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"]), "SQS receive")
        return [self._decode(item) for item in found.get("Messages", [])]

    def ack(self, deliveries: list[Delivery]) -> None:
        """Delete delivered messages (then their S3 payloads)."""
        for i in range(0, len(deliveries), 10):
            batch = deliveries[i:i + 10]
            entries = [{"Id": str(n), "ReceiptHandle": d.handle[0]} for n, d in enumerate(batch)]
            # A delete that fails (Failed entries) leaves the message to be redelivered, and its
            # key then stores nothing: no need to retry here.
            self._aws(lambda: self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries), "SQS delete")
        for delivery in deliveries:
            pointer = delivery.handle[1]
            if pointer:
                bucket, key = _s3_url(pointer)
                self._aws(lambda: self._s3.delete_object(Bucket=bucket, Key=key), "S3 delete")

    def process(self, handle: Handle, *, limit: int, connect: Callable[[], psycopg.Connection]) -> tuple[int, Any]:
        """Receive up to `limit` messages, `handle` them in a transaction of a connection from
        `connect`, commit, then delete them. A crash after the commit redelivers them later;
        the `market_snapshots` key makes that a no-op."""
        deliveries = self.receive(limit)
        if not deliveries:
            return 0, None
        with connect() as conn:
            with conn.transaction():
                result = handle(conn, deliveries)
        self.ack(deliveries)
        return len(deliveries), result

    def _decode(self, item: dict[str, Any]) -> Delivery:
        attributes = item.get("Attributes", {})
        sent = attributes.get("SentTimestamp")
        enqueued = datetime.fromtimestamp(int(sent) / 1000, UTC) if sent else None
        count = int(attributes.get("ApproximateReceiveCount", 1))
        raw = item.get("Body", "")
        pointer = None
        try:
            envelope = json.loads(raw)
            if not isinstance(envelope, dict) or envelope.get("v") != ENVELOPE_VERSION:
                raise MalformedResponseError("not a snapshot envelope of version 1")
            pointer = envelope.get("payload")
            if pointer:
                data = self._payload(pointer)
            else:
                data = base64.b64decode(envelope["body"], validate=True)
            message = SnapshotMessage(
                envelope["source"], envelope["market"], datetime.fromisoformat(envelope["minute"]),
                datetime.fromisoformat(envelope["polled_at"]), decompress(data, int(envelope["size"])),
                int(envelope.get("part", 0)), int(envelope.get("parts", 1)))
        except QueueUnavailableError:
            raise  # the service, not the message: the batch stays queued
        except (MarketPlatformError, ValueError, KeyError, TypeError) as exc:
            return Delivery(None, f"sqs/{item.get('MessageId')}", enqueued, error=f"undecodable SQS message: {exc}",
                            raw=raw.encode(errors="replace"), receive_count=count,
                            handle=(item["ReceiptHandle"], pointer))
        return Delivery(message, message.key, enqueued, receive_count=count, handle=(item["ReceiptHandle"], pointer))

    def _payload(self, pointer: str) -> bytes:
        """A body kept in S3. One that is gone (its message was processed, and the delete of the
        message failed) is malformed; S3 failing is QueueUnavailableError, and the batch waits."""
        from botocore.exceptions import ClientError

        bucket, key = _s3_url(pointer)
        if self._s3 is None:
            raise MalformedResponseError(f"its body is in S3 ({pointer}) but {QUEUE_URL_VAR} names no payloads")
        try:
            return self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise MalformedResponseError(f"its body {pointer} is not in S3 (deleted after processing?)") from None
            raise QueueUnavailableError(f"S3 get of {pointer} failed: {_aws_error(exc)}") from None
        except Exception as exc:  # botocore's connection errors
            raise QueueUnavailableError(f"S3 get of {pointer} failed: {_aws_error(exc)}") from None

    @staticmethod
    def _aws(call: Callable[[], T], what: str) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except (BotoCoreError, ClientError) as exc:
            raise QueueUnavailableError(f"{what} failed: {_aws_error(exc)}") from None


def _s3_url(url: str) -> tuple[str, str]:
    """(bucket, key or prefix) of an s3:// URL."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"{QUEUE_URL_VAR}: payloads={url!r}: expected s3://<bucket>/<prefix>")
    return parts.netloc, parts.path.lstrip("/")


def _aws_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code')}: {error.get('Message')}"
    return f"{type(exc).__name__}: {exc}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()


def queue_from_url(url: str | None, store: TickStore, **options: Any) -> SnapshotQueue:
    """The queue `url` names (MARKET_SNAPSHOT_QUEUE_URL): unset or empty -> the tick store's table."""
    if not url:
        return TableQueue(store)
    return SqsQueue.from_url(url, **options)
