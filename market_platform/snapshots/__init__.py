"""Minute snapshots of the whole market through a durable queue, and the live stream's feed health.

    poller.py       the vendor's snapshot once a minute on the minute, each raw response enqueued
    queue.py        the queue: the tick store's snapshot_queue table, or Amazon SQS (+ S3)
    processor.py    batches of queued responses into `market_snapshots`, malformed ones to dead_letters
    parse.py        raw Polygon and Alpaca responses into schemas.SNAPSHOTS, column by column
    messages.py     a queued response and its compression
    feed_health.py  silent stalls of the stream found from the snapshots: recorded, repaired, alerted
"""
