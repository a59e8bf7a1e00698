"""The Alpaca stream as a Dagster resource: keys and feed from the environment, or the replay."""


import warnings
from typing import Optional

import dagster as dg

# Dagster 1.13 re-creates a sensor with `owners=[]` when it binds resources to the jobs the sensor
# launches (stream_watchdog_sensor), and warns that `owners` is a beta parameter nobody passed:
# a stray stderr line in every command that loads the definitions. Set here, at the import of
# definitions.py, because the defs folder is imported inside Dagster's own catch_warnings().
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition.__init__`")


class AlpacaStreamResource(dg.ConfigurableResource):
    """Alpaca's market-data stream. With `api_key` and `secret_key` (ALPACA_API_KEY,
    ALPACA_SECRET_KEY) a run streams from Alpaca on `feed` (ALPACA_FEED: iex or sip), or from
    `stream_url` (ALPACA_STREAM_URL: another endpoint, such as a replay server); with no keys it
    streams from a replay of the simulated market that it starts itself on loopback. Gaps are
    repaired from Alpaca's REST history (`data_url`: ALPACA_DATA_URL, another address for it)."""

    api_key: Optional[str] = None
    secret_key: Optional[str] = None
    feed: Optional[str] = None
    stream_url: Optional[str] = None
    data_url: Optional[str] = None

    @property
    def live(self) -> bool:
        return bool(self.api_key and self.secret_key)

    @property
    def stock_feed(self) -> str:
        return self.feed or "iex"
