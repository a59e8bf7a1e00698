"""Live streaming into the tick store: alpaca-py -> validation -> batches -> binary COPY.

No Dagster here; `market_platform.defs.streaming` wraps it in jobs, schedules and sensors.

    Streamer, StreamConfig, StreamReport   the streamer (streamer.py)
    MinuteBarsFetcher, sim_fetcher         gap repair's REST source (repair.py)
"""

from market_platform.streaming.repair import MinuteBarsFetcher, sim_fetcher
from market_platform.streaming.streamer import StreamConfig, Streamer, StreamReport

__all__ = ["MinuteBarsFetcher", "StreamConfig", "StreamReport", "Streamer", "sim_fetcher"]
