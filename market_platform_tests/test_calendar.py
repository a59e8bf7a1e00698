from datetime import date, datetime, timezone

import pytest

from market_platform import calendar
from market_platform.errors import InvalidInputError, NotASessionError

UTC = timezone.utc


def test_2024_has_252_sessions():
    assert len(calendar.sessions("2024-01-01", "2024-12-31")) == 252


@pytest.mark.parametrize("day", ["2024-07-04", "2024-12-25", "2024-11-28", "2024-03-29"])
def test_holidays_are_not_sessions(day):
    assert not calendar.is_session(day)
    assert date.fromisoformat(day) in calendar.holidays("2024-01-01", "2024-12-31")
    with pytest.raises(NotASessionError, match=day):
        calendar.session(day)


def test_weekend_is_not_a_session_and_says_why():
    with pytest.raises(NotASessionError, match="weekend"):
        calendar.session("2024-11-30")


@pytest.mark.parametrize("day", ["2024-11-29", "2024-12-24", "2024-07-03"])
def test_half_days_close_at_13_and_after_hours_at_17(day):
    s = calendar.session(day)
    assert s.is_half_day
    assert s.regular_close.astimezone(calendar.NEW_YORK).strftime("%H:%M") == "13:00"
    assert s.after_hours_close.astimezone(calendar.NEW_YORK).strftime("%H:%M") == "17:00"
    assert s.expected_minutes("regular") == 210
    assert s.expected_minutes("afterhours") == 240
    assert s.expected_minutes() == 13 * 60


def test_full_day_phases_in_utc_across_dst():
    summer = calendar.session("2024-03-11")  # first session after the spring change
    winter = calendar.session("2024-03-08")
    assert summer.regular_open == datetime(2024, 3, 11, 13, 30, tzinfo=UTC)
    assert winter.regular_open == datetime(2024, 3, 8, 14, 30, tzinfo=UTC)
    assert summer.premarket_open == datetime(2024, 3, 11, 8, 0, tzinfo=UTC)
    assert winter.after_hours_close == datetime(2024, 3, 9, 1, 0, tzinfo=UTC)
    assert not summer.is_half_day
    assert summer.expected_minutes("premarket") == 330
    assert summer.expected_minutes("regular") == 390
    assert summer.expected_minutes("afterhours") == 240
    assert summer.expected_minutes() == 960
    assert len(summer.minutes()) == 960


def test_phase_at():
    s = calendar.session("2024-11-26")
    assert s.phase_at(datetime(2024, 11, 26, 9, 0, tzinfo=UTC)) == "premarket"
    assert s.phase_at(datetime(2024, 11, 26, 14, 30, tzinfo=UTC)) == "regular"
    assert s.phase_at(datetime(2024, 11, 26, 21, 0, tzinfo=UTC)) == "afterhours"
    assert s.phase_at(datetime(2024, 11, 27, 1, 0, tzinfo=UTC)) is None


def test_next_open_skips_holidays_and_weekends():
    # Wednesday evening before Thanksgiving: next pre-market is Friday 04:00 New York.
    assert calendar.next_open(datetime(2024, 11, 27, 23, 0, tzinfo=UTC)) == datetime(
        2024, 11, 29, 9, 0, tzinfo=UTC
    )
    assert calendar.next_open(datetime(2024, 11, 29, 12, 0, tzinfo=UTC), phase="regular") == datetime(
        2024, 11, 29, 14, 30, tzinfo=UTC
    )
    # Friday after the half-day close: Monday.
    assert calendar.next_open(datetime(2024, 11, 29, 23, 0, tzinfo=UTC)) == datetime(
        2024, 12, 2, 9, 0, tzinfo=UTC
    )


def test_session_at_and_last_completed():
    cal = calendar.default_calendar()
    assert cal.session_at(datetime(2024, 11, 29, 21, 59, tzinfo=UTC)).day == date(2024, 11, 29)
    assert cal.session_at(datetime(2024, 11, 29, 22, 0, tzinfo=UTC)) is None
    assert cal.last_completed_session(datetime(2024, 12, 2, 12, 0, tzinfo=UTC)) == date(2024, 11, 29)


def test_bad_input_names_the_value():
    with pytest.raises(InvalidInputError, match="2024-13-01"):
        calendar.is_session("2024-13-01")
    with pytest.raises(InvalidInputError, match="outside the market calendar"):
        calendar.is_session("1999-01-04")
    with pytest.raises(InvalidInputError, match="after end"):
        calendar.sessions("2024-02-01", "2024-01-01")
    with pytest.raises(InvalidInputError, match="no time zone"):
        calendar.next_open(datetime(2024, 1, 2, 12, 0))
