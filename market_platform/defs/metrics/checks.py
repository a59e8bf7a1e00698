"""Checks of the quotes archive and of the live tables (see analytics.quality).

`quotes_not_crossed` targets the asset key `quotes_daily`, which the streaming domain defines; the
definitions load without it. Freshness of the live tables is a factory (`build_freshness_checks`)
for whoever defines the live tables' AssetSpecs to call with their keys.
"""

from datetime import timedelta

import dagster as dg

from market_platform.analytics import quality
from market_platform.defs.bars.checks import check_result
from market_platform.defs.partitions import trading_days_def
from market_platform.defs.resources import LakeResource, TickStoreResource

QUOTES_DAILY = dg.AssetKey("quotes_daily")
#: Crossed quotes happen on real feeds (a venue lagging the NBBO): up to 0.1% passes.
MAX_CROSSED_SHARE = 0.001


@dg.asset_check(asset=QUOTES_DAILY, partitions_def=trading_days_def, blocking=True)
def quotes_not_crossed(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    """At most 0.1% of the session's two-sided quotes have bid > ask (locked quotes are fine)."""
    quotes = lake.lake().read_partition("quotes_daily", context.partition_key,
                                        columns=["symbol", "ts", "bid_price", "ask_price", "bid_exchange", "ask_exchange"])
    return check_result(quality.quotes_not_crossed(quotes, max_share=MAX_CROSSED_SHARE))


def build_freshness_checks(
    assets: "dict[str, dg.AssetKey]", *, cron: str = "* 4-20 * * 1-5", lags: "dict[str, timedelta] | None" = None
) -> list[dg.AssetChecksDefinition]:
    """One `fresh_during_session` check per live table (`{"bars_1m": AssetKey(...), ...}`): during a
    session its newest row is within the allowed lag (`quality.FRESHNESS_LAG`); evaluated every
    minute of extended hours by automation, and passing outside sessions."""
    return [_freshness_check(table, key, cron, (lags or {}).get(table, quality.FRESHNESS_LAG.get(table, timedelta(minutes=5))))
            for table, key in assets.items()]


def _freshness_check(table: str, key: dg.AssetKey, cron: str, allowed: timedelta) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=key,
        name="fresh_during_session",
        automation_condition=dg.AutomationCondition.cron_tick_passed(cron, "America/New_York"),
        description=f"During a session the newest row of {table} is at most {allowed.total_seconds():.0f}s old.",
    )
    def _fresh(tick_store: TickStoreResource) -> dg.AssetCheckResult:
        return check_result(quality.live_fresh(tick_store.store(), max_lag={table: allowed}))

    return _fresh
