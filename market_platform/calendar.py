"""The US equity market calendar: sessions, holidays, half days and each session's phases.

Built on `exchange_calendars` (XNYS), which knows regular hours, holidays and early closes but
not extended hours. Extended hours are derived here: pre-market opens at 04:00 New York, and
after-hours runs from the close to 20:00 (17:00 on half days, when the close is 13:00).

Every instant this module returns is a timezone-aware UTC `datetime`; the wall-clock rules live
in New York time, so daylight-saving changes come out right (09:30 New York is 13:30 UTC in
summer, 14:30 UTC in winter).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterator, Literal
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd

from market_platform.errors import InvalidInputError, NotASessionError

NEW_YORK = ZoneInfo("America/New_York")
UTC = timezone.utc

#: Earliest date the calendar covers; vendors' minute history reaches back to 2004.
CALENDAR_START = date(2004, 1, 2)

PREMARKET_OPEN = time(4, 0)
REGULAR_OPEN = time(9, 30)
REGULAR_CLOSE = time(16, 0)
HALF_DAY_CLOSE = time(13, 0)
AFTER_HOURS_CLOSE = time(20, 0)
HALF_DAY_AFTER_HOURS_CLOSE = time(17, 0)

Phase = Literal["premarket", "regular", "afterhours"]
PHASES: tuple[Phase, ...] = ("premarket", "regular", "afterhours")


@dataclass(frozen=True)
class Session:
    """One trading session: its New York date and the UTC bounds of its three phases."""

    day: date
    premarket_open: datetime
    regular_open: datetime
    regular_close: datetime
    after_hours_close: datetime

    @property
    def is_half_day(self) -> bool:
        return self.regular_close.astimezone(NEW_YORK).time() < REGULAR_CLOSE

    @property
    def start(self) -> datetime:
        """The first instant of the session (pre-market open)."""
        return self.premarket_open

    @property
    def end(self) -> datetime:
        """The instant the session ends (after-hours close), exclusive."""
        return self.after_hours_close

    def phase_bounds(self, phase: Phase) -> tuple[datetime, datetime]:
        """The [start, end) UTC bounds of `phase`."""
        if phase == "premarket":
            return self.premarket_open, self.regular_open
        if phase == "regular":
            return self.regular_open, self.regular_close
        if phase == "afterhours":
            return self.regular_close, self.after_hours_close
        raise InvalidInputError(f"unknown phase {phase!r}: expected one of {', '.join(PHASES)}")

    def phases(self) -> dict[Phase, tuple[datetime, datetime]]:
        return {phase: self.phase_bounds(phase) for phase in PHASES}

    def phase_at(self, instant: datetime) -> Phase | None:
        """The phase `instant` falls in, or None outside the session."""
        instant = _as_utc(instant)
        for phase in PHASES:
            start, end = self.phase_bounds(phase)
            if start <= instant < end:
                return phase
        return None

    def expected_minutes(self, phase: Phase | None = None) -> int:
        """Number of 1-minute bars a fully traded symbol has in `phase` (or the whole session)."""
        start, end = (self.start, self.end) if phase is None else self.phase_bounds(phase)
        return int((end - start).total_seconds() // 60)

    def minutes(self, phase: Phase | None = None) -> pd.DatetimeIndex:
        """The UTC start of every minute in `phase` (or the whole session)."""
        start, end = (self.start, self.end) if phase is None else self.phase_bounds(phase)
        return pd.date_range(start, end, freq="1min", inclusive="left")


def _as_utc(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise InvalidInputError(f"instant {instant.isoformat()} has no time zone: expected an aware datetime")
    return instant.astimezone(UTC)


def _at(day: date, wall: time) -> datetime:
    return datetime.combine(day, wall, tzinfo=NEW_YORK).astimezone(UTC)


def to_date(value: date | str) -> date:
    """Parse `YYYY-MM-DD` (or pass a date through) with an error that names the value."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise InvalidInputError(f"{value!r} is not a date: expected YYYY-MM-DD") from None


class MarketCalendar:
    """XNYS sessions between `start` and `end`, with extended hours."""

    def __init__(self, start: date = CALENDAR_START, end: date | None = None):
        end = end or date.today().replace(month=12, day=31) + timedelta(days=366)
        self.start, self.end = start, end
        self._xcal = xcals.get_calendar("XNYS", start=start.isoformat(), end=end.isoformat())
        schedule = self._xcal.schedule
        self._days: list[date] = [ts.date() for ts in schedule.index]
        self._closes = {d: c.to_pydatetime() for d, c in zip(self._days, schedule["close"])}
        self._session_set = frozenset(self._days)

    def _check_range(self, day: date) -> None:
        if not self.start <= day <= self.end:
            raise InvalidInputError(
                f"{day.isoformat()} is outside the market calendar: expected a date between "
                f"{self.start.isoformat()} and {self.end.isoformat()}"
            )

    def is_session(self, day: date | str) -> bool:
        day = to_date(day)
        self._check_range(day)
        return day in self._session_set

    def session(self, day: date | str) -> Session:
        """The session on `day`; raises NotASessionError on weekends and holidays."""
        day = to_date(day)
        if not self.is_session(day):
            reason = "a weekend" if day.weekday() >= 5 else "an exchange holiday"
            raise NotASessionError(f"{day.isoformat()} is not a trading session ({reason})")
        regular_close = self._closes[day]
        half_day = regular_close.astimezone(NEW_YORK).time() < REGULAR_CLOSE
        return Session(
            day=day,
            premarket_open=_at(day, PREMARKET_OPEN),
            regular_open=_at(day, REGULAR_OPEN),
            regular_close=regular_close.astimezone(UTC),
            after_hours_close=_at(day, HALF_DAY_AFTER_HOURS_CLOSE if half_day else AFTER_HOURS_CLOSE),
        )

    def sessions(self, start: date | str, end: date | str) -> list[date]:
        """Session dates in [start, end], both inclusive."""
        start, end = to_date(start), to_date(end)
        if start > end:
            raise InvalidInputError(f"start {start.isoformat()} is after end {end.isoformat()}")
        return [d for d in self._days if start <= d <= end]

    def iter_sessions(self, start: date | str, end: date | str) -> Iterator[Session]:
        return (self.session(d) for d in self.sessions(start, end))

    def holidays(self, start: date | str | None = None, end: date | str | None = None) -> list[date]:
        """Weekdays on which the exchange is closed (including one-off closures)."""
        start, end = to_date(start or self.start), to_date(end or self.end)
        days = pd.bdate_range(start, end)
        return [d.date() for d in days if d.date() not in self._session_set]

    def half_days(self, start: date | str, end: date | str) -> list[date]:
        return [d for d in self.sessions(start, end) if self.session(d).is_half_day]

    def previous_session(self, day: date | str) -> date:
        """The last session strictly before `day`."""
        day = to_date(day)
        for candidate in reversed(self._days):
            if candidate < day:
                return candidate
        raise InvalidInputError(f"no session before {day.isoformat()} in the calendar")

    def next_session(self, day: date | str) -> date:
        """The first session strictly after `day`."""
        day = to_date(day)
        for candidate in self._days:
            if candidate > day:
                return candidate
        raise InvalidInputError(f"no session after {day.isoformat()} in the calendar")

    def session_at(self, instant: datetime) -> Session | None:
        """The session whose extended hours contain `instant`, or None."""
        instant = _as_utc(instant)
        day = instant.astimezone(NEW_YORK).date()
        if day in self._session_set:
            session = self.session(day)
            if session.start <= instant < session.end:
                return session
        return None

    def next_open(self, instant: datetime, *, phase: Phase = "premarket") -> datetime:
        """The next instant at or after `instant` when `phase` opens."""
        instant = _as_utc(instant)
        day = instant.astimezone(NEW_YORK).date()
        while True:
            if day in self._session_set:
                opens = self.session(day).phase_bounds(phase)[0]
                if opens >= instant:
                    return opens
            day = self.next_session(day)

    def last_completed_session(self, instant: datetime) -> date:
        """The most recent session whose after-hours close is at or before `instant`."""
        instant = _as_utc(instant)
        day = instant.astimezone(NEW_YORK).date()
        if day in self._session_set and self.session(day).end <= instant:
            return day
        return self.previous_session(day)


@functools.lru_cache(maxsize=None)
def default_calendar() -> MarketCalendar:
    """The process-wide calendar from 2004-01-02 to the end of next year."""
    return MarketCalendar()


def is_session(day: date | str) -> bool:
    return default_calendar().is_session(day)


def session(day: date | str) -> Session:
    return default_calendar().session(day)


def sessions(start: date | str, end: date | str) -> list[date]:
    return default_calendar().sessions(start, end)


def holidays(start: date | str | None = None, end: date | str | None = None) -> list[date]:
    return default_calendar().holidays(start, end)


def next_open(instant: datetime, *, phase: Phase = "premarket") -> datetime:
    return default_calendar().next_open(instant, phase=phase)
