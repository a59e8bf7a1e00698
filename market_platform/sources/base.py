"""The interfaces assets use to get market data, whatever the vendor.

Every method returns Arrow tables in the schemas of `market_platform.schemas`.
"""

from __future__ import annotations

from datetime import date
from typing import Protocol, Sequence, runtime_checkable

import pyarrow as pa


@runtime_checkable
class BarsSource(Protocol):
    """Where 1-minute bars of a session come from."""

    #: Short name recorded in metadata, e.g. "sim", "polygon_rest".
    name: str

    def minute_bars(self, day: date, symbols: Sequence[str] | None = None) -> pa.Table:
        """schemas.BARS rows for `symbols` (all the source knows when None) on session `day`."""
        ...


@runtime_checkable
class UniverseSource(Protocol):
    """Where the list of tickers of a category comes from."""

    name: str

    def universe(self, category: str, day: date) -> pa.Table:
        """schemas.UNIVERSE rows: the tickers of `category` listed on `day` (point in time)."""
        ...
