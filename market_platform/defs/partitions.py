"""Partitions: trading days in New York (stocks), UTC days (crypto) and ticker categories."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import datetime

import dagster as dg

from market_platform import calendar, settings
from market_platform.schemas import CATEGORIES

# Saturday and Sunday ticks of the daily cron; holidays are excluded one by one.
WEEKEND_CRONS = ["0 0 * * 6", "0 0 * * 0"]

#: One run per 10 sessions in a backfill: few enough runs for the UI, small enough to resume.
#: Assets of one job share it (Dagster falls back to the smallest when they differ).
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=10)


def partitioned_asset(**kwargs) -> Callable:
    """`dg.asset(**kwargs)` for the platform's assets with a backfill policy. Dagster 1.13 marks
    `backfill_policy` beta and warns at each use: a line per asset on the stderr of every command
    that imports them. The platform relies on it knowingly, so that warning, of these decorators
    only, is not shown; users' own assets still get theirs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`",
                                category=dg.BetaWarning)
        return dg.asset(**kwargs)


def partitioned_check(**kwargs) -> Callable:
    """`dg.asset_check(**kwargs)` for the platform's checks of a partitioned asset, one result per
    partition: Dagster 1.13 marks a check's `partitions_def` preview and warns as each is defined.
    That warning, of these checks only, is not shown (see `partitioned_asset`)."""
    decorator = dg.asset_check(**kwargs)

    def define(fn: Callable) -> dg.AssetChecksDefinition:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                                    category=dg.PreviewWarning)
            return decorator(fn)

    return define


def holiday_datetimes(start: str) -> list[datetime]:
    """Exchange holidays (weekdays without a session) from `start` on, as midnights in New York."""
    return [
        datetime.combine(day, datetime.min.time(), tzinfo=calendar.NEW_YORK)
        for day in calendar.holidays(start)
    ]


def trading_days(start: str | None = None) -> dg.DailyPartitionsDefinition:
    """Daily partitions in New York time that skip weekends and exchange holidays, from `start`
    (default MARKET_HISTORY_START, read when the definitions load: `settings.history_start`).

    `end_offset=1` makes today's partition exist, so a session can be materialized right after
    its close instead of the next day.
    """
    start = start or settings.history_start().isoformat()
    return dg.DailyPartitionsDefinition(
        start_date=start,
        timezone="America/New_York",
        end_offset=1,
        exclusions=[*WEEKEND_CRONS, *holiday_datetimes(start)],
    )


def crypto_days(start: str = "2018-01-01") -> dg.DailyPartitionsDefinition:
    """Daily partitions on UTC days: crypto trades around the clock."""
    return dg.DailyPartitionsDefinition(start_date=start, timezone="UTC", end_offset=1)


trading_days_def = trading_days()
crypto_days_def = crypto_days()
#: Ticker categories: one partition of `ticker_universe` each.
categories_def = dg.StaticPartitionsDefinition(list(CATEGORIES))
