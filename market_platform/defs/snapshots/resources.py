"""The snapshot queue as a Dagster resource: MARKET_SNAPSHOT_QUEUE_URL, or the tick store's table."""


from typing import Optional

import dagster as dg

from market_platform.snapshots.queue import SnapshotQueue, queue_from_url
from market_platform.storage.timescale import TickStore


class SnapshotQueueResource(dg.ConfigurableResource):
    """Where polled snapshots wait for the processor: `url` (MARKET_SNAPSHOT_QUEUE_URL) is
    `sqs://<queue>[?payloads=s3://bucket/prefix]` or an SQS queue URL; unset, the tick store's
    `snapshot_queue` table."""

    url: Optional[str] = None

    def queue(self, store: TickStore) -> SnapshotQueue:
        return queue_from_url(self.url, store)
