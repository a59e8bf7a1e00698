"""Data-quality checks of `minute_bars`, one property each, per session (see analytics.quality).

`ohlc_consistent` and `no_duplicate_bars` block: bad bars would flow into every rollup and metric.
`session_complete` and `sources_agree` report without blocking: a thin session or a feed that
differs is worth knowing, not worth stopping the day's metrics for.
"""

from datetime import date
from typing import Callable

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar
from market_platform.analytics import quality
from market_platform.defs.bars.assets import minute_bars
from market_platform.defs.partitions import trading_days_def
from market_platform.defs.resources import LakeResource, TickStoreResource


def check_result(outcome: quality.CheckOutcome, *, severity=dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    """An AssetCheckResult showing the outcome's summary, figures and examples."""
    metadata: dict[str, object] = {"summary": dg.MetadataValue.text(outcome.summary)}
    for name, value in outcome.metrics.items():
        if value is None:
            metadata[name] = dg.MetadataValue.null()
        elif isinstance(value, bool):
            metadata[name] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            metadata[name] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            metadata[name] = dg.MetadataValue.float(value)
        else:
            metadata[name] = dg.MetadataValue.text(str(value))
    examples = outcome.examples_markdown()
    if examples:
        metadata["examples"] = dg.MetadataValue.md(examples)
    return dg.AssetCheckResult(passed=outcome.passed, metadata=metadata, severity=severity,
                               description=outcome.summary)


def _bars(lake: LakeResource, key: str) -> pa.Table:
    return lake.lake().read_partition("minute_bars", key)


def per_session(
    context: dg.AssetCheckExecutionContext,
    judge: Callable[[str], quality.CheckOutcome],
    *,
    severity=dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    """Judge every session of the run (a backfill run covers up to ten) and report one result:
    it passes when every session passes, and names the sessions that failed."""
    keys = context.partition_keys
    outcomes = {key: judge(key) for key in keys}
    if len(keys) == 1:
        return check_result(outcomes[keys[0]], severity=severity)
    failed = [key for key, outcome in outcomes.items() if not outcome.passed]
    first = outcomes[failed[0]] if failed else None
    summary = (f"failed on {len(failed)} of {len(keys)} sessions ({', '.join(failed)}); "
               f"{failed[0]}: {first.summary}" if failed else f"all {len(keys)} sessions pass")
    combined = quality.CheckOutcome(
        passed=not failed,
        summary=summary,
        metrics={"sessions": len(keys), "failed_sessions": len(failed),
                 **{f"{key}": outcome.summary for key, outcome in outcomes.items()}},
        examples=first.examples if first else None,
    )
    return check_result(combined, severity=severity)


@dg.asset_check(asset=minute_bars, partitions_def=trading_days_def, blocking=True)
def ohlc_consistent(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    """Every bar has low <= open, close <= high, a positive low and volume >= 0."""
    return per_session(context, lambda key: quality.ohlc_consistent(_bars(lake, key)))


@dg.asset_check(asset=minute_bars, partitions_def=trading_days_def, blocking=True)
def no_duplicate_bars(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    """No two bars share (symbol, ts, source)."""
    return per_session(context, lambda key: quality.no_duplicate_bars(_bars(lake, key)))


@dg.asset_check(asset=minute_bars, partitions_def=trading_days_def)
def session_complete(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    """The session's expected minutes (from the calendar, half days included) are covered: by each
    liquid symbol in regular hours, and by the market in every phase dense enough to judge. The
    completeness score per phase is in the metadata."""
    return per_session(context, lambda key: quality.session_complete(_bars(lake, key), date.fromisoformat(key)))


@dg.asset_check(asset=minute_bars, partitions_def=trading_days_def)
def sources_agree(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, tick_store: TickStoreResource
) -> dg.AssetCheckResult:
    """Where two sources cover the session — the lake's bars and the tick store's live bars, or two
    sources inside the lake's partition — their common minutes agree within 0.5% in price and 5%
    (or 100 shares) in volume (`analytics.quality.sources_agree`); the disagreements are listed."""
    return per_session(context, lambda key: _sources_agree(lake, tick_store, key), severity=dg.AssetCheckSeverity.WARN)


def _sources_agree(lake: LakeResource, tick_store: TickStoreResource, key: str) -> quality.CheckOutcome:
    session = calendar.session(key)
    left = _bars(lake, key)
    right = tick_store.store().read_bars("1m", session.start, session.end)
    label = "tick store bars_1m"
    if right.num_rows == 0:
        sources = sorted(set(left["source"].to_pylist()))
        if len(sources) < 2:
            return quality.CheckOutcome(True, f"one source ({', '.join(sources) or 'none'}) for {key}: "
                                              "nothing to compare", {"sources": len(sources)})
        right = left.filter(pc.equal(left["source"], sources[1]))
        left = left.filter(pc.equal(left["source"], sources[0]))
        label = f"lake source {sources[1]}"
    outcome = quality.sources_agree(left, right)
    outcome.metrics["compared_with"] = label
    return outcome
