"""Data-quality checks of `minute_bars`, one property each, per session (see analytics.quality).

`ohlc_consistent` and `no_duplicate_bars` block: bad bars would flow into every rollup and metric.
`session_complete`, `sources_agree` and `no_unexplained_jumps` report without blocking: a thin session or a feed that
differs is worth knowing, not worth stopping the day's metrics for.
"""

from datetime import date
from typing import Callable, Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

# Dagster 1.13 records an AssetCheckResult once per run (partition None when the run spans several
# partitions); one AssetCheckEvaluation per partition is how a check reports on each, and its link to
# the partition's materialization has no public name yet.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from market_platform import calendar
from market_platform.analytics import quality
from market_platform.analytics.adjust import day_actions
from market_platform.defs.bars.assets import minute_bars
from market_platform.defs.partitions import partitioned_check, trading_days_def
from market_platform.defs.resources import LakeResource, TickStoreResource
from market_platform.history import raw


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
) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
    """Judge every session of the run (a backfill run covers up to ten) and record each result on
    its own partition, pointing at that partition's materialization, as the UI lists them. A
    blocking check that fails on any session fails the step after every session is recorded."""
    spec = context.check_specs[0]
    for key in context.partition_keys:
        result = check_result(judge(key), severity=severity)
        latest = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=spec.asset_key, asset_partitions=[key]), limit=1).records
        yield dg.AssetCheckEvaluation(
            asset_key=spec.asset_key, check_name=spec.name, passed=result.passed, metadata=result.metadata,
            severity=severity, description=result.description, blocking=spec.blocking, partition=key,
            target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
                storage_id=latest[0].storage_id, run_id=latest[0].run_id, timestamp=latest[0].timestamp)
            if latest else None)
    yield dg.Output(None)


@partitioned_check(asset=minute_bars, partitions_def=trading_days_def, blocking=True)
def ohlc_consistent(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> Iterator:
    """Every bar has low <= open, close <= high, a positive low and volume >= 0."""
    return per_session(context, lambda key: quality.ohlc_consistent(_bars(lake, key)))


@partitioned_check(asset=minute_bars, partitions_def=trading_days_def, blocking=True)
def no_duplicate_bars(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> Iterator:
    """No two bars share (symbol, ts, source)."""
    return per_session(context, lambda key: quality.no_duplicate_bars(_bars(lake, key)))


@partitioned_check(asset=minute_bars, partitions_def=trading_days_def)
def session_complete(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> Iterator:
    """The session's expected minutes (from the calendar, half days included) are covered: by each
    liquid symbol in regular hours, and by the market in every phase dense enough to judge. The
    completeness score per phase is in the metadata."""
    return per_session(context, lambda key: quality.session_complete(_bars(lake, key), date.fromisoformat(key)))


@partitioned_check(asset=minute_bars, partitions_def=trading_days_def)
def sources_agree(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, tick_store: TickStoreResource
) -> Iterator:
    """Where two sources cover the session — the lake's bars and the tick store's live bars, or two
    sources inside the lake's partition — their common minutes agree within 0.5% in price and 5%
    (or 100 shares) in volume (`analytics.quality.sources_agree`); the disagreements are listed."""
    return per_session(context, lambda key: _sources_agree(lake, tick_store, key), severity=dg.AssetCheckSeverity.WARN)


@partitioned_check(asset=minute_bars, partitions_def=trading_days_def)
def no_unexplained_jumps(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> Iterator:
    """No symbol's raw price moves more than 25% from the previous session's last close to this
    session's first open without a corporate action taking effect this session (a split, dividend
    or rename in `corporate_actions`): such a jump is an action the platform missed, and adjusted
    reads across it would be wrong. Each jump is named, with its symbol, day and move."""
    return per_session(context, lambda key: _no_unexplained_jumps(lake.lake(), key),
                       severity=dg.AssetCheckSeverity.WARN)


def _no_unexplained_jumps(lake, key: str) -> quality.CheckOutcome:
    day = date.fromisoformat(key)
    previous = calendar.default_calendar().previous_session(day)
    if not lake.has_partition("minute_bars", previous):
        return quality.CheckOutcome(True, f"no minute_bars for {previous}, the session before {key}: "
                                          "no close to compare with", {"unexplained_jumps": 0})
    # Only the columns the check reads: a session's first opens and the previous one's last closes.
    return quality.no_unexplained_jumps(lake.read_partition("minute_bars", day, columns=["symbol", "ts", "open"]),
                                        lake.read_partition("minute_bars", previous, columns=["symbol", "ts", "close"]),
                                        day_actions(lake, day), day)


def _sources_agree(lake: LakeResource, tick_store: TickStoreResource, key: str) -> quality.CheckOutcome:
    session = calendar.session(key)
    if lake.lake().has_partition("minute_bars", key) and not raw.is_raw(lake.lake(), "minute_bars", session.day):
        # Like with like: these REST bars may be split-adjusted, every other source's are raw.
        command = raw.rebuild_command([raw.Suspect("minute_bars", session.day, 0, ())])[0]
        return quality.CheckOutcome(False, f"not compared: the {key} partition holds Polygon REST bars written before "
                                           f"bars were stored raw (possibly split-adjusted); fetch them again, raw: "
                                           f"{command}", {"raw": False})
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
