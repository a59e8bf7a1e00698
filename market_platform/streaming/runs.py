"""What one stream run covers and where it connects: the pieces the Dagster jobs and the CLI share.

A stock run covers one session, from the pre-market open (or from now, if it starts late and
streams live) to the after-hours close (17:00 on half days); a crypto run covers one UTC day.
It connects to Alpaca with the user's keys, or, with none, to a replay of the simulated market
that it starts itself on loopback; a replay runs on the events clock at any speed.
"""

from __future__ import annotations

import ipaddress
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Callable, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.replay.alpaca_stream import AlpacaStreamReplay
from market_platform.sources.sim import SimMarket
from market_platform.streaming.repair import History, alpaca_history, sim_history

if TYPE_CHECKING:
    from market_platform.streaming.streamer import StreamConfig, StreamReport

log = logging.getLogger(__name__)

UTC = timezone.utc
NS = 1_000_000_000


def _wall_time(text: str, name: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"{name}={text!r} is not a time of day: expected HH:MM (New York)") from None


def stock_window(day: date | str, *, start: str | None = None, end: str | None = None,
                 now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a stock run on `day`: the session's extended hours, narrowed by `start`/
    `end` (HH:MM New York), and starting at `now` if that is later (a run launched mid-session).

    Raises NotASessionError on a weekend or holiday, InvalidInputError for an empty window.
    """
    session = calendar.session(day)
    lo, hi = session.start, session.end
    if start:
        lo = max(lo, datetime.combine(session.day, _wall_time(start, "start"), calendar.NEW_YORK).astimezone(UTC))
    if end:
        hi = min(hi, datetime.combine(session.day, _wall_time(end, "end"), calendar.NEW_YORK).astimezone(UTC))
    if now is not None and now > lo:
        lo = now.astimezone(UTC).replace(microsecond=0)
    if hi <= lo:
        raise InvalidInputError(
            f"the stream window {lo.astimezone(calendar.NEW_YORK):%Y-%m-%d %H:%M} .. "
            f"{hi.astimezone(calendar.NEW_YORK):%H:%M} New York is empty: expected its start before its end, "
            f"within the session {session.start.astimezone(calendar.NEW_YORK):%H:%M}-"
            f"{session.end.astimezone(calendar.NEW_YORK):%H:%M}"
        )
    return lo, hi


def crypto_window(day: date | str, *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a crypto run on the UTC day `day` (from `now` if later)."""
    lo = datetime.combine(calendar.to_date(day), time(0), UTC)
    hi = lo + timedelta(days=1)
    if now is not None and now > lo:
        lo = now.astimezone(UTC).replace(microsecond=0)
    if hi <= lo:
        raise InvalidInputError(f"the UTC day {day} is over: expected today or a later day")
    return lo, hi


def today(kind: str, now: datetime | None = None) -> date:
    """Today's stock session date (New York) or crypto day (UTC)."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC if kind == "crypto" else calendar.NEW_YORK).date()


def check_live_day(kind: str, day: date, now: datetime | None = None) -> None:
    """A live feed streams what happens now: raise InvalidInputError for any day but today."""
    current = today(kind, now)
    if day != current:
        what = "UTC day" if kind == "crypto" else "session"
        raise InvalidInputError(
            f"day {day.isoformat()}: a live Alpaca stream can only stream today's {what} ({current.isoformat()}); "
            f"for {'a past' if day < current else 'a future'} day, unset ALPACA_API_KEY to stream the replay of the "
            "simulated market, or backfill the day's bars")


def is_loopback(url: str | None) -> bool:
    host = urlsplit(url).hostname if url else None
    if host in ("localhost",):
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Endpoint:
    """Where a run connects and how it keeps time."""

    url: str | None
    api_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    clock: str
    replay: AlpacaStreamReplay | None = None
    history: History | None = None

    @property
    def event_to_wall(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """A replay's clock, for the lag from event to commit (None: from arrival)."""
        replay = self.replay
        if replay is None or replay.speed is None:
            return None

        def mapping(ns: np.ndarray) -> np.ndarray:
            anchor = replay.clock_anchor("crypto" if "crypto" in (self.url or "") else "stocks")
            if anchor is None:
                return np.full(len(ns), np.inf)
            event0, wall0, speed = anchor
            return wall0 + (ns - event0) / NS / speed

        return mapping


@contextmanager
def endpoint(
    kind: str,
    *,
    api_key: str | None,
    secret_key: str | None,
    feed: str,
    stream_url: str | None,
    market: SimMarket,
    day: date,
    start: datetime,
    end: datetime,
    speed: float | None,
    symbols: Sequence[str],
    clock: str = "auto",
    data_url: str | None = None,
) -> Iterator[Endpoint]:
    """Alpaca (keys given; `stream_url` and `data_url` override the stream's and the REST
    history's addresses), or, with no keys, a replay of `market` for the window, started here on
    loopback: the stream replay and the Alpaca REST replay, which serves the gap repairs to the
    real alpaca-py REST client. `speed`: the stream replay's times real time (None: as fast as
    the client reads). A stream replay at `stream_url` on loopback with no `data_url` gets its
    repairs from `market` directly, so they match what it served.
    """
    from market_platform.replay import ReplayData, SimProvider
    from market_platform.replay.alpaca import AlpacaReplay
    from market_platform.sources.alpaca import AlpacaSource

    if clock not in ("auto", "wall", "events"):
        raise InvalidInputError(f"clock={clock!r}: expected auto, wall or events")
    crypto = kind == "crypto"
    rest_feed = "iex" if crypto else feed
    if api_key and secret_key:
        replayed = is_loopback(stream_url)
        chosen = clock if clock != "auto" else ("events" if replayed else "wall")
        if replayed and not data_url:
            history = sim_history(market, crypto=crypto)
        else:
            history = alpaca_history(AlpacaSource(api_key, secret_key, data_url=data_url, trading_url=data_url,
                                                  feed=rest_feed))
        yield Endpoint(stream_url, api_key, secret_key, chosen, history=history)
        return
    replay = AlpacaStreamReplay(
        market, day, start=start, end=end, crypto_day=day, speed=speed,
        symbols=None if crypto else list(symbols), crypto_symbols=list(symbols) if crypto else None,
    )
    rest = AlpacaReplay(ReplayData(SimProvider(market)), keys={replay.key: replay.secret})
    rest.start()
    try:
        with replay:
            source = AlpacaSource(replay.key, replay.secret, data_url=rest.url, trading_url=rest.url, feed=rest_feed,
                                  rate_limit=None)
            yield Endpoint(replay.url("crypto" if crypto else feed), replay.key, replay.secret,
                           "events" if clock == "auto" else clock, replay, alpaca_history(source))
    finally:
        rest.stop()


def stream_window(
    kind: str,
    day: date | str,
    *,
    market: SimMarket,
    symbols: Sequence[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    speed: float | None = 1.0,
    api_key: str | None = None,
    secret_key: str | None = None,
    feed: str = "iex",
    stream_url: str | None = None,
    data_url: str | None = None,
    store_url: str | None = None,
    clock: str = "auto",
    from_now: bool = False,
    on_minute: Callable[[dict], None] | None = None,
    on_start: Callable[[Endpoint, "StreamConfig"], None] | None = None,
    **settings,
) -> "StreamReport":
    """Stream one window of `kind` ("stocks" or "crypto") on `day` into the tick store, from Alpaca
    (keys given) or a replay of `market` (none); returns the report. `from_now` starts the window
    at the current time (a live run launched late). `settings` go to StreamConfig (stale_after,
    repair_delay, change_filter, flush_rows, spool_dir, ...)."""
    from market_platform.streaming.streamer import StreamConfig, Streamer

    day = calendar.to_date(day)
    live = bool(api_key and secret_key) and not is_loopback(stream_url)
    if live:
        check_live_day(kind, day)
    now = datetime.now(UTC) if from_now else None
    if kind == "crypto":
        lo, hi = crypto_window(day, now=now)
        names = list(symbols) if symbols else market.symbols(day, category="crypto")
        feed = "us"
    elif kind == "stocks":
        lo, hi = stock_window(day, start=start, end=end, now=now)
        names = list(symbols) if symbols else market.stock_symbols(day)
    else:
        raise InvalidInputError(f"kind={kind!r}: expected stocks or crypto")
    with endpoint(kind, api_key=api_key, secret_key=secret_key, feed=feed, stream_url=stream_url, market=market,
                  day=day, start=lo, end=hi, speed=speed, symbols=names, clock=clock, data_url=data_url) as ep:
        config = StreamConfig(symbols=tuple(names), start=lo, end=hi, kind=kind, feed=feed, api_key=ep.api_key,
                              secret_key=ep.secret_key, url=ep.url, clock=ep.clock, **settings)
        if on_start is not None:
            on_start(ep, config)
        streamer = Streamer(config, store_url=store_url, history=ep.history,
                            event_to_wall=ep.event_to_wall, on_minute=on_minute)
        return streamer.run()
