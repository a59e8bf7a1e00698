"""Universe discovery, backfills, materializations and what the lake holds."""

from __future__ import annotations

import os
import time
from datetime import datetime

import click

from market_platform.cli.base import (
    QUIET,
    _in_process,
    _vendors,
    check_configuration,
    dagster_env,
    fail_cleanly,
    main,
)
from market_platform.errors import MarketPlatformError


def _check_partition(definitions, keys, partition: str | None) -> None:
    """Refuse a partition the selected assets do not have, with the reason (a date that is not a
    session, an unknown category), before Dagster sees it."""
    from market_platform import calendar
    from market_platform.defs.partitions import categories_def
    from market_platform.errors import InvalidInputError

    kinds = {definitions.resolve_assets_def(key).partitions_def for key in keys}
    if len(kinds) > 1:
        raise InvalidInputError("the selected assets have different partitions: materialize them separately")
    if kinds == {None}:
        if partition is not None:
            raise InvalidInputError(f"--partition {partition!r}: the selected assets are not partitioned")
        return
    if partition is None:
        raise InvalidInputError("--partition is required: the selected assets are partitioned (a session date "
                                "YYYY-MM-DD, or a category)")
    if kinds == {categories_def}:
        if partition not in categories_def.get_partition_keys():
            raise InvalidInputError(f"unknown category {partition!r}: expected one of "
                                    f"{', '.join(categories_def.get_partition_keys())}")
    else:
        check_history([calendar.session(partition).day])


def check_history(days) -> None:
    """Refuse sessions before the history start (the trading-day partitions' first day) with the
    setting to change."""
    from market_platform import settings
    from market_platform.errors import InvalidInputError

    start = settings.history_start()
    early = min(days)
    if early < start:
        raise InvalidInputError(
            f"session {early.isoformat()} is before the history start {start.isoformat()}, where the trading-day "
            f"partitions begin: set {settings.HISTORY_START_VAR}={early.isoformat()} (or earlier) to keep older "
            "history, for this command and for `market-platform ui`")


@main.command()
@click.option("--select", required=True, help="Comma-separated asset keys, e.g. minute_bars,bars_5m.")
@click.option("--partition", default=None,
              help="Partition key: a session date YYYY-MM-DD, or a category (none for corporate_actions).")
@fail_cleanly
def materialize(select: str, partition: str | None) -> None:
    """Materialize assets (for one partition, if they have partitions), recorded in the platform's
    Dagster instance."""
    import dagster as dg

    from market_platform.definitions import defs
    from market_platform.errors import InvalidInputError

    definitions = defs()
    known = {key.to_user_string() for key in definitions.resolve_all_asset_keys()}
    names = [name.strip() for name in select.split(",") if name.strip()]
    unknown = sorted(set(names) - known)
    if unknown:
        raise InvalidInputError(f"unknown assets {unknown}: expected names among {sorted(known)}")
    _check_partition(definitions, [dg.AssetKey(n) for n in names], partition)
    result = _in_process(names, run_config={}, partition_key=partition, definitions=definitions)
    click.echo(f"materialized {', '.join(names)}{f' for {partition}' if partition else ''} (run {result.run_id})")


def _discover(category: str, *, limit: int | None, as_of: str | None, replace: bool = False) -> None:
    from market_platform.history.universe import TOP_DATASET

    if category == TOP_DATASET:
        config = {"as_of": as_of, "replace": replace, **({"size": limit} if limit else {})}
        result = _in_process(["top3000_universe"], run_config={"ops": {"top3000_universe": {"config": config}}})
    else:
        config = {"as_of": as_of, "limit": limit, "replace": replace}
        result = _in_process(["ticker_universe"], partition_key=category,
                             run_config={"ops": {"ticker_universe": {"config": config}}})
    meta = result.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    day, rows = meta["snapshot_date"].value, meta["rows"].value
    previous = meta["previous_snapshot"].value
    change = (f"{meta['added'].value} added, {meta['removed'].value} removed since {previous}"
              if previous != "none" else "the first snapshot")
    kept = " (a snapshot of that day existed: kept as it was)" if meta["kept_existing"].value else ""
    click.echo(f"{category:<12} {day}: {rows:>6,} tickers, {change}{kept}")


@main.command()
@click.argument("category")
@click.option("--limit", type=int, default=None, help="At most this many tickers (top3000: the size).")
@click.option("--as-of", default=None, help="Snapshot day YYYY-MM-DD (default: today in New York).")
@click.option("--replace", is_flag=True, help="Overwrite an existing snapshot of a past day.")
@fail_cleanly
def discover(category: str, limit: int | None, as_of: str | None, replace: bool) -> None:
    """Snapshot the tickers of CATEGORY (us_equities, etf, crypto, fx, options, indices, otc, or
    top3000: the 3,000 most traded us_equities, a stand-in for the Russell 3000) listed on a day."""
    from market_platform import calendar
    from market_platform.errors import InvalidInputError
    from market_platform.history.universe import TOP_DATASET, check_limit, check_snapshot_day
    from market_platform.schemas import CATEGORIES

    if category not in (*CATEGORIES, TOP_DATASET):
        raise InvalidInputError(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)} or top3000")
    check_limit(limit)
    today = datetime.now(calendar.NEW_YORK).date()
    day = today if as_of is None else check_snapshot_day(calendar.to_date(as_of), today, name="--as-of")
    check_configuration()
    _vendors().check_universe("us_equities" if category == TOP_DATASET else category, day)
    _discover(category, limit=limit, as_of=as_of, replace=replace)


def _bars_config(**options) -> dict:
    """Run config giving every bars asset of a backfill the same BarsConfig options."""
    from market_platform.defs.bars.assets import CONFIGURED_ASSETS, BarsConfig

    BarsConfig(**options)  # validates the options here, before any run
    return {"ops": {name: {"config": dict(options)} for name in CONFIGURED_ASSETS}}


def _launch_backfill(days, *, timeframes: list[str], run_config: dict, label: str, assets: list[str] | None = None):
    """Run a Dagster backfill of the bars of `days` (see market_platform.backfills), or of other
    `assets` of theirs, with a progress bar."""
    import dagster as dg

    from market_platform import backfills, progress
    from market_platform.definitions import defs
    from market_platform.defs.bars.assets import TIMEFRAME_ASSETS

    check_configuration()
    os.environ.update(dagster_env())
    instance = dg.DagsterInstance.get()
    definitions = defs()
    keys = [dg.AssetKey(a) for a in assets] if assets else [a.key for tf in timeframes for a in TIMEFRAME_ASSETS[tf]]
    title = f"{label} {days[0].isoformat()}..{days[-1].isoformat()}" if len(days) > 1 else f"{label} {days[0]}"
    tags = {"market_platform/timeframes": ",".join(timeframes)} if timeframes else {}
    for abandoned in backfills.reap_abandoned(instance):
        click.echo(f"backfill {abandoned} lost its process: marked failed (this one resumes its work)", err=True)
    with progress.shown(), progress.task(f"{title}: {len(set(days))} sessions", total=len(set(days))) as advance:
        if backfills.daemon_running(instance):
            backfill_id = backfills.submit(instance, definitions, keys, days, run_config=run_config, title=title,
                                           tags=tags)
            click.echo(f"submitted backfill {backfill_id} to the running dagster-daemon", err=True)
            outcome = backfills.follow(instance, definitions, backfill_id, len(set(days)), advance)
        else:
            outcome = backfills.run_here(instance, definitions, keys, days, run_config=run_config, title=title,
                                         on_progress=advance, tags=tags, logging_config=QUIET["loggers"])
    if not outcome.success:
        failed = f"{len(outcome.failed)} of {outcome.sessions} sessions failed" if outcome.failed else "it failed"
        again = "; run the same command again to resume" if outcome.resumable else ""
        raise MarketPlatformError(f"backfill {outcome.backfill_id}: {failed}: {outcome.reason} "
                                  f"(its runs' logs are in the UI, `market-platform ui`{again})")
    return outcome


@main.command()
@click.option("--from", "start", required=True, help="First session, YYYY-MM-DD.")
@click.option("--to", "end", required=True, help="Last session, YYYY-MM-DD.")
@click.option("--tickers", default=None, help="Comma-separated tickers (default: the universe snapshot in force).")
@click.option("--timeframes", default="1m", show_default=True,
              help="1m: minute bars and their rollups; 5m, 15m, 1h, 1d: also the vendor's own bars.")
@click.option("--universe", "universe_name", default="stocks", show_default=True,
              help="Universe to follow without --tickers: stocks (us_equities and etf) or top3000.")
@click.option("--source", default="auto", show_default=True,
              help="auto (Flat Files for sessions older than 30 days, else REST), rest, polygon_flatfiles, "
                   "polygon_rest or alpaca_rest.")
@click.option("--stage-every", type=int, default=100, show_default=True,
              help="Stage fetched tickers in pieces of this many: what an interrupted run keeps.")
@fail_cleanly
def backfill(start: str, end: str, tickers: str | None, timeframes: str, universe_name: str, source: str,
             stage_every: int) -> None:
    """Backfill bars of the sessions from --from to --to into the lake: a Dagster backfill, resumable
    (run it again after any interruption and only what is missing is fetched)."""
    from market_platform import calendar
    from market_platform.errors import InvalidInputError
    from market_platform.history.bars import TIMEFRAMES
    from market_platform.history.universe import UNIVERSES, discovered_categories
    from market_platform.history.vendors import SOURCE_CHOICES
    from market_platform.sources.vendor import symbol_list
    from market_platform.storage.lake import Lake

    first, last = calendar.to_date(start), calendar.to_date(end)
    if first > last:
        raise InvalidInputError(f"--from {first.isoformat()} is after --to {last.isoformat()}")
    today = datetime.now(calendar.NEW_YORK).date()
    if last > today:
        raise InvalidInputError(f"--to {last.isoformat()} is in the future: expected a session up to {today.isoformat()}")
    if first == last:
        calendar.session(first)  # names the holiday or weekend
    days = calendar.sessions(first, last)
    if not days:
        raise InvalidInputError(f"no trading session from {first.isoformat()} to {last.isoformat()}: "
                                "expected a range holding at least one session")
    check_history(days)
    frames = list(dict.fromkeys(t.strip() for t in timeframes.split(",") if t.strip()))
    unknown = [t for t in frames if t not in TIMEFRAMES]
    if unknown or not frames:
        raise InvalidInputError(f"--timeframes {timeframes!r}: expected some of {', '.join(TIMEFRAMES)}")
    if universe_name not in UNIVERSES:
        raise InvalidInputError(f"--universe {universe_name!r}: expected one of {', '.join(UNIVERSES)}")
    if source not in SOURCE_CHOICES:
        raise InvalidInputError(f"--source {source!r}: expected one of {', '.join(SOURCE_CHOICES)}")
    if stage_every < 1:
        raise InvalidInputError(f"--stage-every {stage_every}: expected a positive number of tickers")
    from market_platform.defs.executor import preflight

    preflight()  # with a Celery broker set: it answers, workers listen, the state is shared
    options: dict = {"source": source, "universe": universe_name, "stage_every": stage_every}
    names = symbol_list([t.strip() for t in tickers.split(",")]) if tickers is not None else None
    if names is None:
        discovered_categories(Lake.from_settings(), universe_name)  # a universe must have been discovered
    check_configuration()
    if names is not None:
        _vendors().check_symbols(names, days[0], days[-1])
        options.update(tickers=names, check_tickers=False)
    started = time.monotonic()
    outcome = _launch_backfill(days, timeframes=frames, run_config=_bars_config(**options), label="backfill")
    click.echo(f"backfill {outcome.backfill_id}: {len(days)} sessions ({days[0]} to {days[-1]}), "
               f"timeframes {','.join(frames)}, {len(outcome.runs)} runs ({outcome.mode}) "
               f"in {time.monotonic() - started:.0f}s")
    click.echo("what the lake holds now: market-platform status" + (f" {names[0]}" if tickers else ""))


@main.command()
@click.argument("ticker", required=False)
@click.option("--dataset", default=None, help="List one lake dataset's partitions and rows instead.")
@click.option("--workers", "workers", is_flag=True, help="List the live Celery workers and their queues instead.")
@fail_cleanly
def status(ticker: str | None, dataset: str | None, workers: bool = False) -> None:
    """What the lake holds: universe snapshots and, per bar dataset, sessions, first and last bar,
    gaps and sources; or the same for one TICKER; or one dataset's partitions (--dataset); or the
    live Celery workers (--workers)."""
    from market_platform.errors import InvalidInputError
    from market_platform.history import status as lake_status
    from market_platform.storage.lake import Lake

    if workers:
        from market_platform.cli.worker import print_workers

        print_workers()
        return
    if ticker is not None and (not ticker.strip() or ticker != ticker.strip()):
        raise InvalidInputError(f"TICKER {ticker!r}: expected a ticker symbol such as AAPL (or none for the whole lake)")
    store = Lake.from_settings()
    if dataset is not None:
        if ticker is not None:
            raise InvalidInputError("give a TICKER or --dataset, not both")
        store.count(dataset)  # validates the name first
        store.check(exists=True)
        _dataset_partitions(store, dataset)
        return
    store.check(exists=True)
    if ticker is not None:
        history = lake_status.ticker_history(store, ticker)
        by_name = [(name, [c for c in (lake_status.coverage(store, d, name) for d in lake_status.BAR_DATASETS)
                           if c.rows]) for name in history.traded_symbols]
        found = [c for _, coverages in by_name for c in coverages]
        listed = lake_status.ticker_snapshots(store, ticker)
        if not found and not listed:
            raise InvalidInputError(f"the lake at {store.url} has no bars and no universe snapshot listing "
                                    f"{ticker!r}: backfill it with `market-platform backfill --tickers {ticker} ...`")
        click.echo(f"{ticker} in {store.url}")
        _print_history(history)
        if listed:
            click.echo(f"universe: listed in {len(listed)} snapshots from {listed[0][1]} to {listed[-1][1]} "
                       f"({', '.join(sorted({c for c, _ in listed}))})")
        if len(history.names) > 1:
            for name, coverages in by_name:
                click.echo(f"bars traded as {name}")
                _print_coverages(coverages)
        else:
            _print_coverages(found)
        return
    click.echo(f"lake {store.url}")
    snapshots = lake_status.snapshots(store)
    if snapshots:
        click.echo("universe snapshots")
        for snap in snapshots:
            click.echo(f"  {snap.category:<12} {len(snap.dates):>5} days, {snap.dates[0]} to {snap.dates[-1]}; "
                       f"latest {snap.latest_rows:,} tickers")
    click.echo("bars")
    _print_coverages([c for c in (lake_status.coverage(store, d) for d in lake_status.BAR_DATASETS) if c.rows])
    from market_platform.history import raw

    for line in raw.report(store):
        click.echo(line)
    others = [d for d in store.datasets() if d not in lake_status.BAR_DATASETS and d not in ("universe", "top3000")]
    for name in others:
        click.echo(f"{name}: {len(store.partitions(name))} partitions, {store.count(name):,} rows")


def _print_history(history) -> None:
    """Renames (the names the ticker's history traded under), a rename away, a delisting, and the
    corporate actions on record."""
    if len(history.names) > 1:
        spans = [f"{name} " + (f"from {first} " if first else "") + (f"until {end} (exclusive)" if end else "on")
                 for name, first, end in history.names]
        click.echo(f"history: {'; '.join(spans)} (the adjusted views name it all {history.symbol}, with a "
                   f"traded_symbol column: SELECT ... FROM bars_1d_adjusted_all WHERE symbol = '{history.symbol}')")
    if history.renamed_to:
        new, day = history.renamed_to
        click.echo(f"renamed: trades as {new} from {day} (its history continues under {new})")
    if history.delisted:
        click.echo(f"delisted: no longer trades from {history.delisted}; its history stays")
    if history.actions:
        click.echo("corporate actions: " + ", ".join(f"{n} {kind}{'s' if n > 1 else ''}"
                                                     for kind, n in sorted(history.actions.items())))


def _print_coverages(coverages) -> None:
    """One line per bar dataset: sessions, first and last bar, bars, gaps, sources; then the gaps."""
    if not coverages:
        click.echo("no bars yet: `market-platform backfill --from ... --to ...`")
        return
    click.echo(f"  {'dataset':<16}{'sessions':>9}  {'first bar (UTC)':<17} {'last bar (UTC)':<17}{'bars':>13}"
               f"{'gaps':>6}  sources")
    for cov in coverages:
        sources = ", ".join(f"{s} {n:,}" for s, n in cov.sources.items())
        click.echo(f"  {cov.dataset:<16}{len(cov.sessions):>9}  {cov.first_bar:%Y-%m-%d %H:%M}  "
                   f"{cov.last_bar:%Y-%m-%d %H:%M} {cov.rows:>13,}{len(cov.gaps):>6}  {sources}")
    gaps = coverages[0].gaps
    if gaps:
        shown = ", ".join(d.isoformat() for d in gaps[:8]) + (f" and {len(gaps) - 8} more" if len(gaps) > 8 else "")
        click.echo(f"sessions without {coverages[0].dataset} between the first and the last: {shown}")


def _dataset_partitions(store, dataset: str) -> None:
    store.count(dataset)  # validates the name
    for spec in store.partitions(dataset):
        label = "/".join(f"{k}={v}" for k, v in spec.items())
        click.echo(f"{label}  {store.count(dataset, spec):>12,} rows")


@main.command(hidden=True)
@click.argument("dataset", required=False)
@fail_cleanly
def lake(dataset: str | None) -> None:
    """Superseded by `status` (kept for scripts): `status --dataset DATASET`, or `status`."""
    status.callback(None, dataset)
