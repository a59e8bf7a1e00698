"""Local servers that speak the vendors' wire protocols (Polygon REST, Polygon Flat Files on S3,
Alpaca REST), fed by the simulated market or another `MarketProvider`. No Dagster here."""

from market_platform.replay.data import MarketProvider, ReplayData, SimProvider, aggregate
from market_platform.replay.servers import ReplayKeys, ReplayServers, serve

__all__ = ["MarketProvider", "ReplayData", "ReplayKeys", "ReplayServers", "SimProvider", "aggregate", "serve"]
