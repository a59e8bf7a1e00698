"""Live streaming into the tick store: alpaca-py -> validation -> batches -> binary COPY.

No Dagster here; `market_platform.defs.streaming` wraps it in jobs, schedules and sensors.

    Streamer, StreamConfig, StreamReport    the streamer (streamer.py)
    History, sim_history, alpaca_history    the vendor history that checks minutes and refills gaps
    Gap, repair_gaps                        refill a list of gaps (repair.py)
"""

from market_platform.streaming.repair import Gap, GapRepair, History, alpaca_history, repair_gaps, sim_history
from market_platform.streaming.streamer import StreamConfig, Streamer, StreamReport

__all__ = ["Gap", "GapRepair", "History", "StreamConfig", "StreamReport", "Streamer", "alpaca_history",
           "repair_gaps", "sim_history"]
