"""Dagster backfills of bars, launched from the command line (`market-platform backfill`, the demo).

A backfill is an asset backfill in the platform's Dagster instance, listed in the UI (Overview ->
Backfills) with its runs, whichever way it runs:

- **A dagster-daemon is running** (its backfill daemon sent a heartbeat in the last minute, as it
  does under `make ui`): the backfill is submitted as the UI would submit it
  (`instance.add_backfill`), the daemon launches its runs, and `follow` reports progress until
  it ends. Stopping the command does not stop the backfill.
- **No daemon**: this process runs the backfill. It records the same asset backfill, every
  partition marked requested (so a daemon started meanwhile would only watch it), then executes
  the runs here, one per ten sessions (the assets' backfill policy), each tagged
  `dagster/backfill=<id>`, and keeps the backfill's materialized and failed partitions and its
  final status up to date. With a Celery broker set, each run's steps execute on the workers
  (`defs.executor`) while this process orchestrates the run; the runs still go one after the
  other (Dagster's run execution is not thread-safe: concurrent runs need a process each, which
  the daemon gives them).

Either way a run is resumable: kill it, launch again, and the new runs fetch only what the
killed one had not staged (`history.bars`). A backfill whose process was killed cannot record its
end; the next launch on the same host marks it FAILED, and its unfinished runs failed
(`reap_abandoned`), so the UI does not show them in progress forever.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import (
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionsFilter,
    BulkActionStatus,
    PartitionBackfill,
)
from dagster._core.utils import make_new_backfill_id

from market_platform import calendar, errors, settings
from market_platform.defs.executor import execute_assets

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"
#: Tags of a backfill run by the launching process: its host and pid.
HOST_TAG, PID_TAG = "market_platform/host", "market_platform/pid"
SESSIONS_PER_RUN = 10
#: A daemon heartbeat younger than this means a daemon is running.
HEARTBEAT_SECONDS = 60.0

Progress = Callable[[int], None]


@dataclass
class Outcome:
    """How a backfill ended (or where it stands, when followed and interrupted)."""

    backfill_id: str
    mode: str                                            # "in-process" or "daemon"
    sessions: int
    runs: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)     # sessions that did not materialize
    reason: str | None = None                           # the first failure's message
    resumable: bool = True                              # whether running it again can get further

    @property
    def success(self) -> bool:
        return not self.failed and self.reason is None


def daemon_running(instance: dg.DagsterInstance, *, within: float = HEARTBEAT_SECONDS) -> bool:
    """Whether a dagster-daemon with a backfill daemon is alive on this instance."""
    heartbeat = instance.get_daemon_heartbeats().get("BACKFILL")
    return heartbeat is not None and time.time() - heartbeat.timestamp < within


def runs_of(sessions: Sequence[date], per_run: int = SESSIONS_PER_RUN) -> list[list[date]]:
    """`sessions` cut into runs: consecutive sessions, at most `per_run` each."""
    cal = calendar.default_calendar()
    runs: list[list[date]] = []
    for day in sorted(set(sessions)):
        if runs and len(runs[-1]) < per_run and cal.next_session(runs[-1][-1]) == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def _new_backfill(instance: dg.DagsterInstance, definitions: dg.Definitions, keys: list[dg.AssetKey],
                  sessions: Sequence[date], run_config: dict, title: str, tags: dict[str, str]) -> PartitionBackfill:
    return PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=definitions.resolve_asset_graph(),
        partition_names=[d.isoformat() for d in sorted(set(sessions))],
        asset_selection=keys,
        backfill_timestamp=time.time(),
        tags=tags,
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title,
        description=None,
        run_config=run_config,
    )


def submit(instance: dg.DagsterInstance, definitions: dg.Definitions, keys: list[dg.AssetKey],
           sessions: Sequence[date], *, run_config: dict, title: str, tags: dict[str, str] | None = None) -> str:
    """Hand the backfill to the running daemon; returns its id."""
    backfill = _new_backfill(instance, definitions, keys, sessions, run_config, title, tags or {})
    instance.add_backfill(backfill)
    return backfill.backfill_id


def follow(instance: dg.DagsterInstance, definitions: dg.Definitions, backfill_id: str, sessions: int,
           on_progress: Progress, *, poll: float = 1.0) -> Outcome:
    """Wait for a daemon-run backfill to end, reporting sessions done (every selected asset
    materialized or failed) through `on_progress`."""
    graph = definitions.resolve_asset_graph()
    reported = 0
    while True:
        backfill = instance.get_backfill(backfill_id)
        data = backfill.get_asset_backfill_data(graph)
        finished = _sessions_done(data.materialized_subset | data.failed_and_downstream_subset)
        if finished > reported:
            on_progress(finished - reported)
            reported = finished
        if backfill.status in BULK_ACTION_TERMINAL_STATUSES:
            failed = sorted({ap.partition_key for ap in data.failed_and_downstream_subset.iterate_asset_partitions()
                             if ap.partition_key})
            runs = [r.run_id for r in instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))]
            reason = None if backfill.status in (BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED) \
                else f"the backfill ended {backfill.status.value}"
            return Outcome(backfill_id, "daemon", sessions, runs, failed, reason if failed or reason else None)
        time.sleep(poll)


def _sessions_done(subset: AssetGraphSubset) -> int:
    by_asset: dict[dg.AssetKey, set[str]] = {}
    for ap in subset.iterate_asset_partitions():
        by_asset.setdefault(ap.asset_key, set()).add(ap.partition_key)
    return min((len(p) for p in by_asset.values()), default=0) if by_asset else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_abandoned(instance: dg.DagsterInstance) -> list[str]:
    """Mark FAILED the in-process backfills of this host whose process is gone, and their
    unfinished runs failed; returns their ids."""
    reaped = []
    for backfill in instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED])):
        tags = backfill.tags or {}
        if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
            continue
        if _alive(int(tags[PID_TAG])):
            continue
        for run in instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: backfill.backfill_id},
                                                   statuses=[dg.DagsterRunStatus.STARTED,
                                                             dg.DagsterRunStatus.STARTING])):
            instance.report_run_failed(run, f"the process running backfill {backfill.backfill_id} is gone")
        instance.update_backfill(backfill.with_status(BulkActionStatus.FAILED).with_end_timestamp(time.time()))
        reaped.append(backfill.backfill_id)
    return reaped


def run_here(instance: dg.DagsterInstance, definitions: dg.Definitions, keys: list[dg.AssetKey],
             sessions: Sequence[date], *, run_config: dict, title: str, on_progress: Progress,
             tags: dict[str, str] | None = None, logging_config: dict | None = None) -> Outcome:
    """Record the backfill and execute its runs in this process (see the module docstring)."""
    graph = definitions.resolve_asset_graph()
    tags = {**(tags or {}), HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    backfill = _new_backfill(instance, definitions, keys, sessions, run_config, title, tags)
    data = backfill.get_asset_backfill_data(graph)
    data = data.replace_requested_subset(data.target_subset).with_requested_runs_for_target_roots(True)
    backfill = backfill.with_asset_backfill_data(data, instance, graph)
    instance.add_backfill(backfill)
    outcome = Outcome(backfill.backfill_id, "in-process" if settings.celery_broker_url() is None else "celery",
                      len(set(sessions)))
    materialized: set[AssetKeyPartitionKey] = set()
    failed: set[AssetKeyPartitionKey] = set()
    try:
        for chunk in runs_of(sessions):
            wanted = {AssetKeyPartitionKey(k, d.isoformat()) for k in keys for d in chunk}
            result = execute_assets(
                definitions, keys, instance=instance,
                run_config={**run_config, **({"loggers": logging_config} if logging_config else {})},
                tags={**tags, BACKFILL_TAG: backfill.backfill_id,
                      RANGE_START: chunk[0].isoformat(), RANGE_END: chunk[-1].isoformat()},
            )
            outcome.runs.append(result.run_id)
            done = {AssetKeyPartitionKey(e.asset_key, e.partition) for e in result.get_asset_materialization_events()}
            materialized |= done & wanted
            failed |= wanted - done
            if not result.success and outcome.reason is None:
                outcome.reason, outcome.resumable = failure_reason(result), resumable(result)
            data = data._replace(
                materialized_subset=AssetGraphSubset.from_asset_partition_set(materialized, graph),
                failed_and_downstream_subset=AssetGraphSubset.from_asset_partition_set(failed, graph))
            backfill = instance.get_backfill(backfill.backfill_id).with_asset_backfill_data(data, instance, graph)
            instance.update_backfill(backfill)
            on_progress(len(chunk))
    finally:
        status = BulkActionStatus.COMPLETED_FAILED if failed or outcome.reason or len(outcome.runs) < len(
            runs_of(sessions)) else BulkActionStatus.COMPLETED_SUCCESS
        instance.update_backfill(instance.get_backfill(backfill.backfill_id).with_status(status)
                                 .with_end_timestamp(time.time()))
    outcome.failed = sorted({ap.partition_key for ap in failed})
    return outcome


def _first_error(result: Any):
    """The innermost error (a SerializableErrorInfo) of a failed in-process run's first failed step."""
    failures = [event for event in result.all_events if event.is_step_failure]
    if failures:
        error = failures[0].step_failure_data.error
    else:  # the executor failed the run itself, e.g. a step whose workers kept dying
        error = next((e.event_specific_data.error for e in result.all_events
                      if e.is_run_failure and getattr(e.event_specific_data, "error", None) is not None), None)
        if error is None:
            return None
    while error.cause is not None:
        error = error.cause
    return error


def failure_reason(result: Any) -> str:
    """The innermost error message of a failed in-process run's first failed step: the platform's
    own errors as their message alone (it names the value and what to do), others with their class."""
    error = _first_error(result)
    if error is None:
        return "the run failed before any step ran"
    message = error.message.strip().splitlines()[-1]
    own = getattr(errors, error.cls_name, None)
    if isinstance(own, type) and issubclass(own, errors.MarketPlatformError):
        message = message.split(f"{error.cls_name}: ", 1)[-1]
    return message


def resumable(result: Any) -> bool:
    """Whether running a failed run again can get further: not when its error asks for a change
    first (a setting, the input, the vendor's keys or plan)."""
    error = _first_error(result)
    own = getattr(errors, error.cls_name, None) if error is not None else None
    return not (isinstance(own, type) and issubclass(own, (errors.ConfigError, errors.InvalidInputError,
                                                          errors.VendorAuthError)))
