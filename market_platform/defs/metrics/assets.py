"""Metrics, features and the return forecast: lake datasets computed by DuckDB from the bars.

Each asset is partitioned by trading day and materializes itself (`AutomationCondition.eager()`)
when its inputs do, for the latest session; older sessions are backfills. The definitions of every
column are in `market_platform.analytics.metrics` and `.forecast`.
"""

import warnings
from datetime import date

import dagster as dg
import pyarrow as pa

from market_platform import schemas
from market_platform.analytics import charts, forecast, metrics
from market_platform.defs.bars.assets import minute_bars
from market_platform.defs.metadata import table_metadata
from market_platform.defs.partitions import partitioned_asset, trading_days_def
from market_platform.defs.resources import LakeResource
from market_platform.errors import NotEnoughHistoryError

#: A backfill of metrics is one run that walks its sessions in order: the forecast of a session
#: trains on the features of the sessions before it, which an earlier step of the run wrote.
ONE_RUN = dg.BackfillPolicy.single_run()

with warnings.catch_warnings():
    # Beta in Dagster 1.13, used knowingly: the first session of a history has no previous one.
    warnings.filterwarnings("ignore", message="Parameter `allow_nonexistent_upstream_partitions`",
                            category=dg.BetaWarning)
    #: A session and the one before it (allowed not to exist at the start of the partitions).
    PREVIOUS_SESSION = dg.TimeWindowPartitionMapping(start_offset=-1, allow_nonexistent_upstream_partitions=True)


def movers_metadata(table: pa.Table, day: date, *, n: int = 10) -> dict[str, dg.MetadataValue]:
    """The day's movers for the Dagster UI: `movers`, a table it shows in place (the `n` biggest
    gainers and losers, change in percent), and `movers_chart`, the bar chart as markdown with an
    inline PNG (behind "[Show Markdown]": the UI opens long markdown in a dialog). Empty: no movers."""
    gainers, losers = metrics.movers(table, n=n)
    if not gainers.num_rows and not losers.num_rows:
        return {}
    records = [
        dg.TableRecord({"side": side, "symbol": row["symbol"], "change_pct": round(row["change"] * 100, 2),
                        "close": round(row["close"], 4), "dollar_volume": round(row["dollar_volume"] or 0.0)})
        for side, part in (("gainer", gainers), ("loser", losers)) for row in part.to_pylist()
    ]
    schema = dg.TableSchema(columns=[
        dg.TableColumn("side", "string"), dg.TableColumn("symbol", "string"),
        dg.TableColumn("change_pct", "float", description="percent change from the previous close (else from the open)"),
        dg.TableColumn("close", "float"), dg.TableColumn("dollar_volume", "float")])
    png = charts.png_bytes(charts.render_movers(gainers, losers, day))
    return {"movers": dg.MetadataValue.table(records, schema=schema),
            "movers_chart": dg.MetadataValue.md(charts.markdown_image(png, f"movers {day.isoformat()}"))}


def _write_each(context: dg.AssetExecutionContext, lake: LakeResource, dataset: str, compute,
                extra=lambda table, day: {}) -> None:
    """Compute and write each session of the run, each materialized with its own figures (and
    `extra(table, day)`'s)."""
    store = lake.lake()
    for key in context.partition_keys:
        day = date.fromisoformat(key)
        table = compute(store, day)
        store.write_partition(dataset, key, table)
        context.add_asset_metadata({**table_metadata(table), **extra(table, day)}, partition_key=key)
        context.log.info(f"{key}: {table.num_rows} rows of {dataset}")


@partitioned_asset(
    partitions_def=trading_days_def,
    group_name="metrics",
    kinds={"parquet", "duckdb"},
    # The previous session's minute bars give the previous close.
    deps=[dg.AssetDep(minute_bars, partition_mapping=PREVIOUS_SESSION)],
    automation_condition=dg.AutomationCondition.eager(),
    backfill_policy=ONE_RUN,
)
def daily_metrics(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """One row per symbol and session: regular-session open, high, low, close and VWAP, the previous
    close, open-to-close and log return, percent change from the previous close, gap, range, dollar
    volume, realized volatility of 1-minute returns, and the pre-market and after-hours shares of
    volume; computed by DuckDB from `minute_bars`. The metadata shows the day's movers."""
    _write_each(context, lake, metrics.DAILY_METRICS, metrics.daily_metrics, extra=movers_metadata)
    return dg.MaterializeResult()


@partitioned_asset(
    partitions_def=trading_days_def,
    group_name="metrics",
    kinds={"parquet", "duckdb"},
    deps=[minute_bars],
    automation_condition=dg.AutomationCondition.eager(),
    backfill_policy=ONE_RUN,
)
def intraday_metrics(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """One row per symbol and 5-minute window of a session with at least one bar: open, high, low,
    close, percent change from the previous window, VWAP, volume, realized volatility of 1-minute
    returns, and the probability of profit (the share of the window's 1-minute closes at or below
    its latest price); computed by DuckDB from `minute_bars`. During a session the same metrics come
    from the tick store (`analytics.metrics.live_intraday_metrics`)."""
    _write_each(context, lake, metrics.INTRADAY_METRICS, metrics.intraday_metrics)
    return dg.MaterializeResult()


@partitioned_asset(
    partitions_def=trading_days_def,
    group_name="metrics",
    kinds={"parquet", "duckdb"},
    deps=[intraday_metrics],
    automation_condition=dg.AutomationCondition.eager(),
    backfill_policy=ONE_RUN,
)
def return_features(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """One row per symbol and 5-minute window: the features a model may use at the window's end
    (lagged log returns, rolling volatility, volume z-score, distance from the session VWAP, minutes
    from the open) and the label, the symbol's next window's log return in the same session."""
    _write_each(context, lake, forecast.RETURN_FEATURES, forecast.return_features)
    return dg.MaterializeResult()


@partitioned_asset(
    partitions_def=trading_days_def,
    group_name="metrics",
    kinds={"parquet", "scikit-learn"},
    # Trains on the `lookback` sessions before the partition, read from the lake directly: a
    # partition mapping over them would keep the first sessions of any history from ever running.
    deps=[return_features],
    automation_condition=dg.AutomationCondition.eager(),
    backfill_policy=ONE_RUN,
)
def return_forecast(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """One row per symbol and regular-hours 5-minute window: the predicted next-window log return of
    a ridge regression fitted walk-forward on the sessions before this one only, beside the realized
    return. The metadata scores it out of sample against the random-walk baseline (predict 0)."""
    store = lake.lake()
    for key in sorted(context.partition_keys):  # in order: each session's model sees the ones before
        try:
            result = forecast.forecast(store, date.fromisoformat(key), lookback=forecast.DEFAULT_LOOKBACK)
        except NotEnoughHistoryError as exc:
            # The first sessions of a history have nothing to learn from: an empty partition says so.
            context.log.warning(str(exc))
            store.write_partition(forecast.RETURN_FORECAST, key, schemas.RETURN_FORECAST.empty_table())
            context.add_asset_metadata({"trained": False, "reason": "not enough earlier sessions of return_features"},
                                       partition_key=key)
            continue
        store.write_partition(forecast.RETURN_FORECAST, key, result.predictions)
        context.add_asset_metadata(_forecast_metadata(result), partition_key=key)
        context.log.info(f"{key}: r2_oos={result.r2_oos} on {result.test_rows} windows, "
                         f"trained on {result.train_rows} rows of {len(result.train_sessions)} sessions")
    return dg.MaterializeResult()


def _forecast_metadata(result: forecast.ForecastResult) -> dict:
    coefficients = "\n".join(f"| {name} | {value:+.3e} |" for name, value in result.coefficients.items())
    return {
        **table_metadata(result.predictions),
        "trained": True,
        "model": "ridge regression (alpha=1) on standardised features, scikit-learn",
        "train_sessions": f"{result.train_sessions[0]} .. {result.train_sessions[-1]} ({len(result.train_sessions)})",
        "train_rows": result.train_rows,
        "test_rows": result.test_rows,
        "r2_oos": _float(result.r2_oos),
        "mse_model": _float(result.mse_model),
        "mse_baseline_zero": _float(result.mse_zero),
        "mse_baseline_train_mean": _float(result.mse_train_mean),
        "hit_rate": _float(result.hit_rate),
        "baseline": "random walk: predict a next return of 0",
        "beats_baseline": dg.MetadataValue.bool(bool(result.beats_baseline)),
        "coefficients": dg.MetadataValue.md("| feature | coefficient |\n|---|---|\n" + coefficients),
    }


def _float(value: "float | None") -> dg.MetadataValue:
    return dg.MetadataValue.float(value) if value is not None else dg.MetadataValue.null()


metrics_job = dg.define_asset_job(
    "metrics_job",
    selection=[daily_metrics, intraday_metrics, return_features, return_forecast],
    description="A session's daily and intraday metrics, return features and forecast, from its minute bars "
                "in the lake (the assets also materialize themselves when minute_bars does).",
)
