"""Checks of the quotes archive (see analytics.quality). `quotes_not_crossed` targets
`quotes_daily`, which the streaming domain defines; the live tables' freshness check lives there too."""

from typing import Iterator

import dagster as dg

from market_platform.analytics import quality
from market_platform.defs.bars.checks import per_session
from market_platform.defs.partitions import partitioned_check, trading_days_def
from market_platform.defs.resources import LakeResource

QUOTES_DAILY = dg.AssetKey("quotes_daily")
#: Crossed quotes happen on real feeds (a venue lagging the NBBO): up to 0.1% passes.
MAX_CROSSED_SHARE = 0.001


@partitioned_check(asset=QUOTES_DAILY, partitions_def=trading_days_def, blocking=True)
def quotes_not_crossed(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> Iterator:
    """At most 0.1% of the session's two-sided quotes have bid > ask (locked quotes are fine)."""
    columns = ["symbol", "ts", "bid_price", "ask_price", "bid_exchange", "ask_exchange"]
    return per_session(context, lambda key: quality.quotes_not_crossed(
        lake.lake().read_partition("quotes_daily", key, columns=columns), max_share=MAX_CROSSED_SHARE))
