"""A queued snapshot: one raw vendor response of one polled minute, and how it travels.

A message is the response body exactly as polled (JSON), with what it answers: the source
(polygon_rest, alpaca_rest), the market (stocks, crypto), the minute polled, the part of a
response split by symbols (Alpaca answers a few hundred symbols per request) and when it
arrived. Bodies travel zstd-compressed (a 3,000-ticker snapshot is ~1.5 MB of JSON and ~10% of
that compressed). `key` names the message for good: two deliveries of one message share it, so
a redelivery can be recognised (dead letters are written once per key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from market_platform.errors import InvalidInputError, MalformedResponseError
from market_platform.schemas import Source

UTC = timezone.utc
SOURCES = (Source.POLYGON_REST.value, Source.ALPACA_REST.value)
MARKETS = ("stocks", "crypto")
_CODEC = pa.Codec("zstd", compression_level=3)


@dataclass(frozen=True)
class SnapshotMessage:
    """One raw snapshot response (see the module docstring)."""

    source: str
    market: str
    minute: datetime  # the minute polled, UTC, on the minute
    polled_at: datetime  # when the response arrived
    body: bytes  # the response as received (JSON)
    part: int = 0
    parts: int = 1

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InvalidInputError(f"snapshot source {self.source!r}: expected one of {', '.join(SOURCES)}")
        if self.market not in MARKETS:
            raise InvalidInputError(f"snapshot market {self.market!r}: expected one of {', '.join(MARKETS)}")
        for name in ("minute", "polled_at"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidInputError(f"{name}={value!r}: expected a timezone-aware datetime")
        if self.minute.second or self.minute.microsecond:
            raise InvalidInputError(f"minute={self.minute.isoformat()}: expected a time on the minute")
        if not 0 <= self.part < self.parts:
            raise InvalidInputError(f"part {self.part} of {self.parts}: expected 0 <= part < parts")

    @property
    def key(self) -> str:
        """The message's identity: source/market/minute/part."""
        return f"{self.source}/{self.market}/{self.minute.astimezone(UTC):%Y-%m-%dT%H:%MZ}/{self.part}"

    @property
    def stream(self) -> str:
        """The name its dead letters are filed under."""
        return f"snapshots_{self.source}_{self.market}"


def compress(body: bytes) -> bytes:
    return _CODEC.compress(body, asbytes=True)


def decompress(data: bytes, size: int) -> bytes:
    """The `size` bytes compressed in `data`; MalformedResponseError when they are not there."""
    try:
        body = _CODEC.decompress(data, decompressed_size=size, asbytes=True)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise MalformedResponseError(f"a queued snapshot body does not decompress ({size} bytes expected): {exc}") \
            from None
    if len(body) != size:
        raise MalformedResponseError(f"a queued snapshot body decompressed to {len(body)} bytes: expected {size}")
    return body
